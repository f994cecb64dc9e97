#!/usr/bin/env bash
# The soak: chat completions through the gateway at a fixed rate for a
# bounded time (default 10 minutes at 200/s) against the release example
# server on the sled store (a fresh data dir). Reports the errors (must be 0)
# and the server's RSS at the start and the end (growth must stay < 10%), and
# writes them to target/load/soak.json for BENCHMARKS.md.
#
#   scripts/soak.sh [SECONDS] [RATE]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/load/lib.sh
SECS=${1:-600}
RATE=${2:-200}
export MAAS_ADMIN_TOKEN=soak-admin-token-0123456789
DATA=$(mktemp -d /tmp/maas-soak.XXXXXX)
cleanup() { rm -rf "$DATA"; }
start_server 127.0.0.1:28080 127.0.0.1:29090 127.0.0.1:28081 /tmp/maas-soak-server.log \
  --data-dir "$DATA" --sim-max-concurrent 1024
load_tier http://127.0.0.1:29090 "$MAAS_ADMIN_TOKEN"
rss() { awk '/VmRSS/ { print $2 }' "/proc/$SERVER/status"; }
soak() {
  ./target/release/examples/soak --url http://127.0.0.1:28080/v1/chat/completions \
    --token load-test-token-0123456789 --rate "$RATE" --seconds "$1"
}
# Warm-up (connection pools, caches, the first usage buckets), then measure.
soak 10 >/dev/null
START=$(rss)
# RSS every tenth of the run, to tell a plateau (caches filling) from a leak.
SAMPLES=$(mktemp)
( for _ in $(seq 9); do sleep $(( SECS / 10 )); rss >>"$SAMPLES" || exit 0; done ) &
SAMPLER=$!
OUT=$(soak "$SECS" | grep '^SOAK') || true
echo "$OUT"
kill $SAMPLER 2>/dev/null || true
wait $SAMPLER 2>/dev/null || true
[ -n "$OUT" ] || { echo "soak: the load loop reported nothing" >&2; exit 1; }
END=$(rss)
GROWTH=$(awk -v a="$START" -v b="$END" 'BEGIN { printf "%.1f", 100 * (b - a) / a }')
SERIES=$(paste -sd, "$SAMPLES")
rm -f "$SAMPLES"
echo "RSS start ${START} kB, end ${END} kB, growth ${GROWTH}% (goal < 10%); every $(( SECS / 10 )) s: ${SERIES}"
save soak "{\"seconds\":$SECS,\"rate\":$RATE,\"run\":$(kv_json "$OUT"),\"rss_start_kb\":$START,\"rss_samples_kb\":[$SERIES],\"rss_end_kb\":$END}"
[ "$(field "$OUT" errors)" = 0 ] || { echo "soak: errors" >&2; exit 1; }
awk -v g="$GROWTH" 'BEGIN { exit !(g < 10) }' || { echo "soak: RSS grew ${GROWTH}%" >&2; exit 1; }
