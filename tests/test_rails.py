"""Training safety rails — divergence watchdog, RUN/FAILED honoured by the supervisor."""

import json

import pytest

from medasr.config import load_config
from medasr.flywheel import run_flywheel
from medasr.ops.supervisor import Supervisor
from medasr.train.smoke import SmokeRunError
from medasr.train.callbacks import TrainingWatchdogError

DIVERGE = ["train.smoke_steps=0", "train.max_steps=40", "train.optimizer.lr=1e6", "train.lr_scheduler.warmup_steps=0", "train.grad_clip=0", "train.val_every_n_steps=5",
           "train.ckpt_every_n_steps=100", "train.limit_val_batches=1", "gate.ker_threshold=0"]


def test_nan_loss_stops_the_run_and_marks_it_failed(tiny_data_and_base):
    rd = tiny_data_and_base
    with pytest.raises(TrainingWatchdogError, match="training loss is nan"):
        run_flywheel(load_config("tiny", DIVERGE), rd)
    progress = json.loads((rd / "train/progress.json").read_text())
    assert progress["global_step"] < 10  # stopped within a few steps, not after 40
    failed = json.loads((rd / "FAILED").read_text())
    assert failed["stage"] == "train" and failed["error"] == "TrainingWatchdogError" and "lower train.optimizer.lr" in failed["reason"].lower()
    assert not (rd / "train/DONE").exists() and not (rd / "canary-qwen-medical-lora").exists()


def test_smoke_run_stops_a_diverging_run_before_training(tiny_data_and_base):
    rd = tiny_data_and_base
    cfg = load_config("tiny", [o for o in DIVERGE if not o.startswith("train.smoke_steps")] + ["train.price_per_hour=2.5"])
    with pytest.raises(SmokeRunError, match="smoke run failed: loss is not finite"):
        run_flywheel(cfg, rd)
    smoke = json.loads((rd / "train/smoke.json").read_text())
    assert smoke["ok"] is False and smoke["steps"] == 20 and smoke["rows"] == 2 * cfg.train.batch_size
    assert smoke["projected_cost_usd"] == round(smoke["step_s_median"] * 40 / 3600 * 2.5, 2)
    failed = json.loads((rd / "FAILED").read_text())
    assert failed["stage"] == "smoke" and failed["error"] == "SmokeRunError"
    assert not (rd / "train/checkpoints").exists()  # the full run never started


def test_supervisor_does_not_relaunch_a_failed_run(tmp_path):
    rd = tmp_path / "run"
    rd.mkdir()
    (rd / "FAILED").write_text(json.dumps({"stage": "train", "reason": "validation loss is nan at step 5"}))
    sup = Supervisor("tiny", rd, [], backoff_base=0.01)
    assert sup.run() == 1  # returns at once: no child was started
    state = json.loads((rd / "supervisor.json").read_text())
    assert state["state"] == "failed" and "nan" in state["reason"] and state["restarts"] == 0 and state["last_exit"] is None


def test_average_of_two_checkpoints_is_the_elementwise_mean(tiny_run, tmp_path):
    import torch
    from typer.testing import CliRunner

    from medasr.cli import app
    from medasr.families.salm import export_adapter
    from medasr.families.salm import load_adapted

    cfg, run_dir, _ = tiny_run
    a, b = run_dir / "train/checkpoints/step000200.ckpt", run_dir / "train/checkpoints/step000250.ckpt"
    out = tmp_path / "avg.ckpt"
    res = CliRunner().invoke(app, ["average", str(a), str(b), "--out", str(out)])
    assert res.exit_code == 0, res.output
    sa, sb, avg = (torch.load(p, map_location="cpu", weights_only=False) for p in (a, b, out))
    floats = [k for k, v in sa["state_dict"].items() if v.is_floating_point()]
    assert len(floats) > 50
    for k in floats:
        assert torch.allclose(avg["state_dict"][k], (sa["state_dict"][k] + sb["state_dict"][k]) / 2, atol=1e-7), k
    ints = [k for k, v in sa["state_dict"].items() if not v.is_floating_point()]
    assert all(torch.equal(avg["state_dict"][k], sb["state_dict"][k]) for k in ints)
    assert avg["global_step"] == 250 and "optimizer_states" not in avg
    # the average exports and reloads like any checkpoint
    rd = tmp_path / "run"
    rd.mkdir()
    exported = export_adapter(cfg, rd, run_dir / "model/base", out)
    model, meta = load_adapted(exported)
    sd = model.state_dict()
    assert all(torch.equal(sd[k], avg["state_dict"][k]) for k in floats if ".lora_" in k)
    bad = CliRunner().invoke(app, ["average", str(a), "--out", str(out)])
    assert bad.exit_code == 2 and "at least two" in bad.output


def test_untrained_export_fails_the_non_zero_check(tiny_data_and_base, tmp_path):
    import torch

    from medasr.models.salm import load_base
    from medasr.families.salm import export_adapter
    from medasr.models.load import AdapterError
    from medasr.models.load import apply_freeze

    rd = tiny_data_and_base
    cfg = load_config("tiny")
    model = load_base(rd / "model/base")
    apply_freeze(model, list(cfg.model.freeze_params))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    ckpt = tmp_path / "untrained.ckpt"
    torch.save({"state_dict": {k: v for k, v in model.state_dict().items() if k in trainable}, "global_step": 0}, ckpt)
    with pytest.raises(AdapterError, match="all zeros"):
        export_adapter(cfg, rd, rd / "model/base", ckpt)
    assert not (rd / "canary-qwen-medical-lora").exists()


def test_choose_prefers_the_lower_wer_and_the_single_best_on_a_tie():
    from medasr.train.select import choose

    best, avg = {"name": "best", "val_wer": 0.20}, {"name": "average of 3", "val_wer": 0.18}
    assert choose([best, avg])["name"] == "average of 3"
    assert choose([best, avg | {"val_wer": 0.20}])["name"] == "best"
    assert choose([best, avg | {"val_wer": 0.25}])["name"] == "best"


@pytest.mark.slow
def test_checkpoints_pruned_best_by_wer_kept_and_selection_exported(tiny_run):
    from pathlib import Path

    cfg, run_dir, summary = tiny_run
    ckpts = sorted(p.name for p in (run_dir / "train/checkpoints").glob("*.ckpt"))
    hist = json.loads((run_dir / "train/val_wer.json").read_text())
    assert sorted(hist, key=int) == ["50", "100", "150", "200", "250", "300"]  # decoded at every validation
    best_step = min(hist, key=lambda s: (hist[s], int(s)))
    # the last keep_last=3 periodic checkpoints, last.ckpt and the best by val WER; steps 50..150 were pruned
    assert ckpts == sorted({f"best-step{int(best_step):06d}.ckpt", "last.ckpt", "step000200.ckpt", "step000250.ckpt",
                            "step000300.ckpt"})
    sel = json.loads((run_dir / "train/selection.json").read_text())
    by = {c["name"]: c for c in sel["candidates"]}
    assert set(by) == {"best", "average of 3"} and by["average of 3"]["sources"] == ["step000200.ckpt", "step000250.ckpt",
                                                                                      "step000300.ckpt"]
    assert by["best"]["val_wer"] == hist[best_step]  # the reloaded checkpoint decodes as it did during training
    assert sel["chosen"]["val_wer"] == min(c["val_wer"] for c in sel["candidates"])
    meta = json.loads((run_dir / "canary-qwen-medical-lora/medasr_adapter.json").read_text())
    assert meta["checkpoint"] == Path(sel["chosen"]["path"]).name
    chk = meta["reload_check"]
    assert chk["ok"] and abs(chk["reloaded_wer"] - chk["in_memory_wer"]) <= 0.001 and chk["rows"] == 16
    assert summary["selection"]["chosen"] == sel["chosen"]["name"]
    assert "Reload check: the exported model reloaded from disk" in (run_dir / "canary-qwen-medical-lora/README.md").read_text()


@pytest.mark.slow
def test_reload_check_refuses_an_export_that_does_not_reproduce(tiny_run, tmp_path):
    import shutil

    import torch
    from safetensors.torch import load_file, save_file

    from medasr.models.load import AdapterError
    from medasr.train.select import reload_check

    cfg, run_dir, _ = tiny_run
    sel = json.loads((run_dir / "train/selection.json").read_text())
    rd = tmp_path / "run"
    shutil.copytree(run_dir / "data", rd / "data")
    shutil.copytree(run_dir / "model", rd / "model")
    export = rd / "canary-qwen-medical-lora"
    shutil.copytree(run_dir / "canary-qwen-medical-lora", export)
    assert reload_check(cfg, rd, export, sel["chosen"]["val_wer"])["ok"]
    # an export whose projection lost its trained weights no longer decodes like the trained model
    t = load_file(str(export / "adapter.safetensors"))
    t = {k: torch.zeros_like(v) if k.startswith("perception.proj") or ".lora_B" in k else v for k, v in t.items()}
    save_file(t, str(export / "adapter.safetensors"))
    with pytest.raises(AdapterError, match="differs from the in-memory model"):
        reload_check(cfg, rd, export, sel["chosen"]["val_wer"])


def _fit_with_watchdog(rd, overrides, val_check_interval, watchdog_interval):
    """A real Lightning fit of the tiny SALM with the watchdog, validation every `val_check_interval` steps."""
    from lightning.pytorch import Trainer

    from medasr.train.callbacks import TrainingWatchdog
    from medasr.families import family

    cfg = load_config("tiny", overrides)
    model, fit_kw, _ = family(cfg).prepare(cfg, rd / "data", rd / "model/base", rd / "train")
    trainer = Trainer(max_steps=cfg.train.max_steps, accelerator="cpu", logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                      check_val_every_n_epoch=None, val_check_interval=val_check_interval, limit_val_batches=1,
                      gradient_clip_val=cfg.train.grad_clip, callbacks=[TrainingWatchdog(watchdog_interval)])
    trainer.fit(model, **fit_kw)
    return trainer


@pytest.mark.slow
def test_watchdog_stops_a_blind_run(tiny_data_and_base):
    # validation every 50 steps while the watchdog expects it every 2: blind after step 4
    with pytest.raises(TrainingWatchdogError, match="validation has not run since step 0 .now 5, interval 2"):
        _fit_with_watchdog(tiny_data_and_base, ["train.max_steps=20"], 50, 2)


@pytest.mark.slow
def test_watchdog_stops_on_a_nan_validation_loss(tiny_data_and_base):
    with pytest.raises(TrainingWatchdogError, match="validation loss is nan at step 2"):
        _fit_with_watchdog(tiny_data_and_base, ["train.max_steps=20", "train.optimizer.lr=1e6", "train.lr_scheduler.warmup_steps=0",
                                                "train.grad_clip=0"], 2, 2)


@pytest.mark.slow
def test_asr_export_equal_to_the_base_is_refused(tiny_parakeet_data_and_base, tmp_path):
    import torch

    from medasr.models.asr import load_base
    from medasr.families.asr import export_nemo
    from medasr.models.load import AdapterError

    rd = tiny_parakeet_data_and_base
    cfg = load_config("tiny-parakeet")
    ckpt = tmp_path / "untrained.ckpt"
    torch.save({"state_dict": load_base(rd / "model/base.nemo").state_dict(), "global_step": 0}, ckpt)
    with pytest.raises(AdapterError, match="every weight equals the base model's"):
        export_nemo(cfg, rd, rd / "model/base.nemo", ckpt)
    assert not (rd / "adapted_model.nemo").exists()


@pytest.mark.slow
def test_retry_failed_relaunches_the_run(tiny_data_and_base):
    rd = tiny_data_and_base
    (rd / "FAILED").write_text(json.dumps({"stage": "train", "reason": "an earlier failure", "time": "then"}))
    overrides = [o for o in DIVERGE if not o.startswith("train.smoke_steps")]  # fails again, in the smoke run
    sup = Supervisor("tiny", rd, overrides, backoff_base=0.01, retry_failed=True)
    assert sup.run() == 1
    state = json.loads((rd / "supervisor.json").read_text())
    assert state["last_exit"] == 1 and state["state"] == "failed"  # a child ran this time, and failed again
    failed = json.loads((rd / "FAILED").read_text())
    assert failed["stage"] == "smoke" and failed["time"] != "then"


@pytest.mark.slow
def test_selection_ignores_pruned_checkpoints_brought_back_by_a_restore(tiny_run, tmp_path):
    import shutil

    from medasr.train.select import best_checkpoint, kept_periodic

    _, run_dir, _ = tiny_run
    rd = tmp_path / "run"
    (rd / "train/checkpoints").mkdir(parents=True)
    shutil.copy(run_dir / "train/val_wer.json", rd / "train/val_wer.json")
    src = run_dir / "train/checkpoints"
    for p in src.glob("*.ckpt"):
        shutil.copy(p, rd / "train/checkpoints" / p.name)
    hist = json.loads((rd / "train/val_wer.json").read_text())
    best_step = int(min(hist, key=lambda s: (hist[s], int(s))))
    stale_best = 300 if best_step != 300 else 250
    for name in ("step000050.ckpt", "step000100.ckpt", f"best-step{stale_best:06d}.ckpt"):  # pruned, then restored
        shutil.copy(src / "step000200.ckpt", rd / "train/checkpoints" / name)
    assert [p.name for p in kept_periodic(rd / "train/checkpoints")] == ["step000200.ckpt", "step000250.ckpt",
                                                                          "step000300.ckpt"]
    assert best_checkpoint(rd).name == f"best-step{best_step:06d}.ckpt"


@pytest.mark.slow
def test_cli_export_uses_the_selection(tiny_run, tmp_path):
    from pathlib import Path

    from typer.testing import CliRunner

    from medasr.cli import app

    _, run_dir, _ = tiny_run
    chosen = json.loads((run_dir / "train/selection.json").read_text())["chosen"]
    res = CliRunner().invoke(app, ["export", "--preset", "tiny", "--run-dir", str(run_dir)])
    assert res.exit_code == 0, res.output
    assert f"← {chosen['name']} ({Path(chosen['path']).name})" in " ".join(res.output.split())
    (tmp_path / "run").mkdir()
    res = CliRunner().invoke(app, ["export", "--preset", "tiny", "--run-dir", str(tmp_path / "run")])
    assert res.exit_code == 2 and "finish training first" in res.output
