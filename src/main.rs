//! The `herald` binary: `serve`, `config check`, and the commands against a running server (`publish` here; `tail`,
//! `history`, `channels`, `connections`, `bench`, `collections` in [`cli`]).

mod cli;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use herald::config::{Config, Overrides};
use serde_json::Value;
use tokio::net::{TcpListener, TcpSocket};

#[derive(Parser)]
#[command(
    name = "herald",
    version,
    about = "Real-time update server: durable ordered channels over Socket.IO"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server.
    Serve {
        /// TOML config file.
        #[arg(long, env = "HERALD_CONFIG")]
        config: Option<PathBuf>,
        #[command(flatten)]
        settings: Settings,
        /// What is logged, in tracing's EnvFilter syntax (`debug`, `herald=debug,warn`); without it `RUST_LOG`,
        /// else `herald=info,warn`.
        #[arg(long, env = "HERALD_LOG")]
        log_level: Option<String>,
        /// Log lines as human-readable `text` or as one JSON object per line (`json`), on stderr.
        #[arg(long, env = "HERALD_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
        log_format: LogFormat,
    },
    /// Work with configuration files.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Publish one event and print the result.
    Publish {
        /// Channel name.
        channel: String,
        /// Event name.
        event: String,
        /// JSON payload (default null).
        data: Option<String>,
        /// Idempotency key.
        #[arg(long)]
        id: Option<String>,
        #[command(flatten)]
        remote: cli::Remote,
    },
    /// Print a channel's history as JSON lines (every event after `--since`); with `--follow`, then new ones.
    History {
        /// Channel name.
        channel: String,
        /// Start after this offset.
        #[arg(long, default_value_t = 0)]
        since: u64,
        /// Keep printing new events as they are published.
        #[arg(long, short = 'f')]
        follow: bool,
        #[command(flatten)]
        remote: cli::Remote,
    },
    /// List the channels: name, position (last offset), epoch and subscribers on this node.
    Channels {
        /// One JSON object per channel instead of a table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        remote: cli::Remote,
    },
    /// List this node's connections, or close one (its client reconnects and resumes).
    Connections {
        /// Close the connection with this id instead of listing.
        #[arg(long, value_name = "ID")]
        disconnect: Option<String>,
        /// Only connections of this transport: `socketio`, `websocket` or `sse`.
        #[arg(long)]
        transport: Option<String>,
        /// One JSON object per connection instead of a table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        remote: cli::Remote,
    },
    /// Run the load generator (`herald-bench`, built from bench/) with these arguments; `herald bench --help`.
    #[command(disable_help_flag = true)]
    Bench {
        /// Arguments for `herald-bench`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Print a channel's events as JSON lines, then follow new ones.
    Tail {
        /// Channel name.
        channel: String,
        /// Start after this offset (default: the last `--lines` events).
        #[arg(long)]
        since: Option<u64>,
        /// Without `--since`, how many of the latest events to print first.
        #[arg(long, short = 'n', default_value_t = 10)]
        lines: u64,
        #[command(flatten)]
        remote: cli::Remote,
    },
    /// List, import or export the documents of `[[collections]]` (through a running server).
    Collections {
        #[command(subcommand)]
        command: CollectionsCommand,
    },
}

#[derive(Subcommand)]
enum CollectionsCommand {
    /// Print each collection: name, channel, path, documents.
    List {
        #[command(flatten)]
        remote: cli::Remote,
    },
    /// Store the documents of a JSON array file (e.g. seed 001's `books.json`), in batches, each atomic.
    Import {
        /// Collection name.
        name: String,
        /// A file holding a JSON array of documents (`-`: standard input).
        file: PathBuf,
        /// Most bytes of documents sent in one batch (each batch is stored atomically).
        #[arg(long, default_value_t = 256 << 10)]
        batch_bytes: usize,
        #[command(flatten)]
        remote: cli::Remote,
    },
    /// Print every document as one JSON array (a backup `import` reads back).
    Export {
        /// Collection name.
        name: String,
        #[command(flatten)]
        remote: cli::Remote,
    },
}

/// `herald config …`.
#[derive(Subcommand)]
enum ConfigCommand {
    /// Validate FILE (with the environment's overrides, as `serve` would) and print the effective configuration
    /// with secrets redacted; exit code 1 with the error when it is invalid.
    Check {
        /// TOML config file.
        file: PathBuf,
        #[command(flatten)]
        settings: Settings,
    },
}

/// The settings flags and environment variables override in the config file.
#[derive(clap::Args)]
struct Settings {
    /// Address to listen on (port 0 picks a free one).
    #[arg(long, env = "HERALD_LISTEN")]
    listen: Option<SocketAddr>,
    /// Directory for the SQLite database.
    #[arg(long, env = "HERALD_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// API key for the HTTP API (repeatable; the env var takes a comma-separated list).
    #[arg(long = "api-key", env = "HERALD_API_KEY", value_delimiter = ',')]
    api_keys: Vec<String>,
    /// Engine: `sqlite` (durable, the default), `memory` (nothing written to disk) or `redis`.
    #[arg(long, env = "HERALD_ENGINE")]
    engine: Option<herald::core::engine::EngineChoice>,
    /// The Redis engine's server (`redis://…` or `rediss://…`), instead of `[engine] url`.
    #[arg(long, env = "HERALD_ENGINE_URL")]
    engine_url: Option<String>,
    /// Prefix of the Redis engine's keys and channels, instead of `[engine] prefix`.
    #[arg(long, env = "HERALD_ENGINE_PREFIX")]
    engine_prefix: Option<String>,
}

impl From<Settings> for Overrides {
    fn from(s: Settings) -> Self {
        Overrides {
            listen: s.listen,
            data_dir: s.data_dir,
            api_keys: s.api_keys,
            engine: s.engine,
            engine_url: s.engine_url,
            engine_prefix: s.engine_prefix,
        }
    }
}

/// How log lines are written.
#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    /// One human-readable line per event.
    Text,
    /// One JSON object per line: `timestamp`, `level`, `target`, `message` and the event's fields.
    Json,
}

/// The filter when neither `--log-level`/`HERALD_LOG` nor `RUST_LOG` says otherwise.
const DEFAULT_LOG: &str = "herald=info,warn";

/// Sets up logging on stderr. The filter is `--log-level`/`HERALD_LOG` (refused when invalid), else `RUST_LOG` (as
/// before these flags: an invalid one falls back to the default), else [`DEFAULT_LOG`]. The proxy crate's own
/// per-request error lines are off unless the filter names its target: `herald::proxy` logs those failures
/// aggregated instead.
fn init_logs(level: Option<String>, format: LogFormat) -> anyhow::Result<()> {
    use tracing_subscriber::EnvFilter;
    let (directives, filter) = match level {
        Some(level) => {
            let filter = EnvFilter::builder()
                .parse(&level)
                .with_context(|| format!("invalid --log-level / HERALD_LOG {level:?}"))?;
            (level, filter)
        }
        None => match std::env::var(EnvFilter::DEFAULT_ENV) {
            Ok(rust_log) => match EnvFilter::builder().parse(&rust_log) {
                Ok(filter) => (rust_log, filter),
                Err(_) => (DEFAULT_LOG.to_owned(), EnvFilter::new(DEFAULT_LOG)),
            },
            Err(_) => (DEFAULT_LOG.to_owned(), EnvFilter::new(DEFAULT_LOG)),
        },
    };
    let filter = if directives.contains("axum_reverse_proxy") {
        filter
    } else {
        filter.add_directive("axum_reverse_proxy=off".parse()?)
    };
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => logs.init(),
        LogFormat::Json => logs.json().flatten_event(true).init(),
    }
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<ExitCode> {
    // reqwest is built without a default TLS provider (it would pull aws-lc): ring serves every client here.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = Cli::parse();
    match cli.command {
        Command::Serve {
            config,
            settings,
            log_level,
            log_format,
        } => {
            init_logs(log_level, log_format)?;
            let config = Config::load(config.as_ref(), settings.into())?;
            serve(config).await?;
        }
        Command::Config {
            command: ConfigCommand::Check { file, settings },
        } => return Ok(config_check(&file, settings)),
        Command::Publish {
            channel,
            event,
            data,
            id,
            remote,
        } => {
            let data: Value = match data {
                Some(text) => {
                    serde_json::from_str(&text).context("the payload is not valid JSON")?
                }
                None => Value::Null,
            };
            let mut body = serde_json::json!({"channel": channel, "event": event, "data": data});
            if let Some(id) = id {
                body["id"] = Value::String(id);
            }
            let client = reqwest::Client::new();
            let resp = remote
                .request(&client, reqwest::Method::POST, "/api/publish")
                .json(&body)
                .send()
                .await
                .with_context(|| format!("cannot reach Herald at {}", remote.url))?;
            let status = resp.status();
            let body: Value = resp
                .json()
                .await
                .context("the server's answer is not JSON")?;
            if !status.is_success() {
                bail!("publish failed ({status}): {body}");
            }
            let result = body["results"].get(0).cloned().unwrap_or(body);
            println!("{result}");
        }
        Command::History {
            channel,
            since,
            follow,
            remote,
        } => cli::history(&channel, since, follow, &remote).await?,
        Command::Channels { json, remote } => cli::channels(&remote, json).await?,
        Command::Connections {
            disconnect,
            transport,
            json,
            remote,
        } => cli::connections(&remote, disconnect, transport, json).await?,
        Command::Bench { args } => return cli::bench(args).await,
        Command::Tail {
            channel,
            since,
            lines,
            remote,
        } => cli::tail(&channel, since, lines, &remote).await?,
        Command::Collections { command } => cli::collections::run(command).await?,
    }
    Ok(ExitCode::SUCCESS)
}

/// What `serve` reads besides the file, checked without contacting anything: the TLS certificate and key, and the
/// `[auth]` keys (PEM and JWKS files, secrets from the environment) unless one is a JWKS URL (fetched at start).
fn check_files(config: &Config) -> anyhow::Result<()> {
    if let Some(tls) = &config.tls {
        herald::tls::Tls::load(&tls.cert, &tls.key)?;
    }
    let remote = config
        .auth
        .keys
        .iter()
        .any(|k| matches!(k, herald::auth::KeyConfig::Jwks { url: Some(_), .. }));
    if !remote {
        herald::auth::Authenticator::new(&config.auth)?;
    }
    Ok(())
}

/// `herald config check FILE`: the effective configuration with secrets redacted on stdout, or the error on stderr
/// and exit code 1.
fn config_check(file: &std::path::Path, settings: Settings) -> ExitCode {
    use std::io::Write as _;
    match Config::load(Some(&file.to_path_buf()), settings.into())
        .map_err(anyhow::Error::from)
        .and_then(|config| {
            check_files(&config)?;
            Ok(config)
        }) {
        Ok(config) => {
            let mut out = std::io::stdout().lock();
            // A closed pipe (`| head`) is not an error of the configuration.
            let _ = writeln!(
                out,
                "{} is valid; the effective configuration (secrets redacted):\n{:#?}",
                file.display(),
                config.redacted()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("herald: {}: {e}", file.display());
            ExitCode::FAILURE
        }
    }
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let mut config = config;
    let open_api = config.api_keys.is_empty();
    if open_api && !config.listen.ip().is_loopback() {
        tracing::warn!(requested = %config.listen, "no API key configured: listening on loopback only");
        config.listen.set_ip([127, 0, 0, 1].into());
    }
    let listener =
        listen(config.listen).with_context(|| format!("cannot listen on {}", config.listen))?;
    let server = herald::server::Server::start(config).await?;
    let addr = listener.local_addr()?;
    if open_api {
        tracing::warn!(%addr, "no API key configured: loopback only, and the HTTP API needs no key; set api_keys to expose Herald");
    }
    tracing::info!(%addr, "herald started");
    let scheme = if server.is_tls() { "https" } else { "http" };
    println!("herald listening on {scheme}://{addr}");
    server.run(listener, shutdown_signal()).await?;
    Ok(())
}

/// Binds with a listen backlog of `somaxconn`'s usual ceiling: the default 128 overflows in connect storms and
/// costs the overflowed clients a one-second SYN retransmit.
fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(4096)
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!(error = %e, "cannot listen for SIGTERM");
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
    tracing::info!("shutting down");
}
