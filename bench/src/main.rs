//! `herald-bench`: a compiled, single-threaded load generator for Herald (and any Socket.IO server that speaks
//! Herald's `subscribe` + `POST /api/publish` interface). Subscribers can also use Herald's plain WebSocket
//! protocol and Server-Sent Events. Each scenario is a subcommand; all share one engine (`scenario`).

mod clock;
mod publish;
mod scenario;
mod server;
mod sio;
mod sse;
mod stats;
mod ws;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "herald-bench", version, about)]
struct Cli {
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Subcommand)]
enum Scenario {
    /// N idle subscribed connections (default 1,000) for a quiet window (`--idle`, default 10 s): server RSS per
    /// connection and heartbeat CPU; then one event per channel checks every subscription still delivers.
    Idle(scenario::Args),
    /// N subscribers (default 1,000) on one channel, one publisher at a fixed rate (default 100/s for 20 s):
    /// delivered/s, latency from the scheduled and from the actual send time, server CPU per delivered message.
    Fanout(scenario::Args),
    /// Many channels: K channels (default 1,000) × 10 subscribers, the publisher spreading events over the
    /// channels round-robin (default 1,000/s in total for 20 s): server CPU per delivery, latency.
    Channels(scenario::Args),
    /// N connections (default 5,000) connect and subscribe all at once: wall time, connect p50/p99, server CPU
    /// per connection, failures; then one event per channel checks every subscription.
    ConnectStorm(scenario::Args),
    /// N subscribers (default 1,000) receive events (100/s for 5 s); the server is restarted (`--server-cmd`
    /// required), every client reconnects at once and resumes from its last event while a backlog (default 100
    /// events) is published: time to caught up, gaps, duplicates.
    ResumeStorm(scenario::Args),
    /// Publishing alone (no subscribers unless `--connections`): one sequential publisher by default
    /// (`--pipeline 1`), as fast as the server answers, for `--duration` s (default 10): publishes/s, HTTP
    /// round-trip p50/p99, server CPU per publish. `--pipeline N` pipelines N requests; `--batch` batches.
    Publish(scenario::Args),
}

/// Options every scenario shares.
#[derive(clap::Args, Clone)]
pub struct Common {
    /// Server base URL (`http://HOST:PORT`); ignored with `--server-cmd`.
    #[arg(long, default_value = "http://127.0.0.1:7700")]
    pub url: String,
    /// Start the server with this shell command (and stop it at the end): it must print
    /// `listening on http://HOST:PORT` on stdout; `PORT=0` is in its environment unless `PORT` is set. Its pid is
    /// then used for the CPU/RSS readings. resume-storm needs it (it restarts the server).
    #[arg(long)]
    pub server_cmd: Option<String>,
    /// File the started server's stderr is appended to [default: $TMPDIR/herald-bench-server-PID.log].
    #[arg(long)]
    pub server_log: Option<std::path::PathBuf>,
    /// Socket.IO path.
    #[arg(long, default_value = "/socket.io/")]
    pub path: String,
    /// Server process id: enables CPU (`/proc/PID/stat`) and RSS (`/proc/PID/status`) measurements.
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// API key sent as `Authorization: Bearer KEY` on HTTP API calls.
    #[arg(long)]
    pub api_key: Option<String>,
    /// Print the summary as one JSON object instead of a table (progress still goes to stderr).
    #[arg(long)]
    pub json: bool,
}

impl Common {
    /// Resolves `url` into a Socket.IO WebSocket target and the `HOST:PORT` for HTTP requests.
    pub async fn resolve(&self, url: &str) -> Result<(sio::Target, String)> {
        let rest = ["http://", "ws://"]
            .iter()
            .find_map(|p| url.strip_prefix(p));
        let Some(rest) = rest else {
            bail!("--url must start with http:// or ws://")
        };
        let host_port = rest.split('/').next().unwrap_or(rest);
        let addr = tokio::net::lookup_host(host_port)
            .await
            .with_context(|| format!("resolving {host_port}"))?
            .next()
            .with_context(|| format!("no address for {host_port}"))?;
        let ws_url = format!("ws://{host_port}{}?EIO=4&transport=websocket", self.path);
        Ok((sio::Target { addr, ws_url }, host_port.to_string()))
    }
}

/// Raises this process's open-files soft limit to its hard limit and checks that `connections` sockets fit.
pub fn raise_open_files(connections: usize) -> Result<()> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read/write the struct we pass.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            bail!("getrlimit(RLIMIT_NOFILE) failed");
        }
        if lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
            libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
        }
    }
    // Sockets plus the publisher, the runtime and stdio.
    let need = connections as u64 + 64;
    if lim.rlim_cur < need {
        bail!(
            "--connections {connections} needs {need} open files but this process may open only {} (ulimit -n)",
            lim.rlim_cur
        );
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let (kind, args) = match cli.scenario {
        Scenario::Idle(a) => (scenario::Kind::Idle, a),
        Scenario::Fanout(a) => (scenario::Kind::Fanout, a),
        Scenario::Channels(a) => (scenario::Kind::Channels, a),
        Scenario::ConnectStorm(a) => (scenario::Kind::ConnectStorm, a),
        Scenario::ResumeStorm(a) => (scenario::Kind::ResumeStorm, a),
        Scenario::Publish(a) => (scenario::Kind::Publish, a),
    };
    let outcome =
        tokio::task::LocalSet::new().block_on(&rt, async { scenario::run(kind, args).await });
    match outcome {
        Ok(true) => ExitCode::SUCCESS,
        // The run completed but saw failures (lost messages, failed connections or publishes).
        Ok(false) => ExitCode::from(2),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
