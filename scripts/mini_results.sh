#!/usr/bin/env bash
# The README's mini headline, reproduced: the mini flywheel from an empty run dir (2 CPU cores: 10–15 min), then its
# results copied into docs/results/mini/ (what the README's table cites). Usage: scripts/mini_results.sh [RUN_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
RUN=${1:-runs/mini-results}
if [ -e "$RUN/summary.json" ] && [ -z "${MEDASR_REUSE_RUN:-}" ]; then
  echo "$RUN already holds a run: pass an empty run dir (or MEDASR_REUSE_RUN=1 to copy its results)" >&2; exit 2
fi
[ -n "${MEDASR_REUSE_RUN:-}" ] || .venv/bin/medasr flywheel --preset mini --run-dir "$RUN"
OUT=docs/results/mini
mkdir -p "$OUT"
cp "$RUN/eval/cycle0/metrics.json" "$OUT/cycle0_metrics.json"
cp "$RUN/eval/cycle1/metrics.json" "$OUT/cycle1_metrics.json"
cp "$RUN/eval/compare/compare.json" "$RUN/eval/compare/compare.md" "$RUN/summary.json" "$OUT/"
cp "$RUN/data/build_report.json" "$RUN/train/val_loss.json" "$OUT/"
cp "$RUN/canary-qwen-medical-lora/medasr_adapter.json" "$OUT/export_meta.json"
echo "results of $RUN → $OUT"
