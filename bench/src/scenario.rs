//! The scenario engine shared by every subcommand. A run is a sequence of phases, each scenario choosing which
//! ones matter and their defaults:
//!
//! 1. **ramp**: N connections (Socket.IO, plain WebSocket or SSE), spread round-robin over K channels, connect
//!    and subscribe with at most `concurrency` attempts in flight (the connect storm sets it to N);
//! 2. **idle**: a quiet window after the ramp, to read the server's RSS per connection and heartbeat CPU;
//! 3. **publish**: one publisher, `rate` events/s for `duration` s spread over the K channels (each channel gets
//!    its own sequence 1, 2, 3, …), then a drain until every connection has everything or `--drain` runs out;
//! 4. **resume** (resume-storm only): the server is restarted (`--server-cmd`), every client reconnects at once and
//!    re-subscribes with `since` = the last sequence number it saw, while a backlog of events is published; the
//!    phase ends when every client is caught up.
//!
//! Every phase checks correctness per connection: gaps (forward jumps), duplicates, missing deliveries, and a
//! connection whose first event after (re)subscribing was not the next one it expected.

use crate::Common;
use crate::clock::Clock;
use crate::publish::{PublishStats, Publisher};
use crate::server::Server;
use crate::sio::{self, Frame};
use crate::sse;
use crate::stats::{Histogram, cpu_us, machine_busy_us, rss_kib};
use crate::ws::{self, Msg};
use anyhow::{Context, Result, bail};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Semaphore, watch};
use tokio_tungstenite::tungstenite::Message;

/// Most connections one run opens: the process may hold 20,000 files, and it needs a few for itself.
pub const MAX_CONNECTIONS: usize = 19_000;

/// Which scenario runs (sets the defaults and which phases are reported).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Idle,
    Fanout,
    Channels,
    ConnectStorm,
    ResumeStorm,
    Publish,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Self::Idle => "idle",
            Self::Fanout => "fanout",
            Self::Channels => "channels",
            Self::ConnectStorm => "connect-storm",
            Self::ResumeStorm => "resume-storm",
            Self::Publish => "publish",
        }
    }
}

/// How subscribers connect.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    /// Socket.IO v5 over WebSocket (`--path`, default `/socket.io/`).
    Socketio,
    /// Herald's plain WebSocket JSON protocol (`--ws-path`, default `/ws`).
    Ws,
    /// Server-Sent Events over HTTP/1.1 (`--sse-path`/CHANNEL, default `/sse/bench`).
    Sse,
}

impl Transport {
    fn name(self) -> &'static str {
        match self {
            Self::Socketio => "socketio",
            Self::Ws => "ws",
            Self::Sse => "sse",
        }
    }
}

/// Options of every scenario. Those without a fixed default take the scenario's (see each subcommand's help).
#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub common: Common,
    /// Subscriber protocol.
    #[arg(long, value_enum, default_value_t = Transport::Socketio)]
    pub transport: Transport,
    /// Path of the plain WebSocket endpoint (`--transport ws`).
    #[arg(long, default_value = "/ws")]
    pub ws_path: String,
    /// Path prefix of the SSE endpoint (`--transport sse`); the channel is appended as path segments.
    #[arg(long, default_value = "/sse")]
    pub sse_path: String,
    /// Number of subscribers in total (spread round-robin over the channels) [default: by scenario].
    #[arg(long)]
    pub connections: Option<usize>,
    /// Number of channels: `--channel` itself when 1, else `CHANNEL-0` … `CHANNEL-(K-1)` [default: by scenario].
    #[arg(long)]
    pub channels: Option<usize>,
    /// Events published per second, over all channels [default: by scenario].
    #[arg(long)]
    pub rate: Option<f64>,
    /// Publishing time in seconds [default: by scenario].
    #[arg(long)]
    pub duration: Option<f64>,
    /// Channel name (or name prefix with several channels).
    #[arg(long, default_value = "bench")]
    pub channel: String,
    /// Event name.
    #[arg(long, default_value = "tick")]
    pub event: String,
    /// Approximate size of each publish request body in bytes.
    #[arg(long, default_value_t = 200)]
    pub body_bytes: usize,
    /// Events per publish request (> 1 sends `{"events":[…]}` batches; every event in a batch is stamped with the
    /// batch's scheduled time).
    #[arg(long, default_value_t = 1)]
    pub batch: u64,
    /// Most publish requests awaiting a response on the publisher's connection; 1 is one sequential publisher
    /// (each request waits for the previous response) [default: 1 for publish, else 1024].
    #[arg(long)]
    pub pipeline: Option<usize>,
    /// Connections being set up at once during the ramp [default: 200; N for connect-storm].
    #[arg(long)]
    pub concurrency: Option<usize>,
    /// Seconds one connection may take to connect and subscribe.
    #[arg(long, default_value_t = 30.0)]
    pub connect_timeout: f64,
    /// Seconds to wait after the last publish for deliveries still in flight (and, in resume-storm, for clients to
    /// catch up after the restart).
    #[arg(long, default_value_t = 10.0)]
    pub drain: f64,
    /// Seconds of quiet between the ramp and publishing [default: 10 for idle, else 1].
    #[arg(long)]
    pub idle: Option<f64>,
    /// resume-storm: events published right after the restart while the clients reconnect [default: 100].
    #[arg(long)]
    pub backlog: Option<u64>,
    /// Subscribers connect to these base URLs, round-robin (repeatable), while the publisher uses `--url`: for a
    /// cluster, where an event published on one node is delivered by the others.
    #[arg(long = "subscribe-url", value_name = "URL")]
    pub subscribe_urls: Vec<String>,
    /// Also report the CPU of this process over the publishing window, per published event (repeatable,
    /// `NAME=PID`: e.g. `redis=1234`, `node2=1240`).
    #[arg(long = "watch-pid", value_name = "NAME=PID")]
    pub watch_pids: Vec<String>,
}

/// The run's resolved parameters.
struct Plan {
    kind: Kind,
    n: usize,
    channels: Vec<String>,
    rate: f64,
    duration: f64,
    count: u64,
    concurrency: usize,
    idle_s: f64,
    backlog: u64,
    /// Most publish requests outstanding.
    pipeline: usize,
}

impl Plan {
    fn new(kind: Kind, a: &Args) -> Result<Self> {
        let k = a.channels.unwrap_or(match kind {
            Kind::Channels => 1000,
            _ => 1,
        });
        let n = a.connections.unwrap_or(match kind {
            Kind::Channels => 10 * k,
            Kind::ConnectStorm => 5000,
            Kind::Publish => 0,
            _ => 1000,
        });
        // Idle and connect-storm publish one event per channel after the ramp: enough to check that every
        // subscription works, without disturbing the measurement.
        let (rate, duration) = match kind {
            Kind::Idle | Kind::ConnectStorm => (k as f64, 1.0),
            Kind::Fanout => (100.0, 20.0),
            Kind::Channels => (1000.0, 20.0),
            Kind::ResumeStorm => (100.0, 5.0),
            // As fast as the server answers: the schedule is always due, the duration ends the run.
            Kind::Publish => (1_000_000.0, 10.0),
        };
        let (rate, duration) = (a.rate.unwrap_or(rate), a.duration.unwrap_or(duration));
        if k == 0 {
            bail!("--channels must be at least 1");
        }
        let least = usize::from(kind != Kind::Publish);
        if n < least || n > MAX_CONNECTIONS {
            bail!(
                "--connections must be {least}..={MAX_CONNECTIONS} (one process may hold 20,000 open files), got {n}"
            );
        }
        if n > 0 && n < k {
            bail!(
                "--connections ({n}) must be at least --channels ({k}): every channel needs a subscriber"
            );
        }
        if !(rate > 0.0 && rate.is_finite()) {
            bail!("--rate must be a positive number, got {rate}");
        }
        if !(duration >= 0.0 && duration.is_finite()) {
            bail!("--duration must be a non-negative number, got {duration}");
        }
        if kind == Kind::ResumeStorm {
            if a.common.server_cmd.is_none() {
                bail!("resume-storm restarts the server: give --server-cmd");
            }
            if a.transport == Transport::Sse {
                bail!("--transport sse: resume-storm supports socketio and ws");
            }
        }
        let channels = if k == 1 {
            vec![a.channel.clone()]
        } else {
            (0..k).map(|i| format!("{}-{i}", a.channel)).collect()
        };
        Ok(Self {
            kind,
            n,
            channels,
            rate,
            duration,
            count: (rate * duration).round() as u64,
            concurrency: a
                .concurrency
                .unwrap_or(if kind == Kind::ConnectStorm { n } else { 200 })
                .max(1),
            idle_s: a
                .idle
                .unwrap_or(if kind == Kind::Idle { 10.0 } else { 1.0 }),
            pipeline: a.pipeline.unwrap_or(if kind == Kind::Publish {
                1
            } else {
                crate::publish::MAX_PIPELINE
            }),
            backlog: if kind == Kind::ResumeStorm {
                a.backlog.unwrap_or(100)
            } else {
                0
            },
        })
    }

    /// Events channel `c` receives among global events `1..=total`.
    fn events_for(&self, c: usize, total: u64) -> u64 {
        let k = self.channels.len() as u64;
        (total + k - 1 - c as u64) / k
    }
}

/// Per-connection delivery bookkeeping (Cells: everything runs on one thread).
#[derive(Default)]
struct ConnState {
    subscribed: Cell<bool>,
    alive: Cell<bool>,
    /// Gave up for good (failed to connect or reconnect): no longer awaited.
    dead: Cell<bool>,
    /// Next expected sequence number on its channel (starts at 1).
    next: Cell<u64>,
    /// Distinct in-order-or-later events received (duplicates and stale ones excluded).
    received: Cell<u64>,
    dups: Cell<u64>,
    /// Times the sequence jumped forward, and by how many events in total.
    gaps: Cell<u64>,
    skipped: Cell<u64>,
    /// No event seen since the last (re)subscription yet.
    awaiting_first: Cell<bool>,
    /// Times the first event after a (re)subscription was not the next expected one.
    first_lost: Cell<u64>,
}

/// Where subscribers connect: the WebSocket target (Socket.IO or plain) and, for SSE, the Host header.
struct Endpoint {
    target: sio::Target,
    host: String,
}

/// State shared by all connection tasks and the reporter.
struct Shared {
    clock: Clock,
    args: Rc<Args>,
    plan: Plan,
    endpoint: RefCell<Rc<Endpoint>>,
    /// `--subscribe-url` endpoints; empty when subscribers use `endpoint`.
    sub_endpoints: Vec<Rc<Endpoint>>,
    /// Socket.IO: `["tick",`.
    event_prefix: Vec<u8>,
    /// WebSocket/SSE: the event name as it appears inside a JSON string / on the `event:` line.
    event_name: Vec<u8>,
    conns: Vec<ConnState>,
    subscribed: Cell<usize>,
    connect_failed: Cell<usize>,
    connect_lat: RefCell<Histogram>,
    /// Connections that ended unexpectedly.
    lost: Cell<usize>,
    first_error: RefCell<Option<String>>,
    delivered: Cell<u64>,
    bad_frames: Cell<u64>,
    other_events: Cell<u64>,
    last_recv_us: Cell<u64>,
    /// Whether deliveries count towards the latency histograms (not for replays after a restart).
    record_latency: Cell<bool>,
    /// Receive − scheduled send time, and receive − actual send time (the payload's `"s"`).
    latency: RefCell<Histogram>,
    latency_sent: RefCell<Histogram>,
    interval: RefCell<Histogram>,
    /// The server is being restarted: connections ending now wait for `reconnect` instead of counting as lost.
    restarting: Cell<bool>,
    reconnect: watch::Sender<u32>,
    resubscribed: Cell<usize>,
    resume_failed: Cell<usize>,
    resume_lat: RefCell<Histogram>,
    /// Set when the run is over, so closing connections are not counted as lost.
    stopping: Cell<bool>,
}

impl Shared {
    fn error(&self, e: String) {
        self.first_error.borrow_mut().get_or_insert(e);
    }

    /// Connection `i` (started at `t0`) is confirmed subscribed.
    fn mark_subscribed(&self, i: usize, t0: u64) {
        let c = &self.conns[i];
        let lat = self.clock.now_us().saturating_sub(t0);
        if c.subscribed.get() {
            self.resume_lat.borrow_mut().record(lat);
            self.resubscribed.set(self.resubscribed.get() + 1);
        } else {
            self.connect_lat.borrow_mut().record(lat);
            self.subscribed.set(self.subscribed.get() + 1);
        }
        c.subscribed.set(true);
        c.alive.set(true);
    }

    /// Handles one Socket.IO EVENT payload (`["tick",{…},…]`) for connection `c`: no allocation.
    fn on_sio_event(&self, c: &ConnState, p: &[u8]) {
        if !p.starts_with(&self.event_prefix) {
            self.other_events.set(self.other_events.get() + 1);
            return;
        }
        self.on_event(c, p);
    }

    /// Handles one event named `name` whose payload is `p` (WebSocket envelope data or SSE `data:`).
    fn on_named_event(&self, c: &ConnState, name: &[u8], p: &[u8]) {
        if name != self.event_name.as_slice() {
            self.other_events.set(self.other_events.get() + 1);
            return;
        }
        self.on_event(c, p);
    }

    /// Counts a message that could not be understood, or an `error` message (either fails the run).
    fn bad_frame(&self, i: usize, what: &[u8]) {
        self.bad_frames.set(self.bad_frames.get() + 1);
        if self.first_error.borrow().is_none() {
            self.error(format!(
                "connection {i}: malformed or error message {:.120}",
                String::from_utf8_lossy(what)
            ));
        }
    }

    /// Records one delivery of the bench event whose payload `p` holds `"seq":N`, `"t":µs` and `"s":µs`: no
    /// allocation.
    fn on_event(&self, c: &ConnState, p: &[u8]) {
        let (Some(seq), Some(t)) = (
            sio::number_after(p, br#""seq":"#),
            sio::number_after(p, br#""t":"#),
        ) else {
            self.bad_frames.set(self.bad_frames.get() + 1);
            return;
        };
        let now = self.clock.now_us();
        if self.record_latency.get() {
            let lat = now.saturating_sub(self.clock.clock_us_of_wall(t));
            self.latency.borrow_mut().record(lat);
            self.interval.borrow_mut().record(lat);
            if let Some(sent) = sio::number_after(p, br#""s":"#) {
                let lat = now.saturating_sub(self.clock.clock_us_of_wall(sent));
                self.latency_sent.borrow_mut().record(lat);
            }
        }
        self.delivered.set(self.delivered.get() + 1);
        self.last_recv_us.set(now);
        let next = c.next.get();
        if c.awaiting_first.get() {
            c.awaiting_first.set(false);
            if seq != next {
                c.first_lost.set(c.first_lost.get() + 1);
            }
        }
        if seq < next {
            c.dups.set(c.dups.get() + 1);
            return;
        }
        if seq > next {
            c.gaps.set(c.gaps.get() + 1);
            c.skipped.set(c.skipped.get() + (seq - next));
        }
        c.received.set(c.received.get() + 1);
        c.next.set(seq + 1);
    }
}

/// One subscriber for the whole run: connects, receives, and after a server restart reconnects and resumes.
async fn connection(
    i: usize,
    s: Rc<Shared>,
    permit: tokio::sync::OwnedSemaphorePermit,
    mut reconnect: watch::Receiver<u32>,
) {
    let mut permit = Some(permit);
    let c = &s.conns[i];
    let channel = &s.plan.channels[i % s.plan.channels.len()];
    loop {
        let ep = match s.sub_endpoints.len() {
            0 => s.endpoint.borrow().clone(),
            len => s.sub_endpoints[i % len].clone(),
        };
        let resuming = c.subscribed.get();
        let since = resuming.then(|| c.next.get() - 1);
        c.awaiting_first.set(true);
        let t0 = s.clock.now_us();
        let limit = Duration::from_secs_f64(s.args.connect_timeout);
        let why = if s.args.transport == Transport::Sse {
            let path = sse::channel_path(&s.args.sse_path, channel);
            match sse_connection(i, &ep, &path, &s, permit.take(), t0, limit).await {
                Some(why) => why,
                None => return,
            }
        } else {
            let res = tokio::time::timeout(limit, async {
                match s.args.transport {
                    Transport::Ws => ws::connect_and_subscribe(&ep.target, channel, since).await,
                    _ => {
                        let mut early = |p: &[u8]| s.on_sio_event(c, p);
                        sio::connect_and_subscribe(&ep.target, channel, since, &mut early).await
                    }
                }
            })
            .await;
            permit.take();
            let mut w = match res {
                Ok(Ok(w)) => w,
                Ok(Err(e)) => {
                    return fail_connect(&s, i, resuming, format!("connection {i}: {e:#}"));
                }
                Err(_) => {
                    let e = format!("connection {i}: connect+subscribe timed out");
                    return fail_connect(&s, i, resuming, e);
                }
            };
            s.mark_subscribed(i, t0);
            if s.args.transport == Transport::Ws {
                ws_receive(i, &s, &mut w).await
            } else {
                sio_receive(&s, c, &mut w).await
            }
        };
        c.alive.set(false);
        if s.stopping.get() {
            return;
        }
        if !s.restarting.get() {
            c.dead.set(true);
            s.lost.set(s.lost.get() + 1);
            s.error(format!("connection {i} lost: {why}"));
            return;
        }
        // The server is restarting: wait for the signal to reconnect (all clients at once).
        if reconnect.changed().await.is_err() {
            return;
        }
    }
}

/// Socket.IO receive loop; returns why the connection ended.
async fn sio_receive(s: &Shared, c: &ConnState, w: &mut sio::Ws) -> String {
    loop {
        let text = match w.next().await {
            Some(Ok(Message::Text(t))) => t,
            Some(Ok(Message::Close(f))) => return format!("close frame {f:?}"),
            Some(Ok(_)) => continue,
            Some(Err(e)) => return format!("read error: {e}"),
            None => return "EOF".to_string(),
        };
        match sio::classify(text.as_bytes()) {
            Frame::Event(p) => s.on_sio_event(c, p),
            Frame::Ping => {
                if let Err(e) = w.send(Message::text("3")).await {
                    return format!("sending pong: {e}");
                }
            }
            Frame::Closed => return format!("closed by server: {:.80}", text.as_str()),
            Frame::Other => {}
        }
    }
}

/// Plain WebSocket receive loop (tungstenite answers ping frames by itself); returns why the connection ended.
async fn ws_receive(i: usize, s: &Shared, w: &mut sio::Ws) -> String {
    let c = &s.conns[i];
    loop {
        let text = match w.next().await {
            Some(Ok(Message::Text(t))) => t,
            Some(Ok(Message::Close(f))) => return format!("close frame {f:?}"),
            Some(Ok(_)) => continue,
            Some(Err(e)) => return format!("read error: {e}"),
            None => return "EOF".to_string(),
        };
        match ws::classify(text.as_bytes()) {
            Msg::Event { name, data } => s.on_named_event(c, name, data),
            Msg::Other(b"heartbeat") => {}
            Msg::Other(_) | Msg::Subscribed => s.other_events.set(s.other_events.get() + 1),
            Msg::Error(m) => s.bad_frame(i, m),
            Msg::Malformed => s.bad_frame(i, text.as_bytes()),
        }
    }
}

/// One SSE subscriber: opens the stream, counts it subscribed at the opening `retry:`/`id:` record (within
/// `limit`), then delivers events. `None` when it never subscribed (already counted as a failed connect).
async fn sse_connection(
    i: usize,
    ep: &Endpoint,
    path: &str,
    s: &Shared,
    mut permit: Option<tokio::sync::OwnedSemaphorePermit>,
    t0: u64,
    limit: Duration,
) -> Option<String> {
    let deadline = tokio::time::Instant::now() + limit;
    let opened =
        tokio::time::timeout_at(deadline, sse::Conn::open(ep.target.addr, &ep.host, path)).await;
    let mut conn = match opened {
        Ok(Ok(conn)) => conn,
        Ok(Err(e)) => {
            fail_connect(s, i, false, format!("connection {i}: {e:#}"));
            return None;
        }
        Err(_) => {
            fail_connect(
                s,
                i,
                false,
                format!("connection {i}: connect+subscribe timed out"),
            );
            return None;
        }
    };
    let c = &s.conns[i];
    let mut early = false;
    loop {
        let mut on_record = |r: sse::Record<'_>| match r {
            sse::Record::Control => {
                if !c.subscribed.get() {
                    s.mark_subscribed(i, t0);
                }
            }
            sse::Record::Event { name, data } if c.subscribed.get() => {
                s.on_named_event(c, name, data)
            }
            sse::Record::Event { .. } => early = true,
        };
        let res = if c.subscribed.get() {
            conn.read(&mut on_record).await
        } else {
            match tokio::time::timeout_at(deadline, conn.read(&mut on_record)).await {
                Ok(r) => r,
                Err(_) => {
                    let e = format!("connection {i}: connect+subscribe timed out");
                    fail_connect(s, i, false, e);
                    return None;
                }
            }
        };
        if c.subscribed.get() {
            permit.take();
        }
        if early {
            let e = format!("connection {i}: an event before the stream's opening record");
            if c.subscribed.get() {
                return Some(e);
            }
            fail_connect(s, i, false, e);
            return None;
        }
        match res {
            Ok(true) => {}
            Ok(false) if c.subscribed.get() => return Some("end of stream".into()),
            Err(e) if c.subscribed.get() => return Some(format!("{e:#}")),
            Ok(false) => {
                let e = format!("connection {i}: stream ended before its opening record");
                fail_connect(s, i, false, e);
                return None;
            }
            Err(e) => {
                fail_connect(s, i, false, format!("connection {i}: {e:#}"));
                return None;
            }
        }
    }
}

/// Connection `i` gave up: counted as a failed connect, or as a failed resume when it was subscribed before.
fn fail_connect(s: &Shared, i: usize, resuming: bool, e: String) {
    s.conns[i].dead.set(true);
    if resuming {
        s.resume_failed.set(s.resume_failed.get() + 1);
    } else {
        s.connect_failed.set(s.connect_failed.get() + 1);
    }
    s.error(e);
}

/// CPU and RSS of the server (if its pid is known) and of this process.
#[derive(Clone, Copy, Default)]
struct Snapshot {
    at_us: u64,
    server_cpu_us: Option<u64>,
    server_rss_kib: Option<u64>,
    self_cpu_us: Option<u64>,
    machine_busy_us: Option<u64>,
}

fn snapshot(clock: &Clock, pid: Option<&str>) -> Snapshot {
    Snapshot {
        at_us: clock.now_us(),
        server_cpu_us: pid.and_then(cpu_us),
        server_rss_kib: pid.and_then(rss_kib),
        self_cpu_us: cpu_us("self"),
        machine_busy_us: machine_busy_us(),
    }
}

/// CPU used between `b` and `a` by processes other than the server and the generator, in % of one core:
/// anything well above 0 means the measurement was disturbed.
fn other_pct(a: &Snapshot, b: &Snapshot) -> Option<f64> {
    let delta = |x: Option<u64>, y: Option<u64>| Some(x? as f64 - y? as f64);
    let server = delta(a.server_cpu_us, b.server_cpu_us).unwrap_or(0.0);
    let busy = delta(a.machine_busy_us, b.machine_busy_us)?
        - delta(a.self_cpu_us, b.self_cpu_us)?
        - server;
    Some((busy / (a.at_us - b.at_us).max(1) as f64 * 100.0).max(0.0))
}

fn pct(cpu: Option<u64>, cpu0: Option<u64>, wall_us: u64) -> Option<f64> {
    Some((cpu? as f64 - cpu0? as f64) / wall_us.max(1) as f64 * 100.0)
}

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

/// Rounds for the report (JSON numbers with 3 decimals).
fn r3(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

/// Parses `--watch-pid NAME=PID` options.
fn watched_pids(opts: &[String]) -> Result<Vec<(String, String)>> {
    opts.iter()
        .map(|o| match o.split_once('=') {
            Some((name, pid)) if !name.is_empty() && pid.parse::<u32>().is_ok() => {
                Ok((name.to_owned(), pid.to_owned()))
            }
            _ => anyhow::bail!("--watch-pid {o:?}: expected NAME=PID"),
        })
        .collect()
}

/// Resolves `url` into a WebSocket target for this transport and the `HOST:PORT` for HTTP requests.
async fn endpoint(a: &Args, url: &str) -> Result<(Endpoint, std::net::SocketAddr)> {
    let (mut target, host) = a.common.resolve(url).await?;
    if a.transport == Transport::Ws {
        target.ws_url = format!("ws://{host}{}", a.ws_path);
    }
    let addr = target.addr;
    Ok((Endpoint { target, host }, addr))
}

/// Waits until every connection that is still trying has `want(channel)` events, or `deadline_us` passes; prints
/// a progress line every second. Returns whether everyone caught up.
async fn wait_caught_up(
    s: &Shared,
    want: &dyn Fn(usize) -> u64,
    deadline_us: u64,
    what: &str,
) -> bool {
    let k = s.plan.channels.len();
    let mut last_print = s.clock.now_us();
    loop {
        let done = s
            .conns
            .iter()
            .enumerate()
            .all(|(i, c)| c.dead.get() || (c.alive.get() && c.received.get() >= want(i % k)));
        if done {
            return true;
        }
        let now = s.clock.now_us();
        if now >= deadline_us {
            return false;
        }
        if now - last_print >= 1_000_000 {
            last_print = now;
            let behind = s
                .conns
                .iter()
                .enumerate()
                .filter(|(i, c)| !c.dead.get() && c.received.get() < want(i % k))
                .count();
            eprintln!(
                "[{what}] {behind} connections behind, {} resubscribed, {} failed",
                s.resubscribed.get(),
                s.resume_failed.get()
            );
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Runs scenario `kind`; `Ok(false)` when it completed but saw failures.
pub async fn run(kind: Kind, args: Args) -> Result<bool> {
    let plan = Plan::new(kind, &args)?;
    crate::raise_open_files(plan.n)?;
    let mut server = match &args.common.server_cmd {
        Some(cmd) => {
            let log = args.common.server_log.clone().unwrap_or_else(|| {
                std::env::temp_dir().join(format!("herald-bench-server-{}.log", std::process::id()))
            });
            let srv = Server::spawn(cmd, log).await?;
            eprintln!(
                "server pid {} at {} (log: {})",
                srv.pid,
                srv.url,
                srv.log().display()
            );
            Some(srv)
        }
        None => None,
    };
    let url = server
        .as_ref()
        .map_or(args.common.url.clone(), |s| s.url.clone());
    let outcome = run_with(plan, Rc::new(args), &url, server.as_mut()).await;
    if let Some(srv) = server.as_mut() {
        srv.stop().await;
    }
    outcome
}

async fn run_with(
    plan: Plan,
    args: Rc<Args>,
    url: &str,
    server: Option<&mut Server>,
) -> Result<bool> {
    let (ep, addr) = endpoint(&args, url).await?;
    let mut sub_endpoints = Vec::new();
    for u in &args.subscribe_urls {
        sub_endpoints.push(Rc::new(endpoint(&args, u).await?.0));
    }
    let watched = watched_pids(&args.watch_pids)?;
    let mut pid = server
        .as_ref()
        .map(|s| s.pid)
        .or(args.common.server_pid)
        .map(|p| p.to_string());
    let clock = Clock::new();
    let n = plan.n;
    let k = plan.channels.len();
    let kind = plan.kind;
    let (reconnect, reconnect_rx) = watch::channel(0u32);
    let s = Rc::new(Shared {
        clock,
        endpoint: RefCell::new(Rc::new(ep)),
        sub_endpoints,
        event_prefix: format!("[{},", Value::from(args.event.as_str())).into_bytes(),
        event_name: match args.transport {
            // The raw `event:` line.
            Transport::Sse => args.event.clone().into_bytes(),
            // The body of the JSON string (escaped).
            _ => {
                let quoted = Value::from(args.event.as_str()).to_string();
                quoted.as_bytes()[1..quoted.len() - 1].to_vec()
            }
        },
        conns: (0..n)
            .map(|_| ConnState {
                next: Cell::new(1),
                ..Default::default()
            })
            .collect(),
        subscribed: Cell::new(0),
        connect_failed: Cell::new(0),
        connect_lat: Default::default(),
        lost: Cell::new(0),
        first_error: Default::default(),
        delivered: Cell::new(0),
        bad_frames: Cell::new(0),
        other_events: Cell::new(0),
        last_recv_us: Cell::new(0),
        record_latency: Cell::new(true),
        latency: Default::default(),
        latency_sent: Default::default(),
        interval: Default::default(),
        restarting: Cell::new(false),
        reconnect,
        resubscribed: Cell::new(0),
        resume_failed: Cell::new(0),
        resume_lat: Default::default(),
        stopping: Cell::new(false),
        args: args.clone(),
        plan,
    });
    let plan = &s.plan;
    eprintln!(
        "herald-bench {}: {n} {} connections on {k} channel(s), {} events/s for {} s → {url}",
        kind.name(),
        args.transport.name(),
        plan.rate,
        plan.duration,
    );

    // Ramp.
    let before = snapshot(&clock, pid.as_deref());
    let sem = Arc::new(Semaphore::new(plan.concurrency));
    for i in 0..n {
        let Ok(permit) = sem.clone().acquire_owned().await else {
            break;
        };
        tokio::task::spawn_local(connection(i, s.clone(), permit, reconnect_rx.clone()));
    }
    let mut last_print = clock.now_us();
    while s.subscribed.get() + s.connect_failed.get() < n {
        tokio::time::sleep(Duration::from_millis(5)).await;
        if clock.now_us() - last_print >= 1_000_000 {
            last_print = clock.now_us();
            eprintln!(
                "[ramp {:5.1}s] subscribed {}/{n}, failed {}",
                (last_print - before.at_us) as f64 / 1e6,
                s.subscribed.get(),
                s.connect_failed.get()
            );
        }
    }
    let ramp_done = snapshot(&clock, pid.as_deref());
    let subscribed = s.subscribed.get();
    eprintln!(
        "[ramp] {subscribed}/{n} subscribed in {:.2} s",
        (ramp_done.at_us - before.at_us) as f64 / 1e6
    );

    // Idle window.
    tokio::time::sleep(Duration::from_secs_f64(plan.idle_s)).await;
    let idle = snapshot(&clock, pid.as_deref());
    let watched_before: Vec<Option<u64>> = watched.iter().map(|(_, p)| cpu_us(p)).collect();
    eprintln!(
        "[idle] {:.1} s; server RSS {} KiB",
        plan.idle_s,
        idle.server_rss_kib.map_or("n/a".into(), |v| v.to_string())
    );

    // Publish.
    let count = plan.count;
    let mut publisher = Publisher::new(
        addr,
        &s.endpoint.borrow().host,
        args.common.api_key.as_deref(),
        (&plan.channels, &args.event),
        args.body_bytes,
        (args.batch, plan.pipeline),
    );
    let start_us = clock.now_us() + 100_000;
    if kind == Kind::Publish {
        // Time-bounded: the schedule is always due, so the server's answers set the pace.
        publisher.stop_at_us = Some(start_us + (plan.duration * 1e6) as u64);
    }
    let publisher = Rc::new(publisher);
    let pstats = Rc::new(PublishStats::default());
    let pub_task = tokio::task::spawn_local(publisher.run(
        clock,
        start_us,
        plan.rate,
        (1, count),
        pstats.clone(),
    ));
    s.interval.borrow_mut().reset();
    let mut prev = snapshot(&clock, pid.as_deref());
    let mut prev_delivered = 0;
    let mut drain_deadline = None;
    let mut tick = tokio::time::interval_at(
        tokio::time::Instant::from_std(clock.instant_at(start_us + 1_000_000)),
        Duration::from_secs(1),
    );
    loop {
        tokio::select! {
            _ = tick.tick() => {
                let now = snapshot(&clock, pid.as_deref());
                let wall = now.at_us - prev.at_us;
                let d = s.delivered.get();
                let iv = std::mem::take(&mut *s.interval.borrow_mut());
                eprintln!(
                    "[{:5.1}s] published {:>7} ok {:>7} | delivered/s {:>8.0} | latency p50 {:7.2} p99 {:7.2} max {:7.2} ms | conns {} lost {} | server CPU {} gen CPU {} other CPU {}",
                    (now.at_us.saturating_sub(start_us)) as f64 / 1e6,
                    pstats.scheduled.get(),
                    pstats.ok.get(),
                    (d - prev_delivered) as f64 * 1e6 / wall.max(1) as f64,
                    ms(iv.quantile(0.5)), ms(iv.quantile(0.99)), ms(iv.max()),
                    subscribed - s.lost.get(), s.lost.get(),
                    opt(pct(now.server_cpu_us, prev.server_cpu_us, wall), 0, "%"),
                    opt(pct(now.self_cpu_us, prev.self_cpu_us, wall), 0, "%"),
                    opt(other_pct(&now, &prev), 0, "%"),
                );
                prev = now;
                prev_delivered = d;
            }
            _ = tokio::time::sleep(Duration::from_millis(20)) => {}
        }
        if drain_deadline.is_none() && pub_task.is_finished() {
            drain_deadline = Some(clock.now_us() + (args.drain * 1e6) as u64);
        }
        if let Some(deadline) = drain_deadline {
            // A time-bounded run published what it had time for.
            let published = if kind == Kind::Publish {
                pstats.scheduled.get()
            } else {
                count
            };
            let want = |c: usize| plan.events_for(c, published);
            if wait_caught_up(&s, &want, 0, "drain").await || clock.now_us() >= deadline {
                break;
            }
        }
    }
    let end = snapshot(&clock, pid.as_deref());
    let watched_cpu: serde_json::Map<String, Value> = watched
        .iter()
        .zip(&watched_before)
        .map(|((name, p), before)| {
            let used = cpu_us(p).zip(*before).map(|(a, b)| a.saturating_sub(b));
            let per_event = used.map(|u| r3(u as f64 / pstats.ok.get().max(1) as f64));
            (
                name.clone(),
                json!({"cpu_us": used, "cpu_us_per_published": per_event}),
            )
        })
        .collect();
    let delivered_publish = s.delivered.get();
    let last_recv_publish = s.last_recv_us.get();

    // Resume storm: restart, reconnect everyone at once, publish a backlog, wait for everyone to catch up.
    let mut resume = Value::Null;
    let count = if kind == Kind::Publish {
        pstats.scheduled.get()
    } else {
        count
    };
    let mut total = count;
    let mut resume_pub = None;
    if let (Kind::ResumeStorm, Some(srv)) = (kind, server) {
        s.restarting.set(true);
        s.record_latency.set(false);
        let t_stop = clock.now_us();
        eprintln!("[resume] restarting the server");
        srv.restart().await.context("restarting the server")?;
        let t_up = clock.now_us();
        pid = Some(srv.pid.to_string());
        let (ep, addr) = endpoint(&args, &srv.url).await?;
        *s.endpoint.borrow_mut() = Rc::new(ep);
        eprintln!(
            "[resume] server pid {} back at {} after {:.2} s; {} clients reconnect",
            srv.pid,
            srv.url,
            (t_up - t_stop) as f64 / 1e6,
            subscribed
        );
        s.reconnect.send_modify(|g| *g += 1);
        total = count + plan.backlog;
        let publisher = Rc::new(Publisher::new(
            addr,
            &s.endpoint.borrow().host,
            args.common.api_key.as_deref(),
            (&plan.channels, &args.event),
            args.body_bytes,
            (args.batch, crate::publish::MAX_PIPELINE),
        ));
        let rstats = Rc::new(PublishStats::default());
        let backlog_task = tokio::task::spawn_local(publisher.run(
            clock,
            clock.now_us(),
            // As fast as the pipeline allows: the backlog should land while the clients reconnect.
            1e6,
            (count + 1, total),
            rstats.clone(),
        ));
        let deadline = t_up + (args.drain * 1e6) as u64;
        let want = |c: usize| plan.events_for(c, total);
        let caught_up = wait_caught_up(&s, &want, deadline, "resume").await;
        let t_done = clock.now_us();
        let _ = backlog_task.await;
        s.restarting.set(false);
        let cpu = pid.as_deref().and_then(cpu_us);
        let rl = s.resume_lat.borrow();
        resume = json!({
            "restart_seconds": r3((t_up - t_stop) as f64 / 1e6),
            "caught_up": caught_up,
            "seconds_to_caught_up": caught_up.then(|| r3((t_done - t_up) as f64 / 1e6)),
            "backlog_events": plan.backlog,
            "backlog_published_ok": rstats.ok.get(),
            "resubscribed": s.resubscribed.get(),
            "failed": s.resume_failed.get(),
            "resubscribe_p50_ms": r3(ms(rl.quantile(0.5))),
            "resubscribe_p99_ms": r3(ms(rl.quantile(0.99))),
            "server_cpu_us_since_start": cpu,
            "server_cpu_us_per_connection": cpu.map(|c| r3(c as f64 / subscribed.max(1) as f64)),
        });
        if rstats.failed.get() > 0 {
            pstats.failed.set(pstats.failed.get() + rstats.failed.get());
            if let Some(e) = rstats.first_error.borrow().clone() {
                pstats.first_error.borrow_mut().get_or_insert(e);
            }
        }
        resume_pub = Some(rstats);
    }
    s.stopping.set(true);

    // Report.
    let ok = pstats.ok.get() + resume_pub.as_ref().map_or(0, |r| r.ok.get());
    let live: Vec<(usize, &ConnState)> = s
        .conns
        .iter()
        .enumerate()
        .filter(|(_, c)| c.subscribed.get())
        .collect();
    let sum = |f: &dyn Fn(&ConnState) -> u64| live.iter().map(|(_, c)| f(c)).sum::<u64>();
    let want = |i: usize| plan.events_for(i % k, total);
    let missing: u64 = live
        .iter()
        .map(|(i, c)| want(*i).saturating_sub(c.received.get()))
        .sum();
    let gaps = sum(&|c| c.gaps.get());
    let skipped = sum(&|c| c.skipped.get());
    let dups = sum(&|c| c.dups.get());
    let first_lost = live.iter().filter(|(_, c)| c.first_lost.get() > 0).count();
    let bad_conns = live
        .iter()
        .filter(|(i, c)| {
            c.first_lost.get() > 0
                || c.dups.get() > 0
                || c.gaps.get() > 0
                || c.received.get() < want(*i)
        })
        .count();
    let expected = live.iter().map(|(i, _)| want(*i)).sum::<u64>();
    let active_us = last_recv_publish
        .saturating_sub(start_us)
        .max((plan.duration * 1e6) as u64)
        .max(1);
    let per_sec = delivered_publish as f64 * 1e6 / active_us as f64;
    let lat = s.latency.borrow();
    let lat_sent = s.latency_sent.borrow();
    let conn_lat = s.connect_lat.borrow();
    let rtt = pstats.rtt.borrow();
    let d = |a: Option<u64>, b: Option<u64>| Some(a?.saturating_sub(b?));
    let ramp_us = ramp_done.at_us - before.at_us;
    let connect_cpu = d(ramp_done.server_cpu_us, before.server_cpu_us);
    let idle_cpu = d(idle.server_cpu_us, ramp_done.server_cpu_us);
    let pub_cpu = d(end.server_cpu_us, idle.server_cpu_us);
    let per_conn = |kib: Option<u64>| Some(r3(kib? as f64 / subscribed.max(1) as f64));
    let idle_window = idle.at_us - ramp_done.at_us;
    let pub_window = end.at_us - idle.at_us;
    let passed = s.connect_failed.get() == 0
        && s.resume_failed.get() == 0
        && s.lost.get() == 0
        && pstats.failed.get() == 0
        && bad_conns == 0
        && s.bad_frames.get() == 0
        && (kind != Kind::ResumeStorm || resume["caught_up"] == json!(true));
    let q = |h: &Histogram, q: f64| r3(ms(h.quantile(q)));
    let summary = json!({
        "scenario": kind.name(),
        "url": url,
        "transport": args.transport.name(),
        "connections": n, "channels": k, "rate": plan.rate, "batch": args.batch, "duration_s": plan.duration,
        "body_bytes": args.body_bytes,
        "connect": {
            "subscribed": subscribed, "failed": s.connect_failed.get(), "concurrency": plan.concurrency,
            "seconds": r3(ramp_us as f64 / 1e6),
            "p50_ms": q(&conn_lat, 0.5), "p99_ms": q(&conn_lat, 0.99), "max_ms": r3(ms(conn_lat.max())),
            "server_cpu_us_per_connection": connect_cpu.map(|c| r3(c as f64 / subscribed.max(1) as f64)),
        },
        "idle": {
            "seconds": r3(idle_window as f64 / 1e6),
            "server_cpu_percent": pct(idle.server_cpu_us, ramp_done.server_cpu_us, idle_window).map(r3),
            "server_cpu_us_per_connection_per_s": idle_cpu
                .map(|c| r3(c as f64 / subscribed.max(1) as f64 / (idle_window.max(1) as f64 / 1e6))),
            "rss_kib_before": before.server_rss_kib, "rss_kib": idle.server_rss_kib,
            "rss_kib_per_connection": per_conn(d(idle.server_rss_kib, before.server_rss_kib)),
        },
        "publish": {
            "events": count, "ok": pstats.ok.get(), "failed": pstats.failed.get(),
            "http_p50_ms": q(&rtt, 0.5), "http_p99_ms": q(&rtt, 0.99), "http_max_ms": r3(ms(rtt.max())),
            "delivered": delivered_publish, "delivered_per_s": r3(per_sec),
            "server_cpu_percent": pct(end.server_cpu_us, idle.server_cpu_us, pub_window).map(r3),
            "server_cpu_us_per_delivered": pub_cpu.map(|c| r3(c as f64 / delivered_publish.max(1) as f64)),
            "pipeline": plan.pipeline,
            "ok_per_s": r3(pstats.ok.get() as f64 * 1e6 / pub_window.max(1) as f64),
            "server_cpu_us_per_published": pub_cpu.map(|c| r3(c as f64 / pstats.ok.get().max(1) as f64)),
            "rss_kib_end": end.server_rss_kib,
            "rss_kib_per_connection_end": per_conn(d(end.server_rss_kib, before.server_rss_kib)),
            "generator_cpu_percent": pct(end.self_cpu_us, idle.self_cpu_us, pub_window).map(r3),
            "other_cpu_percent": other_pct(&end, &idle).map(r3),
        },
        "latency_ms": {
            "p50": q(&lat, 0.5), "p90": q(&lat, 0.9), "p99": q(&lat, 0.99), "p999": q(&lat, 0.999),
            "max": r3(ms(lat.max())),
        },
        "latency_from_send_ms": {
            "p50": q(&lat_sent, 0.5), "p99": q(&lat_sent, 0.99), "max": r3(ms(lat_sent.max())),
        },
        "watched": watched_cpu,
        "resume": resume,
        "correctness": {
            "expected": expected, "delivered": s.delivered.get(), "published_ok": ok,
            "gaps": gaps, "skipped": skipped, "duplicates": dups, "missing": missing,
            "first_event_lost": first_lost, "connections_with_errors": bad_conns,
            "connections_lost": s.lost.get(), "bad_frames": s.bad_frames.get(), "other_events": s.other_events.get(),
        },
        "server_pid": pid,
        "first_error": *s.first_error.borrow(),
        "first_publish_error": *pstats.first_error.borrow(),
        "passed": passed,
    });
    if args.common.json {
        println!("{summary}");
    } else {
        print_table(&summary);
    }
    Ok(passed)
}

fn opt(v: Option<f64>, digits: usize, unit: &str) -> String {
    v.map_or("n/a".into(), |v| format!("{v:.digits$}{unit}"))
}

/// Prints the summary as a two-column table, one row per measured value (`section.name  value`).
fn print_table(summary: &Value) {
    fn rows(prefix: &str, v: &Value, out: &mut Vec<(String, String)>) {
        match v {
            Value::Object(m) => {
                for (key, v) in m {
                    let name = if prefix.is_empty() {
                        key.clone()
                    } else {
                        format!("{prefix}.{key}")
                    };
                    rows(&name, v, out);
                }
            }
            Value::Null => {}
            Value::String(s) => out.push((prefix.to_string(), s.clone())),
            other => out.push((prefix.to_string(), other.to_string())),
        }
    }
    let mut out = Vec::new();
    rows("", summary, &mut out);
    let width = out.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    println!(
        "\n== herald-bench {} ==",
        summary["scenario"].as_str().unwrap_or("")
    );
    for (k, v) in out {
        println!("{k:<width$}  {v}");
    }
    println!(
        "result{}  {}",
        " ".repeat(width.saturating_sub(6)),
        if summary["passed"] == json!(true) {
            "PASS"
        } else {
            "FAIL"
        }
    );
}
