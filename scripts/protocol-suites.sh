#!/usr/bin/env bash
# Runs the official Engine.IO and Socket.IO protocol test suites, unmodified, against
# examples/protocol_echo.rs. The suites hard-code http://localhost:3000, so port 3000 must be free.
#
# Usage: scripts/protocol-suites.sh [ENGINE_IO_PROTOCOL_DIR] [SOCKET_IO_PROTOCOL_DIR]
#   (or set EIO_SUITE / SIO_SUITE): checkouts of socketio/engine.io-protocol and
#   socketio/socket.io-protocol (the directories containing test-suite/).
#   RUNS=N repeats each suite N times (default 1).
set -euo pipefail

EIO_SUITE=${1:-${EIO_SUITE:-}}
SIO_SUITE=${2:-${SIO_SUITE:-}}
RUNS=${RUNS:-1}
if [[ -z "$EIO_SUITE" || -z "$SIO_SUITE" ]]; then
  echo "usage: $0 ENGINE_IO_PROTOCOL_DIR SOCKET_IO_PROTOCOL_DIR (or EIO_SUITE/SIO_SUITE)" >&2
  exit 2
fi

root=$(cd "$(dirname "$0")/.." && pwd)
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$root/target}
cargo build --quiet --manifest-path "$root/Cargo.toml" --example protocol_echo

PORT=3000 RUST_LOG=${RUST_LOG:-warn} "$CARGO_TARGET_DIR/debug/examples/protocol_echo" &
server=$!
trap 'kill "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true' EXIT

for _ in $(seq 50); do
  if (exec 3<>/dev/tcp/127.0.0.1/3000) 2>/dev/null; then break; fi
  sleep 0.1
done

status=0
for suite in "$EIO_SUITE" "$SIO_SUITE"; do
  dir="$suite/test-suite"
  [[ -d "$dir/node_modules" ]] || (cd "$dir" && npm ci --silent)
  for run in $(seq "$RUNS"); do
    echo "== $(basename "$suite") run $run"
    log=$(mktemp)
    if (cd "$dir" && npm test --silent >"$log" 2>&1); then :; else status=1; fi
    grep -E "passing|failing|pending" "$log" || cat "$log"
    # Failure details: mocha prints them after the summary.
    sed -n '/ failing$/,$p' "$log" | grep -vE "^\s+at " | sed -n '2,40p' || true
    rm -f "$log"
  done
done
exit $status
