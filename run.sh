#!/usr/bin/env bash
# The pod's main process (medasr/ops/pods.py::start_command ends in `exec ./run.sh`, so this is PID 1 of the
# container): install the pinned project idempotently, then run the supervisor on the volume. RunPod restarts a
# container whose command exits, so this script does not exit on its own: whatever ends the run (done, a permanent
# error, the budget cap, a failed or hung setup) it stops its own pod through the API — verified, retried until it
# holds (scripts/pod_guard.sh stop) — and waits. Only a stop from outside (SIGTERM) ends it.
#   MEDASR_PRESET, MEDASR_RUN / MEDASR_RUN_DIR   what to run, where (on the volume, MEDASR_WORKSPACE=/workspace)
#   MEDASR_SET             newline-separated KEY=VALUE config overrides (`runpod up --set`), passed as --set to supervise
#   MEDASR_SETUP_CMD       the setup command (default ./scripts/setup.sh; MEDASR_TORCH_INDEX reaches it), killed after
#                          MEDASR_SETUP_TIMEOUT_S (5400)
#   MEDASR_S3_URI + AWS_*  where FAILED is pushed when setup fails (no venv yet: medasr/ops/s3put.py, stdlib only)
#   RUNPOD_POD_ID, RUNPOD_API_KEY (set by RunPod) [RUNPOD_API_BASE_URL]   how the pod stops itself
#   MEDASR_PRICE_PER_HOUR, MEDASR_MAX_USD   the cap, counted from this container's start by the guard and the supervisor
# PID 1 ignores every signal it has no handler for (a container stop's SIGTERM too), and bash runs a trap only once
# the foreground command returns: so each long step runs in the background and is waited for, and SIGTERM/SIGINT are
# passed to it (the supervisor passes them to the trainer, which saves last.ckpt; then it syncs what it can).
set -uo pipefail
cd "$(dirname "$0")"
W="${MEDASR_WORKSPACE:-/workspace}"
export MEDASR_RUN_DIR="${MEDASR_RUN_DIR:-$W/runs/${MEDASR_RUN:-poc}}"
RUN_DIR="$MEDASR_RUN_DIR"
GUARD=./scripts/pod_guard.sh
export MEDASR_REPO_DIR="$PWD"  # where the guard finds medasr/ops/s3put.py
mkdir -p "$RUN_DIR"
# The wall-clock guard (started already by the pod's start command, before git; started here otherwise): it counts
# this container's time from its start, setup included, and stops the pod at MEDASR_MAX_USD whatever Python does.
MEDASR_CONTAINER_START="$(bash $GUARD start)"
export MEDASR_CONTAINER_START

child="" stopping=""
on_signal() {
  stopping=$1
  echo "run.sh: $1 received: passing it on${child:+ to $child}"
  [ -n "$child" ] && kill -TERM "$child" 2>/dev/null
}
trap 'on_signal TERM' TERM
trap 'on_signal INT' INT

in_background() {  # run "$@" in the background and wait for it, so the traps above run at once
  "$@" &
  child=$!
  [ -n "$stopping" ] && kill -TERM "$child" 2>/dev/null  # a signal that came while it was being started
  local rc=0
  while :; do
    wait "$child"; rc=$?
    kill -0 "$child" 2>/dev/null || break  # wait returned for a signal: the child is still finishing
  done
  child=""
  return $rc
}

stop_and_wait() {  # stop this pod (verified, retried until it holds), then wait for the container to be stopped
  in_background bash $GUARD stop "$1"
  [ -n "$stopping" ] || echo "run.sh: waiting for the stop (never exiting, so RunPod does not run the job again)"
  while [ -z "$stopping" ]; do
    in_background sleep "${MEDASR_GUARD_RESTOP_S:-600}"
    # still here: the API accepted the stop but the container runs on; ask again (and say so)
    [ -z "$stopping" ] && in_background bash $GUARD stop "still running ${MEDASR_GUARD_RESTOP_S:-600}s after: $1"
  done
  exit 0
}

push_failed() {  # FAILED to S3 before the pod stops: the watcher reads it there (no venv after a failed setup)
  [ -n "${MEDASR_S3_URI:-}" ] || return 0
  in_background timeout 180 "${MEDASR_PYTHON:-python3}" -m medasr.ops.s3put "$RUN_DIR/FAILED" "${MEDASR_S3_URI%/}/FAILED" \
    || echo "run.sh: could not push FAILED to $MEDASR_S3_URI (the watcher will see a pod that stopped without progress)"
}

in_background timeout "${MEDASR_SETUP_TIMEOUT_S:-5400}" ${MEDASR_SETUP_CMD:-./scripts/setup.sh} >>"$RUN_DIR/setup.log" 2>&1
rc=$?
if [ -n "$stopping" ]; then echo "run.sh: stopped during setup"; exit 143; fi
if [ $rc -ne 0 ]; then
  # a setup that failed once fails again on a restart: never loop (each loop bills the GPU)
  why="setup failed (exit $rc)"; [ $rc -eq 124 ] && why="setup did not finish in ${MEDASR_SETUP_TIMEOUT_S:-5400}s"
  printf '{"stage": "setup", "error": "SetupFailed", "kind": "permanent", "reason": "%s", "time": "%s"}\n' \
    "$why; last lines of setup.log: $(tail -n 3 "$RUN_DIR/setup.log" | tr -d '"\\' | tr '\n\t' '  ')" \
    "$(date -u +%FT%TZ)" > "$RUN_DIR/FAILED"
  echo "run.sh: $why, see $RUN_DIR/setup.log"
  push_failed
  stop_and_wait "$why"
fi
sets=()
while IFS= read -r kv; do [ -n "$kv" ] && sets+=(--set "$kv"); done <<< "${MEDASR_SET:-}"
in_background .venv/bin/medasr supervise --preset "${MEDASR_PRESET:-canary-qwen-2.5b}" --run-dir "$RUN_DIR" "${sets[@]}"
rc=$?
if [ -n "$stopping" ]; then echo "run.sh: stopped from outside; the supervisor saved and synced what it could"; exit 143; fi
state=$(grep -o '"state": *"[a-z_]*"' "$RUN_DIR/supervisor.json" 2>/dev/null | sed 's/.*"\([a-z_]*\)"$/\1/')
stop_and_wait "the supervisor exited with $rc (${state:-no state})"
