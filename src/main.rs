//! The `herald` binary: `serve`, `publish`, `tail` and `collections`.

use std::net::SocketAddr;
use std::path::PathBuf;

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
        /// What is logged, in tracing's EnvFilter syntax (`debug`, `herald=debug,warn`); without it `RUST_LOG`,
        /// else `herald=info,warn`.
        #[arg(long, env = "HERALD_LOG")]
        log_level: Option<String>,
        /// Log lines as human-readable `text` or as one JSON object per line (`json`), on stderr.
        #[arg(long, env = "HERALD_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
        log_format: LogFormat,
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
        remote: Remote,
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
        remote: Remote,
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
        remote: Remote,
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
        remote: Remote,
    },
    /// Print every document as one JSON array (a backup `import` reads back).
    Export {
        /// Collection name.
        name: String,
        #[command(flatten)]
        remote: Remote,
    },
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

#[derive(clap::Args)]
struct Remote {
    /// Server URL.
    #[arg(long, env = "HERALD_URL", default_value = "http://127.0.0.1:7700")]
    url: String,
    /// API key.
    #[arg(long = "api-key", env = "HERALD_API_KEY", value_delimiter = ',')]
    api_key: Vec<String>,
}

impl Remote {
    fn request(
        &self,
        client: &reqwest::Client,
        method: reqwest::Method,
        path: &str,
    ) -> reqwest::RequestBuilder {
        let req = client.request(method, format!("{}{path}", self.url.trim_end_matches('/')));
        match self.api_key.first() {
            Some(key) => req.bearer_auth(key),
            None => req,
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // reqwest is built without a default TLS provider (it would pull aws-lc): ring serves every client here.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = Cli::parse();
    match cli.command {
        Command::Serve {
            config,
            listen,
            data_dir,
            api_keys,
            engine,
            engine_url,
            engine_prefix,
            log_level,
            log_format,
        } => {
            init_logs(log_level, log_format)?;
            let overrides = Overrides {
                listen,
                data_dir,
                api_keys,
                engine,
                engine_url,
                engine_prefix,
            };
            let config = Config::load(config.as_ref(), overrides)?;
            serve(config).await
        }
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
            Ok(())
        }
        Command::Tail {
            channel,
            since,
            lines,
            remote,
        } => tail(&channel, since, lines, &remote).await,
        Command::Collections { command } => collections::run(command).await,
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

async fn tail(
    channel: &str,
    since: Option<u64>,
    lines: u64,
    remote: &Remote,
) -> anyhow::Result<()> {
    let client = reqwest::Client::new();
    let path = format!("/api/channels/{}/history", percent_encode(channel));
    let mut after = match since {
        Some(s) => s,
        None => {
            let head = format!("{path}?limit=1&since={}", u64::MAX);
            let resp = remote
                .request(&client, reqwest::Method::GET, &head)
                .send()
                .await;
            match resp {
                Ok(r) if r.status().is_success() => {
                    let last = r.json::<Value>().await?["last_offset"]
                        .as_u64()
                        .unwrap_or(0);
                    last.saturating_sub(lines)
                }
                Ok(r) if r.status() == reqwest::StatusCode::NOT_FOUND => 0,
                Ok(r) => bail!(
                    "tail failed ({}): {}",
                    r.status(),
                    r.text().await.unwrap_or_default()
                ),
                Err(e) => {
                    return Err(e)
                        .with_context(|| format!("cannot reach Herald at {}", remote.url));
                }
            }
        }
    };
    loop {
        let resp = remote
            .request(
                &client,
                reqwest::Method::GET,
                &format!("{path}?since={after}&wait=30&limit=1000"),
            )
            .send()
            .await
            .with_context(|| format!("cannot reach Herald at {}", remote.url))?;
        let status = resp.status();
        if status == reqwest::StatusCode::NOT_FOUND {
            continue;
        }
        let body: Value = resp.json().await?;
        if !status.is_success() {
            bail!("tail failed ({status}): {body}");
        }
        if let Some(gap) = body.get("gap") {
            eprintln!(
                "gap: events {} to {} are no longer in history",
                gap["from"], gap["to"]
            );
        }
        for ev in body["events"].as_array().into_iter().flatten() {
            println!("{ev}");
            after = ev["offset"].as_u64().unwrap_or(after);
        }
    }
}

mod collections {
    //! `herald collections list|import|export`: the collections' routes driven from the command line. An import
    //! reads the file one document at a time and sends batches of at most `--batch-bytes`, so memory holds two
    //! batches whatever the file's size; each batch is stored atomically and the report says which were.

    use std::io::Write as _;

    use anyhow::{Context, bail};
    use serde::de::{DeserializeSeed, SeqAccess, Visitor};
    use serde_json::Value;

    use super::{CollectionsCommand, Remote, percent_encode};

    pub async fn run(command: CollectionsCommand) -> anyhow::Result<()> {
        let client = reqwest::Client::new();
        match command {
            CollectionsCommand::List { remote } => {
                let body = get(&client, &remote, "/api/collections").await?;
                for c in body["collections"].as_array().into_iter().flatten() {
                    println!(
                        "{}\tchannel={}\tpath={}\tdocuments={}",
                        c["name"].as_str().unwrap_or_default(),
                        c["channel"].as_str().unwrap_or_default(),
                        c["path"].as_str().unwrap_or("-"),
                        c["documents"]
                    );
                }
                Ok(())
            }
            CollectionsCommand::Export { name, remote } => {
                let mut out = std::io::BufWriter::new(std::io::stdout().lock());
                let mut after: Option<String> = None;
                let mut first = true;
                write!(out, "[")?;
                loop {
                    let mut path = format!("/api/collections/{}?limit=1000", percent_encode(&name));
                    if let Some(a) = &after {
                        path.push_str(&format!("&after={}", percent_encode(a)));
                    }
                    let page = get(&client, &remote, &path).await?;
                    for d in page["documents"].as_array().into_iter().flatten() {
                        if !first {
                            write!(out, ",")?;
                        }
                        first = false;
                        write!(out, "\n{d}")?;
                    }
                    match page["next"].as_str() {
                        Some(n) => after = Some(n.to_owned()),
                        None => break,
                    }
                }
                writeln!(out, "\n]")?;
                Ok(())
            }
            CollectionsCommand::Import {
                name,
                file,
                batch_bytes,
                remote,
            } => import(&client, &remote, &name, file, batch_bytes.max(1)).await,
        }
    }

    async fn get(client: &reqwest::Client, remote: &Remote, path: &str) -> anyhow::Result<Value> {
        let resp = remote
            .request(client, reqwest::Method::GET, path)
            .send()
            .await
            .with_context(|| format!("cannot reach Herald at {}", remote.url))?;
        let status = resp.status();
        let body: Value = resp
            .json()
            .await
            .context("the server's answer is not JSON")?;
        if !status.is_success() {
            bail!("{path} failed ({status}): {body}");
        }
        Ok(body)
    }

    /// One batch: its documents as one JSON array, and how many.
    struct Batch {
        json: String,
        count: usize,
    }

    async fn import(
        client: &reqwest::Client,
        remote: &Remote,
        name: &str,
        file: std::path::PathBuf,
        batch_bytes: usize,
    ) -> anyhow::Result<()> {
        // The parser runs on its own thread and hands over one batch at a time (at most one waits).
        let (tx, mut rx) = tokio::sync::mpsc::channel::<anyhow::Result<Batch>>(1);
        let reader = std::thread::spawn(move || {
            let result = read_batches(&file, batch_bytes, &tx);
            if let Err(e) = result {
                let _ = tx.blocking_send(Err(e));
            }
        });
        let path = format!("/api/collections/{}/import", percent_encode(name));
        let (mut stored, mut created, mut replaced, mut batches) = (0usize, 0u64, 0u64, 0usize);
        while let Some(batch) = rx.recv().await {
            let batch = match batch {
                Ok(b) => b,
                Err(e) => {
                    let _ = reader.join();
                    bail!(
                        "{e:#}\n{stored} documents were stored before it (in {batches} batches); none after"
                    );
                }
            };
            let resp = remote
                .request(client, reqwest::Method::POST, &path)
                .header("content-type", "application/json")
                .body(batch.json)
                .send()
                .await
                .with_context(|| format!("cannot reach Herald at {}", remote.url))?;
            let status = resp.status();
            let body: Value = resp.json().await.unwrap_or(Value::Null);
            if !status.is_success() {
                bail!(
                    "batch {} (documents {} to {}) was refused ({status}): {body}\n{stored} documents before it are stored; none from it on",
                    batches + 1,
                    stored,
                    stored + batch.count - 1
                );
            }
            stored += batch.count;
            batches += 1;
            created += body["created"].as_u64().unwrap_or(0);
            replaced += body["replaced"].as_u64().unwrap_or(0);
        }
        let _ = reader.join();
        println!(
            "{{\"collection\":{},\"documents\":{stored},\"created\":{created},\"replaced\":{replaced},\"batches\":{batches}}}",
            Value::String(name.to_owned())
        );
        Ok(())
    }

    fn read_batches(
        file: &std::path::Path,
        batch_bytes: usize,
        tx: &tokio::sync::mpsc::Sender<anyhow::Result<Batch>>,
    ) -> anyhow::Result<()> {
        let input: Box<dyn std::io::Read> = if file.as_os_str() == "-" {
            Box::new(std::io::stdin())
        } else {
            Box::new(
                std::fs::File::open(file)
                    .with_context(|| format!("cannot open {}", file.display()))?,
            )
        };
        let mut de = serde_json::Deserializer::from_reader(std::io::BufReader::new(input));
        Batches { batch_bytes, tx }
            .deserialize(&mut de)
            .with_context(|| format!("{} is not a JSON array of documents", file.display()))?;
        de.end()
            .with_context(|| format!("{}: text after the array", file.display()))?;
        Ok(())
    }

    struct Batches<'a> {
        batch_bytes: usize,
        tx: &'a tokio::sync::mpsc::Sender<anyhow::Result<Batch>>,
    }

    impl<'de> DeserializeSeed<'de> for Batches<'_> {
        type Value = ();
        fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
            d.deserialize_seq(self)
        }
    }

    impl<'de> Visitor<'de> for Batches<'_> {
        type Value = ();
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a JSON array of documents")
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
            let mut batch = Batch {
                json: String::from("["),
                count: 0,
            };
            let send = |b: Batch| {
                let mut b = b;
                b.json.push(']');
                self.tx.blocking_send(Ok(b)).is_ok()
            };
            while let Some(doc) = seq.next_element::<Box<serde_json::value::RawValue>>()? {
                if batch.count > 0 && batch.json.len() + doc.get().len() > self.batch_bytes {
                    let full = std::mem::replace(
                        &mut batch,
                        Batch {
                            json: String::from("["),
                            count: 0,
                        },
                    );
                    if !send(full) {
                        return Ok(());
                    }
                }
                if batch.count > 0 {
                    batch.json.push(',');
                }
                batch.json.push_str(doc.get());
                batch.count += 1;
            }
            if batch.count > 0 {
                send(batch);
            }
            Ok(())
        }
    }
}

/// Percent-encodes a channel name for a URL path segment.
fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
