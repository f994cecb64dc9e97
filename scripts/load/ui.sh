#!/usr/bin/env bash
# Issue 23's goal: every dashboard page's server time with N tenant keys and
# M tenants on sled (release build), and its full load in headless chromium
# (navigation start to the load event), beside the same pages with 10 of
# each (the floor, same run). Runs examples/ui_scale.rs --browser (chromium
# and chromium-driver installed with apt-get when missing) and writes
# target/load/ui.json for BENCHMARKS.md.
#
#   scripts/load/ui.sh [KEYS] [TENANTS]   (default 100000 10000; about a minute)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
source scripts/load/lib.sh
KEYS=${1:-100000}
TENANTS=${2:-10000}
command -v chromedriver >/dev/null || {
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null
}
cargo build -q --release --example ui_scale
OUT=$(mktemp /tmp/maas-ui.XXXXXX)
trap 'rm -f "$OUT"' EXIT
timeout 600 ./target/release/examples/ui_scale --keys "$KEYS" --tenants "$TENANTS" --browser --out "$OUT"
save ui "$(cat "$OUT")"
