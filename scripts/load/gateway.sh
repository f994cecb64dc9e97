#!/usr/bin/env bash
# Chat completions through the gateway versus straight to the simulator, on
# loopback, with wrk: 1 (unsaturated latency), 16 and 64 connections, a
# bounded duration each.
# Prints requests/s, p50 and p99 for both and the gateway's overhead.
#
#   scripts/load/gateway.sh [SECONDS_PER_RUN]   (default 10)
#
# Starts the example server (release build, memory store, an instant
# simulator) on ports 18080/19090/18081 and stops it at the end.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
SECS=${1:-10}
command -v wrk >/dev/null || { echo "needs wrk (apt-get install wrk)" >&2; exit 1; }

export MAAS_ADMIN_TOKEN=load-admin-token-0123456789
cargo build -q --release --example server
./target/release/examples/server --memory \
  --listen 127.0.0.1:18080 --admin-listen 127.0.0.1:19090 \
  --simulator-listen 127.0.0.1:18081 --users scripts/load/users.toml \
  --sim-tokens-per-second 0 --sim-max-concurrent 4096 \
  --max-in-flight 4096 >/tmp/maas-load-server.log 2>&1 &
SERVER=$!
trap 'kill -INT $SERVER 2>/dev/null; wait $SERVER 2>/dev/null || true' EXIT
for _ in $(seq 100); do
  curl -sf -o /dev/null http://127.0.0.1:18080/health && break
  sleep 0.1
done
# A tier whose limits the run cannot reach.
curl -sf -o /dev/null -X POST http://127.0.0.1:19090/api/v1/tiers \
  -H "Authorization: Bearer $MAAS_ADMIN_TOKEN" -H 'Content-Type: application/json' \
  -d '{"name":"load","level":100,"groups":["load-test"],"requests_per_minute":1000000000,"tokens_per_minute":1000000000000,"models":["*"]}'

run() { # name url token connections
  local out
  out=$(TOKEN=$3 wrk -t1 -c"$4" -d"${SECS}s" --timeout 10s -s scripts/load/post.lua "$2" | grep '^RESULT')
  echo "$1 c=$4 $out"
}
declare -A P50 P99
for c in 1 16 64; do
  d=$(run direct http://127.0.0.1:18081/v1/chat/completions "" "$c")
  g=$(run gateway http://127.0.0.1:18080/v1/chat/completions load-test-token-0123456789 "$c")
  echo "$d"; echo "$g"
  dp50=$(sed -E 's/.*p50_us=([0-9]+).*/\1/' <<<"$d"); gp50=$(sed -E 's/.*p50_us=([0-9]+).*/\1/' <<<"$g")
  dp99=$(sed -E 's/.*p99_us=([0-9]+).*/\1/' <<<"$d"); gp99=$(sed -E 's/.*p99_us=([0-9]+).*/\1/' <<<"$g")
  echo "overhead c=$c: p50 $((gp50 - dp50)) us (goal <= 100), p99 $((gp99 - dp99)) us (goal <= 1000)"
done
