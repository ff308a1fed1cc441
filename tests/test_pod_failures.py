"""Issue 22: a pod never burns money or loses work. Permanent errors stop the run (and the pod) after one attempt;
run.sh never loops; the pod enforces its own budget cap; all rehearsed with run.sh as a pod runs it, against the
local RunPod API server (tests/runpod_api.py) and S3 on loopback (moto)."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from medasr.config import load_config
from medasr.ops import pods
from medasr.ops.failures import is_transient
from medasr.ops.storage import remote_run_state
from runpod_api import RunPodAPI

REPO = Path(__file__).resolve().parent.parent
URI = "s3://medasr-test/pod-runs"


def test_errors_are_classified():
    class EndpointConnectionError(Exception):  # botocore's, matched by name
        pass

    class HfHubHTTPError(Exception):
        def __init__(self, code):
            self.response = type("R", (), {"status_code": code})()

    assert is_transient(ConnectionResetError()) and is_transient(TimeoutError())
    assert is_transient(EndpointConnectionError()) and is_transient(HfHubHTTPError(503)) and is_transient(HfHubHTTPError(429))
    try:
        try:
            raise ConnectionError("reset by peer")
        except ConnectionError as e:
            raise RuntimeError("download failed") from e
    except RuntimeError as wrapped:
        assert is_transient(wrapped)  # the cause decides
    assert not is_transient(HfHubHTTPError(404)) and not is_transient(ValueError("bad manifest row"))
    assert not is_transient(FileNotFoundError("no such dataset"))


def test_a_permanent_error_marks_the_run_failed_with_its_stage(tmp_path, monkeypatch):
    """Issue 22 item 1: only preflight, smoke and watchdog errors wrote FAILED; a bad dataset was retried 20 times."""
    from medasr.flywheel import run_flywheel

    cfg = load_config("tiny", [f"data.source=folder:{tmp_path / 'no-such-folder'}"])
    with pytest.raises(Exception):
        run_flywheel(cfg, tmp_path / "bad")
    failed = json.loads((tmp_path / "bad" / "FAILED").read_text())
    assert failed["stage"] == "build" and failed["kind"] == "permanent" and "no-such-folder" in failed["reason"]

    def flaky(*a, **k):
        raise ConnectionError("the hub reset the connection")

    monkeypatch.setattr("medasr.flywheel.build", flaky)
    with pytest.raises(ConnectionError):
        run_flywheel(load_config("tiny"), tmp_path / "flaky")
    assert not (tmp_path / "flaky" / "FAILED").exists()  # transient: the supervisor retries it


@pytest.fixture
def pod_env(s3_server, tmp_path, monkeypatch):
    api = RunPodAPI()
    monkeypatch.setenv("RUNPOD_API_BASE_URL", api.url)
    monkeypatch.setenv("RUNPOD_API_KEY", api.api_key)
    monkeypatch.chdir(tmp_path)
    pod = pods.create(pods.PodSpec(preset="tiny"))
    env = {k: v for k, v in os.environ.items() if k != "WANDB_SERVICE"} | {
        "RUNPOD_POD_ID": pod["id"], "MEDASR_PRESET": "tiny", "MEDASR_S3_URI": URI, "MEDASR_SETUP_CMD": "true",
        "WANDB_MODE": "offline", "MEDASR_GUARD_STATE": str(tmp_path / "guard-state"), "MEDASR_PYTHON": sys.executable,
        "MEDASR_GUARD_TICK_S": "1", "MEDASR_GUARD_BACKOFF_S": "0.2"}
    yield api, pod["id"], env
    api.close()


def _run_pod(api, pod_id, env, run_dir, until, timeout=600):
    """Start run.sh as RunPod would; wait until `until()` (or the pod stopped itself); run.sh must still be alive."""
    env = env | {"MEDASR_RUN_DIR": str(run_dir)}
    p = subprocess.Popen(["bash", str(REPO / "run.sh")], cwd=REPO, env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.time() + timeout
        while time.time() < deadline and p.poll() is None and not (until() and api.pods[pod_id]["desiredStatus"] == "EXITED"):
            time.sleep(0.5)
        assert p.poll() is None, "run.sh exited: RunPod would run the job again"
        assert api.pods[pod_id]["desiredStatus"] == "EXITED", "the pod did not stop itself"
    finally:
        os.killpg(p.pid, signal.SIGKILL)
        out = p.stdout.read().decode(errors="replace")
    return out


@pytest.mark.slow
def test_pod_with_a_bad_dataset_fails_once_syncs_and_stays_stopped(pod_env, tmp_path):
    api, pod_id, env = pod_env
    run_dir = tmp_path / "bad-data"
    env |= {"MEDASR_SET": f"data.source=folder:{tmp_path / 'missing'}\ntrain.max_steps=4",
            "MEDASR_RUN": "bad-data"}
    env["MEDASR_S3_URI"] = f"{URI}/bad-data"
    _run_pod(api, pod_id, env, run_dir, lambda: (run_dir / "FAILED").exists(), timeout=300)
    sup = json.loads((run_dir / "supervisor.json").read_text())
    assert sup["state"] == "failed" and sup["restarts"] == 0 and "permanent error in build" in sup["reason"]
    assert remote_run_state(f"{URI}/bad-data", 4) == "failed"  # synced before the pod stopped
    state = {"pod_id": pod_id}
    assert pods.watch(pods.PodSpec(), state, lambda: remote_run_state(f"{URI}/bad-data", 4), 100.0,
                      max_iterations=3, sleep=lambda s: None) == "failed"
    assert ("podResume", pod_id) not in api.calls and api.pods[pod_id]["desiredStatus"] == "EXITED"


@pytest.mark.slow
def test_pod_whose_setup_fails_marks_failed_and_stops_instead_of_looping(pod_env, tmp_path):
    """Issue 22 item 2: run.sh slept 300 s and exited, RunPod restarted it, forever, billing the GPU."""
    api, pod_id, env = pod_env
    run_dir = tmp_path / "no-setup"
    env |= {"MEDASR_SETUP_CMD": "false", "MEDASR_S3_URI": f"{URI}/no-setup"}
    _run_pod(api, pod_id, env, run_dir, lambda: (run_dir / "FAILED").exists(), timeout=120)
    failed = json.loads((run_dir / "FAILED").read_text())
    assert failed["stage"] == "setup" and failed["kind"] == "permanent"
    assert remote_run_state(f"{URI}/no-setup", 4) == "failed"  # pushed by curl (SigV4) before any Python exists


@pytest.mark.slow
def test_pod_stops_itself_at_its_budget_with_no_watcher(pod_env, tmp_path):
    """Issue 22 item 4: the cap lived only in `runpod watch` on the user's machine. At $360/h the pod's $3 cap is
    30 s of its own time: it is reached mid-run, the flywheel is stopped, BUDGET synced, the pod stopped."""
    api, pod_id, env = pod_env
    run_dir = tmp_path / "budget"
    env |= {"MEDASR_PRICE_PER_HOUR": "360", "MEDASR_MAX_USD": "3", "MEDASR_CONTAINER_START": f"{time.time():.0f}",
            "MEDASR_S3_URI": f"{URI}/budget", "MEDASR_SET": "ops.heartbeat_s=1"}
    _run_pod(api, pod_id, env, run_dir, lambda: (run_dir / "BUDGET").exists(), timeout=300)
    budget = json.loads((run_dir / "BUDGET").read_text())
    # the supervisor stops a margin before the cap (a tenth of it here), so the guard's hard stop is not needed
    assert budget["max_usd"] == 3 and 2.7 <= budget["spent_usd"] < 3 and budget["by"] == "supervisor"
    assert json.loads((run_dir / "supervisor.json").read_text())["state"] == "budget"
    assert not (run_dir / "summary.json").exists()  # stopped mid-run
    assert remote_run_state(f"{URI}/budget", 300) == "budget"
    sessions = list((run_dir / "spend").glob("*.session"))
    assert len(sessions) == 1 and sessions[0].name == f"{pod_id}-{env['MEDASR_CONTAINER_START']}.session"


@pytest.mark.slow
def test_pod_killed_mid_training_resumes_to_done_syncs_and_stops(pod_env, tiny_run, tmp_path):
    """A transient failure (the flywheel SIGKILLed mid-training, as an OOM kill does) is retried by the supervisor,
    resumes from the last checkpoint to done, is synced to S3, and the pod stops itself (the clean path's ending).
    The finished tiny run is raised by 40 steps so the kill lands in training without a whole run's time."""
    api, pod_id, env = pod_env
    _, done_dir, _ = tiny_run
    run_dir = tmp_path / "killed"
    shutil.copytree(done_dir, run_dir, symlinks=True)
    (run_dir / "supervisor.json").unlink(missing_ok=True)
    old = json.loads((run_dir / "train/DONE").read_text())["global_step"]
    env |= {"MEDASR_SET": f"train.max_steps={old + 40}\ntrain.smoke_steps=0\ntrain.ckpt_every_n_steps=10",
            "MEDASR_S3_URI": f"{URI}/killed"}
    killed, reasons = [], set()

    def kill_once_then_done():
        try:
            sup = json.loads((run_dir / "supervisor.json").read_text())
            progress = json.loads((run_dir / "train/progress.json").read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return False
        reasons.add(sup.get("reason"))
        if not killed and progress["pid"] == sup.get("child_pid") and progress["global_step"] >= old + 15:
            killed.append(progress["global_step"])
            os.killpg(sup["child_pid"], signal.SIGKILL)  # no chance to save
        return sup.get("state") == "done"

    _run_pod(api, pod_id, env, run_dir, kill_once_then_done, timeout=600)
    sup = json.loads((run_dir / "supervisor.json").read_text())
    assert killed and sup["state"] == "done" and sup["restarts"] == 1
    assert any(r and r.startswith("transient: killed by signal 9") for r in reasons), reasons
    starts = [json.loads(x)["start_step"] for x in (run_dir / "train/resume_log.jsonl").read_text().splitlines()]
    assert killed[0] - 10 <= starts[-1] <= killed[0]  # resumed from the last checkpoint: at most 10 steps lost
    assert json.loads((run_dir / "train/DONE").read_text())["global_step"] == old + 40
    assert remote_run_state(f"{URI}/killed", old + 40) == "done"  # synced before the pod stopped
