#!/usr/bin/env bash
# Issue 23's goal, the server's side: every dashboard page's server time
# with N tenant keys and M tenants on sled (release build), beside the same
# pages with 10 of each (the floor, same run). Runs examples/ui_scale.rs
# and writes target/load/ui.json for BENCHMARKS.md.
#
#   scripts/load/ui.sh [KEYS] [TENANTS]   (default 100000 10000; about a minute)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
source scripts/load/lib.sh
KEYS=${1:-100000}
TENANTS=${2:-10000}
cargo build -q --release --example ui_scale
OUT=$(mktemp /tmp/maas-ui.XXXXXX)
trap 'rm -f "$OUT"' EXIT
timeout 600 ./target/release/examples/ui_scale --keys "$KEYS" --tenants "$TENANTS" --out "$OUT"
save ui "$(cat "$OUT")"
