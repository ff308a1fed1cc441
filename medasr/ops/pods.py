"""RunPod operations through the official `runpod` SDK (GraphQL API).

The SDK builds GraphQL by string interpolation without escaping, so every string we pass (env values, docker
args, names) goes through `gql_escape` first: a secret containing quotes or backslashes must arrive intact.
The SDK reads RUNPOD_API_BASE_URL on every call, which is how tests point it at a local server.

Lifecycle handled by `watch`: a pod that EXITED before the run is done is resumed; a resume that comes back with zero
GPUs (or fails) terminates the pod and recreates it on the same network volume; reaching the budget cap stops the pod;
a finished run stops the pod so billing stops.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

from medasr.console import console


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

    def start_command(self) -> str:
        # RunPod restarts a container whose command exits, so run.sh stops the pod itself when the run is done.
        return ("bash -c 'cd /workspace && (test -d medasr || git clone \"$MEDASR_REPO\" medasr) && "
                "cd medasr && (git pull --ff-only || true) && exec ./run.sh'")

    def pod_env(self) -> dict:
        env = {"MEDASR_REPO": self.repo_url, "MEDASR_PRESET": self.preset, "MEDASR_RUN": self.run_name}
        for name in ("WANDB_API_KEY", "HF_TOKEN", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION",
                     "AWS_ENDPOINT_URL_S3", "MEDASR_S3_URI"):
            if os.environ.get(name):
                env[name] = os.environ[name]
        return env | self.env


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
        data_center_id=spec.data_center_id, support_public_ip=False, start_ssh=True,
    )
    return pod


def status(pod_id: str) -> dict:
    pod = _sdk().get_pod(gql_escape(pod_id))
    if not pod:
        raise PodError(f"pod {pod_id} not found")
    return pod


def spent_usd(pod: dict, previous_usd: float = 0.0) -> float:
    return previous_usd + float(pod.get("costPerHr") or 0) * float(pod.get("uptimeSeconds") or 0) / 3600


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


def watch(spec: PodSpec, state: dict, is_done: Callable[[], bool], max_usd: float, interval_s: float = 60.0,
          max_iterations: Optional[int] = None, state_path: Path = STATE_FILE, sleep=time.sleep) -> str:
    """Keep the run going until done or over budget. Returns the reason it stopped watching."""
    it = 0
    while max_iterations is None or it < max_iterations:
        it += 1
        pod = status(state["pod_id"])
        spent = spent_usd(pod, state.get("spent_before_usd", 0.0))
        state["spent_usd"] = round(spent, 4)
        desired = pod.get("desiredStatus")
        if is_done():
            if desired == "RUNNING":
                stop(state["pod_id"])
            save_state(state, state_path)
            return "done"
        if spent >= max_usd:
            stop(state["pod_id"])
            state["stopped_for_budget"] = True
            save_state(state, state_path)
            console.print(f"[red]budget cap ${max_usd:.2f} reached (${spent:.2f} spent): pod stopped")
            return "budget"
        if desired in ("EXITED", "STOPPED"):
            console.print(f"pod {state['pod_id']} is {desired} and the run is not done: resuming")
            try:
                r = resume(state["pod_id"], spec.gpu_count)
                gpus = int((r or {}).get("gpuCount", spec.gpu_count) or 0)
            except Exception as e:  # noqa: BLE001 - no GPU free on that host is reported as an error
                console.print(f"[yellow]resume failed ({e})")
                gpus = 0
            if gpus == 0:
                console.print("[yellow]resume gave no GPU: terminating and recreating on the same volume")
                state["spent_before_usd"] = spent
                terminate(state["pod_id"])
                new = create(spec)
                state.setdefault("history", []).append(state["pod_id"])
                state["pod_id"] = new["id"]
        save_state(state, state_path)
        sleep(interval_s)
    return "max_iterations"


def estimate_hours(max_steps: int, batch_size: int, avg_audio_s: float = 8.0, avg_text_tokens: int = 40,
                   prompt_tokens: int = 20, tflops_achieved: float = 60.0, batch_tokens: int = 0) -> dict:
    """Training time from a FLOP count (the method, stated, since the real model cannot be timed here): the model
    FLOPs of one step of `batch_size` utterances of `avg_audio_s` seconds through the release architecture
    (medasr/perf/flops.py on the canary-qwen-2.5b-shapes sizes: frozen LLM forward + activation gradient, trained
    encoder/projection/LoRA forward + backward), at an achieved bf16 throughput that defaults to 60 TFLOP/s (about
    20 % of an A100's 312 TFLOP/s peak: small batches of short clips rarely do better). `medasr bench train` on the
    GPU measures the real rate (docs/PERFORMANCE.md)."""
    from medasr.config import load_config
    from medasr.perf.flops import StepShape, train_step_flops

    sizes = load_config("canary-qwen-2.5b-shapes").model.tiny
    if batch_tokens > 0:  # token batches (train.batch_tokens): as many average rows as the budget holds
        per_row = StepShape(batch=1, audio_s=avg_audio_s, prompt_tokens=prompt_tokens, text_tokens=avg_text_tokens).batch_tokens
        batch_size = max(1, batch_tokens // per_row)
    shape = StepShape(batch=batch_size, audio_s=avg_audio_s, prompt_tokens=prompt_tokens, text_tokens=avg_text_tokens)
    flops = max_steps * train_step_flops(sizes, shape, target_logits_only=True)["total"]  # the default switch
    train_h = flops / (tflops_achieved * 1e12) / 3600
    overhead_h = 0.5  # install, model download, two evaluations, export, sync
    assumptions = {"max_steps": max_steps, "batch_size": batch_size, "avg_audio_s": avg_audio_s,
                   "avg_text_tokens": avg_text_tokens, "prompt_tokens": prompt_tokens, "tflops_achieved": tflops_achieved}
    return {"tokens": max_steps * shape.batch_tokens, "tflop_per_step": round(flops / max_steps / 1e12, 2),
            "train_hours": round(train_h, 2), "overhead_hours": overhead_h,
            "total_hours": round(train_h + overhead_h, 2), "assumptions": assumptions}
