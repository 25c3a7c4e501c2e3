#!/usr/bin/env bash
# Before/after comparison of two Herald builds with herald-bench: each scenario runs on each build in turn
# (interleaved, REPEATS times), a fresh server per run pinned to core 0, herald-bench pinned to core 1, loopback.
#
# Usage: bench/ab.sh BEFORE_HERALD_BINARY AFTER_HERALD_BINARY
# Env:   REPEATS (3); SCENARIOS: herald-bench argument lists separated by ";" (default: idle 5,000 / connect-storm
#        5,000 / fanout 1,000 × 20/s / fanout 1,000 × 200/s); OUT (bench/results). herald-bench is taken from
#        CARGO_TARGET_DIR (./target)/release, built if missing. Prints the medians; the runs go to OUT/ab-STAMP.jsonl.
set -euo pipefail
cd "$(dirname "$0")/.."
before=$1 after=$2
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
gen="$CARGO_TARGET_DIR/release/herald-bench"
[[ -x $gen ]] || cargo build --release -p herald-bench
scenarios=${SCENARIOS:-"idle --connections 5000 --idle 26;connect-storm --connections 5000;fanout --connections 1000 --rate 20 --duration 10;fanout --connections 1000 --rate 200 --duration 10"}
out=${OUT:-$PWD/bench/results}
mkdir -p "$out"
runs="$out/ab-$(date -u +%Y-%m-%dT%H%MZ).jsonl"
tmp=$(mktemp -d --suffix=.ab)
trap 'rm -rf "$tmp"' EXIT
# All load comes from 127.0.0.1: lift Herald's per-address limits.
printf '[limits]\nconnections_per_second_per_ip = 0\nconnections_per_ip = 0\n' >"$tmp/herald.toml"
IFS=';' read -ra cases <<<"$scenarios"
for rep in $(seq "${REPEATS:-3}"); do
    for sc in "${cases[@]}"; do
        for variant in before after; do
            bin=$before; [[ $variant == after ]] && bin=$after
            data=$(mktemp -d -p "$tmp")
            echo "== run $rep: $sc on $variant" >&2
            # shellcheck disable=SC2086 # the scenario's arguments are meant to split
            taskset -c 1 "$gen" $sc --json --server-log "$tmp/server.log" \
                --server-cmd "env HERALD_CONFIG=$tmp/herald.toml taskset -c 0 $bin serve --listen 127.0.0.1:0 --data-dir $data" \
                >"$tmp/run.json" 2>/dev/null || true
            python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); d.update(variant=sys.argv[2], case=sys.argv[3]); print(json.dumps(d))' \
                "$tmp/run.json" "$variant" "$sc" >>"$runs" || echo "   no summary from this run" >&2
        done
    done
done
python3 - "$runs" <<'PY'
import collections, json, statistics, sys
groups = collections.defaultdict(list)
for line in open(sys.argv[1]):
    d = json.loads(line)
    groups[(d["case"], d["variant"])].append(d)
def measure(d):
    if d["scenario"] == "idle":
        return "RSS KiB/conn", d["idle"]["rss_kib_per_connection"]
    if d["scenario"] == "connect-storm":
        return "CPU µs/conn", d["connect"]["server_cpu_us_per_connection"]
    return "CPU µs/delivered", d["publish"]["server_cpu_us_per_delivered"]
print("| scenario | build | measure | median | runs | all passed |\n|---|---|---|---|---|---|")
for (case, variant), ds in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1] != "before")):
    name, _ = measure(ds[0])
    vals = [measure(d)[1] for d in ds]
    print(f"| {case} | {variant} | {name} | {statistics.median(vals):g} | {', '.join(f'{v:g}' for v in vals)} | {all(d['passed'] for d in ds)} |")
PY
