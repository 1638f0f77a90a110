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
command -v valgrind >/dev/null || { echo "needs valgrind (apt-get install valgrind)" >&2; exit 1; }
[[ -x "$bin" ]] || { echo "no binary at $bin (cargo build --release)" >&2; exit 1; }
rotel="${ROTEL_AGENT:-$(python3 -c 'import os, rotel; print(os.path.join(os.path.dirname(rotel.__file__), "rotel-agent"))')}"
mkdir -p "$out"
"$rotel" start --exporter blackhole --otlp-grpc-endpoint 127.0.0.1:4327 \
    --otlp-http-endpoint 127.0.0.1:4328 >"$out/rotel.log" 2>&1 &
collector=$!
trap 'kill $collector 2>/dev/null || true' EXIT

for mode in off logs full; do
    case $mode in
        off) env=(RUST_LOG=off) ;;
        logs) env=(RUST_LOG=info) ;;
        # A short batch delay: every span is exported inside the count.
        full) env=(OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:4328 OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf
                   OTEL_BSP_SCHEDULE_DELAY=500) ;;
    esac
    rm -rf "$out/logs-$mode"
    env "${env[@]}" valgrind --tool=callgrind --instr-atstart=no \
        --callgrind-out-file="$out/$mode.out" "$bin" serve --listen "127.0.0.1:$port" \
        --log-stdout false --log-dir "$out/logs-$mode" --messages-per-second 0 \
        >/dev/null 2>"$out/$mode.err" &
    server=$!
    for _ in $(seq 100); do
        "$bin" health --url "http://127.0.0.1:$port/healthz" >/dev/null 2>&1 && break
        sleep 0.3
    done
    # Warm up (first connections, lazy statics), then count.
    "$bin" load --scenario storm -c 50 --concurrency 4 "ws://127.0.0.1:$port/ws" >/dev/null
    callgrind_control -i on "$server" >/dev/null 2>&1
    "$bin" load --scenario storm -c "$sessions" --concurrency 4 "ws://127.0.0.1:$port/ws" >/dev/null
    sleep 2
    callgrind_control -i off "$server" >/dev/null 2>&1
    kill -TERM "$server"
    wait "$server" 2>/dev/null || true
    total=$(callgrind_annotate "$out/$mode.out" 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1}')
    echo "$mode: $((total / sessions)) instructions per session"
done
