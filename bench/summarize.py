#!/usr/bin/env python3
"""Builds bench/compare.sh's comparison table from its JSON lines (one herald-bench summary per run, with the
`server`, `case` and `repeat` added): medians over the repeats for measurements, sums over all repeats for the
correctness counters (any loss must show).

Usage: summarize.py RUNS.jsonl OUT.md OUT.json
"""

import json
import statistics
import sys

SERVERS = ["herald-before", "herald", "socketio", "socketioxide"]
NAMES = {"herald-before": "Herald (before: BEFORE_BIN)", "herald": "Herald", "socketio": "socket.io 4.8 (Node)", "socketioxide": "socketioxide 0.18"}


def get(d, path):
    for key in path.split("."):
        if not isinstance(d, dict) or key not in d or d[key] is None:
            return None
        d = d[key]
    return d


def median(runs, path):
    vals = [v for v in (get(r, path) for r in runs) if isinstance(v, (int, float)) and not isinstance(v, bool)]
    return statistics.median(vals) if vals else None


def total(runs, path):
    vals = [get(r, path) for r in runs]
    return sum(v for v in vals if isinstance(v, (int, float)))


def fmt(v, digits=1):
    if v is None:
        return "n/a"
    if isinstance(v, str):
        return v
    if abs(v) >= 10_000:
        return f"{v / 1000:.{max(digits - 1, 0)}f}k" if abs(v) < 1e6 else f"{v / 1e6:.2f}M"
    return f"{v:.{digits}f}"


# Per scenario: (column title, JSON path, digits). Medians over the repeats.
COLUMNS = {
    "idle": [
        ("RSS KiB / conn", "idle.rss_kib_per_connection", 1),
        ("RSS MiB empty → idle", None, 0),
        ("heartbeat CPU % of a core", "idle.server_cpu_percent", 2),
        ("connect CPU µs / conn", "connect.server_cpu_us_per_connection", 0),
    ],
    "fanout-20": [
        ("delivered/s", "publish.delivered_per_s", 1),
        ("CPU µs / delivered", "publish.server_cpu_us_per_delivered", 2),
        ("server CPU %", "publish.server_cpu_percent", 0),
        ("p50 / p99 / max ms (sched.)", None, 1),
        ("p99 ms (from send)", "latency_from_send_ms.p99", 1),
        ("peak RSS MiB", None, 1),
    ],
    "channels": [
        ("delivered/s", "publish.delivered_per_s", 1),
        ("CPU µs / delivery", "publish.server_cpu_us_per_delivered", 2),
        ("server CPU %", "publish.server_cpu_percent", 0),
        ("p50 / p99 / max ms (sched.)", None, 1),
        ("RSS KiB / conn", "idle.rss_kib_per_connection", 1),
    ],
    "connect-storm": [
        ("seconds to all subscribed", "connect.seconds", 2),
        ("connect p50 / p99 ms", None, 0),
        ("CPU µs / conn", "connect.server_cpu_us_per_connection", 0),
        ("failed", None, 0),
    ],
    "resume-storm": [
        ("restart s", "resume.restart_seconds", 2),
        ("s to caught up", None, 2),
        ("resubscribe p99 ms", "resume.resubscribe_p99_ms", 0),
        ("failed", None, 0),
    ],
}
COLUMNS["publish"] = [
    ("publishes/s", "publish.ok_per_s", 0),
    ("CPU µs / publish", "publish.server_cpu_us_per_published", 1),
    ("HTTP p50 / p99 ms", None, 2),
    ("failed", "publish.failed", 0),
]
COLUMNS["fanout-200"] = COLUMNS["fanout-20"]
COLUMNS["fanout-200-seq"] = COLUMNS["fanout-20"] + [("HTTP p50 / p99 ms", None, 2)]
COLUMNS["publish-pipelined"] = COLUMNS["publish"]
TITLES = {
    "idle": "Idle capacity",
    "fanout-20": "Fan-out, low per-connection rate",
    "fanout-200": "Fan-out, high per-connection rate",
    "channels": "Many channels",
    "connect-storm": "Connect storm",
    "resume-storm": "Resume storm (server restarted, clients resume from their last event)",
    "fanout-200-seq": "Fan-out, high per-connection rate, one sequential publisher",
    "publish": "Publish alone, one sequential publisher",
    "publish-pipelined": "Publish alone, 64 requests pipelined",
}


def special(title, runs):
    if title == "RSS MiB empty → idle":
        a, b = median(runs, "idle.rss_kib_before"), median(runs, "idle.rss_kib")
        return f"{fmt(a / 1024 if a else None)} → {fmt(b / 1024 if b else None)}"
    if title == "p50 / p99 / max ms (sched.)":
        return " / ".join(fmt(median(runs, f"latency_ms.{q}")) for q in ("p50", "p99", "max"))
    if title == "peak RSS MiB":
        v = median(runs, "publish.rss_kib_end")
        return fmt(v / 1024 if v else None)
    if title == "HTTP p50 / p99 ms":
        return " / ".join(fmt(median(runs, f"publish.http_{q}_ms"), 2) for q in ("p50", "p99"))
    if title == "connect p50 / p99 ms":
        return " / ".join(fmt(median(runs, f"connect.{q}_ms"), 0) for q in ("p50", "p99"))
    if title == "failed":
        return str(total(runs, "connect.failed") + total(runs, "resume.failed"))
    if title == "s to caught up":
        caught = [get(r, "resume.caught_up") for r in runs]
        if not all(caught):
            return f"never in {sum(1 for c in caught if not c)}/{len(runs)} runs (≥ drain)"
        return fmt(median(runs, "resume.seconds_to_caught_up"), 2)
    raise KeyError(title)


def main():
    runs_path, md_path, json_path = sys.argv[1:4]
    runs = [json.loads(line) for line in open(runs_path) if line.strip()]
    cases = []
    for r in runs:
        if r["case"] not in cases:
            cases.append(r["case"])
    md, out = [], {}
    for case in cases:
        cols = COLUMNS.get(case, COLUMNS["fanout-20"])
        first = next(r for r in runs if r["case"] == case)
        md.append(f"### {TITLES.get(case, case)}: `{case}`")
        md.append("")
        md.append(
            f"{first['connections']} connections on {first['channels']} channel(s)"
            + ("" if case in ("idle", "connect-storm") else f", {first['rate']:g} events/s")
            + "."
        )
        md.append("")
        head = ["server", "runs"] + [c[0] for c in cols] + [
            "gaps / dups / missing / first lost (sum)",
            "passed",
            "other CPU % median (max)",
        ]
        md.append("| " + " | ".join(head) + " |")
        md.append("|" + "---|" * len(head))
        for srv in SERVERS:
            rs = [r for r in runs if r["case"] == case and r["server"] == srv]
            if not rs:
                continue
            row = [NAMES[srv], str(len(rs))]
            entry = {"runs": len(rs)}
            for title, path, digits in cols:
                if path is None:
                    cell = special(title, rs)
                else:
                    v = median(rs, path)
                    entry[path] = v
                    cell = fmt(v, digits)
                row.append(cell)
                entry[title] = cell
            corr = {k: total(rs, f"correctness.{k}") for k in ("gaps", "duplicates", "missing", "first_event_lost")}
            entry["correctness"] = corr
            row.append(" / ".join(str(corr[k]) for k in ("gaps", "duplicates", "missing", "first_event_lost")))
            passed = sum(1 for r in rs if r.get("passed"))
            entry["passed"] = passed
            row.append(f"{passed}/{len(rs)}")
            other = median(rs, "publish.other_cpu_percent")
            entry["other_cpu_percent_median"] = other
            others = [get(r, "publish.other_cpu_percent") for r in rs]
            worst = max((o for o in others if o is not None), default=None)
            row.append(f"{fmt(other, 0)} ({fmt(worst, 0)})")
            md.append("| " + " | ".join(row) + " |")
            out.setdefault(case, {})[srv] = entry
        md.append("")
    with open(md_path, "w") as f:
        f.write("\n".join(md))
    with open(json_path, "w") as f:
        json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
