#!/usr/bin/env bash
# WebSocket conformance: the Autobahn TestSuite fuzzing client against
# wstrace's raw echo endpoint (`serve --echo-endpoint`, path /echo), cases
# 1-7, 9 (limited sizes: messages up to 1 MiB, 9.3/9.4's 4 MiB and 9.1.4+
# left out), 10, and 12-13 (permessage-deflate; see below). Fails on any
# FAILED or UNCLEAN case.
# Run by .ci/run after the test command; needs Python 2.7 (pyenv).
set -euo pipefail
cd "$(dirname "$0")/.."

PY2="${PY2:-}"
if [[ -z "$PY2" ]]; then
    for candidate in "$(pyenv root 2>/dev/null)/versions/2.7.18/bin/python" "$(command -v python2.7 || true)"; do
        [[ -x "$candidate" ]] && PY2="$candidate" && break
    done
fi
[[ -n "$PY2" ]] || { echo "autobahn.sh: Python 2.7 not found (pyenv install 2.7.18)" >&2; exit 1; }

AB="${AUTOBAHN_DIR:-$HOME/.cache/wstrace/autobahn}"
if ! PYTHONPATH="$AB" "$PY2" -c 'import autobahntestsuite, zope.interface' 2>/dev/null; then
    rm -rf "$AB"
    # Twisted's setup needs these first, at versions that still run on 2.7.
    "$PY2" -m pip install --quiet --disable-pip-version-check --target "$AB" incremental==21.3.0 constantly==15.1.0 2>&1 | grep -v DEPRECATION || true
    PYTHONPATH="$AB" "$PY2" -m pip install --quiet --disable-pip-version-check --no-deps --target "$AB" \
        -r scripts/autobahn-requirements.txt 2>&1 | grep -v DEPRECATION || true
    # --target skips the namespace-package .pth; make `zope` importable.
    touch "$AB/zope/__init__.py"
    PYTHONPATH="$AB" "$PY2" -c 'import autobahntestsuite, zope.interface'
fi

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target}"
# Release: cases 12 and 13 send 216,000 compressed messages, which a debug
# build takes over a quarter of an hour to answer.
cargo build --quiet --locked --release --bin wstrace
work="$(mktemp -d)"
port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
"$CARGO_TARGET_DIR/release/wstrace" serve --listen "127.0.0.1:$port" --log-dir "$work/logs" --log-stdout false \
    --echo-endpoint --messages-per-second 0 --max-message-bytes 2097152 &
server=$!
# Wait for the server to exit before removing its log directory: it writes
# its last lines while it shuts down.
trap 'kill $server 2>/dev/null || true; wait $server 2>/dev/null || true; rm -rf "$work" || true' EXIT
for _ in $(seq 50); do
    "$CARGO_TARGET_DIR/release/wstrace" health --url "http://127.0.0.1:$port/healthz" 2>/dev/null && break
    sleep 0.1
done

# Cases 12 and 13 (permessage-deflate, 216 cases of 1,000 messages each)
# take the Python 2 fuzzing client over 20 minutes in all: CI runs each
# case group's five smallest message sizes (12.x.1-5, 13.x.1-5: every
# negotiation variant of 13), AUTOBAHN_FULL=1 all of them.
if [[ "${AUTOBAHN_FULL:-}" == 1 ]]; then
    COMPRESSION_CASES='"12.*", "13.*"'
else
    # Named one by one: a pattern with `*` would match 12.1.10-18 too.
    COMPRESSION_CASES=$(for group in 12.1 12.2 12.3 12.4 12.5 13.1 13.2 13.3 13.4 13.5 13.6 13.7; do
        for size in 1 2 3 4 5; do printf '"%s.%s", ' "$group" "$size"; done
    done | sed 's/, $//')
fi
cat > "$work/spec.json" <<SPEC
{
  "outdir": "$work/reports",
  "servers": [{"agent": "wstrace", "url": "ws://127.0.0.1:$port/echo"}],
  "cases": ["1.*", "2.*", "3.*", "4.*", "5.*", "6.*", "7.*",
            "9.1.1", "9.1.2", "9.1.3", "9.2.1", "9.2.2", "9.2.3",
            "9.5.*", "9.6.*", "9.7.*", "9.8.*", "10.*", $COMPRESSION_CASES],
  "exclude-cases": [],
  "exclude-agent-cases": {}
}
SPEC
(cd "$work" && PYTHONPATH="$AB" timeout 1500 "$PY2" "$AB/bin/wstest" -m fuzzingclient -s spec.json > wstest.log 2>&1) \
    || { tail -20 "$work/wstest.log"; exit 1; }

python3 - "$work/reports/index.json" <<'PY'
import collections, json, sys
report = json.load(open(sys.argv[1]))["wstrace"]
behavior = collections.Counter(r["behavior"] for r in report.values())
close = collections.Counter(r["behaviorClose"] for r in report.values())
bad = sorted(c for c, r in report.items()
             if r["behavior"] in ("FAILED", "UNCLEAN") or r["behaviorClose"] in ("FAILED", "UNCLEAN"))
print("autobahn: %d cases" % len(report))
print("autobahn: behavior       " + ", ".join("%s %d" % kv for kv in sorted(behavior.items())))
print("autobahn: close behavior " + ", ".join("%s %d" % kv for kv in sorted(close.items())))
print("autobahn: %d FAILED, %d UNCLEAN" % (
    sum(1 for r in report.values() if "FAILED" in (r["behavior"], r["behaviorClose"])),
    sum(1 for r in report.values() if "UNCLEAN" in (r["behavior"], r["behaviorClose"]))))
if bad:
    print("autobahn: not OK: " + " ".join(bad))
    sys.exit(1)
PY
