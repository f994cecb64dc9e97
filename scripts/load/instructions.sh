#!/usr/bin/env bash
# Instructions per plain chat request on the gateway's path, counted by
# valgrind's callgrind (user space only: no kernel, no scheduling), beside
# the upstream hop alone: the same in-process set-up as the allocation
# bench (benches/allocs.rs: the gateway's service sent each request with
# `oneshot`, the instant simulator on loopback as the upstream). Unlike
# CPU time on a shared 2-core VM (hotpath.sh's figures move by ±20% from
# run to run), the counts repeat to within about 2%, so two
# commits can be compared by running this at each. valgrind is installed
# with apt-get when missing. Writes target/load/instructions.json.
#
#   scripts/load/instructions.sh [REQUESTS]   (default 500)
#
# Each figure is (count after REQUESTS requests - count after none) /
# REQUESTS, so the set-up and the warm-up (200 requests on each path)
# cancel out.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
source scripts/load/lib.sh
N=${1:-500}
need valgrind valgrind
BENCH=$(cargo bench --bench allocs --no-run 2>&1 | grep -oE '[^ (]*target/release/deps/allocs-[0-9a-f]+' | tail -1 || true)
[ -x "$BENCH" ] || { echo "the allocs bench was not built" >&2; exit 1; }
WORK=$(mktemp -d /tmp/maas-instructions.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
# collected ONLY REQUESTS: the instructions callgrind counted for the run.
collected() {
  ALLOCS_ONLY=$1 ALLOCS_REQUESTS=$2 valgrind --tool=callgrind \
    --callgrind-out-file="$WORK/out" "$BENCH" 2>&1 | sed -nE 's/.*Collected : ([0-9]+).*/\1/p'
}
none=$(collected gateway 0)
gateway=$(collected gateway "$N")
direct=$(collected direct "$N")
g=$(( (gateway - none) / N )); d=$(( (direct - none) / N ))
echo "instructions per plain chat request: gateway $g, the upstream hop alone $d: maas adds $(( g - d ))"
save instructions "{\"requests\":$N,\"gateway\":$g,\"floor\":$d}"
