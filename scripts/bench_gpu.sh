#!/usr/bin/env bash
# Every measurement docs/PERFORMANCE.md asks for, in one go, on a GPU machine (a RunPod pod, or any CUDA box after
# ./scripts/setup.sh). Results: runs/bench/<variant>/bench_{train,eval}.{json,md}. About 10 minutes on an H100.
#   ./scripts/bench_gpu.sh [preset]        (default canary-qwen-2.5b-shapes)
set -euo pipefail
cd "$(dirname "$0")/.."
P="${1:-canary-qwen-2.5b-shapes}"
M=".venv/bin/medasr"
# 1. baseline: NeMo's own training step (logits at every position), bf16, transformers' SDPA in the LLM, NeMo's
#    explicit attention in the encoder
$M bench train -p "$P" -o runs/bench/base --set train.target_logits_only=false
# 2. + logits only at the transcript positions (the default)
$M bench train -p "$P" -o runs/bench/target-logits
# 3. + encoder SDPA
$M bench train -p "$P" -o runs/bench/sdpa --set train.encoder_sdpa=true
# 4. + activation checkpointing, with the larger batches it is meant to let fit
$M bench train -p "$P" -o runs/bench/sdpa-ckpt --set train.encoder_sdpa=true --set train.activation_checkpointing=true \
  --set 'bench.train_batch_tokens=[6000,12000,24000,36000,48000]'
# 5. inference: RTFx at batch 1 / 16 / 64
$M bench eval -p "$P" -o runs/bench/base
$M bench eval -p "$P" -o runs/bench/sdpa --set train.encoder_sdpa=true
$M bench eval -p "$P" -o runs/bench/static-cache --set train.encoder_sdpa=true --set eval.static_cache=true
cat runs/bench/*/bench_*.md
