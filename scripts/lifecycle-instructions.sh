#!/usr/bin/env bash
# User-space instructions per session lifecycle (upgrade, welcome, close
# handshake), counted by valgrind's callgrind: unlike CPU time on this
# noisy machine, the count repeats to within a percent from run to run, so
# two builds can be compared on one run each (BENCHMARKS.md, sixth round).
#
#   bash scripts/lifecycle-instructions.sh [BINARY] [SESSIONS]
#
# Runs BINARY (default: the release build) three ways, `RUST_LOG=off`,
# logs and spans without export, and the default with OTLP/HTTP export to a
# real collector (rotel), and prints instructions per session for each;
# the callgrind profiles stay in $OUT (default /tmp/wstrace-callgrind) for
# `callgrind_annotate`. Needs valgrind (apt-get install valgrind) and
# rotel (pip install rotel, or ROTEL_AGENT=path).
set -euo pipefail
cd "$(dirname "$0")/.."
bin="${1:-${CARGO_TARGET_DIR:-target}/release/wstrace}"
sessions="${2:-300}"
out="${OUT:-/tmp/wstrace-callgrind}"
port=9141
# shellcheck source=callgrind-common.sh
source scripts/callgrind-common.sh
start_collector 4327 4328

for mode in off logs full; do
    case $mode in
        off) server_env=(RUST_LOG=off) ;;
        logs) server_env=(RUST_LOG=info) ;;
        # A short batch delay: every span is exported inside the count.
        full) server_env=(OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:4328 OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf
                          OTEL_BSP_SCHEDULE_DELAY=500) ;;
    esac
    rm -rf "$out/logs-$mode"
    profile_file="$out/$mode.out"
    start_counted_server "$profile_file" "$port" --log-dir "$out/logs-$mode"
    # Warm up (first connections, lazy statics), then count.
    "$bin" load --scenario storm -c 50 --concurrency 4 "ws://127.0.0.1:$port/ws" >/dev/null
    count_while "$bin" load --scenario storm -c "$sessions" --concurrency 4 "ws://127.0.0.1:$port/ws"
    echo "$mode: $((total / sessions)) instructions per session"
done
