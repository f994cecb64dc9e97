#!/usr/bin/env bash
# The sled store's footprint: the release example server on a fresh sled
# data dir, N keys created over HTTP (keys.createKey, as a user would, with
# wrk: scripts/load/create_keys.lua), then keys.verifyKey of a random key of
# them for a bounded run (so the verification cache fills up to its
# capacity). Prints the data dir's size and the server's RSS (now and peak)
# in all and per key, before and after a graceful restart, beside issue
# 17's goals (<= 1 KB per key on disk, RSS <= 1 GB at 1M keys), and writes
# them to target/load/footprint.json.
#
#   scripts/load/footprint.sh [KEYS] [VERIFY_SECONDS]   (default 100000, 10)
#
# MAAS_SERVER_BIN=path runs that server binary instead of building one.
# CREATE_CONNS (default 64) and CREATE_SECS (default 60 + KEYS/500) bound
# the key creation. Listens on 127.0.0.1:2807x; the data dir and the keys
# live in a temporary dir under /tmp, gone at the end.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
source scripts/load/lib.sh
KEYS=${1:-100000}
SECS=${2:-10}
CREATE_CONNS=${CREATE_CONNS:-64}
CREATE_SECS=${CREATE_SECS:-$(( 60 + KEYS / 500 ))}
command -v wrk >/dev/null || { echo "needs wrk (apt-get install wrk)" >&2; exit 1; }
command -v jq >/dev/null || { echo "needs jq (apt-get install jq)" >&2; exit 1; }

export MAAS_ADMIN_TOKEN=load-admin-token-0123456789
work_dir maas-footprint
PUB=127.0.0.1:28070
DATA=$WORK/data
status() { awk -v k="$1" '$1 == k":" { print $2 }' "/proc/$SERVER/status"; }
data_kb() { du -sk "$DATA" | cut -f1; }
per_key() { awk -v kb="$1" -v n="$KEYS" 'BEGIN { printf "%.0f", kb * 1024 / n }'; }
serve() { start_server "$PUB" 127.0.0.1:29070 127.0.0.1:28170 /tmp/maas-footprint.log --data-dir "$DATA"; }

echo "sled footprint: $KEYS keys created over HTTP, then ${SECS}s of verifyKey on a random one"
serve
api=$(curl -sf -X POST "http://$PUB/v1/apis.createApi" -H "Authorization: Bearer $MAAS_ADMIN_TOKEN" \
  -H 'Content-Type: application/json' -d '{"name":"footprint"}' | jq -r .apiId)
create_keys footprint "http://$PUB/v1/keys.createKey" "{\"apiId\":\"$api\"}" "$WORK/keys"
KEYFILE=$WORK/keys wrk -t1 -c16 -d"${SECS}s" --timeout 10s -s scripts/load/verify_random.lua \
  "http://$PUB/v1/keys.verifyKey" | grep '^RESULT' | sed 's/^/  verify: /'
RSS=$(status VmRSS)
HWM=$(status VmHWM)
DATA_LIVE=$(data_kb)
stop_server
DATA_STOPPED=$(data_kb)
# After a restart: what the store itself takes once its caches are cold.
serve
KEYFILE=$WORK/keys wrk -t1 -c16 -d"${SECS}s" --timeout 10s -s scripts/load/verify_random.lua \
  "http://$PUB/v1/keys.verifyKey" | grep '^RESULT' | sed 's/^/  verify after restart: /'
RSS2=$(status VmRSS)
stop_server
DATA_AFTER=$(data_kb)
KEY_BYTES=$(per_key "$DATA_AFTER")
RSS_MB=$(( HWM / 1024 ))
echo "  data dir: $DATA_LIVE kB running, $DATA_STOPPED kB stopped, $DATA_AFTER kB after a restart" \
  "= $KEY_BYTES bytes per key (goal <= 1024 at 1M keys)"
echo "  server RSS: $RSS kB after the verify run (peak $HWM kB = $RSS_MB MB, $(per_key "$HWM") bytes per key);" \
  "$RSS2 kB after a restart and a verify run (goal <= 1 GB at 1M keys)"
save footprint "{\"keys\":$KEYS,\"create_s\":$CREATE_S,\"data_kb_running\":$DATA_LIVE,\
\"data_kb_stopped\":$DATA_STOPPED,\"data_kb_restarted\":$DATA_AFTER,\"bytes_per_key\":$KEY_BYTES,\
\"rss_kb\":$RSS,\"rss_peak_kb\":$HWM,\"rss_restarted_kb\":$RSS2}"
