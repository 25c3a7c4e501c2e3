#!/usr/bin/env bash
# Fan-out benchmark: builds Herald and herald-bench in release mode, starts `herald serve` on a free loopback
# port pinned to core 0, runs `herald-bench fanout` pinned to core 1, then stops the server. Bounded: the bench
# stops by itself after --duration (+ at most --drain) seconds.
#
# Usage: bench/run-fanout.sh [extra herald-bench fanout flags, e.g. --rate 200 --json]
# Env:   CONNECTIONS (1000), RATE (100), DURATION (20), CARGO_TARGET_DIR (./target),
#        HERALD_CONFIG (default: a config lifting the per-address connection limits),
#        SERVER_CMD: run this instead of Herald (it must print `herald listening on http://127.0.0.1:PORT` on
#        stdout and accept PORT=0 from the environment), e.g. a socket.io reference server for a peer row.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
if [[ -n "${SERVER_CMD:-}" ]]; then
    cargo build --release -p herald-bench
else
    cargo build --release -p herald -p herald-bench
fi
bin="$CARGO_TARGET_DIR/release"

data=$(mktemp -d)
out=$(mktemp)
# The load generator opens every connection from 127.0.0.1: lift the per-address limits unless told otherwise.
if [[ -z "${HERALD_CONFIG:-}" ]]; then
    export HERALD_CONFIG="$data/bench.toml"
    printf '[limits]\nconnections_per_second_per_ip = 0\nconnections_per_ip = 0\n' >"$HERALD_CONFIG"
fi
log=$(mktemp --suffix=.herald.log)
if [[ -n "${SERVER_CMD:-}" ]]; then
    PORT=0 taskset -c 0 $SERVER_CMD >"$out" 2>"$log" &
else
    taskset -c 0 "$bin/herald" serve --listen 127.0.0.1:0 --data-dir "$data" >"$out" 2>"$log" &
fi
pid=$!
cleanup() {
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
    rm -rf "$data" "$out"
}
trap cleanup EXIT

url=""
for _ in $(seq 300); do
    url=$(grep -om1 'http://127\.0\.0\.1:[0-9]*' "$out" || true)
    [[ -n "$url" ]] && break
    if ! kill -0 "$pid" 2>/dev/null; then
        echo "server exited before listening; log: $log" >&2
        tail -20 "$log" >&2
        exit 1
    fi
    sleep 0.1
done
[[ -n "$url" ]] || { echo "server did not print its listening line within 30 s; log: $log" >&2; exit 1; }
echo "server pid $pid at $url (log: $log)" >&2

status=0
taskset -c 1 "$bin/herald-bench" fanout --url "$url" --server-pid "$pid" \
    --connections "${CONNECTIONS:-1000}" --rate "${RATE:-100}" --duration "${DURATION:-20}" "$@" || status=$?
if [[ $status -ne 0 ]]; then
    echo "herald-bench exited with $status; last server log lines ($log):" >&2
    tail -20 "$log" >&2
fi
exit $status
