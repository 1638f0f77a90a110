#!/usr/bin/env bash
# What reading the client's address behind a trusted proxy costs per
# session lifecycle, in instructions (callgrind; BENCHMARKS.md): one build,
# logs on and no export, three ways (the load tool connects from
# 127.0.0.2 and up, so 127.0.0.0/8 plays the proxy): a direct client with no
# --trusted-proxy (nothing is read), the same behind --trusted-proxy with no
# header, and behind it with a two-hop X-Forwarded-For to walk.
#
#   bash scripts/proxy-instructions.sh [BINARY] [SESSIONS]
set -euo pipefail
cd "$(dirname "$0")/.."
bin="${1:-${CARGO_TARGET_DIR:-target}/release/wstrace}"
sessions="${2:-300}"
out="${OUT:-/tmp/wstrace-callgrind-proxy}"
port=9143
# shellcheck source=callgrind-common.sh
source scripts/callgrind-common.sh
server_env=(RUST_LOG=info)

for mode in direct trusted walked; do
    serve_args=(--log-dir "$out/logs-$mode")
    load_args=()
    case $mode in
        direct) ;;
        trusted) serve_args+=(--trusted-proxy 127.0.0.0/8 --trusted-proxy 10.0.0.0/8) ;;
        walked) serve_args+=(--trusted-proxy 127.0.0.0/8 --trusted-proxy 10.0.0.0/8)
                load_args=(--header "X-Forwarded-For: 198.51.100.7, 10.1.1.1") ;;
    esac
    rm -rf "$out/logs-$mode"
    profile_file="$out/$mode.out"
    start_counted_server "$profile_file" "$port" "${serve_args[@]}"
    "$bin" load --scenario storm -c 50 --concurrency 4 "${load_args[@]}" "ws://127.0.0.1:$port/ws" >/dev/null
    count_while "$bin" load --scenario storm -c "$sessions" --concurrency 4 "${load_args[@]}" "ws://127.0.0.1:$port/ws"
    echo "$mode: $((total / sessions)) instructions per session"
done
# The walk happened: the sessions' lines name the forwarded client.
grep -q '"client.address":"198.51.100.7"' "$out"/logs-walked/*.log \
    || { echo "proxy-instructions: the X-Forwarded-For was not read" >&2; exit 1; }
