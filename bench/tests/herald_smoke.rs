//! A smoke run of herald-bench against the real Herald binary (built by `cargo build --workspace`, which
//! `scripts/test` runs first; `cargo test --workspace` builds it too): fan-out over all three transports and a
//! resume storm across a real restart must all pass with zero loss, gaps, duplicates and lost first events.

use serde_json::Value;
use std::path::PathBuf;
use std::process::Command;

/// Herald's binary: next to herald-bench's in the same target directory (whatever `CARGO_TARGET_DIR` is), or in
/// the workspace's default `target/debug`.
fn herald() -> PathBuf {
    let bench = PathBuf::from(env!("CARGO_BIN_EXE_herald-bench"));
    let candidates = [
        bench.with_file_name("herald"),
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/debug/herald"),
    ];
    candidates
        .iter()
        .find(|p| p.is_file())
        .cloned()
        .unwrap_or_else(|| {
            panic!("no herald binary at {candidates:?}: run `cargo build --workspace` first")
        })
}

/// Runs one herald-bench scenario against a fresh Herald it starts itself; returns the JSON summary.
fn run(args: &[&str]) -> Value {
    let data = tempfile::tempdir().expect("temp dir");
    let config = data.path().join("bench.toml");
    // herald-bench opens every connection from 127.0.0.1: lift the per-address limits.
    std::fs::write(
        &config,
        "[limits]\nconnections_per_second_per_ip = 0\nconnections_per_ip = 0\n",
    )
    .expect("config");
    let cmd = format!(
        "{} serve --listen 127.0.0.1:0 --data-dir {}",
        herald().display(),
        data.path().join("data").display()
    );
    let log = data.path().join("herald.log");
    let out = Command::new(env!("CARGO_BIN_EXE_herald-bench"))
        .args(args)
        .args(["--json", "--server-cmd", &cmd, "--server-log"])
        .arg(&log)
        .env("HERALD_CONFIG", &config)
        .output()
        .expect("running herald-bench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let report = || {
        format!(
            "{args:?}: exit {:?}\nstdout {stdout}\nstderr {}\nherald log {}",
            out.status.code(),
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(&log).unwrap_or_default()
        )
    };
    let summary: Value = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("no JSON summary ({e}): {}", report()));
    let c = &summary["correctness"];
    for k in [
        "gaps",
        "duplicates",
        "missing",
        "first_event_lost",
        "connections_lost",
        "bad_frames",
    ] {
        assert_eq!(c[k], 0, "{k}: {}", report());
    }
    assert!(c["delivered"].as_u64().unwrap_or(0) > 0, "{}", report());
    assert_eq!(summary["passed"], true, "{}", report());
    assert!(out.status.success(), "{}", report());
    summary
}

#[test]
fn fanout_over_socketio_ws_and_sse() {
    for transport in ["socketio", "ws", "sse"] {
        let s = run(&[
            "fanout",
            "--transport",
            transport,
            "--connections",
            "50",
            "--rate",
            "50",
            "--duration",
            "0.4",
            "--idle",
            "0.2",
            "--drain",
            "5",
        ]);
        assert_eq!(s["correctness"]["expected"], 50 * 20, "{s}");
    }
}

#[test]
fn many_channels() {
    let s = run(&[
        "channels",
        "--channels",
        "20",
        "--connections",
        "100",
        "--rate",
        "200",
        "--duration",
        "0.5",
        "--idle",
        "0.2",
        "--drain",
        "5",
    ]);
    // 100 events over 20 channels: 5 per channel, 5 subscribers each.
    assert_eq!(s["correctness"]["expected"], 500, "{s}");
}

#[test]
fn resume_storm_across_a_restart() {
    let s = run(&[
        "resume-storm",
        "--connections",
        "50",
        "--rate",
        "50",
        "--duration",
        "0.4",
        "--backlog",
        "20",
        "--idle",
        "0.2",
        "--drain",
        "10",
    ]);
    assert_eq!(s["resume"]["caught_up"], true, "{s}");
    assert_eq!(s["resume"]["resubscribed"], 50, "{s}");
    // 20 live events and 20 published after the restart, each to all 50 clients.
    assert_eq!(s["correctness"]["expected"], 50 * 40, "{s}");
}

#[test]
fn idle_and_connect_storm() {
    let s = run(&[
        "idle",
        "--connections",
        "100",
        "--idle",
        "0.5",
        "--drain",
        "5",
    ]);
    assert!(s["idle"]["rss_kib_per_connection"].is_number(), "{s}");
    let s = run(&["connect-storm", "--connections", "300", "--drain", "5"]);
    assert_eq!(s["connect"]["subscribed"], 300, "{s}");
    assert_eq!(s["connect"]["failed"], 0, "{s}");
}
