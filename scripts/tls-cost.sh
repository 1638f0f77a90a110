#!/usr/bin/env bash
# What --tls-cert costs, beside plain ws:// in the same run (BENCHMARKS.md):
# two servers of one build, one plain and one with a certificate, pinned
# to core 0; `wstrace load` on core 1 drives each in turn, ROUNDS times,
# alternating. Per message: server CPU (utime+stime from /proc) over a
# throughput run, divided by the replies. Per session: the same over a
# storm of sessions that open (handshake, upgrade, welcome) and close.
#
#   bash scripts/tls-cost.sh [BINARY] [ROUNDS]
#
# Needs openssl (test certificates) and taskset.
set -euo pipefail
cd "$(dirname "$0")/.."
bin="${1:-${CARGO_TARGET_DIR:-target}/release/wstrace}"
rounds="${2:-3}"
[[ -x "$bin" ]] || { echo "no binary at $bin (cargo build --release)" >&2; exit 1; }
work="$(mktemp -d)"
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT

cd "$work"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout ca.key -out ca.pem \
    -days 2 -subj "/CN=tls-cost CA" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout server.key -out server.csr \
    -subj /CN=localhost 2>/dev/null
printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n' > ext.cnf
openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out server.pem -days 2 \
    -extfile ext.cnf 2>/dev/null
cd - >/dev/null

start() { # NAME PORT [serve args...]
    local name="$1" port="$2"
    shift 2
    taskset -c 0 "$bin" serve --listen "127.0.0.1:$port" --log-dir "$work/logs-$name" --log-stdout false \
        --messages-per-second 0 --max-sessions-per-ip 0 "$@" >/dev/null 2>&1 &
    echo $! > "$work/$name.pid"
}
start plain 9301
start tls 9302 --tls-cert "$work/server.pem" --tls-key "$work/server.key"
for port in 9301 9302; do
    for _ in $(seq 100); do
        (echo > "/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
        sleep 0.1
    done
done

cpu_ticks() { awk '{print $14 + $15}' "/proc/$(cat "$work/$1.pid")/stat"; }
hz=$(getconf CLK_TCK)

# measure NAME URL SCENARIO-ARGS... -> prints "µs per unit" (unit: replies
# for throughput, sessions for storm).
measure() {
    local name="$1" url="$2" unit="$3"
    shift 3
    local before after
    before=$(cpu_ticks "$name")
    taskset -c 1 "$bin" load "$url" --ca-cert "$work/ca.pem" --json "$work/report.json" "$@" >/dev/null 2>&1 || true
    after=$(cpu_ticks "$name")
    python3 - "$work/report.json" "$before" "$after" "$hz" "$unit" <<'PY'
import json, sys
report = json.load(open(sys.argv[1]))
ticks = int(sys.argv[3]) - int(sys.argv[2])
count = report["messages"]["received"] if sys.argv[5] == "replies" else report["connections"]["ok"]
print(f"{ticks / int(sys.argv[4]) * 1e6 / max(count, 1):.2f}")
PY
}

declare -A per_message per_session
for round in $(seq "$rounds"); do
    for name in plain tls; do
        if [[ $name == plain ]]; then url=ws://127.0.0.1:9301/ws; else url=wss://localhost:9302/ws; fi
        per_message[$name]+="$(measure "$name" "$url" replies --scenario throughput -c 32 -m 10000 --window 16) "
        per_session[$name]+="$(measure "$name" "$url" sessions --scenario storm -c 5000 --concurrency 16) "
    done
    echo "round $round of $rounds done" >&2
done

median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
echo "| server | CPU µs per message (rounds) | median | CPU µs per session (rounds) | median |"
echo "|---|---|---|---|---|"
for name in plain tls; do
    m=$(echo "${per_message[$name]}" | median)
    s=$(echo "${per_session[$name]}" | median)
    echo "| $name | ${per_message[$name]} | $m | ${per_session[$name]} | $s |"
done
