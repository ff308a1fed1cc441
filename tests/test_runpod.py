"""RunPod client code (the official SDK + our escaping and lifecycle logic) against a local server speaking its API."""

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from medasr.cli import app
from medasr.ops import pods
from runpod_api import RunPodAPI

REPO = Path(__file__).resolve().parent.parent
NASTY = 'p@ss "quoted" \\back\\slash\n$HOME {braces} ünï'


@pytest.fixture
def api(monkeypatch, tmp_path):
    server = RunPodAPI()
    monkeypatch.setenv("RUNPOD_API_BASE_URL", server.url)
    monkeypatch.setenv("RUNPOD_API_KEY", server.api_key)
    monkeypatch.chdir(tmp_path)  # .medasr-pod.json lands here
    yield server
    server.close()


def test_create_preserves_quoting(api, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", NASTY)
    spec = pods.PodSpec(env={"EXTRA": 'a"b\\c'})
    pod = pods.create(spec)
    sent = api.created[0]
    env = {e["key"]: e["value"] for e in sent["env"]}
    assert env["HF_TOKEN"] == NASTY and env["EXTRA"] == 'a"b\\c'  # arrived byte for byte
    assert sent["dockerArgs"] == spec.start_command() and "exec ./run.sh" in sent["dockerArgs"]
    assert sent["gpuTypeId"] == "NVIDIA A100 80GB PCIe" and sent["cloudType"] == "SECURE" and sent["volumeMountPath"] == "/workspace"
    assert pods.status(pod["id"])["desiredStatus"] == "RUNNING"


def test_unescaped_value_would_break_the_query(api):
    """Guard: the server really parses GraphQL, so the SDK without our escaping produces a syntax error."""
    import runpod
    from runpod import error

    runpod.api_key = api.api_key
    with pytest.raises(error.QueryError, match="Syntax Error"):
        runpod.create_pod(name="x", image_name="img", gpu_type_id="NVIDIA A100 80GB PCIe", env={"K": 'say "hi"'})


def test_up_needs_yes_then_creates(api):
    r = CliRunner()
    args = ["runpod", "up", "--repo", "https://example.invalid/medasr.git", "--max-usd", "10"]
    res = r.invoke(app, args)
    assert res.exit_code == 1 and "$1.64/h" in res.output and "add --yes" in res.output and not api.created
    assert "estimate:" in res.output and "≈ $" in res.output
    res = r.invoke(app, args + ["--yes"])
    assert res.exit_code == 0, res.output
    state = json.loads(Path(".medasr-pod.json").read_text())
    assert state["pod_id"] == "pod-1" and state["max_usd"] == 10 and state["price_per_hour"] == 1.64
    assert "HF_TOKEN" not in json.dumps(state)  # no secrets in the local state file
    res = r.invoke(app, ["runpod", "status"])
    assert res.exit_code == 0 and '"desiredStatus": "RUNNING"' in res.output and '"spent_usd": 1.64' in res.output
    assert r.invoke(app, ["runpod", "down"]).exit_code == 0 and api.pods["pod-1"]["desiredStatus"] == "EXITED"
    res = r.invoke(app, ["runpod", "up", "--repo", "x", "--gpu", "NVIDIA B999"])
    assert res.exit_code != 0


def test_watch_lifecycle(api):
    spec = pods.PodSpec()
    pod = pods.create(spec)
    state = {"pod_id": pod["id"], "max_usd": 100.0}
    api.uptime_s = 60
    # 1. the pod exited before the run was done: resume it
    pods.stop(pod["id"])
    assert pods.watch(spec, state, lambda: False, 100.0, max_iterations=1, sleep=lambda s: None) == "max_iterations"
    assert ("podResume", "pod-1") in api.calls and api.pods["pod-1"]["desiredStatus"] == "RUNNING"
    # 2. it exits again and the host has no free GPU: terminate and recreate on the same volume
    pods.stop(pod["id"])
    api.resume_gpus = 0
    pods.watch(spec, state, lambda: False, 100.0, max_iterations=1, sleep=lambda s: None)
    assert ("podTerminate", "pod-1") in api.calls and state["pod_id"] == "pod-2" and state["history"] == ["pod-1"]
    assert state["spent_before_usd"] > 0  # money spent on the first pod is carried over
    # 3. the budget cap stops the pod
    api.uptime_s = 3600 * 100
    assert pods.watch(spec, state, lambda: False, 5.0, max_iterations=3, sleep=lambda s: None) == "budget"
    assert api.pods["pod-2"]["desiredStatus"] == "EXITED" and state["stopped_for_budget"]
    # 4. a finished run stops the pod
    api.pods["pod-2"]["desiredStatus"] = "RUNNING"
    assert pods.watch(spec, state, lambda: True, 1e9, max_iterations=3, sleep=lambda s: None) == "done"
    assert api.pods["pod-2"]["desiredStatus"] == "EXITED"


def test_bad_key_is_a_clear_error(api, monkeypatch):
    from runpod import error

    monkeypatch.setenv("RUNPOD_API_KEY", "wrong")
    with pytest.raises(error.AuthenticationError):
        pods.status("pod-1")


def test_estimate_is_explained():
    from medasr.config import load_config
    from medasr.perf.flops import StepShape, train_step_flops

    e = pods.estimate_hours(max_steps=2000, batch_size=16)
    assert e["tokens"] == 2000 * 16 * (int(8.0 / 0.08) + 20 + 40)
    sizes = load_config("canary-qwen-2.5b-shapes").model.tiny
    step = train_step_flops(sizes, StepShape(16, 8.0, 20, 40), target_logits_only=True)["total"]
    assert e["tflop_per_step"] == round(step / 1e12, 2)
    assert e["train_hours"] == round(2000 * step / 60e12 / 3600, 2) == 0.22  # ~9 GFLOP per token, 5.1 M tokens
    # logits at all 160 positions instead of the 40 transcript ones: lm_head (2048 x 151,936) on 120 more per row
    full = train_step_flops(sizes, StepShape(16, 8.0, 20, 40))["total"]
    assert full - step == 2 * 2 * 16 * (160 - 1 - 40) * 2048 * 151936
    assert e["total_hours"] == e["train_hours"] + 0.5
    # the canary preset trains in 24,000-token batches: 150 rows of 8 s (160 tokens each) per step
    t = pods.estimate_hours(max_steps=2000, batch_size=16, batch_tokens=24000)
    assert t["assumptions"]["batch_size"] == 150 and t["tokens"] == 2000 * 150 * 160


@pytest.mark.slow
def test_run_sh_stops_its_own_pod_when_done(api, tiny_run, tmp_path):
    """The pod's start command: supervisor finds the run done, then run.sh stops this pod (billing stops)."""
    _, run_dir, _ = tiny_run
    pod = pods.create(pods.PodSpec())
    env = {k: v for k, v in os.environ.items() if k != "WANDB_SERVICE"} | {
        "RUNPOD_POD_ID": pod["id"], "MEDASR_RUN_DIR": str(run_dir), "MEDASR_PRESET": "tiny"}
    p = subprocess.Popen(["bash", str(REPO / "run.sh")], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         start_new_session=True)
    try:
        deadline = time.time() + 600
        while api.pods[pod["id"]]["desiredStatus"] != "EXITED" and time.time() < deadline and p.poll() is None:
            time.sleep(0.5)
        assert api.pods[pod["id"]]["desiredStatus"] == "EXITED"
        assert p.poll() is None  # run.sh never exits (an exit would make RunPod run the job again)
        assert json.loads((run_dir / "supervisor.json").read_text())["state"] == "done"
    finally:
        os.killpg(p.pid, signal.SIGKILL)
