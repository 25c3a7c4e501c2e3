#!/usr/bin/env bash
# Fan-out by transport: 1,000 subscribers on one channel over Socket.IO, plain WebSocket and SSE, at 100 and 200
# events/s, each configuration REPEATS times. Every run is one `bench/run-fanout.sh --json` invocation: a fresh
# Herald pinned to core 0, herald-bench pinned to core 1, stopped afterwards. Prints one row of medians per
# (transport, rate); every run's JSON summary is kept in $OUT/runs.jsonl. Bounded: each run stops by itself
# after DURATION s of publishing plus at most 10 s of drain. Needs `jq`.
#
# Usage: bench/run-transports.sh [extra herald-bench fanout flags]
# Env:   TRANSPORTS ("socketio ws sse"), RATES ("100 200"), REPEATS (3), CONNECTIONS (1000), DURATION (20),
#        OUT (a new temporary directory), CARGO_TARGET_DIR, HERALD_CONFIG and SERVER_CMD as for run-fanout.sh,
#        QUIET_PCT (10) / QUIET_WAIT (60): see wait_quiet; SUMMARIZE=DIR only reprints the table of an earlier OUT.
#
# Noise: the "quiet seconds" columns use only the 1-second intervals of a run in which other processes used
# less than QUIET_PCT % of a core (from the progress lines herald-bench prints each second).
set -euo pipefail
cd "$(dirname "$0")/.."
command -v jq >/dev/null || { echo "run-transports.sh needs jq" >&2; exit 1; }
transports=${TRANSPORTS:-socketio ws sse}
rates=${RATES:-100 200}
repeats=${REPEATS:-3}
out=${SUMMARIZE:-${OUT:-$(mktemp -d --suffix=.transports)}}
mkdir -p "$out"
runs="$out/runs.jsonl"
[[ -n "${SUMMARIZE:-}" ]] || : >"$runs"
export CONNECTIONS="${CONNECTIONS:-1000}" DURATION="${DURATION:-20}"
echo "results in $out" >&2

# Busy % of the whole machine (both cores = 200) over one second.
busy_pct() {
    local a b
    read -r _ a1 a2 a3 a4 a5 a6 a7 a8 _ </proc/stat
    sleep 1
    read -r _ b1 b2 b3 b4 b5 b6 b7 b8 _ </proc/stat
    a=$((a1 + a2 + a3 + a6 + a7 + a8)); b=$((b1 + b2 + b3 + b6 + b7 + b8))
    echo $(((b - a) * 100 / $(getconf CLK_TCK)))
}
# The machine is shared: before each run wait (up to QUIET_WAIT s, default 60) for 3 quiet seconds in a row
# (< QUIET_PCT % busy, default 10). Runs still go ahead when it never gets quiet; "other CPU" reports it.
wait_quiet() {
    local quiet=0 waited=0
    while ((quiet < 3 && waited < ${QUIET_WAIT:-60})); do
        if (($(busy_pct) < ${QUIET_PCT:-10})); then quiet=$((quiet + 1)); else quiet=0; fi
        waited=$((waited + 1))
    done
    ((quiet >= 3)) || echo "   machine still busy after ${QUIET_WAIT:-60} s; running anyway" >&2
}

[[ -n "${SUMMARIZE:-}" ]] && repeats=0
for rep in $(seq "$repeats"); do
    # Interleave the configurations so slow drifts in background load spread over all of them.
    for rate in $rates; do
        for t in $transports; do
            log="$out/$t-$rate-$rep.log"
            echo "== run $rep/$repeats: $t, $rate events/s (log $log)" >&2
            wait_quiet
            status=0
            RATE=$rate bench/run-fanout.sh --transport "$t" --json "$@" >"$out/last.json" 2>"$log" || status=$?
            if jq -e . "$out/last.json" >/dev/null 2>&1 && [[ -s "$out/last.json" ]]; then
                jq -c --argjson rep "$rep" --argjson status "$status" '. + {repeat: $rep, exit_status: $status}' \
                    "$out/last.json" >>"$runs"
                jq -r '"   delivered/s \(.publish.delivered_per_s|round)  p99 \(.latency_ms.p99) ms  server CPU \(.publish.server_cpu_us_per_delivered*100|round/100) µs/msg  other CPU \(.publish.other_cpu_percent|round)%  \(if .passed then "PASS" else "FAIL" end)"' \
                    "$out/last.json" >&2
            else
                echo "   run failed (exit $status) with no summary; see $log" >&2
                tail -5 "$log" >&2
            fi
        done
    done
done

# Per run, from its progress lines: the 1-s p99 latencies and server CPU of the quiet seconds.
quiet_seconds() {
    awk -v lim="${QUIET_PCT:-10}" '
        /^\[ *[0-9.]+s\]/ {
            o = $0; sub(/.*other CPU /, "", o); sub(/%.*/, "", o)
            if (o == "n/a" || o + 0 >= lim) next
            p = $0; sub(/.* p99 +/, "", p); sub(/ .*/, "", p)
            c = $0; sub(/.*server CPU /, "", c); sub(/%.*/, "", c)
            ps = ps sep p; cs = cs sep c; sep = ","
        }
        END { printf "{\"p99\":[%s],\"server_cpu\":[%s]}\n", ps, cs }' "$1"
}
augmented="$out/runs+quiet.jsonl"
: >"$augmented"
while IFS= read -r run; do
    log="$out/$(jq -r '"\(.transport)-\(.rate | tostring | sub("\\.0$"; ""))-\(.repeat).log"' <<<"$run")"
    q='{"p99":[],"server_cpu":[]}'
    [[ -f "$log" ]] && q=$(quiet_seconds "$log")
    jq -c --argjson q "$q" '. + {quiet: $q}' <<<"$run" >>"$augmented"
done <"$runs"

jq -rs '
  def med: map(select(. != null)) | sort | if length == 0 then null else .[(length - 1) / 2 | floor] end;
  def r(d): if . == null then "n/a" else (. * pow(10; d) | round / pow(10; d) | tostring) end;
  def k: if . == null then "n/a" else (. / 100 | round / 10 | tostring) + "k" end;
  ["socketio", "ws", "sse"] as $order
  | group_by([.transport, .rate])
  | sort_by([(.[0].transport as $t | $order | index($t)), .[0].rate])
  | (
      "| transport, offered | runs | delivered/s | p50 ms | p99 ms | max ms | quiet s: 1-s p99 ms / server CPU | publish HTTP p99 ms | server CPU (of 1 core) | CPU µs / delivered msg | connect CPU µs / conn | RSS KiB / conn idle / end | gen CPU | gaps / dups / missing / first-missing (all runs) | passed | other CPU median (max) |",
      "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
      (.[] | . as $g
        | "| \($g[0].transport), \($g[0].rate) ev/s × \($g[0].connections) | \($g | length) | \([$g[].publish.delivered_per_s] | med | k) | \([$g[].latency_ms.p50] | med | r(1)) | \([$g[].latency_ms.p99] | med | r(1)) | \([$g[].latency_ms.max] | med | r(0)) | \([$g[].quiet.p99[]] | med | r(1)) / \([$g[].quiet.server_cpu[]] | med | r(0))% (\([$g[].quiet.p99[]] | length) s) | \([$g[].publish.http_p99_ms] | med | r(1)) | \([$g[].publish.server_cpu_percent] | med | r(0))% | \([$g[].publish.server_cpu_us_per_delivered] | med | r(2)) | \([$g[].connect.server_cpu_us_per_connection] | med | r(0)) | \([$g[].idle.rss_kib_per_connection] | med | r(1)) / \([$g[].publish.rss_kib_per_connection_end] | med | r(1)) | \([$g[].publish.generator_cpu_percent] | med | r(0))% | \([$g[].correctness.gaps] | add) / \([$g[].correctness.duplicates] | add) / \([$g[].correctness.missing] | add) / \([$g[].correctness.first_event_lost] | add) | \([$g[] | select(.passed)] | length)/\($g | length) | \([$g[].publish.other_cpu_percent] | med | r(0))% (\([$g[].publish.other_cpu_percent] | max | r(0))%) |")
    )
' "$augmented"
echo "(medians of each column over the runs; quiet s = median over all quiet 1-s intervals of all runs, and their count; per-run JSON in $runs)" >&2
