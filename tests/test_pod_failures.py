"""A pod never burns money or loses work. Permanent errors stop the run (and the pod) after one attempt;
run.sh never loops; the pod enforces its own budget cap; all rehearsed with run.sh as a pod runs it, against the
local RunPod API server (tests/runpod_api.py) and S3 on loopback that checks signatures and checksums as S3 does
(tests/s3_standin.py). `run.sh` as PID 1, a stop from outside, a replacement pod restoring from S3."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import boto3
import pytest

from medasr.config import load_config
from medasr.ops import pods
from medasr.ops.failures import is_transient
from medasr.ops.storage import remote_checkpoint_current, remote_run_state
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
    import httpx  # huggingface_hub's client: a DNS failure or a dropped download is transient, not a FAILED run

    assert is_transient(httpx.ConnectError("Name or service not known")) and is_transient(httpx.ReadTimeout("slow"))
    assert is_transient(httpx.RemoteProtocolError("peer closed connection"))


def test_a_permanent_error_marks_the_run_failed_with_its_stage(tmp_path, monkeypatch):
    """Only preflight, smoke and watchdog errors wrote FAILED; a bad dataset was retried 20 times."""
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
    """`run.sh` slept 300 s and exited, RunPod restarted it, forever, billing the GPU."""
    api, pod_id, env = pod_env
    run_dir = tmp_path / "no-setup"
    env |= {"MEDASR_SETUP_CMD": "false", "MEDASR_S3_URI": f"{URI}/no-setup"}
    _run_pod(api, pod_id, env, run_dir, lambda: (run_dir / "FAILED").exists(), timeout=120)
    failed = json.loads((run_dir / "FAILED").read_text())
    assert failed["stage"] == "setup" and failed["kind"] == "permanent"
    # pushed by medasr/ops/s3put.py before any venv exists (stdlib SigV4; the stand-in checks it with botocore's signer)
    assert remote_run_state(f"{URI}/no-setup", 4) == "failed"


@pytest.mark.slow
def test_pod_stops_itself_at_its_budget_with_no_watcher(pod_env, tmp_path):
    """The cap lived only in `runpod watch` on the user's machine. At $360/h the pod's $3 cap is
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


def _json(path: Path):
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def _ns_init(outer_pid: int, timeout: float = 10.0) -> int:
    """The PID (as seen from here) of `unshare --fork`'s child: PID 1 of the new PID namespace."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        kids = Path(f"/proc/{outer_pid}/task/{outer_pid}/children").read_text().split()
        if kids:
            return int(kids[0])
        time.sleep(0.05)
    raise AssertionError("unshare started no child")


def _outer_pid(inner: int, init: int) -> int:
    """A process of the namespace whose PID 1 is `init` (outer PID), from its PID inside the namespace (/proc status
    NSpid: outer, inner)."""
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            fields = dict(line.split(":\t", 1) for line in status.read_text().splitlines() if ":\t" in line)
        except OSError:
            continue
        ns = fields.get("NSpid", "").split()
        if len(ns) >= 2 and int(ns[-1]) == inner:
            pid = int(ns[0])
            while pid > 1:  # one of init's descendants?
                if pid == init:
                    return int(ns[0])
                pid = int(dict(l.split(":\t", 1) for l in Path(f"/proc/{pid}/status").read_text().splitlines()
                               if ":\t" in l)["PPid"])
    raise AssertionError(f"no process {inner} in the namespace of {init}")


@pytest.mark.slow
def test_pod_stopped_from_outside_then_replaced_on_an_empty_volume_resumes_from_s3(pod_env, tiny_run, tmp_path):
    """The pod's whole life, as RunPod runs it:
    1. run.sh is PID 1 of its own PID namespace (`exec ./run.sh` in the container). A SIGKILLed flywheel (an OOM kill)
       is restarted by the supervisor and resumes from its last checkpoint.
    2. The pod is stopped from outside (the watcher, the console, RunPod's low-balance stop): the stand-in signals PID 1
       as Docker does. Bash as PID 1 ignored SIGTERM (no handler), so the trainer never saved and
       nothing was synced before the SIGKILL. Now run.sh passes it on: last.ckpt at the current step, synced.
    3. The volume is lost: a replacement pod on an empty volume. Restore happened only into an empty
       run dir, and run.sh writes setup.log first, so it started from scratch. Now it restores what S3 has (and
       rebuilds the audio S3 does not keep), resumes at the step S3 holds, and its spend starts from the first pod's.
    The finished tiny run is raised by 40 steps so this costs 40 training steps, not a whole run."""
    api, pod_id, env = pod_env
    _, done_dir, _ = tiny_run
    run_dir = tmp_path / "pod1"
    shutil.copytree(done_dir, run_dir, symlinks=True)
    (run_dir / "supervisor.json").unlink(missing_ok=True)
    old = json.loads((run_dir / "train/DONE").read_text())["global_step"]
    uri = f"{URI}/replaced"
    env |= {"MEDASR_SET": f"train.max_steps={old + 40}\ntrain.smoke_steps=0\ntrain.ckpt_every_n_steps=10",
            "MEDASR_S3_URI": uri, "MEDASR_PRICE_PER_HOUR": "1.0", "MEDASR_MAX_USD": "100"}
    assert subprocess.run(["unshare", "--pid", "--fork", "--map-root-user", "true"]).returncode == 0, \
        "this machine cannot make a PID namespace (unshare): the PID 1 test needs one"
    p = subprocess.Popen(["unshare", "--pid", "--fork", "--map-root-user", "bash", str(REPO / "run.sh")], cwd=REPO,
                         env=env | {"MEDASR_RUN_DIR": str(run_dir)}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         start_new_session=True)
    init = api.containers[pod_id] = _ns_init(p.pid)
    killed, stopped_at = [], []
    try:
        deadline = time.time() + 600
        while time.time() < deadline and p.poll() is None:
            sup, progress = _json(run_dir / "supervisor.json") or {}, _json(run_dir / "train/progress.json") or {}
            step = progress.get("global_step", 0) if progress.get("pid") == sup.get("child_pid") else 0
            if not killed and step >= old + 12:
                killed.append(step)
                os.killpg(_outer_pid(sup["child_pid"], init), signal.SIGKILL)  # no save: resumes from old + 10
            elif killed and not stopped_at and step >= old + 25:
                stopped_at.append(step)
                pods.stop(pod_id)  # from outside: SIGTERM to the namespace's PID 1, SIGKILL 10 s later
            time.sleep(0.2)
        p.wait(timeout=30)
    finally:
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError:  # the namespace ended with its PID 1
            pass
        out = p.stdout.read().decode(errors="replace")
    assert killed and stopped_at, out
    assert p.returncode == 143 and "TERM received" in out, out  # run.sh ended on the stop, not on the SIGKILL
    sup = json.loads((run_dir / "supervisor.json").read_text())
    assert sup["state"] == "stopped" and sup["restarts"] == 1, sup
    saved = json.loads((run_dir / "train/checkpoints/last.json").read_text())["global_step"]
    assert stopped_at[0] <= saved < old + 40  # saved at the step it was stopped at, not the last periodic one
    assert remote_checkpoint_current(uri, 10)  # ... and on S3 before the container went
    s3_step = json.loads(boto3.client("s3").get_object(Bucket="medasr-test", Key="pod-runs/replaced/train/checkpoints/"
                                                       "last.json")["Body"].read())["global_step"]
    assert s3_step == saved

    new_pod = pods.create(pods.PodSpec(preset="tiny"))["id"]
    fresh = tmp_path / "pod2"  # the replacement's empty volume
    shutil.rmtree(run_dir)  # the first pod's volume is gone with it (and its audio, which S3 does not hold)
    out2 = _run_pod(api, new_pod, env | {"RUNPOD_POD_ID": new_pod, "MEDASR_RUN_DIR": str(fresh)}, fresh,
                    lambda: (_json(fresh / "supervisor.json") or {}).get("state") == "done", timeout=600)
    sup = json.loads((fresh / "supervisor.json").read_text())
    assert sup["state"] == "done" and sup["restored"] > 0, out2
    starts = [json.loads(x)["start_step"] for x in (fresh / "train/resume_log.jsonl").read_text().splitlines()]
    assert starts[-1] == saved  # resumed at the step S3 held, not from scratch
    assert json.loads((fresh / "train/DONE").read_text())["global_step"] == old + 40
    assert remote_run_state(uri, old + 40) == "done"
    first = [f.read_text().split() for f in (fresh / "spend").glob(f"{pod_id}-*.session")]  # restored from S3
    first_usd = sum((float(last) - float(start)) * float(price) / 3600 for start, last, price, _ in first)
    assert first and first_usd > 0 and sup["spent_usd"] > first_usd  # the first pod's time counts on the replacement
