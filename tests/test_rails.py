"""Issue 7: training safety rails — divergence watchdog, RUN/FAILED honoured by the supervisor."""

import json

import pytest

from medasr.config import load_config
from medasr.flywheel import run_flywheel
from medasr.ops.supervisor import Supervisor
from medasr.train.smoke import SmokeRunError
from medasr.train.trainer import TrainingWatchdogError

DIVERGE = ["train.smoke_steps=0", "train.max_steps=40", "train.lr=1e6", "train.warmup_steps=0", "train.grad_clip=0", "train.val_every_n_steps=5",
           "train.ckpt_every_n_steps=100", "train.limit_val_batches=1", "gate.ker_threshold=0"]


def test_nan_loss_stops_the_run_and_marks_it_failed(tiny_data_and_base):
    rd = tiny_data_and_base
    with pytest.raises(TrainingWatchdogError, match="training loss is nan"):
        run_flywheel(load_config("tiny", DIVERGE), rd)
    progress = json.loads((rd / "train/progress.json").read_text())
    assert progress["global_step"] < 10  # stopped within a few steps, not after 40
    failed = json.loads((rd / "FAILED").read_text())
    assert failed["stage"] == "train" and failed["error"] == "TrainingWatchdogError" and "lower train.lr" in failed["reason"].lower()
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
    from medasr.train.export import export_adapter, load_adapted

    cfg, run_dir, _ = tiny_run
    a, b = run_dir / "train/checkpoints/step000100.ckpt", run_dir / "train/checkpoints/step000200.ckpt"
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
    assert avg["global_step"] == 200 and "optimizer_states" not in avg
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
    from medasr.train.export import AdapterError, export_adapter
    from medasr.train.trainer import apply_freeze

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
