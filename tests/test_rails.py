"""Issue 7: training safety rails — divergence watchdog, RUN/FAILED honoured by the supervisor."""

import json

import pytest

from medasr.config import load_config
from medasr.flywheel import run_flywheel
from medasr.ops.supervisor import Supervisor
from medasr.train.trainer import TrainingWatchdogError

DIVERGE = ["train.max_steps=40", "train.lr=1e6", "train.warmup_steps=0", "train.grad_clip=0", "train.val_every_n_steps=5",
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


def test_supervisor_does_not_relaunch_a_failed_run(tmp_path):
    rd = tmp_path / "run"
    rd.mkdir()
    (rd / "FAILED").write_text(json.dumps({"stage": "train", "reason": "validation loss is nan at step 5"}))
    sup = Supervisor("tiny", rd, [], backoff_base=0.01)
    assert sup.run() == 1  # returns at once: no child was started
    state = json.loads((rd / "supervisor.json").read_text())
    assert state["state"] == "failed" and "nan" in state["reason"] and state["restarts"] == 0 and state["last_exit"] is None
