#!/usr/bin/env bash
# Unkey-compatible keys.verifyKey over HTTP on loopback with wrk, a key drawn
# at random per request out of N keys, against the release example server on
# the memory store and on the sled store (a fresh data dir), each without and
# with `remaining` on every key (10^9, which no run exhausts): four
# configurations, one server each, one at a time. Per configuration and
# round: a fresh server, an api, N keys created with wrk
# (scripts/load/create_keys.lua, one thread, many connections, bounded in
# time; the count must be N), then a bounded wrk run of
# scripts/load/verify_random.lua, whose answers must all be valid. ROUNDS
# rounds (default 3) of the four in turn: a shared 2-core machine drifts by
# 10-20% over minutes, and taking turns keeps the drift from deciding the
# ratios. Prints every run, then per configuration the medians of
# requests/s, p50 and p99, the sled/memory ratios of the medians beside the
# goals (without remaining: sled p99 <= 2x memory's and requests/s >= 80% of
# memory's; with remaining: p99 <= 3x and requests/s >= 50%), each server's
# RSS after its last run and the last sled data dirs' size, and writes them
# to target/load/verify.json. Beside them, the server's CPU time per request
# (user + system, from /proc; wrk's own is not counted).
#
#   scripts/load/verify.sh [SECONDS] [CONNECTIONS] [KEYS]   (default 10 s, 16, 50000)
#
# MAAS_SERVER_BIN=path runs that server binary instead of building and running
# ./target/release/examples/server. ROUNDS (default 3) is the number of
# rounds; CREATE_CONNS (default 64) and CREATE_SECS (default 30 + KEYS/500)
# are the key creation's connections and time bound. The servers listen on
# 127.0.0.1:2808x (API), 2909x (admin) and 2818x (simulator); the keys and
# the sled data dirs live in a temporary dir under /tmp; both are gone at the
# end.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
source scripts/load/lib.sh
SECS=${1:-10}
CONNS=${2:-16}
ROUNDS=${ROUNDS:-3}
KEYS=${3:-50000}
CREATE_CONNS=${CREATE_CONNS:-64}
CREATE_SECS=${CREATE_SECS:-$(( 30 + KEYS / 500 ))}
command -v wrk >/dev/null || { echo "needs wrk (apt-get install wrk)" >&2; exit 1; }
command -v jq >/dev/null || { echo "needs jq (apt-get install jq)" >&2; exit 1; }

export MAAS_ADMIN_TOKEN=load-admin-token-0123456789
work_dir maas-verify

json() { curl -sf -X POST "$1" -H "Authorization: Bearer $2" -H 'Content-Type: application/json' -d "$3"; }
rss() { awk '/VmRSS/ { print $2 }' "/proc/$SERVER/status"; }
# cpu_ticks: the server's user + system clock ticks so far.
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$SERVER/stat"; }
TICKS=$(getconf CLK_TCK)

declare -A RPS P50 P99 RSS JSON DATA_KB ROUND_OUT
NAMES=(memory sled memory+remaining sled+remaining)
# run_config INDEX NAME ROUND: one configuration, from a fresh server (and a
# fresh data dir) to its stop: an api, KEYS keys, one bounded wrk run.
run_config() {
  local i=$1 name=$2 round=$3 pub adm sim data="" out body api keyfile before after n
  pub=127.0.0.1:$(( 28080 + i )) adm=127.0.0.1:$(( 29090 + i )) sim=127.0.0.1:$(( 28180 + i ))
  local store=(--memory)
  if [[ $name == sled* ]]; then
    data="$WORK/${name/+/-}-$round.data"
    mkdir "$data"
    store=(--data-dir "$data")
  fi
  start_server "$pub" "$adm" "$sim" "/tmp/maas-verify-${name/+/-}.log" "${store[@]}"
  api=$(json "http://$pub/v1/apis.createApi" "$MAAS_ADMIN_TOKEN" '{"name":"verify-load"}' | jq -r .apiId) \
    || { echo "verify.sh: $name: apis.createApi failed" >&2; exit 1; }
  body="{\"apiId\":\"$api\"}"
  [[ $name != *+remaining ]] || body="{\"apiId\":\"$api\",\"remaining\":1000000000}"
  keyfile="$WORK/${name/+/-}-$round.keys"
  create_keys "${name/+/-}" "http://$pub/v1/keys.createKey" "$body" "$keyfile" >/dev/null
  before=$(cpu_ticks)
  out=$(KEYFILE=$keyfile wrk -t1 -c"$CONNS" -d"${SECS}s" --timeout 10s -s scripts/load/verify_random.lua \
    "http://$pub/v1/keys.verifyKey" | grep '^RESULT') \
    || { echo "verify.sh: $name: wrk reported nothing" >&2; exit 1; }
  after=$(cpu_ticks)
  n=$(field "$out" requests)
  out+=" cpu_us=$(( (after - before) * 1000000 / TICKS / (n > 0 ? n : 1) ))"
  RSS[$name]=$(rss)
  stop_server
  out+=" create_s=$CREATE_S"
  out+=" create_per_s=$(awk -v n="$KEYS" -v s="$CREATE_S" 'BEGIN { printf "%.0f", n / s }')"
  if [ -n "$data" ]; then
    DATA_KB[$name]=$(du -sk "$data" | cut -f1)
    rm -rf "$data"
  fi
  rm -f "$keyfile" "$keyfile.done"
  echo "  $name: $out"
  grep -q 'socket_errors=0 non2xx=0 invalid=0' <<<"$out" || echo "  ^ WARNING: errors in $name" >&2
  ROUND_OUT[$name]+="$out"$'\n'
}

# median NAME FIELD: the median of FIELD over the configuration's runs.
median() {
  grep -o " $2=[0-9.]*" <<<"${ROUND_OUT[$1]}" | cut -d= -f2 | sort -n \
    | awk '{ v[NR] = $1 } END { print (NR % 2 ? v[(NR + 1) / 2] : int((v[NR / 2] + v[NR / 2 + 1]) / 2)) }'
}

echo "keys.verifyKey, a random key of $KEYS per request: wrk -t1 -c$CONNS -d${SECS}s per configuration" \
  "and round, $ROUNDS rounds, against ${MAAS_SERVER_BIN:-the release example server}"
# The configurations take turns, round after round: a machine that slows
# down or speeds up during the run moves them all alike, and the medians
# compare configurations measured side by side.
for round in $(seq "$ROUNDS"); do
  echo "round $round of $ROUNDS"
  for i in "${!NAMES[@]}"; do
    run_config "$i" "${NAMES[$i]}" "$round"
  done
done
for name in "${NAMES[@]}"; do
  RPS[$name]=$(median "$name" rps)
  P50[$name]=$(median "$name" p50_us)
  P99[$name]=$(median "$name" p99_us)
  out="MEDIAN requests=$(median "$name" requests) rps=${RPS[$name]} p50_us=${P50[$name]} p99_us=${P99[$name]}"
  out+=" cpu_us=$(median "$name" cpu_us) rss_kb=${RSS[$name]} create_s=$(median "$name" create_s)"
  out+=" create_per_s=$(median "$name" create_per_s)"
  [ -z "${DATA_KB[$name]:-}" ] || out+=" data_kb=${DATA_KB[$name]}"
  JSON[$name]=$(kv_json "$out")
done

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", (b > 0 ? a / b : 0) }'; }
# verdict VALUE OP GOAL: met or MISSED.
verdict() { awk -v v="$1" -v op="$2" -v g="$3" 'BEGIN { ok = op == "<=" ? v <= g : v >= g; print ok ? "met" : "MISSED" }'; }
echo
printf '%-18s %9s %8s %8s %9s %9s\n' "median of $ROUNDS" rps p50_us p99_us rss_kb data_kb
for name in "${NAMES[@]}"; do
  printf '%-18s %9s %8s %8s %9s %9s\n' "$name" "${RPS[$name]}" "${P50[$name]}" "${P99[$name]}" \
    "${RSS[$name]}" "${DATA_KB[$name]:--}"
done
R_RPS=$(ratio "${RPS[sled]}" "${RPS[memory]}")
R_P99=$(ratio "${P99[sled]}" "${P99[memory]}")
RR_RPS=$(ratio "${RPS[sled+remaining]}" "${RPS[memory+remaining]}")
RR_P99=$(ratio "${P99[sled+remaining]}" "${P99[memory+remaining]}")
echo "without remaining: sled/memory requests/s $R_RPS (goal >= 0.80: $(verdict "$R_RPS" '>=' 0.80))," \
  "p99 ${R_P99}x (goal <= 2: $(verdict "$R_P99" '<=' 2))"
echo "with remaining:    sled/memory requests/s $RR_RPS (goal >= 0.50: $(verdict "$RR_RPS" '>=' 0.50))," \
  "p99 ${RR_P99}x (goal <= 3: $(verdict "$RR_P99" '<=' 3))"

runs=""
for name in "${NAMES[@]}"; do
  runs+="${runs:+,}\"$name\":${JSON[$name]}"
done
save verify "{\"seconds\":$SECS,\"rounds\":$ROUNDS,\"connections\":$CONNS,\"keys\":$KEYS,\"create_connections\":$CREATE_CONNS,\
\"runs\":{$runs},\"ratios\":{\"rps\":$R_RPS,\"p99\":$R_P99,\"rps_remaining\":$RR_RPS,\"p99_remaining\":$RR_P99},\
\"goals\":{\"rps\":0.8,\"p99\":2,\"rps_remaining\":0.5,\"p99_remaining\":3}}"
