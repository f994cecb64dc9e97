#!/usr/bin/env bash
# Issue 22's failover goal: a model served by three simulator instances
# behind the gateway, under steady load; one instance is killed a third of
# the way in. Run twice — plain answers (a failed attempt is retried on a
# sibling) and streamed answers (a stream cut after its first byte cannot
# be) — printing the client-visible errors of each. Runs
# examples/pool_failover.rs in release and writes target/load/pools.json
# for BENCHMARKS.md.
#
#   scripts/load/pools.sh [SECONDS]   (default 15 per run)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
source scripts/load/lib.sh
SECONDS_PER_RUN=${1:-15}
KILL_AT=$(( SECONDS_PER_RUN / 3 ))
cargo build -q --release --example pool_failover
OUT=$(mktemp /tmp/maas-pools.XXXXXX)
trap 'rm -f "$OUT" "$OUT.stream"' EXIT
timeout 300 ./target/release/examples/pool_failover --seconds "$SECONDS_PER_RUN" --kill-at "$KILL_AT" --out "$OUT"
timeout 300 ./target/release/examples/pool_failover --seconds "$SECONDS_PER_RUN" --kill-at "$KILL_AT" --stream --out "$OUT.stream"
save pools "{\"plain\":$(cat "$OUT"),\"stream\":$(cat "$OUT.stream")}"
