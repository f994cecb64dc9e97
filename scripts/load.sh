#!/usr/bin/env bash
# Bounded wrk runs on loopback against the example server (release build,
# memory store, an instant simulator): keys.verifyKey, a trivial route,
# /v1/models, and chat completions through the gateway versus straight to the
# simulator. Prints requests/s, p50 and p99 per run and the ratios, and
# writes them to target/load/load.json for BENCHMARKS.md.
#
#   scripts/load.sh [SECONDS_PER_RUN] [CONNECTIONS]   (default 10 s, 16)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/load/lib.sh
SECS=${1:-10}
CONNS=${2:-16}
command -v wrk >/dev/null || { echo "needs wrk (apt-get install wrk)" >&2; exit 1; }
command -v jq >/dev/null || { echo "needs jq (apt-get install jq)" >&2; exit 1; }

export MAAS_ADMIN_TOKEN=load-admin-token-0123456789
LOAD=load-test-token-0123456789
PUB=http://127.0.0.1:18080
ADM=http://127.0.0.1:19090
SIM=http://127.0.0.1:18081
start_server 127.0.0.1:18080 127.0.0.1:19090 127.0.0.1:18081 /tmp/maas-load-server.log \
  --memory --sim-max-concurrent 4096 --max-in-flight 4096
json() { curl -sf -X POST "$1" -H "Authorization: Bearer $2" -H 'Content-Type: application/json' -d "$3"; }
# A tier whose limits the run cannot reach, an API with a key, a maas token.
load_tier $ADM "$MAAS_ADMIN_TOKEN"
API=$(json $PUB/v1/apis.createApi "$MAAS_ADMIN_TOKEN" '{"name":"load"}' | jq -r .apiId)
KEY=$(json $PUB/v1/keys.createKey "$MAAS_ADMIN_TOKEN" "{\"apiId\":\"$API\"}" | jq -r .key)
TOKEN=$(json $PUB/maas-api/v1/tokens $LOAD '{"expiration":"1h"}' | jq -r .token)

declare -A RPS P50 P99 JSON
run() { # name script url token body
  local out
  out=$(TOKEN=$4 BODY=$5 wrk -t1 -c"$CONNS" -d"${SECS}s" --timeout 10s -s "scripts/load/$2" "$3" | grep '^RESULT')
  RPS[$1]=$(field "$out" rps)
  P50[$1]=$(field "$out" p50_us)
  P99[$1]=$(field "$out" p99_us)
  JSON[$1]=$(kv_json "$out")
  printf '%-22s %s\n' "$1" "$out"
  grep -q 'socket_errors=0 non2xx=0' <<<"$out" || echo "  ^ errors in $1" >&2
}
echo "wrk -t1 -c$CONNS -d${SECS}s against the release example server"
run liveness get.lua $PUB/v1/liveness "" ""
run verifyKey post.lua $PUB/v1/keys.verifyKey "" "{\"key\":\"$KEY\"}"
run models get.lua $PUB/v1/models "$TOKEN" ""
run chat-direct post.lua $SIM/v1/chat/completions "" ""
run chat-gateway post.lua $PUB/v1/chat/completions "$TOKEN" ""
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.0f%%", 100 * a / b }'; }
echo "verifyKey: $(ratio "${RPS[verifyKey]}" "${RPS[liveness]}") of the trivial route's requests/s"
echo "/v1/models: $(ratio "${RPS[models]}" "${RPS[liveness]}") of the trivial route's requests/s"
echo "chat through the gateway: $(ratio "${RPS[chat-gateway]}" "${RPS[chat-direct]}") of direct requests/s;" \
  "p50 +$(( P50[chat-gateway] - P50[chat-direct] )) us, p99 +$(( P99[chat-gateway] - P99[chat-direct] )) us"
runs=""
for name in liveness verifyKey models chat-direct chat-gateway; do
  runs+="${runs:+,}\"$name\":${JSON[$name]}"
done
save load "{\"seconds\":$SECS,\"connections\":$CONNS,\"runs\":{$runs}}"
