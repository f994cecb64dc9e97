#!/usr/bin/env bash
# What `kill -9` takes from the sled store, measured: the release example
# server on a fresh sled data dir, then for a few seconds at once, with wrk,
# keys.verifyKey of a key with `remaining` (each VALID answer is a use
# spent) and chat completions through the gateway (each 200 is a request
# whose usage is recorded); the server is killed with SIGKILL mid-load and
# started again. Compares what the clients were answered with what the
# store holds after the restart:
#
# - uses spent: answered VALID <= spent in the store (the goal: nothing
#   answered is given back; the rest were in flight at the kill);
# - verification outcomes and usage: answered vs recorded (the usage
#   ledger's last, unflushed interval is what a kill can lose).
#
#   scripts/load/kill9.sh [SECONDS_BEFORE_KILL] [RUNS]   (default 3, 3)
#
# MAAS_SERVER_BIN=path runs that server binary instead of building one.
# Listens on 127.0.0.1:2806x; the data dir lives under /tmp, gone at the end.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
source scripts/load/lib.sh
SECS=${1:-3}
RUNS=${2:-3}
command -v wrk >/dev/null || { echo "needs wrk (apt-get install wrk)" >&2; exit 1; }
command -v jq >/dev/null || { echo "needs jq (apt-get install jq)" >&2; exit 1; }

export MAAS_ADMIN_TOKEN=load-admin-token-0123456789
work_dir maas-kill9
PUB=http://127.0.0.1:28060
ADM=http://127.0.0.1:29060
REMAINING=1000000000
serve() {
  start_server 127.0.0.1:28060 127.0.0.1:29060 127.0.0.1:28160 /tmp/maas-kill9.log \
    --data-dir "$WORK/data" --sim-max-concurrent 4096 --max-in-flight 4096
}
json() { curl -sf -X POST "$1" -H "Authorization: Bearer $MAAS_ADMIN_TOKEN" -H 'Content-Type: application/json' -d "$2"; }
get() { curl -sf "$1" -H "Authorization: Bearer $MAAS_ADMIN_TOKEN"; }

serve
load_tier $ADM "$MAAS_ADMIN_TOKEN"
API=$(json $PUB/v1/apis.createApi '{"name":"kill9"}' | jq -r .apiId)
created=$(json $PUB/v1/keys.createKey "{\"apiId\":\"$API\",\"remaining\":$REMAINING}")
KEY_ID=$(jq -r .keyId <<<"$created")
jq -r .key <<<"$created" >"$WORK/keys"
FROM=$(( $(date +%s) * 1000 - 60000 ))

answered_valid=0 answered_chat=0
runs=""
for run in $(seq "$RUNS"); do
  KEYFILE=$WORK/keys wrk -t1 -c8 -d"$(( SECS + 2 ))s" --timeout 2s -s scripts/load/verify_random.lua \
    "$PUB/v1/keys.verifyKey" >"$WORK/verify.out" 2>&1 &
  V=$!
  TOKEN=load-test-token-0123456789 wrk -t1 -c8 -d"$(( SECS + 2 ))s" --timeout 2s -s scripts/load/post.lua \
    "$PUB/v1/chat/completions" >"$WORK/chat.out" 2>&1 &
  C=$!
  sleep "$SECS"
  kill -KILL "$SERVER"
  wait "$SERVER" 2>/dev/null || true
  wait "$V" "$C" || true
  v=$(grep '^RESULT' "$WORK/verify.out")
  c=$(grep '^RESULT' "$WORK/chat.out")
  # Every completed answer of the verify run is VALID but the `invalid` ones.
  valid=$(( $(field "$v" requests) - $(field "$v" invalid) ))
  chat=$(( $(field "$c" requests) - $(field "$c" non2xx) ))
  answered_valid=$(( answered_valid + valid ))
  answered_chat=$(( answered_chat + chat ))

  serve
  left=$(get "$PUB/v1/keys.getKey?keyId=$KEY_ID" | jq -r .remaining)
  spent=$(( REMAINING - left ))
  TO=$(( $(date +%s) * 1000 + 60000 ))
  recorded_valid=$(get "$PUB/v1/keys.getVerifications?keyId=$KEY_ID&start=$FROM&end=$TO" |
    jq '[.verifications[].success] | add // 0')
  recorded_chat=$(get "$ADM/api/v1/usage?from=$FROM&to=$TO" | jq '[.[].usage.requests] | add // 0')
  echo "run $run (SIGKILL after ${SECS}s of load): answered VALID $answered_valid, spent in the store $spent" \
    "($(( spent - answered_valid )) in flight at the kills);" \
    "verifications recorded $recorded_valid of $answered_valid answered;" \
    "chat usage recorded $recorded_chat of $answered_chat answered"
  if [ "$spent" -lt "$answered_valid" ]; then
    echo "kill9.sh: FAILED: $(( answered_valid - spent )) answered uses were given back" >&2
    exit 1
  fi
  runs+="${runs:+,}{\"answered_valid\":$answered_valid,\"spent\":$spent,\"recorded_valid\":$recorded_valid,\
\"answered_chat\":$answered_chat,\"recorded_chat\":$recorded_chat}"
done
stop_server
save kill9 "{\"seconds_before_kill\":$SECS,\"runs\":[$runs]}"
