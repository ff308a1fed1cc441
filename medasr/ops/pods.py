"""RunPod operations through the official `runpod` SDK (GraphQL API).

The SDK builds GraphQL by string interpolation without escaping, so every string we pass (env values, docker
args, names) goes through `gql_escape` first: a secret containing quotes or backslashes must arrive intact.
The SDK reads RUNPOD_API_BASE_URL on every call, which is how tests point it at a local server.

The API fails in several ways (tests/runpod_api.py cites each): GraphQL `errors` inside an HTTP 200, 401 for a bad
key, 5xx and 429 answers with no JSON (the SDK then raises JSONDecodeError), timeouts and dropped connections. Every
call goes through `_call`, which sorts them: a 401 or a refused query is permanent (`PodError`, said once, clearly);
"no free GPU" is `NoGPUError`; anything else is transient, retried with backoff a few times and then raised as
`TransientAPIError`, which the watcher logs and retries at its next check, never treating it as a verdict.

Lifecycle handled by `watch`: a pod that EXITED before the run is done is resumed; only RunPod's own "no free GPU"
answers (or a resume that came back with no GPU) count towards replacing it, and it is terminated and recreated only
when the work is safe (a network volume, or the run's newest checkpoint on S3, verified by S3's checksum, no more
than one checkpoint interval behind the progress the pod last reported there); the watcher saves that it is
replacing the pod before terminating it, so a failed create is retried instead of losing the pod; the replacement
gets today's price and the spend so far, so its own cap counts what the run already cost. A run marked FAILED or
BUDGET (read from S3) is never resumed; a pod that was resumed `max_idle_resumes` times without reporting any progress
to S3 (a setup that fails every time, an S3 it cannot write) is left stopped. The budget cap (spend over every session
of every pod of the run, medasr.ops.spend.WatchLedger) stops the pod; a finished run stops the pod so GPU billing
stops (a stopped pod's volume is still billed). Every stop is verified by reading the pod's state back.
"""

from __future__ import annotations

import base64
import gzip
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

from medasr.config import load_config
from medasr.console import console
from medasr.errors import MedasrError
from medasr.ops.cuda import allowed_cuda_versions
from medasr.ops.failures import is_transient
from medasr.ops.spend import LEDGER_FILE, WatchLedger
from medasr.perf.flops import StepShape, train_step_flops


STATE_FILE = Path(".medasr-pod.json")
# RunPod's answers when a GPU is not to be had (podResume on a full host; a create with no capacity left)
NO_GPU_MESSAGES = ("not enough free gpus", "no longer any instances available")
# GraphQL errors that fail the same way again: a bad query or input, a pod that does not exist, no permission
PERMANENT_MESSAGES = ("syntax error", "cannot query field", "is not defined by type", "invalid value", "not found",
                      "unauthorized", "forbidden", "permission", "does not exist")
STOPPED = ("EXITED", "TERMINATED")


class PodError(MedasrError, RuntimeError):
    """A permanent problem (a refused key, a bad request, a pod that does not exist): retrying cannot help."""


class TransientAPIError(PodError):
    """The API kept failing in a way that may pass (5xx, 429, an HTML error page, a timeout); retry later."""


class NoGPUError(PodError):
    """RunPod has no GPU for this request now (the pod's host is full, or no capacity for a new pod)."""


def gql_escape(s: str) -> str:
    """Escape a value for a GraphQL string literal (same rules as JSON strings)."""
    return json.dumps(str(s), ensure_ascii=False)[1:-1]


def _sdk():
    import runpod

    key = os.environ.get("RUNPOD_API_KEY")
    if not key:
        raise PodError("RUNPOD_API_KEY is not set (environment or .env)")
    runpod.api_key = key  # the SDK reads ~/.runpod/config.toml otherwise
    return runpod


def classify(exc: BaseException) -> str:
    """"permanent", "no_gpu" or "transient" for an exception raised by an SDK call."""
    names = {c.__name__ for c in type(exc).__mro__}
    msg = str(exc).lower()
    if "AuthenticationError" in names:
        return "permanent"
    if any(m in msg for m in NO_GPU_MESSAGES):
        return "no_gpu"
    if "QueryError" in names:  # GraphQL errors in a 200: RunPod's "Something went wrong" and the like pass
        return "permanent" if any(m in msg for m in PERMANENT_MESSAGES) else "transient"
    # an HTML or empty error page (JSONDecodeError), an answer without `data` (KeyError/TypeError in the SDK), the network
    if is_transient(exc) or names & {"JSONDecodeError", "RequestException", "KeyError", "TypeError"}:
        return "transient"
    return "permanent"


def _call(what: str, fn, *args, attempts: int = 4, sleep=time.sleep, **kw):
    last = None
    for i in range(attempts):
        try:
            return fn(*args, **kw)
        except Exception as e:  # noqa: BLE001 - sorted below
            kind = classify(e)
            if kind == "no_gpu":
                raise NoGPUError(f"{what}: {e}") from e
            if kind == "permanent":
                hint = " (check RUNPOD_API_KEY)" if "Authentication" in type(e).__name__ else ""
                raise PodError(f"RunPod API refused {what}: {type(e).__name__}: {e}{hint}") from e
            last = e
            console.print(f"[yellow]RunPod API, {what}: {type(e).__name__}: {str(e)[:200]} (attempt {i + 1}/{attempts})")
            if i + 1 < attempts:
                sleep(min(30.0, 2.0 * 2 ** i))
    raise TransientAPIError(f"RunPod API, {what}: still failing after {attempts} attempts "
                            f"({type(last).__name__}: {str(last)[:200]})") from last


@dataclass
class PodSpec:
    name: str = "medasr"
    image: str = "runpod/pytorch:2.8.0-py3.11-cuda12.8.1-cudnn-devel-ubuntu22.04"
    gpu_type: str = "NVIDIA A100 80GB PCIe"
    gpu_count: int = 1
    cloud_type: str = "SECURE"  # SECURE | COMMUNITY | ALL
    volume_gb: int = 200
    container_disk_gb: int = 50
    network_volume_id: Optional[str] = None
    data_center_id: Optional[str] = None
    repo_url: str = "https://github.com/your-org/medasr.git"
    preset: str = "canary-qwen-2.5b"
    run_name: str = "poc"
    env: dict = field(default_factory=dict)
    ssh: bool = False  # dockerArgs replaces the image's start script, which is what starts sshd: run it too

    def start_command(self) -> str:
        return start_command(self.ssh)

    def pod_env(self) -> dict:
        env = {"MEDASR_REPO": self.repo_url, "MEDASR_PRESET": self.preset, "MEDASR_RUN": self.run_name,
               "MEDASR_GUARD_B64": guard_script_b64()}
        if self.network_volume_id:
            env["MEDASR_NETWORK_VOLUME_ID"] = self.network_volume_id  # the guard may terminate such a pod (its data stays)
        for name in ("WANDB_API_KEY", "HF_TOKEN", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
                     "AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL_S3", "MEDASR_S3_URI"):
            if os.environ.get(name):
                env[name] = os.environ[name]
        return env | self.env

    def allowed_cuda(self) -> list[str]:
        """Host CUDA versions whose driver runs this image and the torch the pod installs (medasr.ops.cuda)."""
        try:  # medasr.ops.cuda is stdlib-only (it runs before the venv exists): its ValueError named here
            return allowed_cuda_versions(self.image, (self.env or {}).get("MEDASR_TORCH_INDEX"))
        except ValueError as e:
            raise PodError(str(e)) from e


GUARD_SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "pod_guard.sh"


def guard_script_b64() -> str:
    """scripts/pod_guard.sh travels in the pod's environment (gzip + base64, ≈ 4 KB), so the start command runs it
    before anything else (before `git clone`, which may hang or fail)."""
    return base64.b64encode(gzip.compress(GUARD_SCRIPT.read_bytes(), mtime=0)).decode()


def start_command(ssh: bool = False) -> str:
    """The pod's start command (dockerArgs). RunPod restarts a container whose command exits, so nothing here may
    exit: the wall-clock guard starts first (from MEDASR_GUARD_B64), git runs under a timeout, and a failed clone
    stops the pod (verified) and waits instead of exiting into a restart loop. `exec ./run.sh` makes run.sh PID 1."""
    ssh_part = "(test -x /start.sh && nohup /start.sh >/dev/null 2>&1 &); " if ssh else ""
    return ("bash -c '" + ssh_part +
            'W=${MEDASR_WORKSPACE:-/workspace}; G=/tmp/medasr-guard.sh; echo "$MEDASR_GUARD_B64" | base64 -d | gunzip > $G; '
            'bash $G start; cd $W && { test -d medasr/.git || timeout 900 git clone "$MEDASR_REPO" medasr; } && '
            "cd medasr && { timeout 300 git pull --ff-only || true; } && exec ./run.sh; "
            'bash $G stop "could not clone $MEDASR_REPO into $W/medasr"; exec sleep infinity\'')


def hourly_price(spec: PodSpec) -> float:
    """The GPU's price per hour for this cloud type; ALL may land on either cloud, so the higher price (the cap must
    hold wherever the pod lands; the pod's guard reads its real costPerHr once it runs)."""
    gpu = _call("gpuTypes", _sdk().get_gpu, gql_escape(spec.gpu_type), spec.gpu_count) or {}
    keys = {"SECURE": ["securePrice"], "COMMUNITY": ["communityPrice"]}.get(spec.cloud_type, ["securePrice", "communityPrice"])
    prices = [float(gpu[k]) for k in keys if gpu.get(k) is not None]
    if not prices and (low := (gpu.get("lowestPrice") or {}).get("uninterruptablePrice")) is not None:
        prices = [float(low)]
    if not prices:
        raise PodError(f"no {spec.cloud_type.lower()} price for {spec.gpu_type!r}")
    return max(prices) * spec.gpu_count


def create(spec: PodSpec) -> dict:
    rp = _sdk()
    env = {k: gql_escape(v) for k, v in spec.pod_env().items()}
    return _call("podFindAndDeployOnDemand", rp.create_pod, attempts=2,
        name=gql_escape(spec.name), image_name=gql_escape(spec.image), gpu_type_id=gql_escape(spec.gpu_type),
        cloud_type=spec.cloud_type, gpu_count=spec.gpu_count, volume_in_gb=spec.volume_gb,
        container_disk_in_gb=spec.container_disk_gb, volume_mount_path="/workspace", env=env,
        docker_args=gql_escape(spec.start_command()), network_volume_id=spec.network_volume_id,
        data_center_id=spec.data_center_id, support_public_ip=spec.ssh, start_ssh=spec.ssh,
        ports="22/tcp" if spec.ssh else None, allowed_cuda_versions=spec.allowed_cuda(),
    )


def status(pod_id: str, sleep=time.sleep) -> dict | None:
    """The pod as the API reports it, or None when it does not exist (terminated)."""
    return _call(f"pod {pod_id}", _sdk().get_pod, gql_escape(pod_id), sleep=sleep)


def spent_usd(pod: dict) -> float:
    """This pod session's spend; the run's total over sessions and pods is medasr.ops.spend.WatchLedger."""
    return float(pod.get("costPerHr") or 0) * float(pod.get("uptimeSeconds") or 0) / 3600


def _verified(verb: str, call, pod_id: str, done: tuple, attempts: int, sleep) -> dict:
    """Ask for `verb`, then read the pod back: done only when its state is one of `done` (or it is gone). Failures
    are retried with backoff and finally raised (TransientAPIError), never reported as done."""
    why = ""
    for i in range(attempts):
        try:
            _call(f"{verb} {pod_id}", call, gql_escape(pod_id), attempts=1)
            pod = status(pod_id, sleep=sleep)
            if pod is None or pod.get("desiredStatus") in done:
                console.print(f"pod {pod_id}: {verb} verified ({pod.get('desiredStatus') if pod else 'gone'})")
                return pod or {}
            why = f"the API still reports it {pod.get('desiredStatus')}"
        except TransientAPIError as e:
            why = str(e)
        console.print(f"[yellow]{verb} {pod_id} failed ({why}); attempt {i + 1}/{attempts}")
        if i + 1 < attempts:
            sleep(min(60.0, 5.0 * 2 ** i))
    raise TransientAPIError(f"could not {verb} pod {pod_id} after {attempts} attempts: {why}")


def stop(pod_id: str, attempts: int = 4, sleep=time.sleep) -> dict:
    """Stop the pod, verified: the API must report it EXITED (or gone)."""
    return _verified("podStop", _sdk().stop_pod, pod_id, STOPPED, attempts, sleep)


def terminate(pod_id: str, attempts: int = 4, sleep=time.sleep) -> None:
    """Terminate the pod, verified: the API must no longer have it. The SDK's terminate_pod ignores the answer (a 500
    looks like success), so the read-back is what says it happened."""
    _verified("podTerminate", _sdk().terminate_pod, pod_id, ("TERMINATED",), attempts, sleep)


def resume(pod_id: str, gpu_count: int) -> dict:
    return _call(f"podResume {pod_id}", _sdk().resume_pod, gql_escape(pod_id), gpu_count, attempts=1)


def save_state(state: dict, path: Path = STATE_FILE) -> None:
    path.write_text(json.dumps(state, indent=2))


def load_state(path: Path = STATE_FILE) -> dict:
    if not path.exists():
        raise PodError(f"{path} not found: run `medasr runpod up` first (or pass --pod-id)")
    return json.loads(path.read_text())


def watch(spec: PodSpec, state: dict, run_state: Callable[[], str], max_usd: float, interval_s: float = 60.0,
          max_iterations: Optional[int] = None, state_path: Path = STATE_FILE, sleep=time.sleep,
          work_is_safe: Callable[[], bool] = lambda: False, ledger=None, resume_attempts: int = 3,
          progress: Callable[[], Optional[str]] = lambda: None, max_idle_resumes: int = 3) -> str:
    """Keep the run going until done, failed or over budget. `run_state()` → done | failed | budget | running (from the
    markers on S3); `progress()` → a token of the progress the pod last reported on S3 (None: unknown). Returns the
    reason it stopped watching. API failures are logged and retried at the next check; a refused key ends the watch
    (the pod's own guard still enforces its cap)."""
    ledger = ledger or WatchLedger(state_path.with_name(LEDGER_FILE.name))
    it = 0
    while max_iterations is None or it < max_iterations:
        it += 1
        try:
            verdict = _check(spec, state, run_state, max_usd, state_path, work_is_safe, ledger, resume_attempts,
                             progress, max_idle_resumes, sleep)
            state["api_failures"] = 0
        except TransientAPIError as e:
            state["api_failures"] = state.get("api_failures", 0) + 1
            console.print(f"[yellow]{e}; retrying at the next check ({state['api_failures']} in a row)")
            verdict = None
        except PodError as e:
            console.print(f"[red]{e}: watch stopped (the pod's own guard still stops it at its cap)")
            save_state(state, state_path)
            return "api_error"
        except Exception as e:  # noqa: BLE001 - reading the run's markers on S3 failed
            if not is_transient(e):
                console.print(f"[red]reading the run on S3 failed: {type(e).__name__}: {e}: watch stopped (the pod's "
                              "own guard still stops it at its cap)")
                save_state(state, state_path)
                return "s3_error"
            state["api_failures"] = state.get("api_failures", 0) + 1
            console.print(f"[yellow]reading the run on S3 failed ({type(e).__name__}: {e}); retrying at the next check")
            verdict = None
        save_state(state, state_path)
        if verdict:
            return verdict
        sleep(interval_s)
    return "max_iterations"


def _check(spec, state, run_state, max_usd, state_path, work_is_safe, ledger, resume_attempts, progress,
           max_idle_resumes, sleep) -> Optional[str]:
    """One check of the watch loop; a verdict ends the watch."""
    if state.get("pod_id") is None:  # a replacement whose create failed last time: create it now
        _replace(spec, state, state_path, ledger, sleep=sleep)
        return None
    pod = status(state["pod_id"], sleep=sleep)
    if pod is None:  # terminated behind our back (console, or a guard that could not stop it)
        if run_state() in ("done", "failed", "budget"):
            state["finished"] = run_state()
            return state["finished"]
        if work_is_safe():
            console.print(f"[yellow]pod {state['pod_id']} no longer exists: recreating it (the work is safe on S3)")
            _replace(spec, state, state_path, ledger, terminate_old=False, sleep=sleep)
            return None
        console.print(f"[red]pod {state['pod_id']} no longer exists and its work is not safe on S3: not recreating")
        return "pod_gone"
    spent = ledger.observe(state["pod_id"], pod)
    state["spent_usd"] = round(spent, 4)
    desired = pod.get("desiredStatus")
    if desired == "RUNNING":
        state["seen_running_at"] = time.time()  # how recent the pod's heartbeat on S3 must be (work_is_safe)
    verdict = run_state()
    if verdict in ("done", "failed", "budget"):
        if desired not in STOPPED:
            stop(state["pod_id"], sleep=sleep)
        state["finished"] = verdict
        if verdict != "done":
            console.print(f"[red]the run is marked {verdict.upper()} on S3: pod stopped and not resumed "
                          "(RUN/FAILED or RUN/BUDGET says why)")
        return verdict
    if spent >= max_usd:
        if desired not in STOPPED:
            stop(state["pod_id"], sleep=sleep)
        state["stopped_for_budget"] = True
        console.print(f"[red]budget cap ${max_usd:.2f} reached (${spent:.2f} spent): pod stopped")
        return "budget"
    if desired not in ("EXITED", "STOPPED"):
        return None
    token = progress()
    if token is not None and "progress_at_resume" in state:
        idle = state.get("idle_resumes", 0) + 1 if token == state["progress_at_resume"] else 0
        state["idle_resumes"] = idle
        if idle >= max_idle_resumes:
            console.print(f"[red]pod {state['pod_id']} stopped {idle} times after a resume without reporting any progress "
                          "to S3 (a setup that fails every time? S3 not writable from the pod?): left stopped; read its "
                          "logs in the RunPod console, fix, then `medasr runpod watch` again")
            state.pop("progress_at_resume")
            state["idle_resumes"] = 0
            return "stuck"
    console.print(f"pod {state['pod_id']} is {desired} and the run is not done: resuming")
    gpus = None
    try:
        resume(state["pod_id"], spec.gpu_count)
        ledger.new_session(state["pod_id"])  # uptime may start again: bank the session that ended
        state["progress_at_resume"] = token
        gpus = int((status(state["pod_id"], sleep=sleep) or {}).get("gpuCount") or 0)  # podResume omits gpuCount
        if gpus:
            state["no_gpu"] = 0
    except NoGPUError as e:
        console.print(f"[yellow]{e}")
        gpus = 0
    if gpus == 0:
        state["no_gpu"] = state.get("no_gpu", 0) + 1
        if (status(state["pod_id"], sleep=sleep) or {}).get("desiredStatus") not in STOPPED:
            stop(state["pod_id"], sleep=sleep)  # resumed without a GPU: do not pay for it while waiting
        if state["no_gpu"] >= resume_attempts and work_is_safe():
            console.print("[yellow]no GPU on this pod's host: recreating it (the work is safe: network volume or the "
                          "newest checkpoint verified on S3)")
            _replace(spec, state, state_path, ledger, sleep=sleep)
        else:
            console.print(f"[yellow]no GPU for this pod yet ({state['no_gpu']} time(s)); "
                          + ("retrying" if state["no_gpu"] < resume_attempts else
                             "its volume holds work not safe elsewhere (no network volume, no current checkpoint on "
                             "S3): retrying, not terminating"))
    return None


def _replace(spec: PodSpec, state: dict, state_path: Path, ledger=None, terminate_old: bool = True,
             sleep=time.sleep) -> None:
    """Terminate the pod and create its replacement; the state says what is going on at every step, so a watcher
    that dies (or a create that fails) never holds the id of a terminated pod. The replacement is priced today and
    told what the run has spent so far (its guard and supervisor count from there)."""
    if state.get("pod_id"):
        old = state["pod_id"]
        state.setdefault("history", []).append(old)
        state["pod_id"], state["replacing"] = None, old
        state["terminate_old"] = terminate_old
        save_state(state, state_path)  # first: from here on the old id is history
    if (old := state.get("replacing")) and state.get("terminate_old", True):
        # every attempt until it is gone: a terminate that failed last time would otherwise leave the old pod (and
        # its volume, billed) behind once the new one exists
        if status(old, sleep=sleep) is not None:
            terminate(old, sleep=sleep)
        state["terminate_old"] = False
        save_state(state, state_path)
    try:
        price = hourly_price(spec)
        spec.env |= {"MEDASR_PRICE_PER_HOUR": f"{price:.4f}"}
        if ledger is not None:
            spec.env["MEDASR_SPENT_BEFORE_USD"] = f"{ledger.total():.4f}"
        new = create(spec)
    except (NoGPUError, TransientAPIError) as e:  # retried at the next check
        console.print(f"[yellow]creating the replacement pod failed ({e}); retrying next check")
        save_state(state, state_path)
        return
    state["pod_id"] = new["id"]
    state["price_per_hour"] = price
    state.pop("replacing", None)
    state.pop("terminate_old", None)
    state.pop("progress_at_resume", None)
    state["no_gpu"] = 0
    save_state(state, state_path)


# Parakeet-TDT-0.6B-v2 (model card: 600 M parameters, FastConformer 8x subsampling = 80 ms per encoder frame; TDT
# joint of hidden 640 over a 1,024-token vocabulary + 5 durations): full fine-tune FLOPs per utterance ~
# 6 x params x encoder frames (every weight trained: forward + 2x backward) + 6 x frames x tokens x joint (640 x 1,029)
ASR_PARAMS, ASR_JOINT = 0.6e9, 640 * (1024 + 5)


def asr_step_flops(batch: int, audio_s: float, text_tokens: int, params: float = ASR_PARAMS) -> float:
    frames = audio_s / 0.08
    return batch * (6 * params * frames + 6 * frames * (text_tokens + 1) * ASR_JOINT)


def estimate_hours(max_steps: int, batch_size: int, avg_audio_s: float = 8.0, avg_text_tokens: int = 40,
                   prompt_tokens: int = 20, tflops_achieved: float = 60.0, batch_tokens: int = 0,
                   kind: str = "salm") -> dict:
    """Training time from a FLOP count (the method, stated, since the real model cannot be timed here): the model
    FLOPs of one step of `batch_size` utterances of `avg_audio_s` seconds through the release architecture
    (medasr/perf/flops.py on the canary-qwen-2.5b-shapes sizes: frozen LLM forward + activation gradient, trained
    encoder/projection/LoRA forward + backward), at an achieved bf16 throughput that defaults to 60 TFLOP/s (about
    20 % of an A100's 312 TFLOP/s peak: small batches of short clips rarely do better). `medasr bench train` on the
    GPU measures the real rate (docs/PERFORMANCE.md). `kind="asr"` (the Parakeet full fine-tune) counts its own model
    instead (`asr_step_flops`)."""
    sizes = load_config("canary-qwen-2.5b-shapes").model.tiny
    if batch_tokens > 0:  # token batches (train.batch_tokens): as many average rows as the budget holds
        per_row = StepShape(batch=1, audio_s=avg_audio_s, prompt_tokens=prompt_tokens, text_tokens=avg_text_tokens).batch_tokens
        batch_size = max(1, batch_tokens // per_row)
    shape = StepShape(batch=batch_size, audio_s=avg_audio_s, prompt_tokens=prompt_tokens, text_tokens=avg_text_tokens)
    if kind == "asr":
        flops = max_steps * asr_step_flops(batch_size, avg_audio_s, avg_text_tokens)
    else:
        flops = max_steps * train_step_flops(sizes, shape, target_logits_only=True)["total"]  # the default switch
    train_h = flops / (tflops_achieved * 1e12) / 3600
    overhead_h = 0.5  # install, model download, two evaluations, export, sync
    assumptions = {"model": kind, "max_steps": max_steps, "batch_size": batch_size, "avg_audio_s": avg_audio_s,
                   "avg_text_tokens": avg_text_tokens, "prompt_tokens": prompt_tokens, "tflops_achieved": tflops_achieved}
    return {"tokens": max_steps * shape.batch_tokens, "tflop_per_step": round(flops / max_steps / 1e12, 2),
            "train_hours": round(train_h, 2), "overhead_hours": overhead_h,
            "total_hours": round(train_h + overhead_h, 2), "assumptions": assumptions}
