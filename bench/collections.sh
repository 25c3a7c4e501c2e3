#!/usr/bin/env bash
# Collections benchmark (BENCHMARKS.md, "Collections"): builds Herald in release mode and runs bench/collections.mjs:
# REST writes with 1,000 WebSocket subscribers under durability "full" and "normal" (writes/s, write→event latency),
# memory per stored document, and the snapshot of 10,000 documents to a new subscriber.
#
# Usage: bench/collections.sh       Env: SUBS, WRITES, CONCURRENCY, DOCS, DURABILITIES, JSON=1, CARGO_TARGET_DIR,
#                                   HERALD_BIN (skips the release build: e.g. a debug binary for a smoke run)
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
if [ -z "${HERALD_BIN:-}" ]; then
  cargo build --release -p herald
  HERALD_BIN="$CARGO_TARGET_DIR/release/herald"
fi
[ -d tests/js/node_modules ] || (cd tests/js && npm ci --no-audit --no-fund --loglevel=error)
HERALD_BIN="$HERALD_BIN" exec node bench/collections.mjs
