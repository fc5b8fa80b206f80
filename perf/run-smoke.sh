#!/usr/bin/env bash
# Smoke load test: starts the ringpush server (binary from RINGPUSH_BIN) on a
# free loopback port, runs short connect and fanout scenarios with the bundled
# bench-harness, and exits non-zero when the harness reports errors or lost
# messages (bench-harness --strict exits 3), or when anything fails to start.
#
# Env: RINGPUSH_BIN (default <repo>/target/debug/ringpush)
#      BENCH_HARNESS (default: cargo build -p bench-harness, then its binary)
#      SMOKE_OUT (directory for JSON results and plots; default a temp dir)
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bin="${RINGPUSH_BIN:-$repo/target/debug/ringpush}"
out="${SMOKE_OUT:-$(mktemp -d)}"
mkdir -p "$out"
[ -x "$bin" ] || { echo "run-smoke: server binary $bin not found (set RINGPUSH_BIN)" >&2; exit 2; }

harness="${BENCH_HARNESS:-}"
if [ -z "$harness" ]; then
    (cd "$repo" && cargo build -q -p bench-harness)
    target_dir="${CARGO_TARGET_DIR:-$repo/target}"
    harness="$target_dir/debug/bench-harness"
fi
[ -x "$harness" ] || { echo "run-smoke: harness binary $harness not found" >&2; exit 2; }

ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

cfg="$out/smoke.toml"
cat > "$cfg" <<'TOML'
[server]
host = "127.0.0.1"
port = 0
workers = 2

[[apps]]
id = "smoke-app"
key = "smoke-key"
secret = "smoke-secret"
client_events = true
TOML

"$bin" --config "$cfg" > "$out/server.stdout" 2> "$out/server.stderr" &
server_pid=$!
cleanup() {
    if kill -0 "$server_pid" 2>/dev/null; then
        kill -TERM "$server_pid" 2>/dev/null || true
        for _ in $(seq 1 50); do kill -0 "$server_pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$server_pid" 2>/dev/null || true
    fi
}
trap cleanup EXIT

port=""
for _ in $(seq 1 100); do
    port="$(sed -nE 's/.*listening on [0-9.]+:([0-9]+).*/\1/p' "$out/server.stdout" | head -n1)"
    [ -n "$port" ] && break
    kill -0 "$server_pid" 2>/dev/null || { echo "run-smoke: server exited early" >&2; cat "$out/server.stderr" >&2; exit 2; }
    sleep 0.1
done
[ -n "$port" ] || { echo "run-smoke: no 'listening on' line from the server" >&2; exit 2; }
echo "run-smoke: server pid $server_pid on port $port; results in $out"

common=(--ws-url "ws://127.0.0.1:$port" --http-url "http://127.0.0.1:$port"
        --app-id smoke-app --key smoke-key --secret smoke-secret
        --server-pid "$server_pid" --strict --quiet --plot-dir "$out/plots")

status=0
run() {
    local name="$1"; shift
    echo "--- $name"
    if ! "$harness" "${common[@]}" --label smoke --json-out "$out/$name.json" "$@"; then
        echo "run-smoke: $name FAILED" >&2
        status=1
    fi
}

run connect connect -n 300 --rate 1000
run fanout fanout -n 100 -k 4 --rate 50 --duration 3 --drain 5
run client-events client-events -n 40 -k 4 --rate 40 --duration 2 --drain 5

kill -0 "$server_pid" 2>/dev/null || { echo "run-smoke: server died during the run" >&2; status=1; }
if [ "$status" -eq 0 ]; then echo "run-smoke: OK"; else echo "run-smoke: FAILED" >&2; fi
exit "$status"
