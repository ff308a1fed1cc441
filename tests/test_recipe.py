"""The recipe is in the preset: `train.optimizer` and `train.lr_scheduler` reach the optimizer that trains, for both
model families and the smoke run, as written (medasr/models/optim.py); RUN/train/recipe.json records what ran."""

import json
from pathlib import Path

import pytest

from medasr.config import load_config
from medasr.families import resolve_base
from medasr.train.smoke import SmokeRunError, smoke_run

OTHER = ["train.optimizer.name=Adam", "train.optimizer.betas=[0.8, 0.95]", "train.optimizer.eps=1e-6",
         "train.optimizer.weight_decay=0.05", "train.optimizer.lr=5e-4", "train.smoke_steps=4"]


def _smoke(preset: str, run_dir: Path) -> dict:
    cfg = load_config(preset, OTHER)
    try:
        smoke_run(cfg, run_dir, resolve_base(cfg, run_dir))
    except SmokeRunError:  # 4 steps may not show a falling loss; the optimizer that ran is recorded either way
        pass
    return json.loads((run_dir / "train/smoke.json").read_text())["recipe"]


def test_the_training_run_used_the_presets_recipe(tiny_run):
    cfg, run_dir, _ = tiny_run
    ran = json.loads((run_dir / "train/recipe.json").read_text())
    opt, sched = cfg.train.optimizer, cfg.train.lr_scheduler
    assert ran == {"optimizer": "AdamW", "lr": opt.lr, "betas": [0.9, 0.98], "eps": 1e-8, "weight_decay": 1e-3,
                   "lr_scheduler": "CosineAnnealing", "warmup_steps": sched.warmup_steps, "min_lr": sched.min_lr,
                   "max_steps": cfg.train.max_steps}
    assert opt.lr == 2e-3  # tiny.yaml's, not the schema default


def test_a_preset_change_of_the_optimizer_reaches_the_salm_smoke_run(tiny_data_and_base):
    ran = _smoke("tiny", tiny_data_and_base)
    assert ran == {"optimizer": "Adam", "lr": 5e-4, "betas": [0.8, 0.95], "eps": 1e-6, "weight_decay": 0.05,
                   "lr_scheduler": None}  # the smoke run holds the learning rate constant


def test_a_preset_change_of_the_optimizer_reaches_the_asr_smoke_run(tiny_parakeet_data_and_base):
    ran = _smoke("tiny-parakeet", tiny_parakeet_data_and_base)
    assert ran == {"optimizer": "Adam", "lr": 5e-4, "betas": [0.8, 0.95], "eps": 1e-6, "weight_decay": 0.05,
                   "lr_scheduler": None}


def test_the_asr_training_run_used_the_presets_recipe(tiny_parakeet_run):
    cfg, run_dir, _ = tiny_parakeet_run
    ran = json.loads((run_dir / "train/recipe.json").read_text())
    assert (ran["optimizer"], ran["lr"], ran["betas"], ran["weight_decay"]) == ("AdamW", 2e-3, [0.9, 0.98], 1e-3)
    assert (ran["lr_scheduler"], ran["warmup_steps"], ran["max_steps"]) == ("CosineAnnealing", 10, 60)


def test_retired_settings_say_what_replaced_them(tmp_path):
    """A run dir's config.yaml from before the mini base was retired names what to do, not an unknown key."""
    old = tmp_path / "config.yaml"
    old.write_text("name: old\npretrain:\n  steps: 9500\n")
    with pytest.raises(ValueError, match=r"pretrain: the from-scratch mini base's pretraining section, retired"):
        load_config(str(old))
    with pytest.raises(ValueError, match="retired"):
        load_config("tiny", ["pretrain.steps=5"])
    with pytest.raises(ValueError, match="model.base: mini was the from-scratch SALM demo base, retired"):
        load_config("tiny", ["model.base=mini"])


def test_moved_keys_and_unknown_names_are_refused_with_the_fix(tmp_path):
    with pytest.raises(ValueError, match="train.lr is now train.optimizer.lr"):
        load_config("tiny", ["train.lr=1e-4"])
    old = tmp_path / "old.yaml"
    old.write_text("name: old\ntrain:\n  warmup_steps: 5\n")
    with pytest.raises(ValueError, match="train.warmup_steps is now train.lr_scheduler.warmup_steps"):
        load_config(str(old))
    with pytest.raises(ValueError, match=r"train.optimizer.betas"):
        load_config("tiny", ["train.optimizer.betas=[0.9, 1.0]"])
    with pytest.raises(ValueError, match=r"train.optimizer.betas=\[0.9\]: give two"):
        load_config("tiny", ["train.optimizer.betas=[0.9]"])
    # refused at load, before any data or model time: SGD takes no betas, NeMo's ASR registry has no nadam, StepLR
    # is no NeMo scheduler class, and NeMo spells adamw in lower case where torch does not
    for bad in ("train.optimizer.name=SGD", "train.optimizer.name=NAdam", "train.optimizer.name=adamw",
                "train.lr_scheduler.name=StepLR", "train.lr_scheduler.name=NoamAnnealing"):
        with pytest.raises(ValueError, match="use one of"):
            load_config("tiny", [bad])
    assert load_config("tiny", ["train.lr_scheduler.name=null"]).train.lr_scheduler.name is None


def test_the_allowed_names_are_what_torch_and_nemo_build():
    """Each allowed optimizer is a torch.optim class taking lr, betas, eps and weight_decay, and NeMo's ASR registry
    names that same class; each allowed scheduler builds from warmup_steps, min_lr and max_steps alone."""
    import torch
    from nemo.core.optim import lr_scheduler
    from nemo.core.optim.optimizers import AVAILABLE_OPTIMIZERS

    from medasr.config import OPTIMIZERS, SCHEDULERS

    param = [torch.nn.Parameter(torch.zeros(2))]
    for name in OPTIMIZERS:
        cls = getattr(torch.optim, name)
        assert AVAILABLE_OPTIMIZERS[name.lower()] is cls
        opt = cls(param, lr=1e-3, betas=[0.8, 0.9], eps=1e-6, weight_decay=0.1)
        for name_ in SCHEDULERS:
            s = getattr(lr_scheduler, name_)(opt, warmup_steps=2, min_lr=1e-5, max_steps=10)
            assert s.max_steps == 10


def test_a_run_made_before_the_recipe_moved_resumes():
    """The training fingerprint of each preset's recipe equals what the flat keys gave (digests computed with the code
    before train.optimizer existed), so a run dir from then is resumed, not moved aside and trained again; a changed
    beta still changes it."""
    from medasr.fingerprint import digest
    from medasr.train.inputs import recipe

    before = {"tiny": "83e3263613fc7aed", "canary-qwen-2.5b": "397d91f0f6cb11ca",
              "parakeet-tdt-0.6b-v2": "0bbd4fc147f5f91a"}
    assert {p: digest(recipe(load_config(p).train)) for p in before} == before
    assert digest(recipe(load_config("tiny", ["train.optimizer.betas=[0.9, 0.95]"]).train)) != before["tiny"]
