#!/usr/bin/env bash
# RunPod start command (medasr/ops/pods.py): install the pinned project idempotently, then run the supervisor on the
# volume. RunPod restarts a container whose command exits, so when the supervisor returns (run done, or it gave up)
# this pod stops itself: billing stops and the /workspace volume keeps everything.
set -uo pipefail
cd "$(dirname "$0")"
RUN_DIR="${MEDASR_RUN_DIR:-/workspace/runs/${MEDASR_RUN:-poc}}"
mkdir -p "$RUN_DIR"
if ! ./scripts/setup.sh >>"$RUN_DIR/setup.log" 2>&1; then
  echo "setup failed, see $RUN_DIR/setup.log"; sleep 300; exit 1  # exit -> RunPod restarts us -> setup is retried
fi
.venv/bin/medasr supervise --preset "${MEDASR_PRESET:-canary-qwen-2.5b}" --run-dir "$RUN_DIR"
rc=$?
echo "supervisor exited with $rc"
if [ -n "${RUNPOD_POD_ID:-}" ] && [ -n "${RUNPOD_API_KEY:-}" ]; then
  .venv/bin/medasr runpod down --pod-id "$RUNPOD_POD_ID" || echo "could not stop pod $RUNPOD_POD_ID"
fi
sleep infinity  # never exit: an exit would make RunPod run the job again; `medasr runpod watch` stops us too
