#!/usr/bin/env bash
# The pod's wall-clock guard: the budget cap that holds whatever happens to Python. bash, curl, awk and date only.
# The pod's start command (medasr/ops/pods.py::start_command) runs it before anything else, from MEDASR_GUARD_B64,
# so a hanging `git clone`, a hanging setup, a wedged trainer or a dead supervisor all stay inside the cap.
#   pod_guard.sh start        start the watch loop in the background, once per container; prints the container's start
#                             time (epoch seconds), the moment this container's spend counts from
#   pod_guard.sh watch        every MEDASR_GUARD_TICK_S (10) s: record this container's time in RUN/spend/, and at
#                             MEDASR_MAX_USD write RUN/BUDGET, push it to S3 (when the repo is here) and stop the pod
#   pod_guard.sh stop REASON  stop this pod through RunPod's API, read its state back, retry with backoff until it holds
#   pod_guard.sh spent        the run's spend in USD, as the cap counts it
# Spend: one file per container session, RUN/spend/<pod>-<start>.session = "<start> <last> <usd_per_hour> <pod>"
# (medasr/ops/spend.py reads the same files). A run's spend = this pod's sessions + the larger of the other pods'
# sessions (restored from S3) and MEDASR_SPENT_BEFORE_USD (what the watcher counted before recreating the pod).
# The price: the larger of MEDASR_PRICE_PER_HOUR (what `runpod up` saw) and the pod's own costPerHr from the API.
set -uo pipefail
W="${MEDASR_WORKSPACE:-/workspace}"
RUN_DIR="${MEDASR_RUN_DIR:-$W/runs/${MEDASR_RUN:-poc}}"
SPEND="$RUN_DIR/spend"
STATE="${MEDASR_GUARD_STATE:-/tmp/medasr-guard}"  # container-local: a new container starts a new session
POD="${RUNPOD_POD_ID:-}"
API="${RUNPOD_API_BASE_URL:-https://api.runpod.io}/graphql"
API_TIMEOUT="${MEDASR_API_TIMEOUT_S:-30}"
TICK="${MEDASR_GUARD_TICK_S:-10}"
BACKOFF="${MEDASR_GUARD_BACKOFF_S:-5}"      # first retry delay of a failed stop; doubles up to BACKOFF_MAX
BACKOFF_MAX="${MEDASR_GUARD_BACKOFF_MAX_S:-300}"
CAP="${MEDASR_MAX_USD:-0}"
REPO="${MEDASR_REPO_DIR:-$W/medasr}"

ANSWER="$STATE/answer.$$" CURL_ERR="$STATE/curl.$$"  # per process: the watch loop and a stop run side by side
trap 'rm -f "$ANSWER" "$CURL_ERR"' EXIT

log() { echo "$(date -u +%FT%TZ) guard: $*"; }

gql() {  # POST one GraphQL document; prints the HTTP status (000: no answer); the body lands in $ANSWER
  [ -n "$POD" ] && [ -n "${RUNPOD_API_KEY:-}" ] || { echo "nopod"; return; }
  if command -v curl >/dev/null; then
    curl -sS -m "$API_TIMEOUT" -o "$ANSWER" -w '%{http_code}' -X POST "$API" -H 'Content-Type: application/json' \
      -H "Authorization: Bearer $RUNPOD_API_KEY" -d "$1" 2>"$CURL_ERR" || true
  else  # an image without curl: the same request with python3's standard library
    python3 - "$API" "$1" "$ANSWER" "$API_TIMEOUT" 2>"$CURL_ERR" <<'PY' || echo 000
import os, sys, urllib.error, urllib.request
url, body, out, timeout = sys.argv[1], sys.argv[2].encode(), sys.argv[3], float(sys.argv[4])
req = urllib.request.Request(url, data=body, method="POST", headers={
    "Content-Type": "application/json", "Authorization": "Bearer " + os.environ["RUNPOD_API_KEY"]})
try:
    with urllib.request.urlopen(req, timeout=timeout) as r:
        code, data = r.status, r.read()
except urllib.error.HTTPError as e:
    code, data = e.code, e.read()
open(out, "wb").write(data)
print(code, end="")
PY
  fi
}

answer_field() {  # the first "name": value of the last answer (string or number)
  grep -o "\"$1\": *\"\?[A-Za-z0-9_.]*" "$ANSWER" 2>/dev/null | head -n1 | sed 's/.*: *"\?//'
}

pod_state() {  # prints EXITED/RUNNING/... or GONE; returns 1 when the API did not answer usefully
  local code
  code=$(gql "$(printf '{"query": "query { pod(input: {podId: \\"%s\\"}) { id desiredStatus costPerHr } }"}' "$POD")")
  [ "$code" = 200 ] && ! grep -q '"errors"' "$ANSWER" || return 1
  if grep -q '"pod": *null' "$ANSWER"; then echo GONE; return 0; fi
  local s; s=$(answer_field desiredStatus); [ -n "$s" ] && echo "$s"
}

why_failed() {  # a one-line reason for the last answer
  local code=$1
  case "$code" in
    000|"") echo "no answer ($(tr '\n' ' ' < "$CURL_ERR" | tail -c 200))" ;;
    200) echo "GraphQL error: $(grep -o '"message": *"[^"]*"' "$ANSWER" | head -n1 | head -c 300)" ;;
    *) echo "HTTP $code: $(tr '\n' ' ' < "$ANSWER" | head -c 200)" ;;
  esac
}

stop() {  # stop this pod; returns only once the API reports it stopped (or gone)
  local reason="$1" code st why attempt=0 refused=0 delay="$BACKOFF" verb=podStop
  mkdir -p "$STATE"
  if [ -z "$POD" ] || [ -z "${RUNPOD_API_KEY:-}" ]; then log "not on a RunPod pod (no RUNPOD_POD_ID/RUNPOD_API_KEY): nothing to stop ($reason)"; return 0; fi
  log "stopping pod $POD: $reason"
  while :; do
    attempt=$((attempt + 1))
    code=$(gql "$(printf '{"query": "mutation { %s(input: {podId: \\"%s\\"}) %s }"}' "$verb" "$POD" \
                  "$([ $verb = podStop ] && echo '{ id desiredStatus }')")")
    if [ "$code" = 200 ] && ! grep -q '"errors"' "$ANSWER"; then
      if st=$(pod_state); then
        case "$st" in
          EXITED|TERMINATED|GONE) log "pod $POD stopped (verified: $st) after $attempt attempt(s)"; return 0 ;;
          *) why="the API still reports it $st" ;;
        esac
      else why="accepted, but its state could not be read back"; fi
    else
      why=$(why_failed "$code")
      # a refusal, not a hiccup: GraphQL errors other than RunPod's "try again", or a 401/403
      if { [ "$code" = 200 ] && ! grep -qi 'try again\|something went wrong\|timeout\|internal' "$ANSWER"; } \
         || [ "$code" = 401 ] || [ "$code" = 403 ]; then refused=$((refused + 1)); fi
    fi
    log "$verb failed (attempt $attempt): $why; retrying in ${delay}s"
    # RunPod's docs once said a pod with a network volume cannot be stopped, only terminated (runpod/docs#629 lifted
    # it on 2026-05-07); its data lives on the network volume, so when stop is refused there, terminate it instead.
    if [ $verb = podStop ] && [ $refused -ge 3 ] && [ -n "${MEDASR_NETWORK_VOLUME_ID:-}" ]; then
      log "podStop refused $refused times; this pod's /workspace is network volume $MEDASR_NETWORK_VOLUME_ID (kept): terminating instead"
      verb=podTerminate
    fi
    sleep "$delay"
    delay=$(awk -v d="$delay" -v m="$BACKOFF_MAX" 'BEGIN { d *= 2; print (d > m ? m : d) }')
  done
}

spent() {  # USD, as described above
  local now; now=$(date +%s)
  cat "$SPEND"/*.session 2>/dev/null | awk -v pod="${POD:-local}" -v start="${START:-0}" -v now="$now" \
    -v price="${PRICE:-0}" -v before="${MEDASR_SPENT_BEFORE_USD:-0}" '
    NF >= 4 { last = $2
              if ($4 == pod && $1 == start) { seen = 1; if (now > last) last = now }
              usd = (last - $1) * $3 / 3600
              if ($4 == pod) mine += usd; else others += usd }
    END { if (!seen && start > 0) mine += (now - start) * price / 3600
          if (before + 0 > others) others = before
          printf "%.4f\n", mine + others }'
}

push_budget() {  # best effort: the supervisor normally pushed BUDGET already; before setup there is no Python venv
  [ -n "${MEDASR_S3_URI:-}" ] && [ -f "$REPO/medasr/ops/s3put.py" ] || return 0
  (cd "$REPO" && timeout 120 "${MEDASR_PYTHON:-python3}" -m medasr.ops.s3put "$RUN_DIR/BUDGET" "${MEDASR_S3_URI%/}/BUDGET") \
    || log "could not push BUDGET to $MEDASR_S3_URI"
}

init() {
  mkdir -p "$STATE" "$SPEND"
  START="${MEDASR_CONTAINER_START:-$(cat "$STATE/start" 2>/dev/null || true)}"
  PRICE="${MEDASR_PRICE_PER_HOUR:-0}"
  if st=$(pod_state) && [ "$st" != GONE ]; then  # the pod's real price, when the API tells it
    PRICE=$(awk -v a="$PRICE" -v b="$(answer_field costPerHr)" 'BEGIN { print (b + 0 > a + 0 ? b + 0 : a + 0) }')
  fi
}

watch() {
  init
  local f="$SPEND/${POD:-local}-$START.session" s tripped="" restop="${MEDASR_GUARD_RESTOP_S:-600}"
  if awk -v c="$CAP" -v p="$PRICE" 'BEGIN { exit !(c <= 0 || p <= 0) }'; then
    log "no budget cap (MEDASR_MAX_USD=$CAP) or no price (\$$PRICE/h): counting nothing"; return 0
  fi
  log "pod ${POD:-local}: \$$PRICE/h, cap \$$CAP, counting from $(date -u -d "@$START" +%FT%TZ 2>/dev/null || echo "$START")"
  while :; do
    printf '%s %s %s %s\n' "$START" "$(date +%s)" "$PRICE" "${POD:-local}" > "$f.$$.tmp" 2>/dev/null \
      && mv -f "$f.$$.tmp" "$f" || log "could not write $f (disk full?): counting on from memory"
    s=$(spent)
    if [ -z "$tripped" ] && awk -v s="$s" -v c="$CAP" 'BEGIN { exit !(s + 0 >= c + 0) }'; then
      tripped=1
      log "budget cap reached: \$$s of \$$CAP"
      [ -f "$RUN_DIR/BUDGET" ] || printf '{"spent_usd": %s, "max_usd": %s, "time": "%s", "by": "guard"}\n' \
        "$s" "$CAP" "$(date -u +%FT%TZ)" > "$RUN_DIR/BUDGET"
      push_budget
      stop "budget cap \$$CAP reached (\$$s spent)"
      tripped=$(date +%s)
    elif [ -n "$tripped" ] && [ $(( $(date +%s) - tripped )) -ge "$restop" ]; then
      # the API accepted the stop (desiredStatus EXITED) but this container still runs: the stop did not hold
      stop "still running $(( $(date +%s) - tripped ))s after the stop was accepted (\$$s spent of \$$CAP)"
      tripped=$(date +%s)
    fi
    sleep "$TICK"
  done
}

case "${1:-}" in
  start)
    mkdir -p "$STATE" "$RUN_DIR"
    [ -f "$STATE/start" ] || echo "${MEDASR_CONTAINER_START:-$(date +%s)}" > "$STATE/start"
    if ! { [ -f "$STATE/pid" ] && kill -0 "$(cat "$STATE/pid")" 2>/dev/null; }; then
      MEDASR_CONTAINER_START=$(cat "$STATE/start") nohup bash "$0" watch >> "$RUN_DIR/guard.log" 2>&1 < /dev/null &
      echo $! > "$STATE/pid"
    fi
    cat "$STATE/start" ;;
  watch) watch ;;
  stop) shift; stop "${*:-asked to}" ;;
  spent) init; spent ;;
  *) echo "usage: $0 start | watch | stop REASON | spent" >&2; exit 2 ;;
esac
