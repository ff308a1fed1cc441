"""RunPod client code (the official SDK + our escaping and lifecycle logic) against a local server speaking its API."""

import base64
import gzip
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
    assert gzip.decompress(base64.b64decode(env["MEDASR_GUARD_B64"])) == (REPO / "scripts/pod_guard.sh").read_bytes()
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
    _watch(spec, state, n=3)
    assert ("podTerminate", "pod-1") not in api.calls and api.pods["pod-1"]["desiredStatus"] == "EXITED"
    assert state["no_gpu"] == 3
    # ... once the work is safe (network volume or a current checkpoint on S3): terminate and recreate
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
    """FAILED on S3 (a permanent error; the pod stopped itself) used to be ignored, and the watcher
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
    """Spend was price x uptime of the current session; if uptime starts again on resume, the cap
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
    """Any exception from resume terminated the pod (deleting a non-network volume) and recreated it;
    a failed create then crashed the watcher holding a terminated pod's id. Three resume errors of
    any kind still led to terminate + recreate; only RunPod's "no free GPU" answers may count towards that."""
    spec = pods.PodSpec()
    pod = pods.create(spec)
    pods.stop(pod["id"])
    state = {"pod_id": pod["id"]}
    for kind in ("graphql", "html502", "http500", "429", "drop", "graphql"):  # transient, six in a row
        api.fail("podResume", kind)
    _watch(spec, state, n=6, safe=True)
    assert [c for c in api.calls if c[0] == "podTerminate"] == [] and state.get("no_gpu", 0) == 0
    _watch(spec, state)  # the seventh attempt succeeds: the same pod runs on
    assert api.pods[pod["id"]]["desiredStatus"] == "RUNNING"
    pods.stop(pod["id"])
    api.fail("podResume", "nogpu", n=3)  # RunPod's own "not enough free GPUs on the host machine"
    _watch(spec, state, n=2, safe=True)
    assert [c for c in api.calls if c[0] == "podTerminate"] == [] and state["no_gpu"] == 2
    api.fail("create", "nogpu")  # the third: replace (work safe), and the first create finds no capacity
    _watch(spec, state, safe=True)
    assert state["pod_id"] is None and state["replacing"] == pod["id"] and pod["id"] not in api.pods
    assert json.loads(Path(".medasr-pod.json").read_text())["pod_id"] is None  # a new watcher would not use it
    _watch(spec, state)
    assert state["pod_id"] in api.pods and "replacing" not in state


@pytest.fixture
def short_sdk_timeout(monkeypatch):
    """runpod-python posts with a fixed 30 s timeout; the stand-in's late answers come after 3 s, so the SDK's
    requests time out after 1 s here (the same requests.exceptions.ReadTimeout, sooner)."""
    import requests
    from runpod.api import graphql

    real = requests.post
    monkeypatch.setattr(graphql.requests, "post", lambda *a, **k: real(*a, **(k | {"timeout": 1})))


def test_watch_survives_api_errors_and_stops_on_a_refused_key(api, monkeypatch, short_sdk_timeout):
    """One HTML 502 from the API killed `medasr runpod watch` (the SDK calls .json() on the body).
    Every transient failure mode is now logged and retried at the next check; a 401 ends the watch with a message."""
    spec = pods.PodSpec()
    pod = pods.create(spec)
    state = {"pod_id": pod["id"]}
    for kind in ("html502", "429", "http500", "timeout", "drop", "graphql"):
        api.fail("pod", kind, n=4)  # each outlasts _call's own 4 attempts: the whole check fails, the watch goes on
        assert _watch(spec, state, n=1) == "max_iterations", kind
        assert state["api_failures"] >= 1
    assert _watch(spec, state, "done", n=1) == "done" and api.pods[pod["id"]]["desiredStatus"] == "EXITED"
    pods.resume(pod["id"], 1)
    monkeypatch.setenv("RUNPOD_API_KEY", "revoked")
    res = CliRunner().invoke(app, ["runpod", "status", "--pod-id", pod["id"]])
    assert res.exit_code == 2 and "RUNPOD_API_KEY" in res.output and "Traceback" not in res.output
    assert _watch(spec, state, n=5) == "api_error"


def test_stop_is_verified_and_a_failed_stop_is_never_reported_done(api):
    """A stop is done when the API reports the pod EXITED; failures are retried
    with backoff, and a stop that keeps failing is raised, not printed as done; at the cap the watcher keeps trying."""
    spec = pods.PodSpec()
    pod = pods.create(spec)
    for kind in ("graphql", "html502", "429"):
        api.fail("podStop", kind)
    pods.stop(pod["id"], sleep=lambda s: None)
    assert api.pods[pod["id"]]["desiredStatus"] == "EXITED"
    assert [c[2] for c in api.calls if c[0] == "failed"] == ["graphql", "html502", "429"]
    pods.resume(pod["id"], 1)
    api.fail("podStop", "http500", n=100)
    with pytest.raises(pods.TransientAPIError, match="could not podStop"):
        pods.stop(pod["id"], attempts=3, sleep=lambda s: None)
    api.uptime_s = 3600 * 100  # over the cap: the watcher must not claim "budget" while the pod still runs
    state = {"pod_id": pod["id"]}
    assert _watch(spec, state, max_usd=5.0, n=2) == "max_iterations" and not state.get("stopped_for_budget")
    api.failures.clear()
    assert _watch(spec, state, max_usd=5.0) == "budget" and api.pods[pod["id"]]["desiredStatus"] == "EXITED"


def test_a_pod_that_never_progresses_is_not_resumed_forever(api):
    """A pod whose setup fails every time and cannot tell S3 (a broken key, an S3 outage) stops itself; the watcher
    resumes it, it stops again... Three resumes with nothing new on S3 and the watcher leaves it stopped."""
    spec = pods.PodSpec()
    pod = pods.create(spec)
    state = {"pod_id": pod["id"]}
    token = ["t0"]

    def check():
        pods.stop(pod["id"])
        return pods.watch(spec, state, lambda: "running", 100.0, max_iterations=1, sleep=lambda s: None,
                          progress=lambda: token[0])

    for _ in range(3):
        assert check() == "max_iterations"
    token[0] = "t1"  # it got somewhere: the count starts again
    for _ in range(3):
        assert check() == "max_iterations"
    assert check() == "stuck" and api.pods[pod["id"]]["desiredStatus"] == "EXITED"
    assert sum(c == ("podResume", pod["id"]) for c in api.calls) == 6


def test_replacement_is_priced_today_and_told_the_spend_so_far(api):
    """Replacement pods reused the price `up` saw; the replacement's guard also starts from the run's
    spend so far (MEDASR_SPENT_BEFORE_USD), so its own cap counts what earlier pods cost."""
    from runpod_api import GPUS

    spec = pods.PodSpec(env={"MEDASR_MAX_USD": "40.00", "MEDASR_PRICE_PER_HOUR": "1.6400"})
    pod = pods.create(spec)
    state = {"pod_id": pod["id"]}
    api.uptime_s = 2 * 3600
    pods.stop(pod["id"])
    api.resume_gpus = 0
    GPUS["NVIDIA A100 80GB PCIe"]["securePrice"] = 1.99  # the price moved since `up`
    try:
        _watch(spec, state, n=3, safe=True)
    finally:
        GPUS["NVIDIA A100 80GB PCIe"]["securePrice"] = 1.64
    env = {e["key"]: e["value"] for e in api.created[-1]["env"]}
    assert state["pod_id"] == "pod-2" and env["MEDASR_PRICE_PER_HOUR"] == "1.9900" and state["price_per_hour"] == 1.99
    assert float(env["MEDASR_SPENT_BEFORE_USD"]) == pytest.approx(2 * 1.64, abs=0.01)
    assert env["MEDASR_MAX_USD"] == "40.00" and "MEDASR_GUARD_B64" in env


def test_a_terminated_pod_is_recreated_only_when_its_work_is_safe(api):
    spec = pods.PodSpec()
    pod = pods.create(spec)
    pods.terminate(pod["id"])  # from the console, say
    state = {"pod_id": pod["id"]}
    assert _watch(spec, state, n=3) == "pod_gone" and len(api.created) == 1
    assert _watch(spec, state, safe=True) == "max_iterations" and state["pod_id"] == "pod-2"


def test_cloud_all_is_priced_at_the_higher_price_and_ssh_opens_22(api):
    """Cloud type ALL was priced at the community price, though the pod may land on secure; --ssh
    started sshd but exposed no port."""
    assert pods.hourly_price(pods.PodSpec(cloud_type="ALL")) == 1.64
    assert pods.hourly_price(pods.PodSpec(cloud_type="COMMUNITY")) == 1.19
    pods.create(pods.PodSpec(ssh=True))
    assert api.created[-1]["ports"] == "22/tcp" and api.created[-1]["startSsh"] is True


def test_up_gives_each_run_its_own_s3_prefix(api, monkeypatch):
    """A pod restores whatever its S3 prefix holds: two runs under one MEDASR_S3_URI would resume each other. `up`
    gives the pod MEDASR_S3_URI/<run name>, and watch and logs read that prefix from the state file."""
    monkeypatch.setenv("MEDASR_S3_URI", "s3://bucket/medasr/")
    res = CliRunner().invoke(app, ["runpod", "up", "--repo", "x", "--yes", "--run-name", "cq-lr1e-4"])
    assert res.exit_code == 0, res.output
    env = {e["key"]: e["value"] for e in api.created[-1]["env"]}
    assert env["MEDASR_S3_URI"] == "s3://bucket/medasr/cq-lr1e-4"
    assert json.loads(Path(".medasr-pod.json").read_text())["s3_uri"] == "s3://bucket/medasr/cq-lr1e-4"


def test_up_passes_overrides_torch_index_budget_and_ssh(api):
    """--set and --torch-index reach the pod; the pod knows its price and cap; SSH only when asked
    (dockerArgs replaces the image's start script, which is what starts sshd)."""
    res = CliRunner().invoke(app, ["runpod", "up", "--repo", "https://example.invalid/m.git", "--yes", "--max-usd", "40",
                                   "--set", "train.max_steps=500", "--set", "train.optimizer.lr=1e-4",
                                   "--torch-index", "https://download.pytorch.org/whl/cu128", "--ssh"])
    assert res.exit_code == 0, res.output
    sent = api.created[0]
    env = {e["key"]: e["value"] for e in sent["env"]}
    assert env["MEDASR_SET"] == "train.max_steps=500\ntrain.optimizer.lr=1e-4"
    assert env["MEDASR_TORCH_INDEX"] == "https://download.pytorch.org/whl/cu128"
    assert env["MEDASR_MAX_USD"] == "40.00" and env["MEDASR_PRICE_PER_HOUR"] == "1.6400"
    assert sent["startSsh"] is True and "/start.sh" in sent["dockerArgs"]
    assert sent["allowedCudaVersions"] == ["12.8", "12.9", "13.0"]  # hosts whose driver runs the cu128 torch and image
    assert json.loads(Path(".medasr-pod.json").read_text())["overrides"] == ["train.max_steps=500", "train.optimizer.lr=1e-4"]
    bad = CliRunner().invoke(app, ["runpod", "up", "--repo", "x", "--set", "train.max_step=5"])
    assert bad.exit_code != 0 and len(api.created) == 1  # a typo is refused here, not on a billed pod
    plain = pods.PodSpec()
    assert "/start.sh" not in plain.start_command()
    assert CliRunner().invoke(app, ["runpod", "up", "--repo", "x", "--yes"]).exit_code == 0
    assert api.created[-1]["allowedCudaVersions"] == ["13.0"]  # PyPI's torch 2.13.0 is a CUDA 13.0 build
    odd = CliRunner().invoke(app, ["runpod", "up", "--repo", "x", "--yes", "--torch-index", "https://example.invalid/whl"])
    assert odd.exit_code == 2 and "/cuXYZ" in odd.output and len(api.created) == 2


def test_bad_key_is_a_clear_error(api, monkeypatch):
    monkeypatch.setenv("RUNPOD_API_KEY", "wrong")
    with pytest.raises(pods.PodError, match="check RUNPOD_API_KEY") as e:
        pods.status("pod-1")
    assert not isinstance(e.value, pods.TransientAPIError)  # a 401 is not retried


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
    # Parakeet's full fine-tune counts its own model (it was priced as the SALM)
    a = pods.estimate_hours(max_steps=2000, batch_size=16, kind="asr")
    assert a["tflop_per_step"] == round(16 * (6 * 0.6e9 * 100 + 6 * 100 * 41 * 640 * 1029) / 1e12, 2) != e["tflop_per_step"]


def test_s3_errors_under_the_watcher_are_retried_or_end_it_clearly(api):
    """The watcher reads "done/failed/budget" from S3: a network error there is retried at the next check, an access
    error ends the watch with its reason (the pod's own guard still holds the cap)."""
    class EndpointConnectionError(Exception):  # botocore's, matched by name
        pass

    class AccessDenied(Exception):
        response = {"Error": {"Code": "AccessDenied"}, "ResponseMetadata": {"HTTPStatusCode": 403}}

    spec = pods.PodSpec()
    state = {"pod_id": pods.create(spec)["id"]}
    answers = iter([EndpointConnectionError("Could not connect"), "running", AccessDenied("denied")])

    def run_state():
        a = next(answers)
        if isinstance(a, Exception):
            raise a
        return a

    assert pods.watch(spec, state, run_state, 100.0, max_iterations=2, sleep=lambda s: None) == "max_iterations"
    assert state["api_failures"] == 0  # the second check succeeded
    assert pods.watch(spec, state, run_state, 100.0, max_iterations=2, sleep=lambda s: None) == "s3_error"


def test_a_failed_terminate_is_retried_before_the_replacement_is_created(api):
    """Found in review: the state dropped the old pod's id before terminating it; a terminate that failed was never
    retried, and the old pod with its volume stayed, billed, once the replacement existed."""
    spec = pods.PodSpec()
    pod = pods.create(spec)
    pods.stop(pod["id"])
    state = {"pod_id": pod["id"]}
    api.resume_gpus = 0
    _watch(spec, state, n=2, safe=True)
    api.fail("podTerminate", "http500", n=4)  # outlasts one check's attempts
    _watch(spec, state, safe=True)
    assert state["pod_id"] is None and state["replacing"] == pod["id"] and pod["id"] in api.pods and len(api.created) == 1
    api.resume_gpus = None
    _watch(spec, state, safe=True)
    assert pod["id"] not in api.pods and state["pod_id"] == "pod-2" and "replacing" not in state
