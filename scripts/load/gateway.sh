#!/usr/bin/env bash
# Chat completions through the gateway versus straight to the simulator, on
# loopback, with wrk: 1 (unsaturated latency), 16 and 64 connections, a
# bounded duration each.
# Prints requests/s, p50 and p99 for both and the gateway's overhead, and
# writes them to target/load/gateway.json for BENCHMARKS.md.
#
#   scripts/load/gateway.sh [SECONDS_PER_RUN]   (default 10)
#
# Starts the example server (release build, memory store, an instant
# simulator) on ports 18080/19090/18081 and stops it at the end.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
source scripts/load/lib.sh
SECS=${1:-10}
command -v wrk >/dev/null || { echo "needs wrk (apt-get install wrk)" >&2; exit 1; }

export MAAS_ADMIN_TOKEN=load-admin-token-0123456789
start_server 127.0.0.1:18080 127.0.0.1:19090 127.0.0.1:18081 /tmp/maas-load-server.log \
  --memory --sim-max-concurrent 4096 --max-in-flight 4096
load_tier http://127.0.0.1:19090 "$MAAS_ADMIN_TOKEN"

run() { # name url token connections
  local out
  out=$(TOKEN=$3 wrk -t1 -c"$4" -d"${SECS}s" --timeout 10s -s scripts/load/post.lua "$2" | grep '^RESULT')
  echo "$1 c=$4 $out" >&2
  echo "$out"
}
runs=""
for c in 1 16 64; do
  d=$(run direct http://127.0.0.1:18081/v1/chat/completions "" "$c")
  g=$(run gateway http://127.0.0.1:18080/v1/chat/completions load-test-token-0123456789 "$c")
  echo "overhead c=$c: p50 $(( $(field "$g" p50_us) - $(field "$d" p50_us) )) us (goal <= 100)," \
    "p99 $(( $(field "$g" p99_us) - $(field "$d" p99_us) )) us (goal <= 1000)"
  runs+="${runs:+,}{\"connections\":$c,\"direct\":$(kv_json "$d"),\"gateway\":$(kv_json "$g")}"
done
save gateway "{\"seconds\":$SECS,\"runs\":[$runs]}"
