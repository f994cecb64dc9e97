#!/usr/bin/env bash
# Builds the example server with profile-guided optimisation (PGO), for
# operators who run it in production: an instrumented release build serves
# a training load (the gateway's chat completions, plain at 1, 16 and 64
# connections and streamed at 16, in front of the upstream simulator in a
# process of its own), then the release build is made again with the
# profile it wrote. LLVM then lays out and inlines the code a request runs
# through for how it is run: a request's code is spread over hundreds of
# functions, and at low load each runs cache-cold (BENCHMARKS.md has the
# CPU a proxied request with and without).
#
#   scripts/pgo.sh [SECONDS_PER_LOAD]   (default 4)
#
# Writes target/pgo/server (run it as the release build: same flags). Each
# of the two builds rebuilds every crate in a target dir of its own under
# target/pgo (7 to 10 minutes each on 2 cores with the release profile's
# fat LTO). Needs wrk (apt-get) and llvm-profdata of rustc's own LLVM (the
# llvm-tools rustup component); each is installed when missing.
#
# Code the training load does not run (the management API, the portal)
# is optimised for size, as cold: still correct, possibly a little slower.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/load/lib.sh
SECS=${1:-4}
need wrk wrk
HOST=$(rustc -vV | sed -n 's/^host: //p')
PROFDATA="$(rustc --print sysroot)/lib/rustlib/$HOST/bin/llvm-profdata"
[ -x "$PROFDATA" ] || rustup component add llvm-tools
OUT=$PWD/target/pgo
DATA=$OUT/data
rm -rf "$DATA"
mkdir -p "$DATA"
# --target: the flags reach the server's crates, not build scripts and
# proc macros (which would write profiles of their own while building).
echo "pgo.sh: instrumented build (target/pgo/gen)"
RUSTFLAGS="-Cprofile-generate=$DATA" CARGO_TARGET_DIR=$OUT/gen \
  cargo build -q --release --example server --target "$HOST"
MAAS_SERVER_BIN=$OUT/gen/$HOST/release/examples/server
export MAAS_SERVER_BIN MAAS_ADMIN_TOKEN=load-admin-token-0123456789
UPSTREAM=""
cleanup() {
  [ -z "$UPSTREAM" ] || kill -INT "$UPSTREAM" 2>/dev/null || true
  wait 2>/dev/null || true
}
trap cleanup EXIT
# The upstream runs the same binary; its profile is not kept.
LLVM_PROFILE_FILE=/dev/null launch 127.0.0.1:18584 127.0.0.1:19594 127.0.0.1:18582 /tmp/maas-pgo-upstream.log \
  --memory --sim-max-concurrent 4096 --max-in-flight 4096
UPSTREAM=$LAUNCHED
LLVM_PROFILE_FILE="$DATA/gateway-%p.profraw" start_server 127.0.0.1:18580 127.0.0.1:19590 127.0.0.1:18581 \
  /tmp/maas-pgo-gateway.log --memory --sim-max-concurrent 4096 --max-in-flight 4096
wait_up 127.0.0.1:18584 "the upstream (see /tmp/maas-pgo-upstream.log)"
point_simulator http://127.0.0.1:19590 http://127.0.0.1:18582
PLAIN='{"model":"simulator","messages":[{"role":"user","content":"Hello, how are you?"}],"max_tokens":16}'
STREAM='{"model":"simulator","messages":[{"role":"user","content":"Hello, how are you?"}],"max_tokens":16,"stream":true}'
for spec in "1 $PLAIN" "16 $PLAIN" "64 $PLAIN" "16 $STREAM"; do
  r=$(TOKEN=load-test-token-0123456789 BODY=${spec#* } wrk -t1 -c"${spec%% *}" -d"${SECS}s" \
    -s scripts/load/post.lua http://127.0.0.1:18580/v1/chat/completions | grep '^RESULT')
  [ "$(field "$r" non2xx)" = 0 ] || { echo "pgo.sh: training load failed: $r" >&2; exit 1; }
  echo "pgo.sh: trained, ${spec%% *} connections: $r"
done
# The profile is written as the server exits.
stop_server
trap cleanup EXIT
ls "$DATA"/gateway-*.profraw >/dev/null
"$PROFDATA" merge -o "$OUT/merged.profdata" "$DATA"/gateway-*.profraw
# Named by its content: a new profile changes the flags, so cargo rebuilds.
sum=$(sha256sum "$OUT/merged.profdata" | cut -c1-16)
find "$OUT" -maxdepth 1 -name '*.profdata' ! -name merged.profdata -delete
cp "$OUT/merged.profdata" "$OUT/$sum.profdata"
echo "pgo.sh: optimised build (target/pgo/use)"
RUSTFLAGS="-Cprofile-use=$OUT/$sum.profdata" CARGO_TARGET_DIR=$OUT/use \
  cargo build -q --release --example server --target "$HOST"
cp "$OUT/use/$HOST/release/examples/server" "$OUT/server"
echo "pgo.sh: wrote target/pgo/server"
