"""SIGTERM writes a checkpoint within 5 s; the supervisor survives SIGKILLs and only stops when done."""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from medasr.ops.supervisor import clean_checkpoints
from medasr.runstate import run_is_done

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parent.parent
ENV = {k: v for k, v in os.environ.items() if k != "WANDB_SERVICE"} | {"WANDB_MODE": "offline"}


def _wait(pred, timeout, what):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if pred():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def _progress(rd):
    try:
        return json.loads((rd / "train/progress.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def test_sigterm_saves_checkpoint_within_5s_and_resumes(tiny_data_and_base):
    rd = tiny_data_and_base
    cmd = [sys.executable, "-m", "medasr.cli", "train", "--preset", "tiny", "--run-dir", str(rd), "--set", "train.max_steps=40",
           "--set", "train.ckpt_every_n_steps=1000", "--set", "train.val_every_n_steps=1000"]
    p = subprocess.Popen(cmd, cwd=REPO, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _wait(lambda: (_progress(rd) or {}).get("global_step", 0) >= 12, 300, "12 training steps")
    t = time.time()
    p.send_signal(signal.SIGTERM)
    p.wait(timeout=60)
    took = time.time() - t
    step = _progress(rd)["global_step"]
    assert took < 5, f"took {took:.1f}s to stop"
    assert torch.load(rd / "train/checkpoints/last.ckpt", weights_only=False, map_location="cpu")["global_step"] == step
    assert not (rd / "train/DONE").exists()  # exit code 0 or not, the run is not done
    out = subprocess.run(cmd, cwd=REPO, env=ENV, capture_output=True, timeout=600)
    assert out.returncode == 0, out.stderr.decode()[-2000:]
    log = [json.loads(x) for x in (rd / "train/resume_log.jsonl").read_text().splitlines()]
    assert log[-1]["start_step"] == step  # nothing lost
    assert json.loads((rd / "train/DONE").read_text())["global_step"] == 40


def test_supervisor_survives_sigkills(tiny_data_and_base):
    rd = tiny_data_and_base
    every, max_steps = 10, 50  # two kills: each relaunch costs a NeMo start, so CI keeps it short
    cmd = [sys.executable, "-m", "medasr.cli", "supervise", "--preset", "tiny", "--run-dir", str(rd), "--backoff", "0.5",
           "--set", f"train.max_steps={max_steps}", "--set", f"train.ckpt_every_n_steps={every}",
           "--set", "train.val_every_n_steps=35", "--set", "eval.max_new_tokens=4"]
    sup = subprocess.Popen(cmd, cwd=REPO, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    rng = random.Random(7)
    kills = []
    try:
        for lo, hi in ((8, 20), (25, 40)):
            target = rng.randint(lo, hi)

            def child_at_target():
                st = json.loads((rd / "supervisor.json").read_text()) if (rd / "supervisor.json").exists() else {}
                pr = _progress(rd)
                return bool(pr) and pr["pid"] == st.get("child_pid") and pr["global_step"] >= target

            _wait(child_at_target, 400, f"step {target}")
            pid = json.loads((rd / "supervisor.json").read_text())["child_pid"]
            step = _progress(rd)["global_step"]
            os.killpg(pid, signal.SIGKILL)  # the flywheel dies mid-training, no chance to save
            kills.append(step)
        assert sup.wait(timeout=900) == 0
    finally:
        if sup.poll() is None:
            os.killpg(sup.pid, signal.SIGKILL)
    state = json.loads((rd / "supervisor.json").read_text())
    assert state["state"] == "done" and state["restarts"] >= 2
    assert run_is_done(rd, max_steps)[0]
    log = [json.loads(x) for x in (rd / "train/resume_log.jsonl").read_text().splitlines()]
    resumed = [e["start_step"] for e in log[1:]]
    assert len(resumed) == 2
    for killed_at, start in zip(kills, resumed):
        assert killed_at - every <= start <= killed_at  # at most one checkpoint interval lost per kill
    from medasr.models.salm import transcribe_paths
    from medasr.families.salm import load_adapted

    model, meta = load_adapted(rd / "canary-qwen-medical-lora")
    assert meta["selection"]["trained_steps"] == max_steps and meta["reload_check"]["ok"]
    wav = json.loads((rd / "data/test.json").read_text().splitlines()[0])["audio_filepath"]
    assert len(transcribe_paths(model, [wav], meta["prompt"], 1, 4, min_new_tokens=4)[0]) > 0


def test_clean_checkpoints(tmp_path):
    d = tmp_path / "ck"
    d.mkdir()
    torch.save({"global_step": 10}, d / "step000010.ckpt")
    torch.save({"global_step": 20}, d / "step000020.ckpt")
    (d / "last.ckpt").write_bytes(b"truncated garbage")
    (d / "step000030.ckpt.partial").write_bytes(b"half")
    actions = clean_checkpoints(d)
    assert "removed unfinished step000030.ckpt.partial" in actions and "removed unreadable last.ckpt" in actions
    assert torch.load(d / "last.ckpt", weights_only=False)["global_step"] == 20


def test_two_devices_ddp_on_cpu_trains_resumes_and_exports(tiny_data_and_base, tmp_path):
    """The path of a multi-GPU pod, on CPU: `--set train.devices=2` trains with Lightning's DDP (gloo here, NCCL on
    GPUs), one process per device started by Lightning's own launcher; a SIGKILL of the whole process group mid-run
    resumes from the last checkpoint; the flywheel then exports as on one device."""
    rd = tiny_data_and_base
    test = rd / "data" / "test.json"
    test.write_text("".join(test.read_text().splitlines(keepends=True)[:24]))  # less decoding; the gate is forced
    sets = ["train.devices=2", "train.threads=1", "train.max_steps=40", "train.val_every_n_steps=20",
            "train.ckpt_every_n_steps=20", "train.smoke_steps=4"]
    cmd = [sys.executable, "-m", "medasr.cli", "flywheel", "-p", "tiny", "--run-dir", str(rd), "--force",
           *[a for s in sets for a in ("--set", s)]]
    log = open(tmp_path / "ddp.log", "w")
    child = subprocess.Popen(cmd, env=ENV, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    _wait(lambda: (rd / "train/checkpoints/step000020.ckpt").exists() and (_progress(rd) or {}).get("global_step", 0) > 22,
          600, "a checkpoint at step 20 and training past it")
    os.killpg(child.pid, signal.SIGKILL)  # every rank at once, as a pod restart does
    child.wait()
    assert not (rd / "train/DONE").exists()
    done = subprocess.run(cmd, env=ENV, stdout=log, stderr=subprocess.STDOUT, timeout=900)
    assert done.returncode == 0, (tmp_path / "ddp.log").read_text()[-3000:]
    out = (tmp_path / "ddp.log").read_text()
    assert out.count("Starting with 2 processes") == 2 and "distributed_backend=gloo" in out
    starts = [json.loads(x)["start_step"] for x in (rd / "train/resume_log.jsonl").read_text().splitlines()]
    assert starts == [0, 20]  # one line per launch (rank zero writes it), the second from the step-20 checkpoint
    assert json.loads((rd / "train/DONE").read_text()) == {"global_step": 40, "max_steps": 40}
    summary = json.loads((rd / "summary.json").read_text())
    assert summary["status"] == "done" and (rd / "canary-qwen-medical-lora" / "adapter.safetensors").exists()
