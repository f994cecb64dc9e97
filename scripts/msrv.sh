#!/usr/bin/env bash
# Checks that `rust-version` in Cargo.toml ([workspace.package], which every
# member inherits) says what the workspace really needs:
#
#   - no package of the dependency graph as resolved by Cargo.lock
#     (`cargo metadata --locked --all-features`: normal, build and dev
#     dependencies of every member, for every target platform, the members
#     themselves included) declares a higher `rust-version`;
#   - it is not newer than the compiler running the check (`rustc
#     --version`), since then nothing would build.
#
# On failure it prints one line naming the offending package and exits 1.
#
# Needs only cargo, rustc and jq (installed with apt-get when missing): no
# other toolchain.
# `cargo metadata` reads the manifests of the locked packages from cargo's
# cache; it downloads nothing when they are there (CI's next step, clippy,
# needs the same ones), and CARGO_NET_OFFLINE=true keeps it off the network.
#
# Our own code's side: clippy's `incompatible_msrv` lint (group `suspicious`,
# so warn by default; .ci/run runs clippy with -D warnings) reads the same
# rust-version and rejects any std/core/alloc item stabilised after it.
# It checks library items only, not language features (let-chains, which
# the workspace uses, need 1.88 too), and by default not code in #[test]s
# (clippy.toml: check-incompatible-msrv-in-tests).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# jq is installed when missing (a fresh CI machine may lack it).
if ! command -v jq >/dev/null; then
    { apt-get update -qq && apt-get install -y -qq jq; } >/dev/null 2>&1 ||
        { echo "msrv: needs jq and could not install it (apt-get install jq)" >&2; exit 1; }
fi

# `rust-version = "..."` in the [workspace.package] table of Cargo.toml.
declared=$(awk '
    /^[[:space:]]*\[/ { in_ws = ($0 ~ /^[[:space:]]*\[workspace\.package\][[:space:]]*(#.*)?$/) }
    in_ws && /^[[:space:]]*rust-version[[:space:]]*=/ {
        if (match($0, /"[^"]*"/)) { print substr($0, RSTART + 1, RLENGTH - 2); exit }
    }' Cargo.toml)
if [[ ! "$declared" =~ ^[0-9]+\.[0-9]+(\.[0-9]+)?$ ]]; then
    echo "msrv: no rust-version = \"X.Y[.Z]\" in [workspace.package] of Cargo.toml (found '${declared}')" >&2
    exit 1
fi

# rustc 1.95.0 (59807616e 2026-04-14), or 1.96.0-nightly: the pre-release
# part is dropped (cargo does the same when it checks rust-version).
rustc_line=$(rustc --version)
rustc_ver=$(sed -nE 's/^rustc ([0-9]+\.[0-9]+\.[0-9]+).*/\1/p' <<<"$rustc_line")
[[ -n "$rustc_ver" ]] || { echo "msrv: cannot read the version of '$rustc_line'" >&2; exit 1; }

cargo metadata --format-version 1 --all-features --locked --quiet |
jq -r --arg declared "$declared" --arg rustc "$rustc_ver" '
    # "1.88" / "1.88.0" -> [1, 88, 0], compared as arrays.
    def ver: split(".") | map(tonumber) | (. + [0, 0, 0])[:3];
    ($declared | ver) as $d
    | .workspace_members as $members
    | .packages as $all
    | [$all[] | select(.rust_version != null)] as $set
    | ($set | sort_by(.rust_version | ver | map(-.))) as $desc  # highest first, ties by name
    | [$desc[] | select((.rust_version | ver) > $d)] as $over
    | if ($rustc | ver) < $d then
        "FAIL rust-version \($declared) of Cargo.toml is newer than this compiler (rustc \($rustc)): nothing would build"
      elif ($over | length) > 0 then
        "FAIL \($over[0].name) \($over[0].version) declares rust-version \($over[0].rust_version), above the workspace'"'"'s \($declared) (Cargo.toml [workspace.package])"
        + (if ($over | length) > 1
           then "; \($over | length - 1) more above it: \([$over[1:][] | "\(.name) \(.rust_version)"] | join(", "))"
           else "" end)
      else
        # The highest among the dependencies (members only echo the declared one).
        [$desc[] | select(.id as $id | $members | index($id) | not)] as $deps
        | ($deps[0].rust_version | ver) as $top
        | [$deps[] | select((.rust_version | ver) == $top)] as $ties
        | "OK rust-version \($declared) covers all \($all | length) packages (\($all | length - ($set | length)) declare none); highest: \($ties[0].name) \($ties[0].rust_version)"
          + (if ($ties | length) > 1 then " (also \([$ties[1:][].name] | join(", ")))" else "" end)
          + "; rustc \($rustc)"
      end
' | {
    read -r status line
    if [[ "$status" == OK ]]; then
        echo "$line"
    else
        echo "msrv: $line" >&2
        exit 1
    fi
}
