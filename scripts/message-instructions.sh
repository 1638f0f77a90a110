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
# shellcheck source=callgrind-common.sh
source scripts/callgrind-common.sh
start_collector 4329 4330
server_env=(OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:4330 OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf
            OTEL_BSP_SCHEDULE_DELAY=500)

for ratio in "${ratios[@]}"; do
    rm -rf "$out/logs-messages"
    profile_file="$out/messages-$ratio.out"
    start_counted_server "$profile_file" "$port" --log-dir "$out/logs-messages" \
        --message-sample-ratio "$ratio"
    "$bin" load -c "$connections" --messages 500 --window 8 "ws://127.0.0.1:$port/ws" >/dev/null
    count_while "$bin" load -c "$connections" --messages "$messages" --window 8 "ws://127.0.0.1:$port/ws"
    echo "ratio $ratio: $((total / (connections * messages))) instructions per message"
done
