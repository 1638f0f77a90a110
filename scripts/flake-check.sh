#!/usr/bin/env bash
# Runs the README test command N times (default 5) on a fresh clone of the
# current commit and reports every test that failed even once. A flaky
# test is a bug: fix what this finds before resolving.
#
#   bash scripts/flake-check.sh [N]
set -uo pipefail
runs="${1:-5}"
repo="$(cd "$(dirname "$0")/.." && pwd)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
git clone --quiet "$repo" "$work/wstrace"
cd "$work/wstrace"
git checkout --quiet "$(git -C "$repo" rev-parse HEAD)"
# Shared with .ci/run: only this crate is rebuilt.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/wstrace/target}"
failed_runs=0
declare -A failures=()
for run in $(seq "$runs"); do
    log="$work/run-$run.log"
    if bash scripts/test.sh >"$log" 2>&1; then
        echo "run $run/$runs: ok"
    else
        failed_runs=$((failed_runs + 1))
        echo "run $run/$runs: FAILED"
        while read -r name; do
            failures["$name"]=$(( ${failures["$name"]:-0} + 1 ))
        done < <(grep -E '^test .* \.\.\. FAILED$|^---- .* stdout ----$' "$log" \
                 | sed -E 's/^test (.*) \.\.\. FAILED$/\1/; s/^---- (.*) stdout ----$/\1/' | sort -u)
        # What failed, and why: each panic with the lines after it.
        grep -A4 -E 'panicked at|^---- .* stdout ----$' "$log" | grep -v '^   *[0-9]*: \|^ *at ' | head -60
    fi
done
echo "flake-check: $failed_runs of $runs runs failed"
for name in "${!failures[@]}"; do
    echo "  ${failures[$name]}× $name"
done
[[ $failed_runs -eq 0 ]]
