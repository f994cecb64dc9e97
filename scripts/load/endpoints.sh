#!/usr/bin/env bash
# Every gateway endpoint under the same wrk load, on loopback (issue 21's
# goal): chat completions, embeddings, Anthropic's Messages (translated to a
# chat completion for the simulator) and OpenAI's Responses (likewise),
# each through the gateway and the upstream request it makes straight to the
# simulator (chat for chat, Messages and Responses; embeddings for
# embeddings), 16 connections, a bounded duration each. Prints requests/s,
# p50 and the server's CPU per request (the example server runs the
# simulator in-process: the gateway's own work is the difference), the
# overhead of each endpoint beside chat's, and writes
# target/load/endpoints.json for BENCHMARKS.md.
#
#   scripts/load/endpoints.sh [SECONDS_PER_RUN]   (default 5)
#
# Starts the example server (release build, memory store, an instant
# simulator) on ports 28080/29090/28081 and stops it at the end.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
source scripts/load/lib.sh
SECS=${1:-5}
C=16
command -v wrk >/dev/null || { echo "needs wrk (apt-get install wrk)" >&2; exit 1; }

export MAAS_ADMIN_TOKEN=load-admin-token-0123456789
start_server 127.0.0.1:28080 127.0.0.1:29090 127.0.0.1:28081 /tmp/maas-load-endpoints.log \
  --memory --sim-max-concurrent 4096 --max-in-flight 4096
load_tier http://127.0.0.1:29090 "$MAAS_ADMIN_TOKEN"
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$SERVER/stat"; }

CHAT='{"model":"simulator","messages":[{"role":"user","content":"Hello, how are you?"}],"max_tokens":16}'
EMB='{"model":"simulator","input":["Hello, how are you?","Fine, thanks."]}'
MSG='{"model":"simulator","max_tokens":16,"messages":[{"role":"user","content":"Hello, how are you?"}]}'
RESP='{"model":"simulator","input":"Hello, how are you?","max_output_tokens":16}'

run() { # name url token body: C connections; any non-2xx answer stops the run
  local out
  out=$(wrk_cpu "$1" "$2" "$3" "$C" "$4")
  [ "$(field "$out" non2xx)" = 0 ] || { echo "$1: non-2xx answers: $out" >&2; exit 1; }
  echo "$out"
}
T=load-test-token-0123456789
direct_chat=$(run direct_chat http://127.0.0.1:28081/v1/chat/completions "" "$CHAT")
direct_emb=$(run direct_embeddings http://127.0.0.1:28081/v1/embeddings "" "$EMB")
chat=$(run chat http://127.0.0.1:28080/v1/chat/completions $T "$CHAT")
emb=$(run embeddings http://127.0.0.1:28080/v1/embeddings $T "$EMB")
msg=$(run messages http://127.0.0.1:28080/v1/messages $T "$MSG")
resp=$(run responses http://127.0.0.1:28080/v1/responses $T "$RESP")
over() { echo $(( $(field "$1" cpu_us) - $(field "$2" cpu_us) )); }
oc=$(over "$chat" "$direct_chat") oe=$(over "$emb" "$direct_emb")
om=$(over "$msg" "$direct_chat") orr=$(over "$resp" "$direct_chat")
echo "gateway CPU per request over its upstream request: chat ${oc} us, embeddings ${oe} us," \
  "messages ${om} us, responses ${orr} us (goal: embeddings and messages <= 1.2x chat's)"
save endpoints "{\"seconds\":$SECS,\"connections\":$C,\"direct_chat\":$(kv_json "$direct_chat"),\"direct_embeddings\":$(kv_json "$direct_emb"),\"chat\":$(kv_json "$chat"),\"embeddings\":$(kv_json "$emb"),\"messages\":$(kv_json "$msg"),\"responses\":$(kv_json "$resp")}"
