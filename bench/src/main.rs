//! `herald-bench`: a compiled, single-threaded load generator for Herald (and any Socket.IO server that speaks
//! Herald's `subscribe` + `POST /api/publish` interface). Subscribers can also use Herald's plain WebSocket
//! protocol and Server-Sent Events. Each scenario is a subcommand.

mod clock;
mod fanout;
mod publish;
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
    /// N subscribers (Socket.IO, plain WebSocket or SSE) on one channel, one publisher at a fixed rate:
    /// throughput, latency, correctness, server CPU per delivered message and RSS per connection.
    Fanout(fanout::Args),
}

/// Options every scenario shares.
#[derive(clap::Args, Clone)]
pub struct Common {
    /// Server base URL (`http://HOST:PORT`).
    #[arg(long, default_value = "http://127.0.0.1:7700")]
    pub url: String,
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
    /// Resolves the URL into a WebSocket target and the `HOST:PORT` for HTTP requests.
    pub async fn resolve(&self) -> Result<(sio::Target, String)> {
        let rest = ["http://", "ws://"]
            .iter()
            .find_map(|p| self.url.strip_prefix(p));
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
    let outcome = tokio::task::LocalSet::new().block_on(&rt, async {
        match cli.scenario {
            Scenario::Fanout(args) => fanout::run(args).await,
        }
    });
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
