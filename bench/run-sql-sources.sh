#!/usr/bin/env bash
# SQL-source benchmark (BENCHMARKS.md, "Live SQL sources"): builds Herald in release mode and runs
# bench/sql-sources.mjs, which starts its own PostgreSQL (Debian's `postgresql` package), 100 parameter sets polled
# every second with 10 WebSocket subscribers each, and reports Herald's CPU and the database's queries per second.
#
# Usage: bench/run-sql-sources.sh        Env: UNITS, SUBS, INTERVAL_MS, DURATION, CHANGES, JSON=1, CARGO_TARGET_DIR
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
cargo build --release -p herald
[ -d tests/js/node_modules ] || (cd tests/js && npm ci --no-audit --no-fund --loglevel=error)
HERALD_BIN="$CARGO_TARGET_DIR/release/herald" exec node bench/sql-sources.mjs
