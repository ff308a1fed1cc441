#!/usr/bin/env bash
# One-shot, idempotent setup: system packages + .venv with the pinned Python stack.
#   ./scripts/setup.sh          what medasr needs to run
#   ./scripts/setup.sh --test   plus what the tests need (Chromium renders the HTML reports)
set -euo pipefail
cd "$(dirname "$0")/.."
SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
pkgs=(espeak-ng sox libsndfile1 ffmpeg wordnet-base git git-lfs)
[ "${1:-}" = "--test" ] && pkgs+=(chromium)
need=()
for p in "${pkgs[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || need+=("$p"); done
if [ ${#need[@]} -gt 0 ]; then
  $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi
PY=${PYTHON:-python3.11}
[ -x .venv/bin/python ] || $PY -m venv .venv
stamp=.venv/.medasr-installed
want=$(cat requirements.txt requirements.lock pyproject.toml | sha256sum | cut -c1-16)
if [ "$(cat $stamp 2>/dev/null)" != "$want" ]; then
  .venv/bin/pip install -q --upgrade pip
  # torch first, pinned: on this kind of machine pip finds the CPU build on disk; on a GPU pod PyPI serves the CUDA
  # build of the same version (MEDASR_TORCH_INDEX picks another index, e.g. a specific CUDA wheel index).
  .venv/bin/pip install -q ${MEDASR_TORCH_INDEX:+--index-url $MEDASR_TORCH_INDEX} "torch==2.13.0"
  .venv/bin/pip install -q -r requirements.txt -c requirements.lock
  .venv/bin/pip install -q --no-deps -e .
  echo "$want" > $stamp
fi
echo "setup ok: $(.venv/bin/python -c 'import torch,nemo;print("torch",torch.__version__,"nemo",nemo.__version__)')"
