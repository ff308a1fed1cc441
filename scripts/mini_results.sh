#!/usr/bin/env bash
# The README's mini results, reproduced: the mini flywheel from an empty run dir (Whisper tiny.en + decoder LoRA on
# the synthetic Kokoro corpus; on 2 CPU cores 24 min with an empty synthesis cache, 10 min warm), then its results
# copied into docs/results/mini/ — both cycles' hyps.json, metrics, compare, selection — and README's table regenerated
# from the two hyps files (`medasr table`). Usage: scripts/mini_results.sh [RUN_DIR]
#   MEDASR_REUSE_RUN=1   copy the results of a finished run instead of running it
#   MEDASR_TTS_CACHE=DIR the synthesis cache (default ~/.cache/medasr/tts; an empty DIR times a cold run)
set -euo pipefail
cd "$(dirname "$0")/.."
RUN=${1:-runs/mini-results}
OUT=docs/results/mini
if [ -e "$RUN/summary.json" ] && [ -z "${MEDASR_REUSE_RUN:-}" ]; then
  echo "$RUN already holds a run: pass an empty run dir (or MEDASR_REUSE_RUN=1 to copy its results)" >&2; exit 2
fi
mkdir -p "$OUT"
if [ -z "${MEDASR_REUSE_RUN:-}" ]; then
  cache=${MEDASR_TTS_CACHE:-$HOME/.cache/medasr/tts}
  files=$(find "$cache" -type f 2>/dev/null | wc -l)
  start=$(date +%s)
  .venv/bin/medasr flywheel --preset mini --run-dir "$RUN"
  end=$(date +%s)
  kind=$([ "$files" -eq 0 ] && echo cold || echo warm)  # an empty synthesis cache, or one a run filled
  .venv/bin/python - "$OUT/timing_$kind.json" "$RUN/summary.json" "$((end - start))" "$files" "scripts/mini_results.sh $RUN" <<'EOF'
import json, os, subprocess, sys, time
out, summary, wall, files, command = sys.argv[1:]
json.dump({"command": command, "wall_s": int(wall), "date": time.strftime("%Y-%m-%d", time.gmtime()),
           "host": os.uname().nodename, "cpus": os.cpu_count(), "tts_cache_files_before": int(files),
           "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip(),
           "timings_s": json.load(open(summary))["timings_s"]}, open(out, "w"), indent=1)
EOF
fi
for c in 0 1; do
  cp "$RUN/eval/cycle$c/metrics.json" "$OUT/cycle${c}_metrics.json"
  cp "$RUN/eval/cycle$c/hyps.json" "$OUT/cycle${c}_hyps.json"
done
cp "$RUN/eval/compare/compare.json" "$RUN/eval/compare/compare.md" "$RUN/summary.json" "$OUT/"
cp "$RUN/data/build_report.json" "$RUN/train/val_loss.json" "$RUN/train/val_wer.json" "$RUN/train/selection.json" "$OUT/"
cp "$RUN/whisper-medical/medasr_whisper.json" "$OUT/export_meta.json"
# hyps carry this machine's audio paths: keep the file names only (the rows are matched on id); each row gets its
# cell of the held-out design table (`design_cell`, medasr.evaluate.design_table.row_cells)
.venv/bin/python - "$OUT" <<'EOF'
import json, sys
from pathlib import Path
from medasr.evaluate.design_table import row_cells
for f in Path(sys.argv[1]).glob("cycle*_hyps.json"):
    rows = [json.loads(x) for x in f.read_text().splitlines() if x.strip()]
    rows = [r | {"audio_filepath": Path(r["audio_filepath"]).name, "design_cell": c} for r, c in zip(rows, row_cells(rows))]
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
EOF
.venv/bin/medasr table "$OUT/cycle0_hyps.json" "$OUT/cycle1_hyps.json" --out "$OUT/table.md" --json "$OUT/table.json" \
  --readme README.md > /dev/null
echo "results of $RUN → $OUT; README's table regenerated from $OUT/cycle{0,1}_hyps.json"
