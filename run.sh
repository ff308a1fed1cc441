#!/usr/bin/env bash
# RunPod start command (medasr/ops/pods.py): install the pinned project idempotently, then run the supervisor on the
# volume. RunPod restarts a container whose command exits, so this script never exits: whatever happens (run done,
# a permanent error, the budget cap, a failed setup) it stops its own pod (billing for the GPU stops; the volume is
# kept, and billed) and sleeps.
#   MEDASR_PRESET, MEDASR_RUN / MEDASR_RUN_DIR   what to run, where (on the volume)
#   MEDASR_SET            newline-separated KEY=VALUE config overrides (`runpod up --set`), passed as --set to supervise
#   MEDASR_SETUP_CMD      the setup command (default ./scripts/setup.sh; MEDASR_TORCH_INDEX reaches it)
#   MEDASR_S3_URI + AWS_*  where FAILED is pushed when setup fails (no Python yet: curl signs the request)
#   RUNPOD_POD_ID, RUNPOD_API_KEY (set by RunPod) [RUNPOD_API_BASE_URL]   how the pod stops itself
set -uo pipefail
cd "$(dirname "$0")"
RUN_DIR="${MEDASR_RUN_DIR:-/workspace/runs/${MEDASR_RUN:-poc}}"
export MEDASR_CONTAINER_START="${MEDASR_CONTAINER_START:-$(date +%s)}"  # this session of the pod, for its own spend
mkdir -p "$RUN_DIR"

stop_own_pod() {  # GraphQL podStop with curl: works before and after setup
  [ -n "${RUNPOD_POD_ID:-}" ] && [ -n "${RUNPOD_API_KEY:-}" ] || { echo "not on a RunPod pod: nothing to stop"; return 0; }
  curl -sS -m 30 --retry 5 --retry-all-errors -X POST "${RUNPOD_API_BASE_URL:-https://api.runpod.io}/graphql" \
    -H "Content-Type: application/json" -H "Authorization: Bearer $RUNPOD_API_KEY" \
    -d "{\"query\": \"mutation { podStop(input: {podId: \\\"$RUNPOD_POD_ID\\\"}) { id desiredStatus } }\"}" \
    && echo " <- pod $RUNPOD_POD_ID stopped" || echo "could not stop pod $RUNPOD_POD_ID"
}

push_failed_to_s3() {  # no .venv when setup failed: a SigV4-signed PUT with curl (>= 7.75)
  [ -n "${MEDASR_S3_URI:-}" ] && [ -n "${AWS_ACCESS_KEY_ID:-}" ] || return 0
  local rest="${MEDASR_S3_URI#s3://}" bucket key region endpoint
  bucket="${rest%%/*}"; key="${rest#"$bucket"}"; key="${key#/}"; key="${key:+$key/}FAILED"
  region="${AWS_DEFAULT_REGION:-us-east-1}"
  endpoint="${AWS_ENDPOINT_URL_S3:-${AWS_ENDPOINT_URL:-https://s3.$region.amazonaws.com}}"
  curl -sS -m 60 --retry 5 --aws-sigv4 "aws:amz:$region:s3" --user "$AWS_ACCESS_KEY_ID:${AWS_SECRET_ACCESS_KEY:-}" \
    -T "$RUN_DIR/FAILED" "$endpoint/$bucket/$key" && echo "FAILED pushed to s3://$bucket/$key"
}

park() { echo "parking: the pod is stopped (or was asked to stop); never exiting, so RunPod does not rerun the job"
  exec sleep infinity; }

if ! ${MEDASR_SETUP_CMD:-./scripts/setup.sh} >>"$RUN_DIR/setup.log" 2>&1; then
  # a setup that failed once fails again on a restart: never loop (each loop bills the GPU)
  printf '{"stage": "setup", "error": "SetupFailed", "kind": "permanent", "reason": "%s", "time": "%s"}\n' \
    "setup failed; last lines of setup.log: $(tail -n 3 "$RUN_DIR/setup.log" | tr -d '"\\' | tr '\n' ' ')" \
    "$(date -u +%FT%TZ)" > "$RUN_DIR/FAILED"
  echo "setup failed, see $RUN_DIR/setup.log"
  push_failed_to_s3
  stop_own_pod
  park
fi
sets=()
while IFS= read -r kv; do [ -n "$kv" ] && sets+=(--set "$kv"); done <<< "${MEDASR_SET:-}"
.venv/bin/medasr supervise --preset "${MEDASR_PRESET:-canary-qwen-2.5b}" --run-dir "$RUN_DIR" "${sets[@]}"
echo "supervisor exited with $?"
stop_own_pod
park
