//! The binary's day-to-day commands against a running server, through its HTTP API: `tail`, `history`,
//! `channels`, `connections`, `bench` (a wrapper of `herald-bench`) and `collections`. Results go to stdout (tables, or JSON
//! lines for events); progress of long work and notices (gaps) go to stderr.

pub mod collections;

use std::io::Write as _;

use anyhow::{Context, bail};
use futures_util::StreamExt as _;
use serde_json::Value;

/// Where the server is and how to authenticate.
#[derive(clap::Args)]
pub struct Remote {
    /// Server URL.
    #[arg(long, env = "HERALD_URL", default_value = "http://127.0.0.1:7700")]
    pub url: String,
    /// API key.
    #[arg(long = "api-key", env = "HERALD_API_KEY", value_delimiter = ',')]
    pub api_key: Vec<String>,
}

impl Remote {
    /// A request to `path` on the server, with the key.
    pub fn request(
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

    /// GETs `path`: the JSON body of a 2xx, else an error with the server's answer.
    async fn get(&self, client: &reqwest::Client, path: &str) -> anyhow::Result<Value> {
        let resp = self
            .request(client, reqwest::Method::GET, path)
            .send()
            .await
            .with_context(|| format!("cannot reach Herald at {}", self.url))?;
        answer(resp).await
    }
}

/// The JSON body of a 2xx answer, else an error naming the status and the server's error.
async fn answer(resp: reqwest::Response) -> anyhow::Result<Value> {
    let status = resp.status();
    let text = resp.text().await.context("reading the server's answer")?;
    if !status.is_success() {
        let message = serde_json::from_str::<Value>(&text)
            .ok()
            .and_then(|v| {
                let e = v.get("error")?;
                Some(format!(
                    "{}: {}",
                    e["code"].as_str().unwrap_or("error"),
                    e["message"].as_str().unwrap_or("")
                ))
            })
            .unwrap_or(text);
        bail!("{status}: {message}");
    }
    serde_json::from_str(&text).context("the server's answer is not JSON")
}

/// Events per history request.
const PAGE: u64 = 1000;
/// Longest hold of a following history request, in seconds (the API's limit is 60).
const FOLLOW_WAIT: u64 = 30;
/// Presence requests in flight at once while counting subscribers.
const CONCURRENT_COUNTS: usize = 8;
/// Work longer than this many items reports its progress on stderr.
const PROGRESS_FROM: usize = 2;

/// Percent-encodes a channel name for a URL path segment.
pub fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn history_path(channel: &str) -> String {
    format!("/api/channels/{}/history", percent_encode(channel))
}

/// Prints one page's events as JSON lines (a gap as a notice on stderr); the last offset printed.
fn print_page(body: &Value, mut after: u64) -> u64 {
    if let Some(gap) = body.get("gap") {
        eprintln!(
            "gap: events {} to {} are no longer in history",
            gap["from"], gap["to"]
        );
    }
    let mut out = std::io::stdout().lock();
    for ev in body["events"].as_array().into_iter().flatten() {
        let _ = writeln!(out, "{ev}");
        after = ev["offset"].as_u64().unwrap_or(after);
    }
    let _ = out.flush();
    after
}

/// Prints the channel's events after `after` as they come, forever (long-polls history).
async fn follow(
    client: &reqwest::Client,
    remote: &Remote,
    channel: &str,
    mut after: u64,
) -> anyhow::Result<()> {
    let path = history_path(channel);
    loop {
        let resp = remote
            .request(
                client,
                reqwest::Method::GET,
                &format!("{path}?since={after}&wait={FOLLOW_WAIT}&limit={PAGE}"),
            )
            .send()
            .await
            .with_context(|| format!("cannot reach Herald at {}", remote.url))?;
        // A channel with no events yet: ask again (each ask is itself a `wait`-long hold).
        if resp.status() == reqwest::StatusCode::NOT_FOUND {
            continue;
        }
        let body = answer(resp).await?;
        after = print_page(&body, after);
    }
}

/// `herald tail`: the last `lines` events (or those after `since`), then new ones as they come.
pub async fn tail(
    channel: &str,
    since: Option<u64>,
    lines: u64,
    remote: &Remote,
) -> anyhow::Result<()> {
    let client = reqwest::Client::new();
    let after = match since {
        Some(s) => s,
        None => {
            let head = format!("{}?limit=1&since={}", history_path(channel), u64::MAX);
            let resp = remote
                .request(&client, reqwest::Method::GET, &head)
                .send()
                .await
                .with_context(|| format!("cannot reach Herald at {}", remote.url))?;
            if resp.status() == reqwest::StatusCode::NOT_FOUND {
                0
            } else {
                let last = answer(resp).await.context("tail failed")?["last_offset"]
                    .as_u64()
                    .unwrap_or(0);
                last.saturating_sub(lines)
            }
        }
    };
    follow(&client, remote, channel, after).await
}

/// `herald history`: every event after `since` still in history, page by page (progress on stderr when it takes
/// several pages); with `follow`, then new ones as they come. A channel with no events is an error unless
/// following.
pub async fn history(
    channel: &str,
    since: u64,
    follow_on: bool,
    remote: &Remote,
) -> anyhow::Result<()> {
    let client = reqwest::Client::new();
    let path = history_path(channel);
    let mut after = since;
    let mut printed = 0u64;
    let mut pages = 0usize;
    loop {
        let resp = remote
            .request(
                &client,
                reqwest::Method::GET,
                &format!("{path}?since={after}&limit={PAGE}"),
            )
            .send()
            .await
            .with_context(|| format!("cannot reach Herald at {}", remote.url))?;
        if resp.status() == reqwest::StatusCode::NOT_FOUND && follow_on {
            break;
        }
        let body = answer(resp).await.context("history failed")?;
        let count = body["events"].as_array().map_or(0, Vec::len) as u64;
        let last = body["last_offset"].as_u64().unwrap_or(0);
        after = print_page(&body, after);
        printed += count;
        pages += 1;
        let done = count == 0 || after >= last;
        if pages >= PROGRESS_FROM || !done {
            eprintln!(
                "history: {printed} events, offset {after} of {last}{}",
                if done { ", done" } else { "" }
            );
        }
        if done {
            break;
        }
    }
    if follow_on {
        follow(&client, remote, channel, after).await?;
    }
    Ok(())
}

/// `herald channels`: a table of every channel (name, position, epoch, subscribers on this node), or JSON lines.
/// Subscribers come from each channel's presence (admin scope; `-` without it), counted a few at a time with
/// progress on stderr for many channels.
pub async fn channels(remote: &Remote, json: bool) -> anyhow::Result<()> {
    let client = reqwest::Client::new();
    let body = remote
        .get(&client, "/api/channels")
        .await
        .context("listing channels failed")?;
    let list: Vec<Value> = body["channels"].as_array().cloned().unwrap_or_default();
    let total = list.len();
    let client = &client;
    let mut counted = 0usize;
    let mut rows = Vec::with_capacity(total);
    let mut counts = futures_util::stream::iter(list.into_iter().map(|c| async move {
        let name = c["channel"].as_str().unwrap_or_default().to_owned();
        let path = format!("/api/channels/{}/presence?limit=1", percent_encode(&name));
        let subscribers = remote
            .get(client, &path)
            .await
            .ok()
            .and_then(|p| p["counts"]["connections"].as_u64());
        (c, subscribers)
    }))
    .buffered(CONCURRENT_COUNTS);
    let progress = total > 100;
    while let Some(row) = counts.next().await {
        counted += 1;
        if progress && (counted.is_multiple_of(100) || counted == total) {
            eprintln!("channels: counted subscribers of {counted} of {total}");
        }
        rows.push(row);
    }
    let mut out = std::io::stdout().lock();
    if json {
        for (mut c, subscribers) in rows {
            c["subscribers"] = subscribers.map_or(Value::Null, Value::from);
            writeln!(out, "{c}")?;
        }
        return Ok(());
    }
    let table: Vec<[String; 4]> = rows
        .iter()
        .map(|(c, subscribers)| {
            [
                c["channel"].as_str().unwrap_or_default().to_owned(),
                c["last_offset"].to_string(),
                c["epoch"].as_str().unwrap_or_default().to_owned(),
                subscribers.map_or_else(|| "-".to_owned(), |n| n.to_string()),
            ]
        })
        .collect();
    print_table(
        &mut out,
        ["CHANNEL", "POSITION", "EPOCH", "SUBSCRIBERS"],
        &table,
    )?;
    Ok(())
}

/// Writes `rows` under `header` in columns as wide as their widest cell.
fn print_table<const N: usize>(
    out: &mut impl std::io::Write,
    header: [&str; N],
    rows: &[[String; N]],
) -> std::io::Result<()> {
    let mut widths = header.map(|h| h.chars().count());
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut s = String::new();
        for (i, (cell, w)) in cells.iter().zip(widths).enumerate() {
            if i + 1 == N {
                s.push_str(cell);
            } else {
                s.push_str(&format!("{cell:<w$}  "));
            }
        }
        s
    };
    writeln!(out, "{}", line(header.to_vec()))?;
    for row in rows {
        writeln!(out, "{}", line(row.iter().map(String::as_str).collect()))?;
    }
    out.flush()
}

/// `herald connections`: a table of this node's connections (every page), or with `disconnect` closes one.
pub async fn connections(
    remote: &Remote,
    disconnect: Option<String>,
    transport: Option<String>,
    json: bool,
) -> anyhow::Result<()> {
    let client = reqwest::Client::new();
    if let Some(id) = disconnect {
        let path = format!("/api/connections/{}/disconnect", percent_encode(&id));
        let resp = remote
            .request(&client, reqwest::Method::POST, &path)
            .send()
            .await
            .with_context(|| format!("cannot reach Herald at {}", remote.url))?;
        answer(resp)
            .await
            .with_context(|| format!("disconnecting {id} failed"))?;
        println!("disconnected {id}");
        return Ok(());
    }
    let mut all = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let mut path = format!("/api/connections?limit={PAGE}");
        if let Some(a) = &after {
            path.push_str(&format!("&after={}", percent_encode(a)));
        }
        if let Some(t) = &transport {
            path.push_str(&format!("&transport={}", percent_encode(t)));
        }
        let page = remote
            .get(&client, &path)
            .await
            .context("listing connections failed")?;
        all.extend(page["connections"].as_array().cloned().unwrap_or_default());
        match page["next"].as_str() {
            Some(next) => {
                eprintln!("connections: {} so far", all.len());
                after = Some(next.to_owned());
            }
            None => break,
        }
    }
    let mut out = std::io::stdout().lock();
    if json {
        for c in all {
            writeln!(out, "{c}")?;
        }
        return Ok(());
    }
    let now = herald::core::event::now_ms();
    let text = |v: &Value| v.as_str().map_or_else(|| "-".to_owned(), str::to_owned);
    let rows: Vec<[String; 6]> = all
        .iter()
        .map(|c| {
            let transport = match c["carrier"].as_str() {
                Some(carrier) => format!("{} ({carrier})", text(&c["transport"])),
                None => text(&c["transport"]),
            };
            let age = c["connected_at"]
                .as_i64()
                .map_or_else(|| "-".to_owned(), |t| duration((now - t).max(0) / 1000));
            let subs: Vec<String> = c["subscriptions"]
                .as_array()
                .into_iter()
                .flatten()
                .map(text)
                .collect();
            [
                text(&c["id"]),
                transport,
                text(&c["user"]),
                text(&c["address"]),
                age,
                subs.join(","),
            ]
        })
        .collect();
    print_table(
        &mut out,
        ["ID", "TRANSPORT", "USER", "ADDRESS", "AGE", "SUBSCRIPTIONS"],
        &rows,
    )?;
    Ok(())
}

/// `1h02m`, `3m05s`, `42s`.
fn duration(secs: i64) -> String {
    match secs {
        s if s >= 3600 => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
        s if s >= 60 => format!("{}m{:02}s", s / 60, s % 60),
        s => format!("{s}s"),
    }
}

/// The load generator's binary: `HERALD_BENCH_BIN`, else `herald-bench` beside this binary, else on `PATH`.
fn bench_binary() -> Option<std::path::PathBuf> {
    if let Some(path) = std::env::var_os("HERALD_BENCH_BIN") {
        let path = std::path::PathBuf::from(path);
        return path.is_file().then_some(path);
    }
    let beside = std::env::current_exe()
        .ok()?
        .with_file_name(format!("herald-bench{}", std::env::consts::EXE_SUFFIX));
    if beside.is_file() {
        return Some(beside);
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("herald-bench"))
            .find(|p| p.is_file())
    })
}

/// `herald bench ARGS…`: runs `herald-bench` (the load generator in `bench/`) with `args`, its exit code ours.
pub async fn bench(args: Vec<String>) -> anyhow::Result<std::process::ExitCode> {
    let Some(binary) = bench_binary() else {
        bail!(
            "herald-bench is not built: build it with `cargo build --release -p herald-bench` (bench/, see \
             BENCHMARKS.md), or point HERALD_BENCH_BIN at it"
        );
    };
    let status = tokio::process::Command::new(&binary)
        .args(&args)
        .status()
        .await
        .with_context(|| format!("cannot run {}", binary.display()))?;
    Ok(std::process::ExitCode::from(
        status
            .code()
            .and_then(|c| u8::try_from(c).ok())
            .unwrap_or(1),
    ))
}
