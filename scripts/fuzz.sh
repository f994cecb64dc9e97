#!/usr/bin/env bash
# Runs every cargo-fuzz target of fuzz/ in turn for SECONDS each (default
# 60) and fails on any crash, timeout or out-of-memory.
#
#   scripts/fuzz.sh                 # every target, 60 s each
#   scripts/fuzz.sh 600             # every target, 10 minutes each
#   scripts/fuzz.sh 30 ttl_parse    # some targets only
#
# Needs the nightly toolchain and cargo-fuzz (`cargo install cargo-fuzz`).
# Each run starts from fuzz/corpus/<target> (the checked-in seed-* files
# plus what earlier runs added there, which git ignores) and adds to it;
# a crashing input lands in fuzz/artifacts/<target>/ and its path is
# printed. Per target it prints the executions (libFuzzer's
# stat::number_of_executed_units) and the wall time; the full libFuzzer
# output is in $FUZZ_LOG_DIR/<target>.log.
#
# The targets are built with debug assertions (overflow checks included:
# an overflow on input is a panic, hence a finding) and, unless
# FUZZ_SANITIZER says otherwise, without a sanitizer: maas forbids unsafe
# code, and on a small machine the executions are worth more.
#
# Environment: FUZZ_LOG_DIR (default fuzz/logs), FUZZ_SANITIZER (default
# none; address, ...), FUZZ_RSS_LIMIT_MB (default 2048), FUZZ_TIMEOUT
# (seconds one input may take, default 60).
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root/fuzz"

seconds="${1:-60}"
shift || true
if ! [[ "$seconds" =~ ^[0-9]+$ ]] || [ "$seconds" -eq 0 ]; then
    echo "usage: $0 [SECONDS] [TARGET...]" >&2
    exit 2
fi
log_dir="${FUZZ_LOG_DIR:-$root/fuzz/logs}"
sanitizer="${FUZZ_SANITIZER:-none}"
rss="${FUZZ_RSS_LIMIT_MB:-2048}"
timeout="${FUZZ_TIMEOUT:-60}"
mkdir -p "$log_dir"

if [ "$#" -gt 0 ]; then
    targets=("$@")
else
    mapfile -t targets < <(cargo +nightly fuzz list)
fi

build=(--debug-assertions --sanitizer "$sanitizer")
echo "building ${targets[*]} (sanitizer $sanitizer)"
cargo +nightly fuzz build "${build[@]}" >"$log_dir/build.log" 2>&1 || {
    tail -n 40 "$log_dir/build.log" >&2
    echo "FAIL: build (see $log_dir/build.log)" >&2
    exit 1
}

failed=()
summary=()
for t in "${targets[@]}"; do
    log="$log_dir/$t.log"
    echo "== $t: ${seconds}s (log $log)"
    start=$(date +%s)
    # One job in this process (libFuzzer's -jobs would move the output to
    # fuzz-N.log files of worker processes).
    set +e
    cargo +nightly fuzz run "${build[@]}" "$t" -- \
        -max_total_time="$seconds" \
        -rss_limit_mb="$rss" \
        -timeout="$timeout" \
        -print_final_stats=1 >"$log" 2>&1
    rc=$?
    set -e
    took=$(($(date +%s) - start))
    execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | tail -n 1 | grep -o '[0-9]*$' || true)
    corpus=$(grep -oE '#[0-9]+[[:space:]]+DONE[[:space:]]+cov: [0-9]+ ft: [0-9]+ corp: [0-9]+' "$log" | tail -n 1 | sed -E 's/.*cov: ([0-9]+) ft: ([0-9]+) corp: ([0-9]+)/cov \1 ft \2 corpus \3/' || true)
    line="$t: ${execs:-?} executions in ${took}s${corpus:+ ($corpus)}"
    if [ "$rc" -ne 0 ]; then
        artifact=$(grep -oE '(Test unit written to|Crash input written to) [^ ]+' "$log" | tail -n 1 | awk '{print $NF}' || true)
        line="$line: FAILED (exit $rc)${artifact:+, artifact $artifact}"
        failed+=("$t")
        grep -E 'panicked at|ERROR: libFuzzer|SUMMARY' "$log" | head -n 5 >&2 || true
    fi
    echo "$line"
    summary+=("$line")
done

echo
echo "== summary"
printf '%s\n' "${summary[@]}"
if [ "${#failed[@]}" -gt 0 ]; then
    echo "FAIL: ${failed[*]}" >&2
    exit 1
fi
echo "ok: no crashes"
