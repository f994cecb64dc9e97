#!/usr/bin/env bash
# Runs every criterion bench (benches/main.rs), then regenerates
# BENCHMARKS.md from the results. Extra arguments go to criterion
# (e.g. `scripts/benchmarks.sh --warm-up-time 2 --measurement-time 4`).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
cargo bench --bench main -- "$@"
python3 scripts/benchmarks.py
