#!/usr/bin/env bash
# Chat completions through three example-server replicas sharing one Redis,
# beside one example server on its sled default, in the same run, with wrk
# on loopback (bounded duration each; the same identity everywhere, so the
# replicas share — and contend for — one caller's counters: the hardest
# case for them). Each server forwards to its own in-process simulator
# (instant answers), as the example server does.
#
# Reports, per configuration: requests/s, p50, p99 and the server CPU time
# per request (user + system from /proc, wrk's own not counted); for the
# replicas, the CPU per request of a replica (all three replicas' CPU over
# all their requests) and Redis's CPU per request. Issue 19's goal: a
# replica's CPU per request <= 1.3x the sled figure. Writes
# target/load/replicas.json for BENCHMARKS.md.
#
#   scripts/load/replicas.sh [SECONDS] [CONNECTIONS]   (default 10 s, 18)
#
# ROUNDS (default 2) rounds of the two configurations in turn (a shared
# machine drifts; taking turns keeps the drift from deciding the ratio).
# CALLERS=own gives each replica a caller of its own instead (no counter
# shared). REPLICA_WORKERS (default 1): each replica's tokio worker threads
# — three replicas share this machine's cores, as they would share a
# node's; the single node keeps the default (one per core).
# Redis: `redis-server` (installed with apt-get when missing) on
# 127.0.0.1:26379, a temporary dir, AOF with `appendfsync everysec`; the
# servers on 127.0.0.1:3808x / 3909x / 3818x. All stopped at the end.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
source scripts/load/lib.sh
SECS=${1:-10}
CONNS=${2:-18}
ROUNDS=${ROUNDS:-2}
REPLICA_WORKERS=${REPLICA_WORKERS:-1}
command -v wrk >/dev/null || { echo "needs wrk (apt-get install wrk)" >&2; exit 1; }
command -v redis-server >/dev/null || {
  apt-get install -y -qq redis-server >/dev/null 2>&1 ||
    { apt-get update -qq && apt-get install -y -qq redis-server >/dev/null; }
}
cargo build -q --release --example server
BIN=./target/release/examples/server
export MAAS_ADMIN_TOKEN=load-admin-token-0123456789
export MAAS_KEY_SECRET=load-key-secret-0123456789abcdef
TOKEN=load-test-token-0123456789
TICKS=$(getconf CLK_TCK)
WORK=$(mktemp -d /tmp/maas-replicas.XXXXXX)
PIDS=()
REDIS=""
cleanup() {
  for p in "${PIDS[@]}" $REDIS; do kill -INT "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}" $REDIS; do wait "$p" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT

ticks_of() { local t=0 p; for p in "$@"; do t=$(( t + $(awk '{ print $14 + $15 }' "/proc/$p/stat") )); done; echo "$t"; }

wait_up() { # URL
  for _ in $(seq 100); do curl -sf -o /dev/null "$1/health" && return 0; sleep 0.1; done
  echo "a server did not start; see $WORK/*.log" >&2
  exit 1
}

serve() { # N LOG [args...]: a server on 3808N/3909N/3818N; its pid appended to PIDS
  local n=$1 log=$2
  shift 2
  "$BIN" --listen "127.0.0.1:3808$n" --admin-listen "127.0.0.1:3909$n" \
    --simulator-listen "127.0.0.1:3818$n" --users scripts/load/users.toml \
    --sim-tokens-per-second 0 --sim-max-concurrent 4096 --max-in-flight 4096 "$@" >"$log" 2>&1 &
  PIDS+=($!)
  wait_up "http://127.0.0.1:3808$n"
}

stop_all() {
  for p in "${PIDS[@]}"; do kill -INT "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  PIDS=()
  if [ -n "$REDIS" ]; then kill "$REDIS" 2>/dev/null || true; wait "$REDIS" 2>/dev/null || true; REDIS=""; fi
}

# load N_SERVERS: wrk against servers 0..N-1 at once (CONNS split evenly);
# sets OUT to "requests=… rps=… p50_us=… p99_us=… socket_errors=… non2xx=…"
# (p50/p99: the largest of the servers').
load() {
  local n=$1 i per=$(( CONNS / $1 )) wrks=()
  for i in $(seq 0 $(( n - 1 ))); do
    local token=$TOKEN
    [ "${CALLERS:-shared}" = shared ] || [ "$i" = 0 ] || token=load-test-token-$i
    TOKEN=$token wrk -t1 -c"$per" -d"${SECS}s" --timeout 10s -s scripts/load/post.lua \
      "http://127.0.0.1:3808$i/v1/chat/completions" >"$WORK/wrk$i.out" 2>&1 &
    wrks+=($!)
  done
  wait "${wrks[@]}" || true
  OUT="x $(cat "$WORK"/wrk*.out | awk '/^RESULT/ {
      for (i = 2; i <= NF; i++) { split($i, kv, "="); v[kv[1]] = kv[2] }
      req += v["requests"]; rps += v["rps"]; err += v["socket_errors"]; bad += v["non2xx"]
      if (v["p50_us"] > p50) p50 = v["p50_us"]; if (v["p99_us"] > p99) p99 = v["p99_us"]
    } END { printf "requests=%d rps=%.0f p50_us=%d p99_us=%d socket_errors=%d non2xx=%d\n", req, rps, p50, p99, err, bad }')"
  rm -f "$WORK"/wrk*.out
}

sled_run() {
  rm -rf "$WORK/sled"
  serve 0 "$WORK/sled.log" --data-dir "$WORK/sled"
  load_tier http://127.0.0.1:39090 "$MAAS_ADMIN_TOKEN"
  load 1 # warm-up: connections, caches, the first counters
  local before after n
  before=$(ticks_of "${PIDS[@]}")
  load 1
  after=$(ticks_of "${PIDS[@]}")
  n=$(field "$OUT" requests)
  stop_all
  OUT+=" cpu_us=$(( (after - before) * 1000000 / TICKS / (n > 0 ? n : 1) ))"
}

replicas_run() {
  rm -rf "$WORK/redis" && mkdir -p "$WORK/redis"
  redis-server --port 26379 --bind 127.0.0.1 --save '' --appendonly yes --appendfsync everysec \
    --dir "$WORK/redis" >"$WORK/redis.log" 2>&1 &
  REDIS=$!
  for _ in $(seq 100); do redis-cli -p 26379 ping >/dev/null 2>&1 && break; sleep 0.1; done
  local i
  for i in 0 1 2; do
    TOKIO_WORKER_THREADS=$REPLICA_WORKERS serve "$i" "$WORK/replica$i.log" --redis redis://127.0.0.1:26379/
  done
  load_tier http://127.0.0.1:39090 "$MAAS_ADMIN_TOKEN"
  sleep 1.2 # the tier reaches the other replicas' caches within a second
  load 3
  local before after rb ra n
  before=$(ticks_of "${PIDS[@]}")
  rb=$(ticks_of "$REDIS")
  redis-cli -p 26379 config resetstat >/dev/null
  load 3
  after=$(ticks_of "${PIDS[@]}")
  ra=$(ticks_of "$REDIS")
  n=$(field "$OUT" requests)
  # Redis commands per request, the most frequent first.
  redis-cli -p 26379 info commandstats | tr -d '\r' | awk -F'[_:=,]' -v n="$n" \
    '/^cmdstat/ { printf "%s %.2f %.1f\n", $2, $4 / (n > 0 ? n : 1), $6 / (n > 0 ? n : 1) }' | sort -k2 -rn | head -8 |
    awk '{ printf "%s%s=%s (%s us)", (NR > 1 ? ", " : "redis commands per request (their server time): "), $1, $2, $3 } END { print "" }' >&2
  stop_all
  OUT+=" cpu_us=$(( (after - before) * 1000000 / TICKS / (n > 0 ? n : 1) ))"
  OUT+=" redis_cpu_us=$(( (ra - rb) * 1000000 / TICKS / (n > 0 ? n : 1) ))"
}

rounds=""
for r in $(seq "$ROUNDS"); do
  sled_run
  s=$OUT
  echo "round $r sled:    ${s#x }" >&2
  replicas_run
  p=$OUT
  echo "round $r replicas: ${p#x }" >&2
  for x in "$s" "$p"; do
    if [ "$(field "$x" non2xx)" != 0 ] || [ "$(field "$x" socket_errors)" != 0 ]; then
      echo "errors in a run: $x" >&2
      exit 1
    fi
  done
  rounds+="${rounds:+,}{\"sled\":$(kv_json "$s"),\"replicas\":$(kv_json "$p")}"
done
median() { sort -n | awk '{ a[NR] = $1 } END { print (NR % 2 ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2) }'; }
json="{\"seconds\":$SECS,\"connections\":$CONNS,\"callers\":\"${CALLERS:-shared}\",\"replica_workers\":$REPLICA_WORKERS,\"rounds\":[$rounds]}"
sc=$(jq '.rounds[].sled.cpu_us' <<<"$json" | median)
pc=$(jq '.rounds[].replicas.cpu_us' <<<"$json" | median)
rc=$(jq '.rounds[].replicas.redis_cpu_us' <<<"$json" | median)
echo "median CPU per request: sled ${sc} us; a replica ${pc} us ($(awk -v a="$pc" -v b="$sc" 'BEGIN { printf "%.2f", a / b }')x, goal <= 1.3x); Redis ${rc} us"
save replicas "$json"
