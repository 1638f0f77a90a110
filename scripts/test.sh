#!/usr/bin/env bash
# The test command (README, "Test"). Installs what the tests drive, then runs
# every test: unit, in-process integration, real-binary process tests, and
# the OTLP export test against a real collector (rotel).
set -euo pipefail
cd "$(dirname "$0")/.."

if ! python3 -c 'import rotel' 2>/dev/null; then
    python3 -m pip install --quiet --disable-pip-version-check -r scripts/requirements-test.txt
fi
ROTEL_AGENT="$(python3 -c 'import os, rotel; print(os.path.join(os.path.dirname(rotel.__file__), "rotel-agent"))')"
export ROTEL_AGENT

cargo test --locked --all-targets "$@"
