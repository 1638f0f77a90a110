#!/usr/bin/env bash
# User-space instructions per echo message at several message sample
# ratios, counted by valgrind's callgrind (BENCHMARKS.md, seventh round):
# the difference between ratio 1 and ratio 0 is what a sampled message
# costs, and it repeats to within a percent from run to run.
#
#   bash scripts/message-instructions.sh [BINARY] [RATIOS...]
#
# Each ratio: BINARY (default: the release build) under callgrind with
# OTLP/HTTP export to a real collector (rotel), 8 connections × 5,000
# `echo` round trips (`wstrace load`), the count taken after a warm-up.
# Needs valgrind (apt-get install valgrind) and rotel (pip install rotel,
# or ROTEL_AGENT=path).
set -euo pipefail
cd "$(dirname "$0")/.."
bin="${1:-${CARGO_TARGET_DIR:-target}/release/wstrace}"
shift || true
ratios=("${@:-0 0.01 1}")
read -r -a ratios <<<"${ratios[*]}"
out="${OUT:-/tmp/wstrace-callgrind}"
port=9142
connections=8
messages=5000
command -v valgrind >/dev/null || { echo "needs valgrind (apt-get install valgrind)" >&2; exit 1; }
[[ -x "$bin" ]] || { echo "no binary at $bin (cargo build --release)" >&2; exit 1; }
rotel="${ROTEL_AGENT:-$(python3 -c 'import os, rotel; print(os.path.join(os.path.dirname(rotel.__file__), "rotel-agent"))')}"
mkdir -p "$out"
"$rotel" start --exporter blackhole --otlp-grpc-endpoint 127.0.0.1:4329 \
    --otlp-http-endpoint 127.0.0.1:4330 >"$out/rotel-messages.log" 2>&1 &
collector=$!
trap 'kill $collector 2>/dev/null || true' EXIT

for ratio in "${ratios[@]}"; do
    rm -rf "$out/logs-messages"
    OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:4330 OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf \
        OTEL_BSP_SCHEDULE_DELAY=500 valgrind --tool=callgrind --instr-atstart=no \
        --callgrind-out-file="$out/messages-$ratio.out" "$bin" serve --listen "127.0.0.1:$port" \
        --log-stdout false --log-dir "$out/logs-messages" --messages-per-second 0 \
        --message-sample-ratio "$ratio" >/dev/null 2>"$out/messages-$ratio.err" &
    server=$!
    for _ in $(seq 100); do
        "$bin" health --url "http://127.0.0.1:$port/healthz" >/dev/null 2>&1 && break
        sleep 0.3
    done
    "$bin" load -c "$connections" --messages 500 --window 8 "ws://127.0.0.1:$port/ws" >/dev/null
    callgrind_control -i on "$server" >/dev/null 2>&1
    "$bin" load -c "$connections" --messages "$messages" --window 8 "ws://127.0.0.1:$port/ws" >/dev/null
    sleep 2
    callgrind_control -i off "$server" >/dev/null 2>&1
    kill -TERM "$server"
    wait "$server" 2>/dev/null || true
    total=$(callgrind_annotate "$out/messages-$ratio.out" 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1}')
    echo "ratio $ratio: $((total / (connections * messages))) instructions per message"
done
