#!/usr/bin/env bash
# Service-monitor benchmark: 1,000 HTTP monitors at a 10 s interval against a local target.
# Builds Herald (release), runs it pinned to core 0 and the driver + target (bench/monitors/bench.mjs, Node) pinned to
# core 1, and prints one JSON object of measurements. Bounded: it stops by itself after the warm-up and the window.
#
# Environment: MONITORS (1000), INTERVAL (10 s), WARMUP (15 s), DURATION (60 s), PAGE_SECONDS (0: no browser; N: also
# open /status in headless Chromium with every monitor and measure it for N s; needs `npm ci` in tests/js),
# JSON_OUT (file for the result), SCREENSHOT (png of the page), CARGO_TARGET_DIR (/work/target-bench),
# HERALD_BIN (skip the build and use this binary).
set -euo pipefail
cd "$(dirname "$0")/../.."

if [[ -z "${HERALD_BIN:-}" ]]; then
  export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/work/target-bench}"
  cargo build --release -p herald >&2
  export HERALD_BIN="$CARGO_TARGET_DIR/release/herald"
fi
export HERALD_CORE="${HERALD_CORE:-0}"
# The whole run is bounded; the timeout only guards against a hang (warm-up waits for every monitor's first check).
limit=$(( ${WARMUP:-15} + ${DURATION:-60} + ${PAGE_SECONDS:-0} + 180 ))
exec timeout --signal=TERM --kill-after=15 "$limit" taskset -c "${DRIVER_CORE:-1}" node bench/monitors/bench.mjs
