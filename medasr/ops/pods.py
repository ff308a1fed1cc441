"""RunPod operations through the official `runpod` SDK (GraphQL API).

The SDK builds GraphQL by string interpolation without escaping, so every string we pass (env values, docker
args, names) goes through `gql_escape` first: a secret containing quotes or backslashes must arrive intact.
The SDK reads RUNPOD_API_BASE_URL on every call, which is how tests point it at a local server.

Lifecycle handled by `watch`: a pod that EXITED before the run is done is resumed (a failed resume is retried at the
next check); a pod whose host has no GPU left is terminated and recreated only when the work is safe (a network volume,
or the run's last.ckpt verified on S3), and the watcher saves that it is replacing the pod before terminating it, so a
failed create is retried instead of losing the pod; a run marked FAILED or BUDGET (read from S3) is never resumed;
the budget cap (spend over every session of every pod of the run, medasr.ops.spend.WatchLedger) stops the pod; a
finished run stops the pod so GPU billing stops (a stopped pod's volume is still billed).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

from medasr.config import load_config
from medasr.console import console
from medasr.ops.cuda import allowed_cuda_versions
from medasr.ops.spend import LEDGER_FILE, WatchLedger
from medasr.perf.flops import StepShape, train_step_flops


STATE_FILE = Path(".medasr-pod.json")


class PodError(RuntimeError):
    pass


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
        # RunPod restarts a container whose command exits, so run.sh stops the pod itself when the run is done.
        ssh = "(test -x /start.sh && nohup /start.sh >/dev/null 2>&1 &); " if self.ssh else ""
        return (f"bash -c '{ssh}cd /workspace && (test -d medasr || git clone \"$MEDASR_REPO\" medasr) && "
                "cd medasr && (git pull --ff-only || true) && exec ./run.sh'")

    def pod_env(self) -> dict:
        env = {"MEDASR_REPO": self.repo_url, "MEDASR_PRESET": self.preset, "MEDASR_RUN": self.run_name}
        for name in ("WANDB_API_KEY", "HF_TOKEN", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION",
                     "AWS_ENDPOINT_URL_S3", "MEDASR_S3_URI"):
            if os.environ.get(name):
                env[name] = os.environ[name]
        return env | self.env

    def allowed_cuda(self) -> list[str]:
        """Host CUDA versions whose driver runs this image and the torch the pod installs (medasr.ops.cuda)."""
        return allowed_cuda_versions(self.image, (self.env or {}).get("MEDASR_TORCH_INDEX"))


def hourly_price(spec: PodSpec) -> float:
    gpu = _sdk().get_gpu(gql_escape(spec.gpu_type), spec.gpu_count)
    price = gpu.get("securePrice" if spec.cloud_type == "SECURE" else "communityPrice")
    if price is None:
        low = gpu.get("lowestPrice") or {}
        price = low.get("uninterruptablePrice")
    if price is None:
        raise PodError(f"no {spec.cloud_type.lower()} price for {spec.gpu_type!r}")
    return float(price) * spec.gpu_count


def create(spec: PodSpec) -> dict:
    rp = _sdk()
    env = {k: gql_escape(v) for k, v in spec.pod_env().items()}
    pod = rp.create_pod(
        name=gql_escape(spec.name), image_name=gql_escape(spec.image), gpu_type_id=gql_escape(spec.gpu_type),
        cloud_type=spec.cloud_type, gpu_count=spec.gpu_count, volume_in_gb=spec.volume_gb,
        container_disk_in_gb=spec.container_disk_gb, volume_mount_path="/workspace", env=env,
        docker_args=gql_escape(spec.start_command()), network_volume_id=spec.network_volume_id,
        data_center_id=spec.data_center_id, support_public_ip=spec.ssh, start_ssh=spec.ssh,
        allowed_cuda_versions=spec.allowed_cuda(),
    )
    return pod


def status(pod_id: str) -> dict:
    pod = _sdk().get_pod(gql_escape(pod_id))
    if not pod:
        raise PodError(f"pod {pod_id} not found")
    return pod


def spent_usd(pod: dict) -> float:
    """This pod session's spend; the run's total over sessions and pods is medasr.ops.spend.WatchLedger."""
    return float(pod.get("costPerHr") or 0) * float(pod.get("uptimeSeconds") or 0) / 3600


def stop(pod_id: str) -> dict:
    return _sdk().stop_pod(gql_escape(pod_id))


def terminate(pod_id: str) -> None:
    _sdk().terminate_pod(gql_escape(pod_id))


def resume(pod_id: str, gpu_count: int) -> dict:
    return _sdk().resume_pod(gql_escape(pod_id), gpu_count)


def save_state(state: dict, path: Path = STATE_FILE) -> None:
    path.write_text(json.dumps(state, indent=2))


def load_state(path: Path = STATE_FILE) -> dict:
    if not path.exists():
        raise PodError(f"{path} not found: run `medasr runpod up` first (or pass --pod-id)")
    return json.loads(path.read_text())


def watch(spec: PodSpec, state: dict, run_state: Callable[[], str], max_usd: float, interval_s: float = 60.0,
          max_iterations: Optional[int] = None, state_path: Path = STATE_FILE, sleep=time.sleep,
          work_is_safe: Callable[[], bool] = lambda: False, ledger=None, resume_attempts: int = 3) -> str:
    """Keep the run going until done, failed or over budget. `run_state()` → done | failed | budget | running (from the
    markers on S3). Returns the reason it stopped watching."""
    ledger = ledger or WatchLedger(state_path.with_name(LEDGER_FILE.name))
    it = 0
    while max_iterations is None or it < max_iterations:
        it += 1
        if state.get("pod_id") is None:  # a replacement whose create failed last time: create it now
            _replace(spec, state, state_path)
            sleep(interval_s)
            continue
        pod = status(state["pod_id"])
        spent = ledger.observe(state["pod_id"], pod)
        state["spent_usd"] = round(spent, 4)
        desired = pod.get("desiredStatus")
        verdict = run_state()
        if verdict in ("done", "failed", "budget"):
            if desired == "RUNNING":
                stop(state["pod_id"])
            state["finished"] = verdict
            save_state(state, state_path)
            if verdict != "done":
                console.print(f"[red]the run is marked {verdict.upper()} on S3: pod stopped and not resumed "
                              "(RUN/FAILED or RUN/BUDGET says why)")
            return verdict
        if spent >= max_usd:
            stop(state["pod_id"])
            state["stopped_for_budget"] = True
            save_state(state, state_path)
            console.print(f"[red]budget cap ${max_usd:.2f} reached (${spent:.2f} spent): pod stopped")
            return "budget"
        if desired in ("EXITED", "STOPPED"):
            console.print(f"pod {state['pod_id']} is {desired} and the run is not done: resuming")
            gpus = None
            try:
                resume(state["pod_id"], spec.gpu_count)
                ledger.new_session(state["pod_id"])  # uptime may start again: bank the session that ended
                gpus = int(status(state["pod_id"]).get("gpuCount") or 0)  # podResume does not return gpuCount
                state["resume_failures"] = 0
            except Exception as e:  # noqa: BLE001 - an API or network error: retried at the next check
                state["resume_failures"] = state.get("resume_failures", 0) + 1
                console.print(f"[yellow]resume failed ({e}); attempt {state['resume_failures']}, retrying next check")
            no_gpu = gpus == 0 or state.get("resume_failures", 0) >= resume_attempts
            if no_gpu and work_is_safe():
                console.print("[yellow]no GPU on this pod's host: recreating it (the work is safe: network volume or "
                              "checkpoint verified on S3)")
                _replace(spec, state, state_path)
            elif no_gpu:
                if gpus == 0:
                    stop(state["pod_id"])  # resumed without a GPU: do not pay for it while waiting
                console.print("[yellow]no GPU for this pod yet, and its volume holds work not safe elsewhere "
                              "(no network volume, no verified checkpoint on S3): retrying, not terminating")
        save_state(state, state_path)
        sleep(interval_s)
    return "max_iterations"


def _replace(spec: PodSpec, state: dict, state_path: Path) -> None:
    """Terminate the pod and create its replacement on the same volume; the state says what is going on at every
    step, so a watcher that dies (or a create that fails) never holds the id of a terminated pod."""
    if state.get("pod_id"):
        old = state["pod_id"]
        state.setdefault("history", []).append(old)
        state["pod_id"], state["replacing"] = None, old
        save_state(state, state_path)  # first: from here on the old id is history
        terminate(old)
    try:
        new = create(spec)
    except Exception as e:  # noqa: BLE001 - retried at the next check
        console.print(f"[yellow]creating the replacement pod failed ({e}); retrying next check")
        save_state(state, state_path)
        return
    state["pod_id"] = new["id"]
    state.pop("replacing", None)
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
