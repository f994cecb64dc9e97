#!/usr/bin/env bash
# The soak: chat completions through the gateway at a fixed rate for a
# bounded time (default 10 minutes at 200/s) against the release example
# server on the sled store (a fresh data dir). Reports the errors (must be 0)
# and the server's RSS at the start and the end (growth must stay < 10%).
#
#   scripts/soak.sh [SECONDS] [RATE]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
SECS=${1:-600}
RATE=${2:-200}
ADMIN=soak-admin-token-0123456789
DATA=$(mktemp -d /tmp/maas-soak.XXXXXX)
cargo build -q --release --example server --example soak
MAAS_ADMIN_TOKEN=$ADMIN ./target/release/examples/server --data-dir "$DATA" \
  --listen 127.0.0.1:28080 --admin-listen 127.0.0.1:29090 \
  --simulator-listen 127.0.0.1:28081 --users scripts/load/users.toml \
  --sim-tokens-per-second 0 --sim-max-concurrent 1024 >/tmp/maas-soak-server.log 2>&1 &
SERVER=$!
trap 'kill -INT $SERVER 2>/dev/null; wait $SERVER 2>/dev/null || true; rm -rf "$DATA"' EXIT
for _ in $(seq 100); do
  curl -sf -o /dev/null http://127.0.0.1:28080/health && break
  sleep 0.1
done
curl -sf -o /dev/null -X POST http://127.0.0.1:29090/api/v1/tiers \
  -H "Authorization: Bearer $ADMIN" -H 'Content-Type: application/json' \
  -d '{"name":"load","level":100,"groups":["load-test"],"requests_per_minute":1000000000,"tokens_per_minute":1000000000000,"models":["*"]}'
rss() { awk '/VmRSS/ { print $2 }' "/proc/$SERVER/status"; }
URL=http://127.0.0.1:28080/v1/chat/completions
# Warm-up (connection pools, caches, the first usage buckets), then measure.
./target/release/examples/soak --url $URL --token load-test-token-0123456789 --rate "$RATE" --seconds 10 >/dev/null
START=$(rss)
./target/release/examples/soak --url $URL --token load-test-token-0123456789 --rate "$RATE" --seconds "$SECS" | tee /tmp/maas-soak.out
END=$(rss)
GROWTH=$(awk -v a="$START" -v b="$END" 'BEGIN { printf "%.1f", 100 * (b - a) / a }')
echo "RSS start ${START} kB, end ${END} kB, growth ${GROWTH}% (goal < 10%)"
grep -q 'errors=0 ' /tmp/maas-soak.out || { echo "soak: errors" >&2; exit 1; }
awk -v g="$GROWTH" 'BEGIN { exit !(g < 10) }' || { echo "soak: RSS grew ${GROWTH}%" >&2; exit 1; }
