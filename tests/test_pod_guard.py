"""The pod's own safety, outside Python — scripts/pod_guard.sh (the wall-clock guard and the verified stop),
run.sh and the pod's start command — against the RunPod API stand-in (tests/runpod_api.py), which fails as the real
API fails and stops a container as Docker does (SIGTERM to its PID 1, SIGKILL after a grace), and the S3 stand-in
(tests/s3_standin.py), which verifies every signature with botocore's signer. No training here: setup is a stand-in
command, so each test takes seconds."""

import base64
import gzip
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from medasr.ops import pods
from medasr.ops.spend import PodLedger
from medasr.ops.storage import remote_run_state
from runpod_api import RunPodAPI

REPO = Path(__file__).resolve().parent.parent
GUARD = REPO / "scripts" / "pod_guard.sh"
URI = "s3://medasr-test/guard-runs"


@pytest.fixture
def pod(s3_server, tmp_path, monkeypatch):
    api = RunPodAPI()
    api.stop_grace_s = 5.0
    monkeypatch.setenv("RUNPOD_API_BASE_URL", api.url)
    monkeypatch.setenv("RUNPOD_API_KEY", api.api_key)
    pod_id = pods.create(pods.PodSpec(preset="tiny"))["id"]
    env = {k: v for k, v in os.environ.items() if k != "WANDB_SERVICE"} | {
        "RUNPOD_POD_ID": pod_id, "MEDASR_PRESET": "tiny", "MEDASR_GUARD_STATE": str(tmp_path / "guard-state"),
        "MEDASR_RUN_DIR": str(tmp_path / "run"), "MEDASR_PYTHON": sys.executable, "MEDASR_GUARD_TICK_S": "0.5",
        "MEDASR_GUARD_BACKOFF_S": "0.2", "MEDASR_GUARD_BACKOFF_MAX_S": "1", "MEDASR_API_TIMEOUT_S": "1"}
    yield api, pod_id, env, tmp_path / "run"
    api.close()


def _start(cmd, env, api=None, pod_id=None, cwd=REPO):
    p = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    if api is not None:
        api.containers[pod_id] = p.pid  # the container's main process, as `exec ./run.sh` makes it
    return p


def _finish(p, timeout):
    try:
        out, _ = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        out, _ = p.communicate()
        raise AssertionError(f"still running after {timeout}s:\n{out.decode(errors='replace')}")
    finally:
        try:
            os.killpg(p.pid, signal.SIGKILL)  # the guard's loop, left behind in the group
        except ProcessLookupError:
            pass
    return out.decode(errors="replace")


def test_a_failed_self_stop_is_retried_until_it_holds(pod):
    """`run.sh`'s stop ignored HTTP errors and GraphQL errors inside a 200, printed that the pod had
    stopped, and slept forever while it billed. Each failure mode now is logged and retried; "stopped" is printed only
    once the API reports the pod EXITED, and RunPod's SIGTERM then ends run.sh."""
    api, pod_id, env, run_dir = pod
    api.delay_s = 3.0  # the "timeout" answer comes after the guard's 1 s curl timeout
    for kind in ("graphql", "html502", "http500", "429", "timeout", "drop"):
        api.fail("podStop", kind)
    p = _start(["bash", str(REPO / "run.sh")], env | {"MEDASR_SETUP_CMD": "false"}, api, pod_id)
    out = _finish(p, 60)
    assert p.returncode == 0 and api.pods[pod_id]["desiredStatus"] == "EXITED", out
    failures = [line for line in out.splitlines() if "podStop failed" in line]
    assert len(failures) == 6 and "GraphQL error" in failures[0] and "HTTP 502" in failures[1], out
    assert "HTTP 500" in failures[2] and "HTTP 429" in failures[3] and "timed out" in failures[4], out
    # the late answer to the timed-out call was applied after all (as a real one may be): RunPod's SIGTERM arrived
    # before the guard read the state back; either way nothing said "stopped" before the pod was
    ended = out.index("stopped (verified: EXITED)") if "stopped (verified" in out else out.index("TERM received")
    assert all(out.index(f) < ended for f in failures)
    assert json.loads((run_dir / "FAILED").read_text())["stage"] == "setup"


def test_the_guard_stops_a_pod_whose_setup_hangs(pod):
    """Nothing counted time before `medasr supervise` started, so a hung setup (or git pull) billed
    without end. The guard counts from the container's start: at $3600/h a $4 cap is 4 s of pod time; it writes BUDGET,
    pushes it to S3 (no venv needed), stops the pod; RunPod's SIGTERM reaches run.sh, which ends the setup."""
    api, pod_id, env, run_dir = pod
    env |= {"MEDASR_SETUP_CMD": "sleep 600", "MEDASR_PRICE_PER_HOUR": "3600", "MEDASR_MAX_USD": "4",
            "MEDASR_S3_URI": f"{URI}/hung"}
    t0 = time.time()
    p = _start(["bash", str(REPO / "run.sh")], env, api, pod_id)
    out = _finish(p, 60)
    took = time.time() - t0
    assert api.pods[pod_id]["desiredStatus"] == "EXITED" and p.returncode == 143, out
    assert 3 <= took < 15, took  # counted from the start second (date +%s): at most 1 s early
    budget = json.loads((run_dir / "BUDGET").read_text())
    assert budget["by"] == "guard" and budget["spent_usd"] >= 4
    assert remote_run_state(f"{URI}/hung", 4) == "budget"  # the watcher will not resume it
    log = (run_dir / "guard.log").read_text()
    assert "budget cap reached" in log and "stopping pod" in log
    assert not subprocess.run(["pgrep", "-f", "sleep 600"], capture_output=True).stdout  # the setup is gone too


def test_stop_refused_on_a_network_volume_terminates_and_otherwise_keeps_trying(pod):
    """Stop is refused (RunPod once refused podStop for pods with a network volume, runpod/docs pull 629): with the
    pod's data on a network volume the guard terminates it after three refusals; without one it never terminates
    (that would delete the volume's work) and keeps retrying, saying why."""
    api, pod_id, env, _ = pod
    api.fail("podStop", "refused", n=100)
    p = _start(["bash", str(GUARD), "stop", "test"], env)
    time.sleep(6)
    assert p.poll() is None and api.pods[pod_id]["desiredStatus"] == "RUNNING"
    os.killpg(p.pid, signal.SIGKILL)
    out = p.communicate()[0].decode()
    assert out.count("podStop failed") >= 4 and "terminating" not in out and ("podTerminate", pod_id) not in api.calls
    p = _start(["bash", str(GUARD), "stop", "test"], env | {"MEDASR_NETWORK_VOLUME_ID": "vol-1"})
    out = _finish(p, 30)
    assert p.returncode == 0 and pod_id not in api.pods and "network volume vol-1 (kept): terminating instead" in out


def test_the_guard_and_the_supervisor_count_the_same_spend(tmp_path):
    """Both read RUN/spend/: this pod's sessions (the current one up to now) + the larger of the other pods' sessions
    (restored from S3) and MEDASR_SPENT_BEFORE_USD (the watcher's count when it recreated the pod)."""
    spend = tmp_path / "run" / "spend"
    spend.mkdir(parents=True)
    now = int(time.time())
    (spend / f"pod-old-{now - 9000}.session").write_text(f"{now - 9000} {now - 5400} 1.64 pod-old\n")  # 1 h at 1.64
    (spend / f"pod-new-{now - 3600}.session").write_text(f"{now - 3600} {now - 2000} 2.0 pod-new\n")  # an earlier session
    start = now - 600  # this container: 10 min at $2/h, its file a few seconds stale
    (spend / f"pod-new-{start}.session").write_text(f"{start} {now - 5} 2.0 pod-new\n")
    env = os.environ | {"MEDASR_RUN_DIR": str(tmp_path / "run"), "RUNPOD_POD_ID": "pod-new", "MEDASR_CONTAINER_START":
                        str(start), "MEDASR_PRICE_PER_HOUR": "2.0", "MEDASR_GUARD_STATE": str(tmp_path / "gs")}
    env.pop("RUNPOD_API_KEY", None)
    for before, others in ((0.0, 1.64), (5.0, 5.0)):
        bash = float(subprocess.run(["bash", str(GUARD), "spent"], env=env | {"MEDASR_SPENT_BEFORE_USD": str(before)},
                                    capture_output=True, text=True, check=True).stdout)
        py = PodLedger(spend, 2.0, 100.0, start, "pod-new", before).spent()
        mine = (3600 - 2000) / 3600 * 2.0 + 600 / 3600 * 2.0
        assert bash == pytest.approx(py, abs=0.002) == pytest.approx(mine + others, abs=0.002)


def _tiny_repo(tmp_path) -> Path:
    """A git repository holding what the pod needs before setup: run.sh, the guard and the stdlib S3 PUT."""
    src = tmp_path / "src"
    for rel in ("run.sh", "scripts/pod_guard.sh", "medasr/__init__.py", "medasr/ops/__init__.py", "medasr/ops/s3put.py"):
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / rel, src / rel)
    git = ["git", "-C", str(src), "-c", "user.email=t@t", "-c", "user.name=t"]
    subprocess.run(git[:3] + ["init", "-q"], check=True)
    subprocess.run(git + ["add", "-A"], check=True)
    subprocess.run(git + ["commit", "-qm", "pod"], check=True)
    return src


def test_the_start_command_guards_the_clone_and_runs_run_sh_as_the_pod_does(pod):
    """The pod's real start command (dockerArgs), from the guard in MEDASR_GUARD_B64 to `exec ./run.sh`: a repo that
    cannot be cloned stops the pod (the command used to exit, and RunPod restarts an exiting container: a billing
    loop); a good one is cloned and run.sh runs, here into a failing setup whose FAILED reaches S3 before the stop."""
    api, pod_id, env, _ = pod
    cmd = ["bash", "-c", pods.start_command()[len("bash -c '"):-1]]
    ws = pod[3].parent / "workspace"
    ws.mkdir()
    env = {k: v for k, v in env.items() if k != "MEDASR_RUN_DIR"} | {
        "MEDASR_WORKSPACE": str(ws), "MEDASR_GUARD_B64": pods.guard_script_b64(), "MEDASR_RUN": "poc"}
    p = _start(cmd, env | {"MEDASR_REPO": str(pod[3].parent / "no-such-repo")}, api, pod_id)
    out = _finish(p, 60)
    assert api.pods[pod_id]["desiredStatus"] == "EXITED" and "stopping pod pod-1: could not clone" in out, out
    pods.resume(pod_id, 1)
    repo = _tiny_repo(pod[3].parent)
    p = _start(cmd, env | {"MEDASR_REPO": str(repo), "MEDASR_SETUP_CMD": "false", "MEDASR_S3_URI": f"{URI}/start"},
               api, pod_id)
    out = _finish(p, 60)
    assert api.pods[pod_id]["desiredStatus"] == "EXITED", out
    assert (ws / "medasr/run.sh").exists() and json.loads((ws / "runs/poc/FAILED").read_text())["stage"] == "setup"
    assert remote_run_state(f"{URI}/start", 4) == "failed"
    assert gzip.decompress(base64.b64decode(env["MEDASR_GUARD_B64"])) == GUARD.read_bytes()


def test_a_stop_that_is_accepted_but_does_not_hold_is_asked_again(pod):
    """Found in review: "verified" reads desiredStatus, which RunPod sets when it accepts the request; if the
    container then runs on, nothing asked again. run.sh (and the guard after a budget stop) still running
    MEDASR_GUARD_RESTOP_S after the stop was accepted is the proof that it did not hold: they stop the pod again."""
    api, pod_id, env, _ = pod
    p = _start(["bash", str(REPO / "run.sh")], env | {"MEDASR_SETUP_CMD": "false", "MEDASR_GUARD_RESTOP_S": "2"})
    time.sleep(7)  # no container registered: the stand-in marks the pod EXITED but signals nothing
    os.killpg(p.pid, signal.SIGKILL)
    out = p.communicate()[0].decode(errors="replace")
    assert sum(c == ("podStop", pod_id) for c in api.calls) >= 2, out
    assert "still running 2s after" in out


def test_the_guard_stops_the_pod_without_curl(pod, tmp_path):
    """A custom image without curl: the guard's API calls go through python3's standard library instead."""
    api, pod_id, env, _ = pod
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for d in ("/usr/local/bin", "/usr/bin", "/bin"):
        for tool in Path(d).iterdir():
            if tool.name != "curl" and not (bin_dir / tool.name).exists():
                (bin_dir / tool.name).symlink_to(tool)
    api.fail("podStop", "html502")
    out = _finish(_start(["bash", str(GUARD), "stop", "no curl"], env | {"PATH": str(bin_dir)}), 30)
    assert api.pods[pod_id]["desiredStatus"] == "EXITED" and "HTTP 502" in out and "stopped (verified: EXITED)" in out
