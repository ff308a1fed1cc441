"""W&B offline: eval tables (plain and redacted), metrics and training throughput keys land in the run's files."""

import json

from medasr.config import load_config
from medasr.ops.tracking import digest, log_eval, run_id

ROWS = [{"id": "r1", "text": "Start metformin today.", "pred_text": "start met for men today", "term": "metformin",
         "entity_category": "drug", "term_seen": True},
        {"id": "r2", "text": "Patient John Smith has asthma.", "pred_text": "patient john smith has asthma", "term": "asthma",
         "entity_category": "condition", "term_seen": False}]
METRICS = {"wer": 0.3, "cer": 0.1, "ker": 0.5, "ker_seen": 1.0, "ker_unseen": 0.0, "term_error_rate": 0.5,
           "ker_by_category": {"drug": {"ker": 1.0, "n": 1}, "condition": {"ker": 0.0, "n": 1}}}


def _eventually_contains(path, needle: bytes, timeout: float = 30.0) -> bool:
    """wandb's service process writes the offline run file after run.finish() returns; under load that takes a moment."""
    import time

    end = time.time() + timeout
    while needle not in path.read_bytes():
        if time.time() > end:
            return False
        time.sleep(0.2)
    return True


def _tables(run_dir):
    return [json.loads(p.read_text()) for p in (run_dir / "train/wandb").rglob("*.table.json")]


def test_eval_table_plain(tmp_path):
    cfg = load_config("tiny")
    log_eval(cfg, tmp_path, "cycle0", METRICS, ROWS)
    (t,) = _tables(tmp_path)
    assert t["columns"][:3] == ["id", "reference", "hypothesis"]
    assert t["data"][1][1] == "Patient John Smith has asthma." and t["data"][0][2] == "start met for men today"
    run_dir = next((tmp_path / "train/wandb").glob("offline-run-*"))
    assert run_dir.name.endswith(run_id(tmp_path))  # the same id the trainer uses
    assert _eventually_contains(next(run_dir.glob("*.wandb")), b"eval/cycle0/ker_drug")


def test_eval_table_redacted(tmp_path):
    cfg = load_config("tiny", ["eval.redact_transcripts=true"])
    log_eval(cfg, tmp_path, "cycle1", METRICS, ROWS)
    (t,) = _tables(tmp_path)
    assert t["data"][1][1] == digest("Patient John Smith has asthma.") and t["data"][1][1].startswith("sha256:")
    blobs = b"".join(p.read_bytes() for p in (tmp_path / "train/wandb").rglob("*") if p.is_file())
    assert b"John Smith" not in blobs and b"met for men" not in blobs  # no transcript text anywhere in W&B files


def test_training_logs_throughput(tiny_run):
    _, run_dir, _ = tiny_run
    blobs = b"".join(p.read_bytes() for p in (run_dir / "train/wandb").rglob("*.wandb"))
    for key in (b"throughput/audio_s_per_s", b"throughput/samples_per_s", b"cost/usd_this_launch", b"loss",
                b"val_loss", b"eval/cycle1/ker", b"projected_cost_usd"):
        assert key in blobs, key


def test_offline_logging_never_calls_the_server(tmp_path):
    """A key in the environment, offline as Lightning's WandbLogger leaves it (WANDB_MODE=dryrun), no network:
    eval logging after training must stay offline instead of trying to resume the run online."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "WANDB_SERVICE"} | {"WANDB_API_KEY": "x" * 40, "WANDB_MODE": "dryrun"}
    code = ("from pathlib import Path; from medasr.config import load_config; from medasr.ops.tracking import log_eval; "
            f"log_eval(load_config('tiny'), Path({str(tmp_path)!r}), 'cycle0', {METRICS!r}, {ROWS!r})")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, timeout=120)
    assert out.returncode == 0, out.stderr.decode()[-2000:]
    assert _tables(tmp_path)


def test_offline_detection(monkeypatch):
    from medasr.ops.tracking import offline

    monkeypatch.setenv("WANDB_API_KEY", "k" * 40)
    for mode, want in (("offline", True), ("dryrun", True), ("disabled", True), ("online", False)):
        monkeypatch.setenv("WANDB_MODE", mode)
        assert offline() is want, mode
    monkeypatch.delenv("WANDB_MODE")
    assert offline() is False
    monkeypatch.delenv("WANDB_API_KEY")
    assert offline() is True


def test_flywheel_without_any_wandb_settings(tiny_data_and_base):
    """The README's main command on a fresh machine: no WANDB_MODE, no key. Eval logging and training must both run
    offline in the same process."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    cmd = [sys.executable, "-m", "medasr.cli", "flywheel", "--preset", "tiny", "--run-dir", str(tiny_data_and_base),
           "--set", "train.max_steps=4", "--set", "train.ckpt_every_n_steps=2", "--set", "train.val_every_n_steps=2",
           "--set", "eval.max_new_tokens=4"]
    out = subprocess.run(cmd, env=env, capture_output=True, timeout=900)
    assert out.returncode == 0, out.stderr.decode()[-2000:]
    assert json.loads((tiny_data_and_base / "summary.json").read_text())["status"] == "done"
