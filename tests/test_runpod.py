"""RunPod client code (the official SDK + our escaping and lifecycle logic) against a local server speaking its API."""

import json
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


def _watch(spec, state, verdict="running", max_usd=100.0, n=1, safe=False):
    return pods.watch(spec, state, lambda: verdict, max_usd, max_iterations=n, sleep=lambda s: None,
                      work_is_safe=lambda: safe)


def test_watch_lifecycle(api):
    spec = pods.PodSpec()
    pod = pods.create(spec)
    state = {"pod_id": pod["id"], "max_usd": 100.0}
    api.uptime_s = 60
    # 1. the pod exited before the run was done: resume it
    pods.stop(pod["id"])
    assert _watch(spec, state) == "max_iterations"
    assert ("podResume", "pod-1") in api.calls and api.pods["pod-1"]["desiredStatus"] == "RUNNING"
    # 2. it exits again and its host has no free GPU; the volume holds unsynced work: stopped, retried, not terminated
    pods.stop(pod["id"])
    api.resume_gpus = 0
    _watch(spec, state)
    assert ("podTerminate", "pod-1") not in api.calls and api.pods["pod-1"]["desiredStatus"] == "EXITED"
    # ... once the work is safe (network volume or a verified checkpoint on S3): terminate and recreate
    _watch(spec, state, safe=True)
    assert ("podTerminate", "pod-1") in api.calls and state["pod_id"] == "pod-2" and state["history"] == ["pod-1"]
    # 3. the budget cap stops the pod
    api.resume_gpus = None
    api.uptime_s = 3600 * 100
    assert _watch(spec, state, max_usd=5.0, n=3) == "budget"
    assert api.pods["pod-2"]["desiredStatus"] == "EXITED" and state["stopped_for_budget"]
    # 4. a finished run stops the pod
    api.pods["pod-2"]["desiredStatus"] = "RUNNING"
    assert _watch(spec, state, "done", 1e9, n=3) == "done"
    assert api.pods["pod-2"]["desiredStatus"] == "EXITED"


def test_watch_never_resumes_a_failed_or_budget_run(api):
    """Issue 22 item 3: FAILED on S3 (a permanent error; the pod stopped itself) used to be ignored, and the watcher
    resumed the pod at every interval."""
    spec = pods.PodSpec()
    for verdict in ("failed", "budget"):
        pod = pods.create(spec)
        pods.stop(pod["id"])
        state = {"pod_id": pod["id"]}
        assert _watch(spec, state, verdict, n=5) == verdict and state["finished"] == verdict
        assert ("podResume", pod["id"]) not in api.calls and api.pods[pod["id"]]["desiredStatus"] == "EXITED"
        running = pods.create(spec)  # still running when its FAILED lands on S3: stopped
        assert _watch(spec, {"pod_id": running["id"]}, verdict) == verdict
        assert api.pods[running["id"]]["desiredStatus"] == "EXITED"


def test_spend_counts_every_session_and_survives_a_watcher_restart(api):
    """Issue 22 item 4: spend was price x uptime of the current session; if uptime starts again on resume, the cap
    never trips. The ledger banks each session (and lives in a file, so a new watcher continues the count)."""
    spec = pods.PodSpec()
    pod = pods.create(spec)  # $1.64/h
    state = {"pod_id": pod["id"]}
    api.uptime_s = 3 * 3600  # 3 h: $4.92
    assert _watch(spec, state, max_usd=10.0) == "max_iterations" and state["spent_usd"] == pytest.approx(4.92)
    pods.stop(pod["id"])
    _watch(spec, state, max_usd=10.0)  # resumed: uptime starts again (the test server's default)
    assert api.uptime_s == 0 and ("podResume", pod["id"]) in api.calls
    api.uptime_s = 60  # the next check, a minute later
    _watch(spec, state, max_usd=10.0)
    api.uptime_s = 3 * 3600  # another 3 h: $9.84 in all, still under the cap ...
    _watch(spec, state, max_usd=10.0)
    assert state["spent_usd"] == pytest.approx(9.84)
    pods.stop(pod["id"])
    _watch(spec, state, max_usd=10.0)
    api.uptime_s = 600  # ... and the third session crosses it, counted by a new watcher process (the ledger file)
    assert _watch(spec, dict(state), max_usd=10.0) == "budget"
    assert json.loads(Path(".medasr-spend.json").read_text())[pod["id"]]["sessions"] == 3
    assert pods.spent_usd(pods.status(pod["id"])) == pytest.approx(1.64 / 6)  # what the old count saw: $0.27


def test_spend_is_not_counted_twice_when_uptime_is_cumulative(api, tmp_path):
    from medasr.ops.spend import WatchLedger

    api.uptime_resets_on_resume = False
    spec = pods.PodSpec()
    pod = pods.create(spec)
    state, ledger = {"pod_id": pod["id"]}, WatchLedger(tmp_path / "ledger.json")
    api.uptime_s = 3600
    pods.watch(spec, state, lambda: "running", 100.0, max_iterations=1, sleep=lambda s: None, ledger=ledger)
    pods.stop(pod["id"])
    pods.watch(spec, state, lambda: "running", 100.0, max_iterations=1, sleep=lambda s: None, ledger=ledger)
    api.uptime_s = 7200  # one more hour on a counter that carried on
    pods.watch(spec, state, lambda: "running", 100.0, max_iterations=1, sleep=lambda s: None, ledger=ledger)
    assert state["spent_usd"] == pytest.approx(2 * 1.64)


def test_resume_failures_are_retried_and_a_failed_create_keeps_the_watch_going(api):
    """Issue 22 item 5: any exception from resume terminated the pod (deleting a non-network volume) and recreated it;
    a failed create then crashed the watcher holding a terminated pod's id."""
    spec = pods.PodSpec()
    pod = pods.create(spec)
    pods.stop(pod["id"])
    state = {"pod_id": pod["id"]}
    api.fail_resume = 2
    _watch(spec, state, n=2)
    assert [c for c in api.calls if c[0] == "podTerminate"] == [] and state["resume_failures"] == 2
    _watch(spec, state)  # the third attempt succeeds: the same pod runs on
    assert api.pods[pod["id"]]["desiredStatus"] == "RUNNING" and state["resume_failures"] == 0
    pods.stop(pod["id"])
    api.resume_gpus, api.fail_create = 0, 1  # no GPU, work safe, and the first create fails
    _watch(spec, state, safe=True)
    assert state["pod_id"] is None and state["replacing"] == pod["id"] and pod["id"] not in api.pods
    assert json.loads(Path(".medasr-pod.json").read_text())["pod_id"] is None  # a new watcher would not use it
    api.resume_gpus = None
    _watch(spec, state)
    assert state["pod_id"] in api.pods and "replacing" not in state


def test_up_passes_overrides_torch_index_budget_and_ssh(api):
    """Issue 22 item 6: --set and --torch-index reach the pod; the pod knows its price and cap; SSH only when asked
    (dockerArgs replaces the image's start script, which is what starts sshd)."""
    res = CliRunner().invoke(app, ["runpod", "up", "--repo", "https://example.invalid/m.git", "--yes", "--max-usd", "40",
                                   "--set", "train.max_steps=500", "--set", "train.lr=1e-4",
                                   "--torch-index", "https://download.pytorch.org/whl/cu128", "--ssh"])
    assert res.exit_code == 0, res.output
    sent = api.created[0]
    env = {e["key"]: e["value"] for e in sent["env"]}
    assert env["MEDASR_SET"] == "train.max_steps=500\ntrain.lr=1e-4"
    assert env["MEDASR_TORCH_INDEX"] == "https://download.pytorch.org/whl/cu128"
    assert env["MEDASR_MAX_USD"] == "40.00" and env["MEDASR_PRICE_PER_HOUR"] == "1.6400"
    assert sent["startSsh"] is True and "/start.sh" in sent["dockerArgs"]
    assert sent["allowedCudaVersions"] == ["12.8", "12.9", "13.0"]  # hosts whose driver runs the cu128 torch and image
    assert json.loads(Path(".medasr-pod.json").read_text())["overrides"] == ["train.max_steps=500", "train.lr=1e-4"]
    bad = CliRunner().invoke(app, ["runpod", "up", "--repo", "x", "--set", "train.max_step=5"])
    assert bad.exit_code != 0 and len(api.created) == 1  # a typo is refused here, not on a billed pod
    plain = pods.PodSpec()
    assert "/start.sh" not in plain.start_command()
    assert CliRunner().invoke(app, ["runpod", "up", "--repo", "x", "--yes"]).exit_code == 0
    assert api.created[-1]["allowedCudaVersions"] == ["13.0"]  # PyPI's torch 2.13.0 is a CUDA 13.0 build
    odd = CliRunner().invoke(app, ["runpod", "up", "--repo", "x", "--yes", "--torch-index", "https://example.invalid/whl"])
    assert odd.exit_code == 2 and "/cuXYZ" in odd.output and len(api.created) == 2


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
    # Parakeet's full fine-tune counts its own model (issue 22 item 6: it was priced as the SALM)
    a = pods.estimate_hours(max_steps=2000, batch_size=16, kind="asr")
    assert a["tflop_per_step"] == round(16 * (6 * 0.6e9 * 100 + 6 * 100 * 41 * 640 * 1029) / 1e12, 2) != e["tflop_per_step"]
