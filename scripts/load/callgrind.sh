#!/usr/bin/env bash
# Instructions per chat completion in the gateway's process, counted by
# valgrind's callgrind (user space only) while wrk drives the release
# example server over loopback at 16 connections: the inbound HTTP server,
# maas's admission and accounting, and the upstream client, as deployed
# (the upstream is a second example server's simulator, in a process of
# its own). Unlike CPU time on a shared 2-core VM the count repeats to
# within a few percent, so it compares two commits; unlike
# instructions.sh's bench it includes the inbound connection and streams.
# The profile is kept for callgrind_annotate. valgrind is installed with
# apt-get when missing. Writes target/load/callgrind.json.
#
#   scripts/load/callgrind.sh [SECONDS]   (default 8: plain, then streamed)
#
# Each figure is the instructions counted while wrk ran, divided by the
# requests wrk completed (after 3 s of warm-up outside the count).
# The gateway's public listener runs as by default (a thread per core,
# each with its runtime), the rest on one tokio worker (under valgrind
# threads take turns anyway). Ports: gateway 18280/19290/18281, upstream
# 18284/19294/18282.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
source scripts/load/lib.sh
SECS=${1:-8}
need valgrind valgrind
need wrk wrk
[ -n "${MAAS_SERVER_BIN:-}" ] || cargo build -q --release --example server
export MAAS_ADMIN_TOKEN=load-admin-token-0123456789
mkdir -p target/load
PIDS=()
out=target/load/callgrind
cleanup() {
  for p in "${PIDS[@]}"; do kill -INT "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -f "$out".[0-9]*
}
trap cleanup EXIT
launch 127.0.0.1:18284 127.0.0.1:19294 127.0.0.1:18282 /tmp/maas-callgrind-upstream.log \
  --memory --sim-max-concurrent 4096
PIDS+=("$LAUNCHED")
LAUNCH_PREFIX="env TOKIO_WORKER_THREADS=1 valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file=$out.%p" \
  launch 127.0.0.1:18280 127.0.0.1:19290 127.0.0.1:18281 /tmp/maas-callgrind-gateway.log \
  --memory --sim-max-concurrent 4096 --max-in-flight 4096
GATEWAY=$LAUNCHED
PIDS+=("$GATEWAY")
wait_up 127.0.0.1:18284 "the upstream (see /tmp/maas-callgrind-upstream.log)"
wait_up 127.0.0.1:18280 "the gateway under valgrind (see /tmp/maas-callgrind-gateway.log)" 600
point_simulator http://127.0.0.1:19290 http://127.0.0.1:18282
URL=http://127.0.0.1:18280/v1/chat/completions
TOKEN=load-test-token-0123456789
json=""
for kind in plain stream; do
  body='{"model":"simulator","messages":[{"role":"user","content":"Hello, how are you?"}],"max_tokens":16}'
  [ "$kind" = plain ] || body=${body%\}}',"stream":true}'
  TOKEN=$TOKEN BODY=$body wrk -t1 -c16 -d3s -s scripts/load/post.lua "$URL" >/dev/null
  rm -f "$out.$GATEWAY"*
  callgrind_control -z "$GATEWAY" >/dev/null 2>&1
  callgrind_control -i on "$GATEWAY" >/dev/null 2>&1
  r=$(TOKEN=$TOKEN BODY=$body wrk -t1 -c16 -d"${SECS}s" -s scripts/load/post.lua "$URL" | grep '^RESULT')
  callgrind_control -i off "$GATEWAY" >/dev/null 2>&1
  callgrind_control -d "$GATEWAY" >/dev/null 2>&1
  n=$(field "$r" requests)
  [ "$(field "$r" non2xx)" = 0 ] && [ "$n" -gt 0 ] || { echo "wrk: $r" >&2; exit 1; }
  dump=$(ls -t "$out.$GATEWAY".* | head -1)
  total=$(callgrind_annotate "$dump" 2>/dev/null | sed -nE 's/^ *([0-9,]+) .*PROGRAM TOTALS.*/\1/p' | tr -d ,)
  mv "$dump" "$out-$kind.out"
  echo "$kind: $((total / n)) instructions per request in the gateway's process ($n requests;" \
    "callgrind_annotate $out-$kind.out)"
  json+="${json:+,}\"$kind\":{\"requests\":$n,\"instructions\":$((total / n))}"
done
save callgrind "{\"seconds\":$SECS,$json}"
