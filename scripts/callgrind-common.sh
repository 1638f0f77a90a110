# Shared by scripts/*-instructions.sh (sourced, not run): a wstrace server
# under callgrind beside a real collector, counted between two markers.
#
# Before sourcing: `bin` (the wstrace binary) and `out` (a directory).

command -v valgrind >/dev/null || { echo "needs valgrind (apt-get install valgrind)" >&2; exit 1; }
[[ -x "$bin" ]] || { echo "no binary at $bin (cargo build --release)" >&2; exit 1; }
mkdir -p "$out"

# Starts rotel, discarding what it receives, on GRPC_PORT and HTTP_PORT;
# stopped when the script exits.
start_collector() {
    local rotel
    rotel="${ROTEL_AGENT:-$(python3 -c 'import os, rotel; print(os.path.join(os.path.dirname(rotel.__file__), "rotel-agent"))')}"
    "$rotel" start --exporter blackhole --otlp-grpc-endpoint "127.0.0.1:$1" \
        --otlp-http-endpoint "127.0.0.1:$2" >"$out/rotel-$2.log" 2>&1 &
    collector=$!
    trap 'kill $collector 2>/dev/null || true' EXIT
}

# Runs `$bin serve` under callgrind with counting off, writing PROFILE, on
# PORT, with the environment in `server_env` (VAR=value each); the rest of
# the arguments go to `serve`. Sets `server` and waits until it answers.
start_counted_server() {
    local profile="$1" port="$2"
    shift 2
    env "${server_env[@]}" valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$profile" \
        "$bin" serve --listen "127.0.0.1:$port" --log-stdout false --messages-per-second 0 "$@" \
        >/dev/null 2>"$profile.err" &
    server=$!
    for _ in $(seq 100); do
        "$bin" health --url "http://127.0.0.1:$port/healthz" >/dev/null 2>&1 && break
        sleep 0.3
    done
}

# Counts while COMMAND... runs (and 2 s after, for the spans' export),
# stops the server, and sets `total` to the instructions counted. (Not
# printed for a `$(…)`: a subshell cannot wait for the server to write
# its profile.)
count_while() {
    callgrind_control -i on "$server" >/dev/null 2>&1
    "$@" >/dev/null
    sleep 2
    callgrind_control -i off "$server" >/dev/null 2>&1
    kill -TERM "$server"
    wait "$server" 2>/dev/null || true
    total=$(callgrind_annotate "$profile_file" 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1}')
}
