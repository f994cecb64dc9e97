# Shared by scripts/load.sh, scripts/load/gateway.sh, scripts/load/verify.sh
# and scripts/soak.sh (sourced, not run). Each run's figures are also written
# as JSON under target/load/, where scripts/benchmarks.py reads them for
# BENCHMARKS.md.

# Ports: keep servers below 32768, out of Linux's ephemeral range, where a
# wrk connection's own local port could take a server's port between runs.

# start_server PUBLIC ADMIN SIMULATOR LOG [server args...]: builds and starts
# the release example server on the three loopback addresses with the load
# users, stops it on exit, and waits until it answers. MAAS_SERVER_BIN, when
# set, is the server binary to run instead (say a baseline build to compare
# with); nothing is built then.
start_server() {
  [ -n "${MAAS_SERVER_BIN:-}" ] || cargo build -q --release --example server --example soak
  launch "$@"
  SERVER=$LAUNCHED
  trap 'stop_server; cleanup' EXIT
  wait_up "$1" "the server (see $4)"
}
cleanup() { :; }

# launch PUBLIC ADMIN SIMULATOR LOG [server args...]: starts the example
# server (MAAS_SERVER_BIN, else the release build) in the background on the
# three loopback addresses with the load users and an instant simulator;
# its pid in LAUNCHED. LAUNCH_PREFIX, when set, is a command it runs under
# (split on spaces: `env TOKIO_WORKER_THREADS=1`, valgrind and its flags).
launch() {
  local pub=$1 adm=$2 sim=$3 log=$4
  shift 4
  # shellcheck disable=SC2086 # LAUNCH_PREFIX is words on purpose.
  ${LAUNCH_PREFIX:-} "${MAAS_SERVER_BIN:-./target/release/examples/server}" --listen "$pub" \
    --admin-listen "$adm" --simulator-listen "$sim" --users scripts/load/users.toml \
    --sim-tokens-per-second 0 "$@" >"$log" 2>&1 &
  LAUNCHED=$!
}

# wait_up ADDR WHAT [TENTHS]: returns once http://ADDR/health answers, or
# exits saying WHAT did not start after TENTHS tenths of a second (100).
wait_up() {
  for _ in $(seq "${3:-100}"); do
    curl -sf -o /dev/null "http://$1/health" && return 0
    sleep 0.1
  done
  echo "$2 did not start" >&2
  exit 1
}

# need COMMAND PACKAGE: installs PACKAGE with apt-get when COMMAND is
# missing.
need() {
  command -v "$1" >/dev/null || {
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2" >/dev/null
  }
}

# work_dir PREFIX: a temporary WORK dir under /tmp, removed at exit with a
# key creation (WRK) still running stopped (the cleanup start_server's trap
# calls too).
work_dir() {
  WORK=$(mktemp -d "/tmp/$1.XXXXXX")
  WRK=""
  cleanup() {
    if [ -n "$WRK" ]; then
      kill -INT "$WRK" 2>/dev/null || true
      wait "$WRK" 2>/dev/null || true
    fi
    rm -rf "$WORK"
  }
  trap cleanup EXIT
}

# stop_server: stops the server start_server started last (SIGINT, then waits
# for it), once; a script that runs several servers in turn calls it between.
stop_server() {
  [ -n "${SERVER:-}" ] || return 0
  kill -INT "$SERVER" 2>/dev/null || true
  wait "$SERVER" 2>/dev/null || true
  SERVER=
}

# load_tier ADMIN_URL ADMIN_TOKEN: a tier (group load-test) whose limits no
# bounded run can reach, so the runs measure the path, not the refusals.
load_tier() {
  curl -sf -o /dev/null -X POST "$1/api/v1/tiers" \
    -H "Authorization: Bearer $2" -H 'Content-Type: application/json' \
    -d '{"name":"load","level":100,"groups":["load-test"],"requests_per_minute":1000000000,"tokens_per_minute":1000000000000,"models":["*"]}'
}

# point_simulator ADMIN_URL UPSTREAM: the load tier on the server at
# ADMIN_URL, and its `simulator` model sent to the upstream at UPSTREAM (a
# URL) instead of to its own simulator.
point_simulator() {
  load_tier "$1" "$MAAS_ADMIN_TOKEN"
  curl -sf -o /dev/null -X PUT "$1/api/v1/models/simulator" \
    -H "Authorization: Bearer $MAAS_ADMIN_TOKEN" -H 'Content-Type: application/json' \
    -d "{\"url\":\"$2\"}"
}

# kv_json "WORD a=1 b=2": {"a":1,"b":2} (numeric values only).
kv_json() {
  awk '{ printf "{"; for (i = 2; i <= NF; i++) { split($i, kv, "="); printf "%s\"%s\":%s", (i > 2 ? "," : ""), kv[1], kv[2] } print "}" }' <<<"$1"
}

# field "WORD a=1 b=2" a: 1
field() { sed -E "s/.* $2=([0-9.]+).*/\1/" <<<"$1"; }

# save NAME JSON: target/load/NAME.json, stamped with the time and commit.
save() {
  mkdir -p target/load
  printf '{"at":"%s","commit":"%s","result":%s}\n' "$(date -u +%FT%TZ)" \
    "$(git rev-parse --short HEAD 2>/dev/null || echo unknown)" "$2" >"target/load/$1.json"
  echo "wrote target/load/$1.json"
}

# create_keys NAME URL BODY KEYFILE: KEYS keys into KEYFILE, one a line, with
# wrk (scripts/load/create_keys.lua, CREATE_CONNS connections, at most
# CREATE_SECS seconds; its output in $WORK/NAME.create.out); sets CREATE_S
# (seconds it took) or fails. WRK holds wrk's pid while it runs, for a
# cleanup to stop it.
create_keys() {
  local name=$1 url=$2 body=$3 keyfile=$4 start n
  start=$(date +%s.%N)
  TOKEN=$MAAS_ADMIN_TOKEN BODY=$body KEYFILE=$keyfile KEYS=$KEYS \
    wrk -t1 -c"$CREATE_CONNS" -d"${CREATE_SECS}s" --timeout 10s -s scripts/load/create_keys.lua "$url" \
    >"$WORK/$name.create.out" 2>&1 &
  WRK=$!
  # The lua script stops its thread at KEYS keys, but wrk sleeps out -d
  # anyway: interrupt it (SIGINT ends its sleep; it then reports).
  while kill -0 "$WRK" 2>/dev/null && [ ! -e "$keyfile.done" ]; do sleep 0.05; done
  CREATE_S=$(awk -v s="$start" -v e="$(date +%s.%N)" 'BEGIN { printf "%.2f", e - s }')
  for _ in $(seq 50); do kill -INT "$WRK" 2>/dev/null || break; sleep 0.1; done
  wait "$WRK" || true
  WRK=""
  n=0
  [ ! -e "$keyfile" ] || n=$(wc -l <"$keyfile")
  echo "  $(grep '^CREATED' "$WORK/$name.create.out" || echo 'CREATED (no report)') in ${CREATE_S}s"
  if [ "$n" -ne "$KEYS" ]; then
    echo "$(basename "$0"): $name: $n keys created of $KEYS within ${CREATE_SECS}s" \
      "(CREATE_SECS raises the bound); wrk said:" >&2
    tail -20 "$WORK/$name.create.out" >&2
    exit 1
  fi
}

# wrk_cpu NAME URL TOKEN CONNECTIONS [BODY]: SECS seconds of wrk POSTing
# BODY (scripts/load/post.lua's default chat completion if empty) to URL
# with TOKEN as bearer over CONNECTIONS connections; prints wrk's RESULT
# line plus cpu_us, the server side's CPU per request: the caller's
# cpu_ticks (clock ticks of the processes it measures) before and after.
# When the caller also defines own_ticks (the clock ticks of one of them),
# own_us is that one's CPU per request.
wrk_cpu() {
  local out before after n ticks own="" own0 own1
  ticks=$(getconf CLK_TCK)
  declare -F own_ticks >/dev/null && own=1
  before=$(cpu_ticks)
  [ -z "$own" ] || own0=$(own_ticks)
  out=$(TOKEN=$3 BODY=${5:-} wrk -t1 -c"$4" -d"${SECS}s" --timeout 10s -s scripts/load/post.lua "$2" | grep '^RESULT')
  after=$(cpu_ticks)
  [ -z "$own" ] || own1=$(own_ticks)
  n=$(field "$out" requests)
  out+=" cpu_us=$(( (after - before) * 1000000 / ticks / (n > 0 ? n : 1) ))"
  [ -z "$own" ] || out+=" own_us=$(( (own1 - own0) * 1000000 / ticks / (n > 0 ? n : 1) ))"
  echo "$1 c=$4 $out" >&2
  echo "$out"
}
