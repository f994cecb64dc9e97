#!/usr/bin/env bash
# Issue 20's artifact goal at scale: a control plane with N API keys on
# sled builds and publishes an artifact; a fresh data plane (sled) applies
# it; then the next artifact (a few keys changed) is applied while tasks
# verify keys on the data plane, beside the same verifications with no
# apply (the floor, same run). Runs examples/artifact_scale.rs in release
# and writes target/load/artifact.json for BENCHMARKS.md.
#
#   scripts/load/artifact.sh [N]   (default 100000 keys; about a minute)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
source scripts/load/lib.sh
N=${1:-100000}
cargo build -q --release --example artifact_scale
OUT=$(mktemp /tmp/maas-artifact.XXXXXX)
trap 'rm -f "$OUT"' EXIT
timeout 600 ./target/release/examples/artifact_scale --keys "$N" --out "$OUT"
save artifact "$(cat "$OUT")"
