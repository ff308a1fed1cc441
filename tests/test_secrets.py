"""Secrets never reach logs, W&B files, checkpoints or reports."""

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from medasr.ops.secrets import RedactingFilter, load_secrets, redact

REPO = Path(__file__).resolve().parent.parent
SECRETS = {"WANDB_API_KEY": "wandbsecret0123456789abcdef0123456789abcdef", "HF_TOKEN": "hf_SeCrEtToKeN123456",
           "RUNPOD_API_KEY": "rpa_SECRET_RUNPOD_987654321", "AWS_SECRET_ACCESS_KEY": "awsSecretKey/abc+def/123"}


def test_redaction_filter(monkeypatch, tmp_path):
    for k, v in SECRETS.items():
        monkeypatch.setenv(k, v)
    assert redact(f"token={SECRETS['HF_TOKEN']} ok") == "token=***HF_TOKEN*** ok"
    logger = logging.getLogger("medasr-test")
    stream = tmp_path / "log.txt"
    h = logging.FileHandler(stream)
    h.addFilter(RedactingFilter())
    logger.addHandler(h)
    logger.warning("calling RunPod with %s", SECRETS["RUNPOD_API_KEY"])
    h.close()
    text = stream.read_text()
    assert "***RUNPOD_API_KEY***" in text and SECRETS["RUNPOD_API_KEY"] not in text


def test_dotenv_loading(monkeypatch, tmp_path):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    (tmp_path / ".env").write_text("HF_TOKEN=hf_from_dotenv_123456\n")
    assert "HF_TOKEN" in load_secrets(tmp_path / ".env")
    assert os.environ["HF_TOKEN"] == "hf_from_dotenv_123456"
    monkeypatch.delenv("HF_TOKEN")


@pytest.mark.slow
def test_no_secret_in_run_outputs(tiny_data_and_base):
    run_dir = tiny_data_and_base
    env = {k: v for k, v in os.environ.items() if k != "WANDB_SERVICE"} | SECRETS | {"WANDB_MODE": "offline"}
    cmd = [sys.executable, "-m", "medasr.cli", "flywheel", "--preset", "tiny", "--run-dir", str(run_dir),
           "--set", "train.max_steps=4", "--set", "train.ckpt_every_n_steps=2", "--set", "train.val_every_n_steps=2",
           "--set", "eval.max_new_tokens=4"]
    out = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, timeout=900)
    assert out.returncode == 0, out.stderr.decode()[-3000:]
    assert (run_dir / "train/DONE").exists() and any((run_dir / "train/wandb").rglob("*.wandb"))
    blobs = [out.stdout, out.stderr] + [p.read_bytes() for p in run_dir.rglob("*") if p.is_file() and p.suffix != ".wav"]
    assert len(blobs) > 20  # checkpoints, W&B files, configs, reports, manifests were all searched
    for name, value in SECRETS.items():
        assert not any(value.encode() in b for b in blobs), f"{name} leaked"
