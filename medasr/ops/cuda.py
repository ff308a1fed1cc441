"""Which CUDA a pod needs, and whether a host's driver provides it. Standard library only: scripts/setup.sh runs it
with the system Python before the venv exists (`python3 -m medasr.ops.cuda check`).

Two things on a pod need the host's driver: the image (runpod/pytorch:…-cuda12.8.1-… declares NVIDIA_REQUIRE_CUDA
>= 12.8; on an older driver the container does not start) and the torch we install (PyPI's Linux wheel of torch 2.13.0
is a CUDA 13.0 build: requirements.lock pins its cuda-toolkit==13.0.x; a CUDA 13 runtime needs a driver of the 13
family, >= 580). A driver runs every runtime of its own major family up to the version nvidia-smi prints in its header
("CUDA Version: 12.8"), by NVIDIA's minor-version compatibility. So the pod asks RunPod for hosts whose CUDA version is
at least what both need (`allowedCudaVersions`), and setup refuses a driver that cannot run the torch it is about to
install, before it downloads gigabytes (a torch that cannot see the GPU would train on the CPU, billing the GPU).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Optional

# RunPod's accepted values of allowedCudaVersions (REST API POST /pods, https://docs.runpod.io/api-reference/pods/
# POST/pods; the same enum as CudaVersion in the runpod-sdk crate): the host's driver CUDA version.
RUNPOD_CUDA_VERSIONS = ("11.8", "12.0", "12.1", "12.2", "12.3", "12.4", "12.5", "12.6", "12.7", "12.8", "12.9", "13.0")
LOCK = Path(__file__).resolve().parents[2] / "requirements.lock"
# a PyTorch wheel index per CUDA major family (by minor-version compatibility any driver of the family runs it)
FAMILY_INDEX = {12: "https://download.pytorch.org/whl/cu128", 11: "https://download.pytorch.org/whl/cu118"}


def _version(s: str) -> tuple[int, int]:
    major, minor = s.split(".")[:2]
    return int(major), int(minor)


def lock_cuda(lock: Path = LOCK) -> str:
    """The CUDA release PyPI's torch was built for, from the lock's cuda-toolkit pin (torch requires it exactly)."""
    m = re.search(r"^cuda-toolkit==(\d+)\.(\d+)", lock.read_text(), re.M)
    if not m:
        raise ValueError(f"{lock} pins no cuda-toolkit: regenerate it with scripts/lock.sh (it resolves for a GPU pod)")
    return f"{m[1]}.{m[2]}"


def index_cuda(torch_index: str) -> str:
    """The CUDA release of a PyTorch wheel index (https://download.pytorch.org/whl/cu128 → 12.8)."""
    m = re.search(r"/cu(\d+)(\d)/?$", torch_index)
    if not m:
        raise ValueError(f"cannot tell the CUDA release of torch index {torch_index!r}: use one ending in /cuXYZ, "
                         "e.g. https://download.pytorch.org/whl/cu128")
    return f"{m[1]}.{m[2]}"


def image_cuda(image: str) -> Optional[str]:
    """The CUDA release an image is built on, from its tag (runpod/pytorch:2.8.0-py3.11-cuda12.8.1-… → 12.8)."""
    m = re.search(r"cuda-?(\d+)\.(\d+)", image)
    return f"{m[1]}.{m[2]}" if m else None


def torch_cuda(torch_index: Optional[str] = None, lock: Path = LOCK) -> str:
    return index_cuda(torch_index) if torch_index else lock_cuda(lock)


def allowed_cuda_versions(image: str, torch_index: Optional[str] = None, lock: Path = LOCK) -> list[str]:
    """Host CUDA versions that run both the image and our torch: at least the image's release and at least the first
    release of torch's major family (minor-version compatibility)."""
    need = [(_version(torch_cuda(torch_index, lock))[0], 0)]
    if image_cuda(image):
        need.append(_version(image_cuda(image)))
    floor = max(need)
    allowed = [v for v in RUNPOD_CUDA_VERSIONS if _version(v) >= floor]
    if not allowed:
        raise ValueError(f"RunPod offers no host with CUDA >= {floor[0]}.{floor[1]} (it lists "
                         f"{', '.join(RUNPOD_CUDA_VERSIONS)}): pick an older image or a torch index such as "
                         "https://download.pytorch.org/whl/cu128")
    return allowed


def driver_cuda(nvidia_smi_output: str) -> Optional[str]:
    """The highest CUDA release the driver supports, from nvidia-smi's header ("CUDA Version: 12.8")."""
    m = re.search(r"CUDA Version:\s*(\d+)\.(\d+)", nvidia_smi_output)
    return f"{m[1]}.{m[2]}" if m else None


def check_driver(nvidia_smi_output: str, need: str) -> Optional[str]:
    """None when the driver can run a CUDA `need` runtime; otherwise the reason and the fixes."""
    have = driver_cuda(nvidia_smi_output)
    if have is None:
        return "nvidia-smi printed no 'CUDA Version': cannot tell what the driver supports"
    if _version(have)[0] < _version(need)[0]:
        return (f"the host's NVIDIA driver supports CUDA {have}, but the torch to be installed is a CUDA {need} build "
                f"(needs a CUDA {_version(need)[0]}.x driver). Fix: create the pod on a newer host (`medasr runpod up` "
                "asks RunPod for allowedCudaVersions that fit), or install a torch built for this driver's CUDA family "
                f"(any {_version(have)[0]}.x build runs on it): MEDASR_TORCH_INDEX={FAMILY_INDEX.get(_version(have)[0], '<a PyTorch wheel index for CUDA ' + str(_version(have)[0]) + '>')} (`runpod up --torch-index`)")
    return None


def main(argv: list[str]) -> int:
    if argv[:1] != ["check"]:
        print("usage: python3 -m medasr.ops.cuda check [TORCH_INDEX]", file=sys.stderr)
        return 64
    if not shutil.which("nvidia-smi"):
        print("cuda check: no nvidia-smi, no NVIDIA driver: a CPU install")
        return 0
    out = subprocess.run(["nvidia-smi"], capture_output=True, text=True, timeout=60)
    try:
        need = torch_cuda(argv[1] if len(argv) > 1 and argv[1] else None)
    except ValueError as e:
        print(f"cuda check: {e}", file=sys.stderr)
        return 2
    problem = check_driver(out.stdout, need) if out.returncode == 0 else f"nvidia-smi failed: {out.stderr.strip()}"
    if problem:
        print(f"cuda check: {problem}", file=sys.stderr)
        return 2
    print(f"cuda check: driver CUDA {driver_cuda(out.stdout)} runs torch's CUDA {need}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
