#!/usr/bin/env bash
# The side-by-side comparison: Herald, socket.io 4.8 (Node) and socketioxide 0.18, every herald-bench scenario,
# REPEATS runs each, medians in one markdown table (and JSON) under bench/results/.
#
# Usage: bench/compare.sh                       (from a clean checkout; needs cargo, node/npm, python3, taskset)
# Env:   REPEATS (3), SERVERS ("herald socketio socketioxide"), SCENARIOS (all, see below), SCALE (1.0: multiplies
#        every connection count), DURATION (10: publishing seconds of fanout/channels), IDLE_S (26: the idle window,
#        longer than the 25 s ping interval of all three servers), OUT (bench/results), CARGO_TARGET_DIR (./target),
#        SIOXIDE_TARGET_DIR (CARGO_TARGET_DIR), QUIET_WAIT (20) / QUIET_PCT (10): see wait_quiet.
#        SUMMARIZE=FILE.jsonl only rebuilds the table from an earlier run's JSON lines.
#        BEFORE_BIN=PATH adds the server `herald-before` (another Herald binary, e.g. a release build of an earlier
#        commit) for before/after figures in one run: SERVERS="herald-before herald" BEFORE_BIN=… bench/compare.sh
#
# Every run starts a fresh server (herald-bench --server-cmd) pinned to core 0; herald-bench runs pinned to
# core 1; all on loopback. Each run is bounded (ramp + idle + publishing + at most --drain s), so the whole matrix
# stops by itself: with the defaults about 20 minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$root/target}"
sioxide_target="${SIOXIDE_TARGET_DIR:-$CARGO_TARGET_DIR}"
repeats=${REPEATS:-3}
servers=${SERVERS:-herald socketio socketioxide}
scenarios=${SCENARIOS:-idle fanout-20 fanout-200 fanout-200-seq channels connect-storm resume-storm publish publish-pipelined}
scale=${SCALE:-1.0}
duration=${DURATION:-10}
idle_s=${IDLE_S:-26}
out=${OUT:-$root/bench/results}
stamp=$(date -u +%Y-%m-%dT%H%MZ)
mkdir -p "$out"

n() { python3 -c "import sys; print(max(1, round(float(sys.argv[1]) * float(sys.argv[2]))))" "$1" "$scale"; }

# Scenario → herald-bench arguments. Connection counts stay ≤ 10,000 per process (the open-files limit is 20,000).
args_of() {
    case $1 in
    idle) echo "idle --connections $(n 5000) --idle $idle_s" ;;
    fanout-20) echo "fanout --connections $(n 1000) --rate 20 --duration $duration" ;;
    fanout-200) echo "fanout --connections $(n 1000) --rate 200 --duration $duration" ;;
    # One sequential publisher (each request waits for its answer): how most backends publish.
    fanout-200-seq) echo "fanout --connections $(n 1000) --rate 200 --duration $duration --pipeline 1" ;;
    channels) echo "channels --channels $(n 1000) --connections $(($(n 1000) * 10)) --rate 1000 --duration $duration" ;;
    connect-storm) echo "connect-storm --connections $(n 5000)" ;;
    resume-storm) echo "resume-storm --connections $(n 1000) --rate 100 --duration 5 --backlog 100" ;;
    # Publishing alone, no subscribers: one sequential publisher, then 64 requests pipelined.
    publish) echo "publish --duration $duration --idle 1" ;;
    publish-pipelined) echo "publish --duration $duration --idle 1 --pipeline 64" ;;
    *) echo "unknown scenario $1" >&2; return 1 ;;
    esac
}

if [[ -z "${SUMMARIZE:-}" ]]; then
    echo "== building Herald, herald-bench, the socketioxide peer; installing the Node peer" >&2
    cargo build --release -p herald -p herald-bench
    # Peers are built only when they run.
    if [[ " $servers " == *" socketioxide "* ]]; then
        CARGO_TARGET_DIR="$sioxide_target" cargo build --release \
            --manifest-path bench/peers/socketioxide/Cargo.toml
    fi
    if [[ " $servers " == *" socketio "* ]]; then
        (cd bench/peers/socketio && npm ci --no-audit --no-fund --loglevel=error)
    fi
    if [[ " $servers " == *" herald-before "* && ! -x "${BEFORE_BIN:-}" ]]; then
        echo "SERVERS names herald-before: set BEFORE_BIN to an executable Herald binary" >&2
        exit 2
    fi
    bin="$CARGO_TARGET_DIR/release"
    tmp=$(mktemp -d --suffix=.compare)
    trap 'rm -rf "$tmp"' EXIT
    # The load generator opens every connection from 127.0.0.1: lift Herald's per-address limits.
    printf '[limits]\nconnections_per_second_per_ip = 0\nconnections_per_ip = 0\n' >"$tmp/herald.toml"

    server_cmd() {
        case $1 in
        herald) echo "env HERALD_CONFIG=$tmp/herald.toml taskset -c 0 $bin/herald serve --listen 127.0.0.1:0 --data-dir $2" ;;
        herald-before) echo "env HERALD_CONFIG=$tmp/herald.toml taskset -c 0 $BEFORE_BIN serve --listen 127.0.0.1:0 --data-dir $2" ;;
        socketio) echo "taskset -c 0 node $root/bench/peers/socketio/server.js" ;;
        socketioxide) echo "taskset -c 0 $sioxide_target/release/herald-bench-peer-socketioxide" ;;
        esac
    }

    # Busy % of the whole machine (both cores = 200) over one second.
    busy_pct() {
        local a b
        read -r _ a1 a2 a3 a4 a5 a6 a7 a8 _ </proc/stat
        sleep 1
        read -r _ b1 b2 b3 b4 b5 b6 b7 b8 _ </proc/stat
        a=$((a1 + a2 + a3 + a6 + a7 + a8)); b=$((b1 + b2 + b3 + b6 + b7 + b8))
        echo $(((b - a) * 100 / $(getconf CLK_TCK)))
    }
    # The machine is shared: before each run wait (up to QUIET_WAIT s) for 2 quiet seconds in a row (< QUIET_PCT %
    # busy). Runs go ahead anyway when it never gets quiet; each run's "other CPU" reports the disturbance.
    wait_quiet() {
        local quiet=0 waited=0
        while ((quiet < 2 && waited < ${QUIET_WAIT:-20})); do
            if (($(busy_pct) < ${QUIET_PCT:-10})); then quiet=$((quiet + 1)); else quiet=0; fi
            waited=$((waited + 1))
        done
    }

    runs="$out/runs-$stamp.jsonl"
    : >"$runs"
    echo "== results in $runs" >&2
    for rep in $(seq "$repeats"); do
        # Interleave servers and scenarios so drifts in background load spread over all of them.
        for sc in $scenarios; do
            for srv in $servers; do
                data="$tmp/data-$srv-$sc-$rep"
                mkdir -p "$data"
                log="$tmp/$srv-$sc-$rep.log"
                echo "== run $rep/$repeats: $sc on $srv" >&2
                wait_quiet
                status=0
                # shellcheck disable=SC2046 # the scenario's arguments are meant to split
                taskset -c 1 "$bin/herald-bench" $(args_of "$sc") --json \
                    --server-cmd "$(server_cmd "$srv" "$data")" --server-log "$log" \
                    >"$tmp/last.json" 2>"$tmp/progress.log" || status=$?
                if python3 -c 'import json,sys; json.load(open(sys.argv[1]))' "$tmp/last.json" 2>/dev/null; then
                    python3 - "$tmp/last.json" "$srv" "$sc" "$rep" "$status" >>"$runs" <<'EOF'
import json, sys
d = json.load(open(sys.argv[1]))
d.update(server=sys.argv[2], case=sys.argv[3], repeat=int(sys.argv[4]), exit_status=int(sys.argv[5]))
print(json.dumps(d))
EOF
                    python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); c=d["correctness"]; print("   %s  gaps %s dups %s missing %s first-lost %s  other CPU %s%%" % ("PASS" if d["passed"] else "FAIL", c["gaps"], c["duplicates"], c["missing"], c["first_event_lost"], d["publish"]["other_cpu_percent"]))' "$tmp/last.json" >&2
                else
                    echo "   run failed (exit $status) with no summary:" >&2
                    tail -5 "$tmp/progress.log" >&2
                fi
                rm -rf "$data"
            done
        done
    done
else
    runs=$SUMMARIZE
    stamp=$(basename "$runs" .jsonl)
    stamp=${stamp#runs-}
fi

python3 "$root/bench/summarize.py" "$runs" "$out/compare-$stamp.md" "$out/compare-$stamp.json"
echo "== table: $out/compare-$stamp.md (JSON: $out/compare-$stamp.json)" >&2
cat "$out/compare-$stamp.md"
