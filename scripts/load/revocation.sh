#!/usr/bin/env bash
# Revocation at the control plane to refusal on every data plane, on
# loopback: a control plane and two data planes (release example servers,
# memory stores), a tenant with N API keys made at the control plane and
# served by both data planes; then each key in turn is deleted at the
# control plane and both data planes are asked (`GET /v1/me` with the key,
# every few milliseconds, at most 10 s) until both refuse it. Prints the
# distribution of those latencies (issue 20's goal: p99 <= 1 s) and writes
# target/load/revocation.json for BENCHMARKS.md.
#
#   scripts/load/revocation.sh [N]   (default 50 keys)
#
# Ports 127.0.0.1:4808x (API), 4909x (admin), 4818x (simulator); all
# stopped at the end.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
source scripts/load/lib.sh
N=${1:-50}
command -v jq >/dev/null || { echo "needs jq (apt-get install jq)" >&2; exit 1; }
cargo build -q --release --example server
BIN=./target/release/examples/server
export MAAS_ADMIN_TOKEN=revocation-admin-token-0123456789
export MAAS_KEY_SECRET=revocation-key-secret-0123456789
WORK=$(mktemp -d /tmp/maas-revocation.XXXXXX)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill -INT "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  [ -n "${KEEP_WORK:-}" ] || rm -rf "$WORK"
}
trap cleanup EXIT

serve() { # N [args...]
  local n=$1
  shift
  "$BIN" --memory --listen "127.0.0.1:4808$n" --admin-listen "127.0.0.1:4909$n" \
    --simulator-listen "127.0.0.1:4818$n" --users scripts/load/users.toml "$@" \
    >"$WORK/server$n.log" 2>&1 &
  PIDS+=($!)
  for _ in $(seq 100); do curl -sf -o /dev/null "http://127.0.0.1:4808$n/health" && return 0; sleep 0.1; done
  echo "server $n did not start; see $WORK/server$n.log" >&2
  exit 1
}
cp_admin() { # METHOD PATH [BODY]
  curl -sf -X "$1" -H "Authorization: Bearer $MAAS_ADMIN_TOKEN" -H 'Content-Type: application/json' \
    ${3:+-d "$3"} "http://127.0.0.1:49090$2"
}
me() { # PORT SECRET: the status of GET /v1/me
  curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $2" "http://127.0.0.1:$1/v1/me"
}
now_ms() { echo $(( $(date +%s%N) / 1000000 )); }

serve 0
PID=$(cp_admin POST /api/v1/projects '{"name":"edge"}' | jq -r .id)
PKEY=$(cp_admin POST "/api/v1/projects/$PID/api-keys" '{"name":"dp"}' | jq -r .key)
MAAS_PROJECT_KEY=$PKEY serve 1 --control-plane http://127.0.0.1:49090 --project-id "$PID"
MAAS_PROJECT_KEY=$PKEY serve 2 --control-plane http://127.0.0.1:49090 --project-id "$PID"
TID=$(cp_admin POST /api/v1/tenants '{"name":"acme"}' | jq -r .id)
for i in $(seq "$N"); do
  cp_admin POST "/api/v1/tenants/$TID/keys" "{\"name\":\"k$i\"}" | jq -r '"\(.key.id) \(.secret)"'
done >"$WORK/keys"
# Every key served by both data planes (the last one made: the rest came
# in the same or earlier artifacts).
read -r _ LAST < <(tail -1 "$WORK/keys")
deadline=$(( $(now_ms) + 30000 ))
until [ "$(me 48081 "$LAST")" = 200 ] && [ "$(me 48082 "$LAST")" = 200 ]; do
  [ "$(now_ms)" -lt "$deadline" ] || {
    echo "the keys never reached the data planes ($(me 48081 "$LAST"), $(me 48082 "$LAST")); data planes:" >&2
    cp_admin GET "/api/v1/projects/$PID/data-planes" >&2 || true
    exit 1
  }
  sleep 0.05
done

LAT=()
while read -r KID SECRET; do
  t0=$(now_ms)
  cp_admin DELETE "/api/v1/keys/$KID" >/dev/null
  deadline=$(( t0 + 10000 ))
  one=0 two=0
  while [ "$one" != 401 ] || [ "$two" != 401 ]; do
    [ "$one" = 401 ] || one=$(me 48081 "$SECRET")
    [ "$two" = 401 ] || two=$(me 48082 "$SECRET")
    [ "$(now_ms)" -lt "$deadline" ] || { echo "key $KID still served after 10 s ($one, $two)" >&2; exit 1; }
  done
  LAT+=($(( $(now_ms) - t0 )))
done <"$WORK/keys"

sorted=$(printf '%s\n' "${LAT[@]}" | sort -n)
pct() { awk -v p="$1" '{ a[NR] = $1 } END { i = int((NR * p + 99) / 100); if (i < 1) i = 1; print a[i] }' <<<"$sorted"; }
min=$(head -1 <<<"$sorted") p50=$(pct 50) p90=$(pct 90) p99=$(pct 99) max=$(tail -1 <<<"$sorted")
echo "revocation to refusal on both data planes, $N keys: min ${min} ms, p50 ${p50} ms, p90 ${p90} ms, p99 ${p99} ms, max ${max} ms (goal p99 <= 1000 ms)"
save revocation "{\"keys\":$N,\"min_ms\":$min,\"p50_ms\":$p50,\"p90_ms\":$p90,\"p99_ms\":$p99,\"max_ms\":$max}"
