#!/usr/bin/env bash
# The test command (README, "Test"). Installs what the tests drive, then runs
# every test: unit, in-process integration, real-binary process tests, and
# the OTLP export test against a real collector (rotel).
set -euo pipefail
cd "$(dirname "$0")/.."

# Real tools the tests use: rotel (OTLP collector, PyPI) and Python's
# websockets (a real wss:// client, PyPI); openssl (Debian) to make test
# certificates; promtool
# (Prometheus, Debian) to validate /metrics and the Prometheus config;
# docker-compose (Debian) to validate docker-compose.yml offline; chromium
# (Debian) to load the explorer page in a real headless browser;
# redis-server (Debian) for cluster mode; nginx (Debian) to run the compose
# stack's WebSocket proxy config in front of two real instances; node with
# @grafana/lezer-logql and @grafana/lezer-traceql (npm) to parse queries.
if ! python3 -c 'import rotel, websockets' 2>/dev/null; then
    python3 -m pip install --quiet --disable-pip-version-check -r scripts/requirements-test.txt
fi
ROTEL_AGENT="$(python3 -c 'import os, rotel; print(os.path.join(os.path.dirname(rotel.__file__), "rotel-agent"))')"
export ROTEL_AGENT

missing=()
command -v promtool >/dev/null || missing+=(prometheus)
command -v docker-compose >/dev/null || missing+=(docker-compose)
command -v chromium >/dev/null || missing+=(chromium)
command -v redis-server >/dev/null && command -v redis-cli >/dev/null || missing+=(redis-server redis-tools)
command -v nginx >/dev/null || [[ -x /usr/sbin/nginx ]] || missing+=(nginx-light)
command -v openssl >/dev/null || missing+=(openssl)
if ((${#missing[@]})); then
    if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    else
        echo "test.sh: please install: ${missing[*]}" >&2
        exit 1
    fi
fi
# Grafana's own LogQL and TraceQL grammars (npm, pinned in
# tests/grammar/package-lock.json), to parse every query the project ships.
if [[ ! -d tests/grammar/node_modules/@grafana/lezer-logql ]]; then
    if ! command -v npm >/dev/null; then
        if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
            apt-get update -qq
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nodejs npm >/dev/null
        else
            echo "test.sh: please install node and npm" >&2
            exit 1
        fi
    fi
    npm ci --prefix tests/grammar --no-audit --no-fund --loglevel=error
fi

# Tests that use these tools fail, rather than skip, when they are absent.
export WSTRACE_REQUIRE_TOOLS=1

cargo test --locked --all-targets --features fault-injection "$@"
