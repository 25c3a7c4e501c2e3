//! The publisher: `POST /api/publish` on a fixed schedule. Event `n` is due at `start + (n-first)/rate` and carries
//! that *scheduled* time (`"t"`), so a server (or publisher) that falls behind shows up as latency, and the time
//! the request was actually written (`"s"`). With K channels, event `n` goes to channel `(n-1) % K` and carries
//! that channel's sequence number `(n-1) / K + 1`, so every channel sees 1, 2, 3, … in order.
//!
//! Requests are pipelined on one HTTP/1.1 keep-alive connection: each is written when it is due, without waiting
//! for earlier responses (a reader task matches responses in order). One connection means the server sees the
//! events in sequence order, so subscribers can be checked for in-order delivery; pipelining means a slow
//! response never delays the schedule (up to `pipeline` outstanding requests, then the writer waits). With
//! `pipeline` 1 the publisher is sequential — each request waits for the previous response, as a backend's
//! `await fetch(…)` loop does — and a server slower than the schedule shows up as latency and a lower rate.
//! With `batch` > 1 each request carries that many events (`{"events":[…]}`), all stamped with the request's
//! scheduled time (the last event's due time).

use crate::clock::Clock;
use crate::stats::Histogram;
use anyhow::{Context, Result, bail};
use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::rc::Rc;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpStream, tcp::OwnedReadHalf};
use tokio::sync::Notify;

/// Default for the most requests awaiting a response; beyond it the schedule waits (and the lateness shows up as
/// latency).
pub const MAX_PIPELINE: usize = 1024;

pub struct Publisher {
    pub addr: SocketAddr,
    /// Request head up to the end of the headers, minus `Content-Length` (which comes last).
    pub head: String,
    /// Per channel, the body up to the sequence number: `{"channel":…,"event":…,"data":{"seq":`.
    pub body_heads: Vec<String>,
    /// Body after the timestamp: `,"pad":"…"}}`.
    pub body_tail: String,
    /// Events per request (1: plain `{"channel":…}` bodies; more: `{"events":[…]}` batches).
    pub batch: u64,
    /// Most requests awaiting a response (1: sequential).
    pub pipeline: usize,
    /// No request is written after this time (µs on the run's clock), whatever is still scheduled.
    pub stop_at_us: Option<u64>,
}

#[derive(Default)]
pub struct PublishStats {
    /// Highest sequence number written so far (1-based).
    pub scheduled: Cell<u64>,
    pub ok: Cell<u64>,
    pub failed: Cell<u64>,
    pub first_error: RefCell<Option<String>>,
    /// Request round-trip times in µs (write → complete response).
    pub rtt: RefCell<Histogram>,
}

impl PublishStats {
    fn fail(&self, n: u64, e: String) {
        self.failed.set(self.failed.get() + n);
        self.first_error.borrow_mut().get_or_insert(e);
    }
}

/// Requests written and not yet answered: (first sequence number, events, write time).
#[derive(Default)]
struct Pipeline {
    pending: RefCell<VecDeque<(u64, u64, u64)>>,
    /// Signalled when a response arrives or the reader stops.
    progress: Notify,
    reader_done: Cell<bool>,
}

impl Publisher {
    /// A publisher of `event` on `channels` to `host` (the Host header) whose bodies are about `body_bytes` long.
    pub fn new(
        addr: SocketAddr,
        host: &str,
        api_key: Option<&str>,
        (channels, event): (&[String], &str),
        body_bytes: usize,
        (batch, pipeline): (u64, usize),
    ) -> Self {
        let mut head = format!(
            "POST /api/publish HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        );
        if let Some(k) = api_key {
            let _ = write!(head, "Authorization: Bearer {k}\r\n");
        }
        let body_heads: Vec<String> = channels
            .iter()
            .map(|channel| {
                format!(
                    r#"{{"channel":{},"event":{},"data":{{"seq":"#,
                    serde_json::Value::from(channel.as_str()),
                    serde_json::Value::from(event)
                )
            })
            .collect();
        // A 6-digit seq, two 16-digit timestamps with `,"t":`/`,"s":`, and `,"pad":""}}`.
        let fixed = body_heads.first().map_or(0, String::len) + 6 + 2 * (5 + 16) + 11;
        let body_tail = format!(
            r#","pad":"{}"}}}}"#,
            "x".repeat(body_bytes.saturating_sub(fixed))
        );
        Self {
            addr,
            head,
            body_heads,
            body_tail,
            batch: batch.max(1),
            pipeline: pipeline.max(1),
            stop_at_us: None,
        }
    }

    /// Publishes events `first..=last` at `rate`/s starting at `start_us` (on `clock`), then waits (≤ 10 s) for
    /// replies.
    pub async fn run(
        self: Rc<Self>,
        clock: Clock,
        start_us: u64,
        rate: f64,
        (first, last): (u64, u64),
        stats: Rc<PublishStats>,
    ) {
        stats.scheduled.set(first - 1);
        if let Err(e) = self
            .run_inner(clock, start_us, rate, (first, last), &stats)
            .await
        {
            let unsent = last - stats.scheduled.get();
            stats.fail(unsent, format!("publisher: {e:#}"));
        }
    }

    async fn run_inner(
        &self,
        clock: Clock,
        start_us: u64,
        rate: f64,
        (mut first, count): (u64, u64),
        stats: &Rc<PublishStats>,
    ) -> Result<()> {
        let origin = first;
        let k = self.body_heads.len().max(1) as u64;
        let tcp = TcpStream::connect(self.addr).await.context("connecting")?;
        tcp.set_nodelay(true)?;
        let (rd, mut wr) = tcp.into_split();
        let pipe = Rc::new(Pipeline::default());
        tokio::task::spawn_local(read_responses(rd, pipe.clone(), stats.clone(), clock));
        let (mut body, mut req) = (String::new(), Vec::new());
        while first <= count {
            let last = (first + self.batch - 1).min(count);
            let due = start_us + ((last - origin) as f64 * 1e6 / rate) as u64;
            tokio::time::sleep_until(clock.instant_at(due).into()).await;
            while pipe.pending.borrow().len() >= self.pipeline && !pipe.reader_done.get() {
                pipe.progress.notified().await;
            }
            if self.stop_at_us.is_some_and(|t| clock.now_us() >= t) {
                break;
            }
            if pipe.reader_done.get() {
                bail!("the connection closed");
            }
            body.clear();
            body.push_str(if last > first { r#"{"events":["# } else { "" });
            let sent = clock.wall_us(clock.now_us());
            for n in first..=last {
                let sep = if n > first { "," } else { "" };
                let head = &self.body_heads[((n - 1) % k) as usize];
                let seq = (n - 1) / k + 1;
                let (t, tail) = (clock.wall_us(due), &self.body_tail);
                let _ = write!(body, r#"{sep}{head}{seq},"t":{t},"s":{sent}{tail}"#);
            }
            body.push_str(if last > first { "]}" } else { "" });
            req.clear();
            req.extend_from_slice(self.head.as_bytes());
            req.extend_from_slice(format!("Content-Length: {}\r\n\r\n", body.len()).as_bytes());
            req.extend_from_slice(body.as_bytes());
            let n = last - first + 1;
            pipe.pending
                .borrow_mut()
                .push_back((first, n, clock.now_us()));
            stats.scheduled.set(last);
            first = last + 1;
            wr.write_all(&req).await.context("writing a request")?;
        }
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
        while !pipe.pending.borrow().is_empty() && !pipe.reader_done.get() {
            if tokio::time::timeout_at(deadline, pipe.progress.notified())
                .await
                .is_err()
            {
                let n = pipe.pending.borrow().iter().map(|p| p.1).sum::<u64>();
                stats.fail(
                    n,
                    format!("{n} events unanswered 10 s after the last request"),
                );
                pipe.pending.borrow_mut().clear();
            }
        }
        Ok(())
    }
}

/// Reads pipelined responses in order; on a broken connection, fails everything still pending.
async fn read_responses(
    rd: OwnedReadHalf,
    pipe: Rc<Pipeline>,
    stats: Rc<PublishStats>,
    clock: Clock,
) {
    let mut rd = BufReader::new(rd);
    loop {
        let res = read_response(&mut rd).await;
        let Some((seq, n, sent)) = pipe.pending.borrow_mut().pop_front() else {
            if let Ok((status, _)) = &res {
                stats.fail(0, format!("unsolicited HTTP {status} response"));
            }
            break;
        };
        match res {
            Ok((status, _)) if (200..300).contains(&status) => {
                stats.ok.set(stats.ok.get() + n);
                stats
                    .rtt
                    .borrow_mut()
                    .record(clock.now_us().saturating_sub(sent));
            }
            Ok((status, body)) => stats.fail(n, format!("seq {seq}: HTTP {status}: {body:.200}")),
            Err(e) => {
                let n = n + pipe.pending.borrow().iter().map(|p| p.1).sum::<u64>();
                stats.fail(n, format!("seq {seq}: {e:#}"));
                pipe.pending.borrow_mut().clear();
                break;
            }
        }
        pipe.progress.notify_one();
    }
    pipe.reader_done.set(true);
    pipe.progress.notify_one();
}

/// One HTTP/1.1 response: status and body (Content-Length or chunked).
async fn read_response(rd: &mut BufReader<OwnedReadHalf>) -> Result<(u16, String)> {
    let mut line = String::new();
    if rd.read_line(&mut line).await? == 0 {
        bail!("connection closed by the server");
    }
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("bad status line {line:?}"))?;
    let (mut length, mut chunked) = (0usize, false);
    loop {
        line.clear();
        if rd.read_line(&mut line).await? == 0 {
            bail!("connection closed in the headers");
        }
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        let (name, value) = l.split_once(':').unwrap_or((l, ""));
        if name.eq_ignore_ascii_case("content-length") {
            length = value.trim().parse().context("bad Content-Length")?;
        } else if name.eq_ignore_ascii_case("transfer-encoding")
            && value.to_ascii_lowercase().contains("chunked")
        {
            chunked = true;
        }
    }
    let mut body = Vec::new();
    if !chunked {
        body.resize(length, 0);
        rd.read_exact(&mut body).await?;
    } else {
        loop {
            line.clear();
            rd.read_line(&mut line).await?;
            let size = usize::from_str_radix(line.trim().split(';').next().unwrap_or(""), 16)
                .context("bad chunk size")?;
            let start = body.len();
            body.resize(start + size + 2, 0);
            rd.read_exact(&mut body[start..]).await?;
            body.truncate(start + size);
            if size == 0 {
                break;
            }
        }
    }
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}
