#!/usr/bin/env bash
# Chat completions through the gateway versus straight to the simulator, on
# loopback, with wrk: 1 (unsaturated latency), 16 and 64 connections, a
# bounded duration each. Beside them, the floor: the same request through a
# bare reverse proxy on the gateway's own stack (examples/bare_proxy.rs:
# axum, the same pooled reqwest client, nothing of maas) in front of its own
# in-process simulator, as the example server has, so the overhead splits
# into the extra HTTP hop and what maas adds to it.
# Prints requests/s, p50 and p99 of each, the gateway's overhead, and the
# CPU time the server processes spent per request (from /proc; wrk's own is
# not counted), and writes them to target/load/gateway.json for
# BENCHMARKS.md.
#
#   scripts/load/gateway.sh [SECONDS_PER_RUN]   (default 10)
#
# Starts the example server (release build, memory store, an instant
# simulator) on ports 18080/19090/18081 and the bare proxy on 18082, and
# stops them at the end.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
source scripts/load/lib.sh
SECS=${1:-10}
command -v wrk >/dev/null || { echo "needs wrk (apt-get install wrk)" >&2; exit 1; }

export MAAS_ADMIN_TOKEN=load-admin-token-0123456789
start_server 127.0.0.1:18080 127.0.0.1:19090 127.0.0.1:18081 /tmp/maas-load-server.log \
  --memory --sim-max-concurrent 4096 --max-in-flight 4096
load_tier http://127.0.0.1:19090 "$MAAS_ADMIN_TOKEN"
cargo build -q --release --example bare_proxy
./target/release/examples/bare_proxy 127.0.0.1:18082 --simulator >/tmp/maas-load-proxy.log 2>&1 &
PROXY=$!
cleanup() { kill "$PROXY" 2>/dev/null || true; }
for _ in $(seq 50); do
  curl -s -o /dev/null http://127.0.0.1:18082/ && break
  sleep 0.1
done

# cpu_ticks: user + system clock ticks of the server and the proxy so far.
cpu_ticks() { awk '{ t += $14 + $15 } END { print t }' "/proc/$SERVER/stat" "/proc/$PROXY/stat"; }

run() { wrk_cpu "$@"; } # name url token connections
runs=""
for c in 1 16 64; do
  d=$(run direct http://127.0.0.1:18081/v1/chat/completions "" "$c")
  p=$(run proxy http://127.0.0.1:18082/v1/chat/completions "" "$c")
  g=$(run gateway http://127.0.0.1:18080/v1/chat/completions load-test-token-0123456789 "$c")
  echo "overhead c=$c: p50 $(( $(field "$g" p50_us) - $(field "$d" p50_us) )) us (goal <= 100;" \
    "bare proxy $(( $(field "$p" p50_us) - $(field "$d" p50_us) )) us)," \
    "p99 $(( $(field "$g" p99_us) - $(field "$d" p99_us) )) us (goal <= 1000);" \
    "cpu per request: direct $(field "$d" cpu_us) us, proxy $(field "$p" cpu_us) us," \
    "gateway $(field "$g" cpu_us) us"
  runs+="${runs:+,}{\"connections\":$c,\"direct\":$(kv_json "$d"),\"proxy\":$(kv_json "$p"),\"gateway\":$(kv_json "$g")}"
done
save gateway "{\"seconds\":$SECS,\"runs\":[$runs]}"
