#!/usr/bin/env bash
# Issue 24's yardstick: the CPU each proxied chat completion costs, nginx
# beside the maas gateway, in the same run, in front of the same upstream,
# with wrk on loopback: plain at 1, 16 and 64 connections, and streamed at
# 16. Also the p50 each adds over direct at one connection.
#
# The upstream is an example server's instant simulator in a process of
# its own, as a deployment's model server is. Each figure is the CPU per
# request (from /proc) of the upstream plus the proxy in front of it,
# minus the upstream's alone when the same requests go straight to it (the
# direct run): what the proxy adds, its effect on the upstream included.
# Beside it, the proxy's own CPU per request (its process alone), which
# the upstream's run-to-run drift (several µs a request) does not move.
# nginx (Debian's, one worker process, keep-alive to the upstream, no
# buffering) is installed with apt-get when missing. The gateway (the
# release example server on its memory store, its `simulator` model
# pointed at the upstream) is measured twice: as it runs by default, its
# public listener served by a thread per core, each with a runtime of its
# own, and with `--listen-threads 0`, served by tokio's work-stealing
# runtime (a worker per core). With PGO_BIN set (a build of
# scripts/pgo.sh: target/pgo/server), that binary is measured too, as a
# fifth target in the same rounds. Writes target/load/hotpath.json for
# BENCHMARKS.md.
#
#   scripts/load/hotpath.sh [SECONDS_PER_RUN]   (default 10)
#
# ROUNDS (default 3): each run is made that many times, the four targets
# interleaved, and the median kept (CPU per request and p50 each): runs on
# a loaded 2-core machine vary.
#
# Ports: gateways 18180/19190/18181, 18185/19195/18186 and (PGO_BIN)
# 18187/19197/18188, nginx 18183, upstream 18184/19194/18182.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
source scripts/load/lib.sh
SECS=${1:-10}
need wrk wrk
[ -x /usr/sbin/nginx ] || need nginx nginx-light
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
export MAAS_ADMIN_TOKEN=load-admin-token-0123456789
SIM=127.0.0.1:18182
start_server 127.0.0.1:18180 127.0.0.1:19190 127.0.0.1:18181 /tmp/maas-hotpath-server.log \
  --memory --sim-max-concurrent 4096 --max-in-flight 4096
# background NAME PUBLIC ADMIN SIMULATOR [ARG...]: another example server
# (with ARGs); its pid in PIDS[NAME].
declare -A PIDS
background() {
  local name=$1 log=/tmp/maas-hotpath-$1.log
  launch "$2" "$3" "$4" "$log" --memory --sim-max-concurrent 4096 --max-in-flight 4096 "${@:5}"
  PIDS[$name]=$LAUNCHED
  wait_up "$2" "the $name server (see $log)"
}
background upstream 127.0.0.1:18184 127.0.0.1:19194 "$SIM"
background stealing 127.0.0.1:18185 127.0.0.1:19195 127.0.0.1:18186 --listen-threads 0
PIDS[gateway]=$SERVER
ADMINS="127.0.0.1:19190 127.0.0.1:19195"
TARGETS="direct nginx gateway stealing"
if [ -n "${PGO_BIN:-}" ]; then
  MAAS_SERVER_BIN=$PGO_BIN background pgo 127.0.0.1:18187 127.0.0.1:19197 127.0.0.1:18188
  ADMINS+=" 127.0.0.1:19197"
  TARGETS+=" pgo"
fi
for admin in $ADMINS; do
  point_simulator "http://$admin" "http://$SIM"
done

WORK=$(mktemp -d /tmp/maas-hotpath.XXXXXX)
mkdir -p "$WORK/logs"
cat >"$WORK/nginx.conf" <<CONF
daemon off;
master_process off;
worker_processes 1;
pid $WORK/nginx.pid;
error_log $WORK/logs/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $WORK/body;
  proxy_temp_path $WORK/proxy;
  upstream simulator { server $SIM; keepalive 128; }
  server {
    listen 127.0.0.1:18183;
    location / {
      proxy_pass http://simulator;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_buffering off;
    }
  }
}
CONF
"$NGINX" -c "$WORK/nginx.conf" -p "$WORK" &
NGINX_PID=$!
# Called by start_server's exit trap, after the server stops.
cleanup() {
  kill "$NGINX_PID" 2>/dev/null || true
  for name in upstream stealing pgo; do
    [ -z "${PIDS[$name]:-}" ] || kill -INT "${PIDS[$name]}" 2>/dev/null || true
  done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
for _ in $(seq 50); do
  curl -s -o /dev/null http://127.0.0.1:18183/health && break
  sleep 0.1
done

PIDS[nginx]=$NGINX_PID
# cpu_ticks: user + system clock ticks so far of the upstream and of the
# proxy of the current target (none for direct).
cpu_ticks() {
  awk '{ t += $14 + $15 } END { print t }' "/proc/${PIDS[upstream]}/stat" \
    ${PIDS[$target]:+"/proc/${PIDS[$target]}/stat"}
}
# own_ticks: the same of the proxy alone (0 for direct): what it spends
# itself, without the upstream's cost (which moves by several µs a request
# between runs, and which a proxy also changes).
own_ticks() {
  if [ -n "${PIDS[$target]:-}" ]; then awk '{ print $14 + $15 }' "/proc/${PIDS[$target]}/stat"; else echo 0; fi
}
PLAIN='{"model":"simulator","messages":[{"role":"user","content":"Hello, how are you?"}],"max_tokens":16}'
STREAM='{"model":"simulator","messages":[{"role":"user","content":"Hello, how are you?"}],"max_tokens":16,"stream":true}'

run() { wrk_cpu "$@"; } # name url token connections body
# median_of TARGET: the run of ROUNDS whose CPU per request is the
# median, with the median p50 and the median own CPU of the ROUNDS (a
# loaded 2-core machine varies from run to run; the rounds of the four
# targets interleave).
ROUNDS=${ROUNDS:-3}
declare -A got
median_field() { # TARGET FIELD: the median of FIELD over its rounds
  grep -oE " $2=[0-9]+" <<<"${got[$1]}" | cut -d= -f2 | sort -n | awk -v n="$ROUNDS" 'NR == int((n + 1) / 2)'
}
median_of() { # key: lines "cpu p50 RESULT..." -> the median record
  sort -n <<<"${got[$1]}" | grep -v "^$" | awk -v n="$ROUNDS" 'NR == int((n + 1) / 2) { $1 = ""; $2 = ""; sub(/^  /, ""); print }' |
    sed -E "s/p50_us=[0-9]+/p50_us=$(median_field "$1" p50_us)/; s/own_us=[0-9]+/own_us=$(median_field "$1" own_us)/"
}
ratio() { awk -v g="$1" -v x="$2" 'BEGIN { printf "%.1f", (x > 0 ? g / x : 0) }'; }
p50_over() { echo $(( $(field "$1" p50_us) - $(field "$d" p50_us) )); }
runs=""
for spec in "1 plain" "16 plain" "64 plain" "16 stream"; do
  set -- $spec
  c=$1; kind=$2; body=$PLAIN
  [ "$kind" = stream ] && body=$STREAM
  got=()
  for _ in $(seq "$ROUNDS"); do
    for target in $TARGETS; do
      case $target in
        direct) r=$(run direct "http://$SIM/v1/chat/completions" "" "$c" "$body") ;;
        nginx) r=$(run nginx http://127.0.0.1:18183/v1/chat/completions "" "$c" "$body") ;;
        gateway) r=$(run gateway http://127.0.0.1:18180/v1/chat/completions load-test-token-0123456789 "$c" "$body") ;;
        stealing) r=$(run stealing http://127.0.0.1:18185/v1/chat/completions load-test-token-0123456789 "$c" "$body") ;;
        pgo) r=$(run pgo http://127.0.0.1:18187/v1/chat/completions load-test-token-0123456789 "$c" "$body") ;;
      esac
      got[$target]+="$(field "$r" cpu_us) $(field "$r" p50_us) $r"$'\n'
    done
  done
  d=$(median_of direct); x=$(median_of nginx); g=$(median_of gateway); g1=$(median_of stealing)
  dn=$(field "$d" cpu_us); xn=$(( $(field "$x" cpu_us) - dn ))
  gn=$(( $(field "$g" cpu_us) - dn )); g1n=$(( $(field "$g1" cpu_us) - dn ))
  xo=$(field "$x" own_us); go=$(field "$g" own_us)
  echo "c=$c $kind: CPU per request over direct: nginx ${xn} us, gateway ${gn} us ($(ratio "$gn" "$xn")x)," \
    "gateway on the work-stealing runtime ${g1n} us ($(ratio "$g1n" "$xn")x); the proxy's own: nginx ${xo} us," \
    "gateway ${go} us ($(ratio "$go" "$xo")x); p50 over direct: nginx $(p50_over "$x") us," \
    "gateway $(p50_over "$g") us ($(ratio "$(p50_over "$g")" "$(p50_over "$x")")x), on the work-stealing runtime $(p50_over "$g1") us"
  pgo=""
  if [ -n "${PGO_BIN:-}" ]; then
    gp=$(median_of pgo); gpn=$(( $(field "$gp" cpu_us) - dn ))
    echo "c=$c $kind, the PGO build: CPU per request over direct ${gpn} us ($(ratio "$gpn" "$xn")x), own" \
      "$(field "$gp" own_us) us ($(ratio "$(field "$gp" own_us)" "$xo")x); p50 over direct $(p50_over "$gp") us" \
      "($(ratio "$(p50_over "$gp")" "$(p50_over "$x")")x)"
    pgo=",\"gateway_pgo\":$(kv_json "$gp")"
  fi
  runs+="${runs:+,}{\"connections\":$c,\"kind\":\"$kind\",\"direct\":$(kv_json "$d"),\"nginx\":$(kv_json "$x"),\"gateway\":$(kv_json "$g"),\"gateway_work_stealing\":$(kv_json "$g1")$pgo}"
done
save hotpath "{\"upstream\":\"process\",\"seconds\":$SECS,\"rounds\":$ROUNDS,\"runs\":[$runs]}"
