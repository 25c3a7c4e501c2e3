#!/usr/bin/env bash
# Three Herald nodes on one Redis against one SQLite node, in one run: subscribers spread over nodes B and C (and A),
# events published on node A; delivered/s, publish→receive latency (one clock: publisher and subscribers are the same
# herald-bench process), server CPU per delivery and Redis CPU per publish. Results as JSON lines and a markdown table
# under bench/results/.
#
# Usage: bench/cluster.sh        (needs cargo, redis-server, python3, taskset)
# Env:   PER_NODE (1000 subscribers per node), RATES ("20 100": events/s, one run each), DURATION (20 s), REPEATS (1),
#        AOF (no | everysec | always: the Redis persistence of the run), OUT (bench/results), CARGO_TARGET_DIR,
#        BIN_DIR (use the herald and herald-bench binaries there instead of building release ones).
#
# The machine has two cores: every server process (the nodes, Redis, the single node) is pinned to core 0 and
# herald-bench to core 1, so "server CPU" is all of the cluster's work on one core, comparable with the single node.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$root/target}"
per_node=${PER_NODE:-1000}
rates=${RATES:-20 100}
duration=${DURATION:-20}
repeats=${REPEATS:-1}
aof=${AOF:-no}
out=${OUT:-$root/bench/results}
stamp=$(date -u +%Y-%m-%dT%H%MZ)
mkdir -p "$out"
command -v redis-server >/dev/null || { echo "cluster.sh: redis-server is not installed" >&2; exit 1; }

if [[ -n "${BIN_DIR:-}" ]]; then
    bin=$BIN_DIR
else
    cargo build --release -p herald -p herald-bench
    bin="$CARGO_TARGET_DIR/release"
fi
tmp=$(mktemp -d --suffix=.cluster)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$tmp"
}
trap cleanup EXIT
printf '[limits]\nconnections_per_second_per_ip = 0\nconnections_per_ip = 0\n' >"$tmp/herald.toml"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# Starts one Herald node (extra flags in "$@") on a free port; prints "PID URL" once it listens (bounded: 20 s).
start_node() {
    local dir=$1; shift
    local port; port=$(free_port)
    mkdir -p "$dir"
    HERALD_CONFIG=$tmp/herald.toml taskset -c 0 "$bin/herald" serve --listen "127.0.0.1:$port" --data-dir "$dir" "$@" \
        >"$dir/out" 2>"$dir/log" &
    local pid=$!
    pids+=("$pid")
    for _ in $(seq 200); do
        grep -q 'listening on' "$dir/out" 2>/dev/null && { echo "$pid http://127.0.0.1:$port"; return; }
        kill -0 "$pid" 2>/dev/null || { cat "$dir/log" >&2; return 1; }
        sleep 0.1
    done
    echo "node in $dir did not start" >&2
    return 1
}

stop_all() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    pids=()
}

results="$out/cluster-$stamp.jsonl"
for rate in $rates; do
    for r in $(seq "$repeats"); do
        # The cluster: one Redis, three nodes.
        rport=$(free_port)
        mkdir -p "$tmp/redis-$rate-$r"
        persist=(--appendonly no)
        [[ $aof != no ]] && persist=(--appendonly yes --appendfsync "$aof")
        taskset -c 0 redis-server --bind 127.0.0.1 --port "$rport" --save '' "${persist[@]}" \
            --dir "$tmp/redis-$rate-$r" >"$tmp/redis-$rate-$r.log" 2>&1 &
        redis_pid=$!
        pids+=("$redis_pid")
        for _ in $(seq 100); do
            redis-cli -p "$rport" ping 2>/dev/null | grep -q PONG && break
            sleep 0.1
        done
        engine=(--engine redis --engine-url "redis://127.0.0.1:$rport" --engine-prefix bench)
        read -r pa ua < <(start_node "$tmp/a-$rate-$r" "${engine[@]}")
        read -r pb ub < <(start_node "$tmp/b-$rate-$r" "${engine[@]}")
        read -r pc uc < <(start_node "$tmp/c-$rate-$r" "${engine[@]}")
        echo "== cluster, $rate events/s, run $r: publish on $ua, $per_node subscribers on each of three nodes" >&2
        taskset -c 1 "$bin/herald-bench" fanout --url "$ua" --server-pid "$pa" \
            --subscribe-url "$ua" --subscribe-url "$ub" --subscribe-url "$uc" \
            --connections $((per_node * 3)) --rate "$rate" --duration "$duration" --idle 2 \
            --watch-pid "redis=$redis_pid" --watch-pid "node_a=$pa" --watch-pid "node_b=$pb" --watch-pid "node_c=$pc" \
            --json | python3 -c "import json,sys; d=json.load(sys.stdin); d['setup']='redis-3-nodes'; d['aof']='$aof'; print(json.dumps(d))" \
            >>"$results" || echo "cluster run failed (see the JSON line's first_error)" >&2
        stop_all

        # The single SQLite node at the same total load, then at one node's share.
        for subs in $((per_node * 3)) "$per_node"; do
            read -r ps us < <(start_node "$tmp/s-$rate-$r-$subs")
            echo "== single SQLite node, $rate events/s, $subs subscribers" >&2
            taskset -c 1 "$bin/herald-bench" fanout --url "$us" --server-pid "$ps" --watch-pid "node=$ps" \
                --connections "$subs" --rate "$rate" --duration "$duration" --idle 2 --json |
                python3 -c "import json,sys; d=json.load(sys.stdin); d['setup']='sqlite-1-node'; print(json.dumps(d))" \
                >>"$results" || echo "single-node run failed" >&2
            stop_all
        done
    done
done

python3 - "$results" >"$out/cluster-$stamp.md" <<'EOF'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
print("| setup | subscribers | events/s | delivered/s | p50 ms | p99 ms | server CPU µs/delivery | Redis CPU µs/publish | lost/gaps/dups/missing | passed |")
print("|---|---|---|---|---|---|---|---|---|---|")
for d in rows:
    w = d.get("watched", {})
    total = sum((v.get("cpu_us") or 0) for v in w.values())
    delivered = max(d["publish"]["delivered"], 1)
    redis = w.get("redis", {}).get("cpu_us_per_published")
    c = d["correctness"]
    print(f"| {d['setup']} | {d['connections']} | {d['rate']:g} | {d['publish']['delivered_per_s']:.0f} | "
          f"{d['latency_ms']['p50']:.2f} | {d['latency_ms']['p99']:.2f} | {total / delivered:.2f} | "
          f"{'—' if redis is None else f'{redis:.1f}'} | {c['connections_lost']}/{c['gaps']}/{c['duplicates']}/{c['missing']} | {d['passed']} |")
EOF
cat "$out/cluster-$stamp.md"
echo "results: $results, $out/cluster-$stamp.md" >&2
