#!/usr/bin/env bash
# Issue 24's yardstick: the CPU each proxied chat completion costs, nginx
# beside the maas gateway, in the same run, in front of the same upstream
# (the example server's instant simulator), with wrk on loopback: plain at
# 1, 16 and 64 connections, and streamed at 16. Each figure is the server
# side's CPU per request (from /proc: the example server with its
# simulator, and nginx) minus the same requests sent straight to the
# simulator (the direct run), so it is what the proxy adds. Also the p50
# each adds over direct at one connection. nginx (Debian's, one process,
# keep-alive to the upstream, no buffering) is installed with apt-get when
# missing. Writes target/load/hotpath.json for BENCHMARKS.md.
#
#   scripts/load/hotpath.sh [SECONDS_PER_RUN]   (default 10)
#
# ROUNDS (default 3): each run is made that many times, the three targets
# interleaved, and the median kept (CPU per request and p50 each): runs on
# a loaded 2-core machine vary.
#
# Ports: server 18180/19190/18181, nginx 18183.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
source scripts/load/lib.sh
SECS=${1:-10}
command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk >/dev/null; }
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || {
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx-light >/dev/null
}
NGINX=$(command -v nginx || echo /usr/sbin/nginx)

export MAAS_ADMIN_TOKEN=load-admin-token-0123456789
start_server 127.0.0.1:18180 127.0.0.1:19190 127.0.0.1:18181 /tmp/maas-hotpath-server.log \
  --memory --sim-max-concurrent 4096 --max-in-flight 4096
load_tier http://127.0.0.1:19190 "$MAAS_ADMIN_TOKEN"

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
  upstream simulator { server 127.0.0.1:18181; keepalive 128; }
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
cleanup() { kill "$NGINX_PID" 2>/dev/null || true; rm -rf "$WORK"; }
for _ in $(seq 50); do
  curl -s -o /dev/null http://127.0.0.1:18183/health && break
  sleep 0.1
done

# cpu_ticks: user + system clock ticks of the server (with its simulator)
# and nginx so far.
cpu_ticks() { awk '{ t += $14 + $15 } END { print t }' "/proc/$SERVER/stat" "/proc/$NGINX_PID/stat"; }
PLAIN='{"model":"simulator","messages":[{"role":"user","content":"Hello, how are you?"}],"max_tokens":16}'
STREAM='{"model":"simulator","messages":[{"role":"user","content":"Hello, how are you?"}],"max_tokens":16,"stream":true}'

run() { wrk_cpu "$@"; } # name url token connections body
# median NAME URL TOKEN CONNS BODY: the run of ROUNDS whose CPU per request
# is the median, with the median p50 of the ROUNDS (a loaded 2-core machine
# varies from run to run; the rounds of the three targets interleave).
ROUNDS=${ROUNDS:-3}
declare -A got
median_of() { # key: lines "cpu p50 RESULT..." -> the median record
  sort -n <<<"${got[$1]}" | grep -v "^$" | awk -v n="$ROUNDS" 'NR == int((n + 1) / 2) { $1 = ""; $2 = ""; sub(/^  /, ""); print }' |
    sed -E "s/p50_us=[0-9]+/p50_us=$(awk '{ print $2 }' <<<"${got[$1]}" | grep -v "^$" | sort -n | awk -v n="$ROUNDS" 'NR == int((n + 1) / 2)')/"
}
runs=""
for spec in "1 plain" "16 plain" "64 plain" "16 stream"; do
  set -- $spec
  c=$1; kind=$2; body=$PLAIN
  [ "$kind" = stream ] && body=$STREAM
  got=()
  for _ in $(seq "$ROUNDS"); do
    for target in direct nginx gateway; do
      case $target in
        direct) r=$(run direct http://127.0.0.1:18181/v1/chat/completions "" "$c" "$body") ;;
        nginx) r=$(run nginx http://127.0.0.1:18183/v1/chat/completions "" "$c" "$body") ;;
        gateway) r=$(run gateway http://127.0.0.1:18180/v1/chat/completions load-test-token-0123456789 "$c" "$body") ;;
      esac
      got[$target]+="$(field "$r" cpu_us) $(field "$r" p50_us) $r"$'\n'
    done
  done
  d=$(median_of direct); x=$(median_of nginx); g=$(median_of gateway)
  dn=$(field "$d" cpu_us); xn=$(( $(field "$x" cpu_us) - dn )); gn=$(( $(field "$g" cpu_us) - dn ))
  echo "c=$c $kind: CPU per request over direct: nginx ${xn} us, gateway ${gn} us" \
    "($(awk -v g="$gn" -v x="$xn" 'BEGIN { printf "%.1f", (x > 0 ? g / x : 0) }')x);" \
    "p50 over direct: nginx $(( $(field "$x" p50_us) - $(field "$d" p50_us) )) us," \
    "gateway $(( $(field "$g" p50_us) - $(field "$d" p50_us) )) us"
  runs+="${runs:+,}{\"connections\":$c,\"kind\":\"$kind\",\"direct\":$(kv_json "$d"),\"nginx\":$(kv_json "$x"),\"gateway\":$(kv_json "$g")}"
done
save hotpath "{\"seconds\":$SECS,\"rounds\":$ROUNDS,\"runs\":[$runs]}"
