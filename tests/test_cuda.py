"""The pod's torch matches its host's driver, and requirements.lock resolves on the pod.

The lock used to be a pip freeze of this CPU machine: it pinned triton 3.9.0 while PyPI's CUDA build of torch 2.13.0
requires triton==3.7.1, so the pod's `pip install -r requirements.txt -c requirements.lock` could not resolve. The
wheel's real requirements are vendored from PyPI (tests/data/torch-2.13.0-linux-requires.txt)."""

import os
import subprocess
import sys
from pathlib import Path

from packaging.requirements import Requirement

from medasr.ops import cuda
from medasr.ops.pods import PodSpec

REPO = Path(__file__).resolve().parent.parent
LINUX_311 = {"platform_system": "Linux", "python_version": "3.11", "sys_platform": "linux", "extra": ""}
# nvidia-smi's header as printed by driver 580.65.06 (CUDA 13.0) and the same line of a 570-series driver (CUDA 12.8)
SMI_580 = """\
+-----------------------------------------------------------------------------------------+
| NVIDIA-SMI 580.65.06              Driver Version: 580.65.06      CUDA Version: 13.0     |
+-----------------------------------------+------------------------+----------------------+
| GPU  Name                 Persistence-M | Bus-Id          Disp.A | Volatile Uncorr. ECC |
"""
SMI_570 = SMI_580.replace("580.65.06", "570.124.06").replace("CUDA Version: 13.0", "CUDA Version: 12.8")


def _pins(lock: Path) -> dict:
    out = {}
    for line in lock.read_text().splitlines():
        if line and not line.startswith("#"):
            name, version = line.split("==")
            out[Requirement(name).name.lower().replace("_", "-").replace(".", "-")] = version
    return out


def test_lock_pins_what_the_cuda_torch_wheel_requires():
    pins = _pins(REPO / "requirements.lock")
    needed = [Requirement(x) for x in (REPO / "tests/data/torch-2.13.0-linux-requires.txt").read_text().splitlines()
              if x and not x.startswith("#")]
    linux = [r for r in needed if r.marker is None or r.marker.evaluate(LINUX_311)]
    assert {r.name for r in linux} >= {"triton", "cuda-toolkit", "nvidia-nccl-cu13"}
    wrong = {r.name: pins.get(r.name) for r in linux
             if r.specifier and (r.name not in pins or not r.specifier.contains(pins[r.name], prereleases=True))}
    assert not wrong, f"requirements.lock conflicts with torch 2.13.0's CUDA wheel: {wrong} (run scripts/lock.sh)"
    assert cuda.lock_cuda() == "13.0"  # what the pod's driver must run


def test_allowed_cuda_versions_fit_the_image_and_torch():
    image = PodSpec().image
    assert cuda.image_cuda(image) == "12.8"
    assert cuda.allowed_cuda_versions(image) == ["13.0"]  # PyPI's torch is a CUDA 13 build: a 13.x driver
    cu128 = "https://download.pytorch.org/whl/cu128"
    assert cuda.index_cuda(cu128) == "12.8" and cuda.index_cuda(cu128 + "/") == "12.8"
    assert cuda.allowed_cuda_versions(image, cu128) == ["12.8", "12.9", "13.0"]  # the image needs 12.8
    assert cuda.allowed_cuda_versions("runpod/pytorch:2.1.0-py3.10-cuda11.8.0-devel-ubuntu22.04",
                                      "https://download.pytorch.org/whl/cu126")[0] == "12.0"  # minor compatibility
    try:
        cuda.index_cuda("https://pypi.org/simple")
        raise AssertionError("an index without a CUDA release must be refused")
    except ValueError as e:
        assert "/cuXYZ" in str(e)


def test_driver_check_names_the_fix():
    assert cuda.driver_cuda(SMI_580) == "13.0" and cuda.driver_cuda(SMI_570) == "12.8"
    assert cuda.check_driver(SMI_580, "13.0") is None
    assert cuda.check_driver(SMI_570, "12.6") is None  # same major family: runs
    problem = cuda.check_driver(SMI_570, "13.0")
    assert "supports CUDA 12.8" in problem and "MEDASR_TORCH_INDEX=https://download.pytorch.org/whl/cu128" in problem


def test_setup_refuses_an_old_driver_before_installing_anything(tmp_path):
    """On a 570 driver (CUDA 12.8) setup.sh stops at once, naming the fix; run.sh then marks the run FAILED (setup)
    and stops the pod (test_pod_failures). With a matching torch index it passes the check."""
    bin_ = tmp_path / "bin"
    bin_.mkdir()
    smi = bin_ / "nvidia-smi"
    smi.write_text("#!/bin/sh\ncat <<'EOF'\n" + SMI_570 + "EOF\n")
    smi.chmod(0o755)
    env = os.environ | {"PATH": f"{bin_}:{os.environ['PATH']}", "PYTHON": sys.executable}
    env.pop("MEDASR_TORCH_INDEX", None)
    out = subprocess.run(["bash", "scripts/setup.sh"], cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "the host's NVIDIA driver supports CUDA 12.8" in out.stderr, out.stderr
    assert "apt-get" not in out.stdout + out.stderr
    ok = subprocess.run([sys.executable, "-m", "medasr.ops.cuda", "check", "https://download.pytorch.org/whl/cu128"],
                        cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0 and "driver CUDA 12.8 runs torch's CUDA 12.8" in ok.stdout
