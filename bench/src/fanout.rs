//! The `fanout` scenario: N subscribers on one channel and one publisher at a fixed rate. Subscribers use
//! Socket.IO (default), Herald's plain WebSocket protocol (`/ws`) or Server-Sent Events (`/sse/{channel}`).
//!
//! Phases: measure the server's idle RSS → ramp N connections (bounded concurrency; each connects, subscribes
//! and waits for the confirmation: the Socket.IO ack, the `subscribed` message, or the event stream's opening
//! `retry:`/`id:` record) → settle 1 s and measure RSS again → publish `rate × duration` events
//! on a fixed schedule → wait (up to `--drain`) for the stragglers → report. Every connection must see every
//! sequence number exactly once, in order. Latency = receive time − the event's *scheduled* send time.

use crate::Common;
use crate::clock::Clock;
use crate::publish::{PublishStats, Publisher};
use crate::sio::{self, Frame};
use crate::sse;
use crate::stats::{Histogram, cpu_us, machine_busy_us, rss_kib};
use crate::ws::{self, Msg};
use anyhow::Result;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;
use tokio_tungstenite::tungstenite::Message;

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

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    common: Common,
    /// Subscriber protocol.
    #[arg(long, value_enum, default_value_t = Transport::Socketio)]
    transport: Transport,
    /// Path of the plain WebSocket endpoint (`--transport ws`).
    #[arg(long, default_value = "/ws")]
    ws_path: String,
    /// Path prefix of the SSE endpoint (`--transport sse`); the channel is appended as path segments.
    #[arg(long, default_value = "/sse")]
    sse_path: String,
    /// Number of subscribers.
    #[arg(long, default_value_t = 1000)]
    connections: usize,
    /// Events published per second.
    #[arg(long, default_value_t = 100.0)]
    rate: f64,
    /// Publishing time in seconds.
    #[arg(long, default_value_t = 20.0)]
    duration: f64,
    /// Channel to subscribe to and publish on.
    #[arg(long, default_value = "bench")]
    channel: String,
    /// Event name.
    #[arg(long, default_value = "tick")]
    event: String,
    /// Approximate size of each publish request body in bytes.
    #[arg(long, default_value_t = 200)]
    body_bytes: usize,
    /// Events per publish request (> 1 sends `{"events":[…]}` batches; every event in a batch is stamped with the
    /// batch's scheduled time).
    #[arg(long, default_value_t = 1)]
    batch: u64,
    /// Connections being set up at once during the ramp.
    #[arg(long, default_value_t = 200)]
    concurrency: usize,
    /// Seconds one connection may take to connect and subscribe.
    #[arg(long, default_value_t = 30.0)]
    connect_timeout: f64,
    /// Seconds to wait after the last publish for deliveries still in flight.
    #[arg(long, default_value_t = 10.0)]
    drain: f64,
}

/// Per-connection delivery bookkeeping (Cells: everything runs on one thread).
#[derive(Default)]
struct ConnState {
    subscribed: Cell<bool>,
    alive: Cell<bool>,
    /// Next expected sequence number (starts at 1).
    next: Cell<u64>,
    /// Distinct in-order-or-later events received (duplicates and stale ones excluded).
    received: Cell<u64>,
    dups: Cell<u64>,
    /// Times the sequence jumped forward, and by how many events in total.
    gaps: Cell<u64>,
    skipped: Cell<u64>,
    first_seq: Cell<u64>,
}

/// State shared by all connection tasks and the reporter.
struct Shared {
    clock: Clock,
    /// Socket.IO: `["tick",`.
    event_prefix: Vec<u8>,
    /// WebSocket/SSE: the event name as it appears inside a JSON string / on the `event:` line.
    event_name: Vec<u8>,
    conns: Vec<ConnState>,
    subscribed: Cell<usize>,
    connect_failed: Cell<usize>,
    connect_lat: RefCell<Histogram>,
    lost: Cell<usize>,
    first_error: RefCell<Option<String>>,
    delivered: Cell<u64>,
    bad_frames: Cell<u64>,
    other_events: Cell<u64>,
    last_recv_us: Cell<u64>,
    latency: RefCell<Histogram>,
    interval: RefCell<Histogram>,
    /// Set when the run is over, so closing connections are not counted as lost.
    stopping: Cell<bool>,
}

impl Shared {
    fn error(&self, e: String) {
        self.first_error.borrow_mut().get_or_insert(e);
    }

    /// Connection `i` (started at `t0`) is confirmed subscribed.
    fn mark_subscribed(&self, i: usize, t0: u64) {
        self.connect_lat
            .borrow_mut()
            .record(self.clock.now_us().saturating_sub(t0));
        let c = &self.conns[i];
        c.subscribed.set(true);
        c.alive.set(true);
        self.subscribed.set(self.subscribed.get() + 1);
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

    /// Records one delivery of the bench event whose payload `p` holds `"seq":N` and `"t":µs`: no allocation.
    fn on_event(&self, c: &ConnState, p: &[u8]) {
        let (Some(seq), Some(t)) = (
            sio::number_after(p, br#""seq":"#),
            sio::number_after(p, br#""t":"#),
        ) else {
            self.bad_frames.set(self.bad_frames.get() + 1);
            return;
        };
        let now = self.clock.now_us();
        let lat = now.saturating_sub(self.clock.clock_us_of_wall(t));
        self.latency.borrow_mut().record(lat);
        self.interval.borrow_mut().record(lat);
        self.delivered.set(self.delivered.get() + 1);
        self.last_recv_us.set(now);
        if c.first_seq.get() == 0 {
            c.first_seq.set(seq);
        }
        let next = c.next.get();
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

/// Where subscribers connect: the WebSocket target (Socket.IO or plain) and, for SSE, the Host and path.
struct Endpoint {
    target: sio::Target,
    host: String,
    sse_path: String,
}

async fn connection(
    i: usize,
    ep: Rc<Endpoint>,
    args: Rc<Args>,
    s: Rc<Shared>,
    permit: tokio::sync::OwnedSemaphorePermit,
) {
    let t0 = s.clock.now_us();
    let limit = Duration::from_secs_f64(args.connect_timeout);
    let why = if args.transport == Transport::Sse {
        match sse_connection(i, &ep, &s, permit, t0, limit).await {
            Some(why) => why,
            None => return,
        }
    } else {
        let res = tokio::time::timeout(limit, async {
            match args.transport {
                Transport::Ws => ws::connect_and_subscribe(&ep.target, &args.channel).await,
                _ => sio::connect_and_subscribe(&ep.target, &args.channel).await,
            }
        })
        .await;
        drop(permit);
        let mut w = match res {
            Ok(Ok(w)) => w,
            Ok(Err(e)) => return fail_connect(&s, format!("connection {i}: {e:#}")),
            Err(_) => {
                return fail_connect(&s, format!("connection {i}: connect+subscribe timed out"));
            }
        };
        s.mark_subscribed(i, t0);
        if args.transport == Transport::Ws {
            ws_receive(i, &s, &mut w).await
        } else {
            sio_receive(&s, &s.conns[i], &mut w).await
        }
    };
    s.conns[i].alive.set(false);
    if !s.stopping.get() {
        s.lost.set(s.lost.get() + 1);
        s.error(format!("connection {i} lost: {why}"));
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
    s: &Shared,
    permit: tokio::sync::OwnedSemaphorePermit,
    t0: u64,
    limit: Duration,
) -> Option<String> {
    let deadline = tokio::time::Instant::now() + limit;
    let opened = tokio::time::timeout_at(
        deadline,
        sse::Conn::open(ep.target.addr, &ep.host, &ep.sse_path),
    )
    .await;
    let mut conn = match opened {
        Ok(Ok(conn)) => conn,
        Ok(Err(e)) => {
            fail_connect(s, format!("connection {i}: {e:#}"));
            return None;
        }
        Err(_) => {
            fail_connect(s, format!("connection {i}: connect+subscribe timed out"));
            return None;
        }
    };
    let c = &s.conns[i];
    let mut permit = Some(permit);
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
                    fail_connect(s, format!("connection {i}: connect+subscribe timed out"));
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
            fail_connect(s, e);
            return None;
        }
        match res {
            Ok(true) => {}
            Ok(false) if c.subscribed.get() => return Some("end of stream".into()),
            Err(e) if c.subscribed.get() => return Some(format!("{e:#}")),
            Ok(false) => {
                fail_connect(
                    s,
                    format!("connection {i}: stream ended before its opening record"),
                );
                return None;
            }
            Err(e) => {
                fail_connect(s, format!("connection {i}: {e:#}"));
                return None;
            }
        }
    }
}

fn fail_connect(s: &Shared, e: String) {
    s.connect_failed.set(s.connect_failed.get() + 1);
    s.error(e);
}

/// CPU and RSS of the server (if `--server-pid`) and of this process.
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

fn opt(v: Option<f64>, digits: usize, unit: &str) -> String {
    v.map_or("n/a".into(), |v| format!("{v:.digits$}{unit}"))
}

/// Runs the scenario; `Ok(false)` when it completed but saw failures.
pub async fn run(args: Args) -> Result<bool> {
    let args = Rc::new(args);
    let (mut target, host) = args.common.resolve().await?;
    if args.transport == Transport::Ws {
        target.ws_url = format!("ws://{host}{}", args.ws_path);
    }
    let ep = Rc::new(Endpoint {
        target: target.clone(),
        host: host.clone(),
        sse_path: sse::channel_path(&args.sse_path, &args.channel),
    });
    let pid = args.common.server_pid.map(|p| p.to_string());
    let pid = pid.as_deref();
    let clock = Clock::new();
    let n = args.connections;
    let s = Rc::new(Shared {
        clock,
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
        latency: Default::default(),
        interval: Default::default(),
        stopping: Cell::new(false),
    });
    eprintln!(
        "herald-bench fanout: {n} {} connections on {:?}, {} events/s for {} s → {}",
        args.transport.name(),
        args.channel,
        args.rate,
        args.duration,
        args.common.url
    );

    // Ramp.
    let before = snapshot(&clock, pid);
    let sem = Arc::new(Semaphore::new(args.concurrency.max(1)));
    for i in 0..n {
        let Ok(permit) = sem.clone().acquire_owned().await else {
            break;
        };
        tokio::task::spawn_local(connection(i, ep.clone(), args.clone(), s.clone(), permit));
    }
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    let mut last_print = clock.now_us();
    while s.subscribed.get() + s.connect_failed.get() < n {
        tick.tick().await;
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
    let ramp_done = clock.now_us();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let idle = snapshot(&clock, pid);
    let subscribed = s.subscribed.get();
    eprintln!(
        "[ramp] {subscribed}/{n} subscribed in {:.2} s; server RSS {} KiB idle",
        (ramp_done - before.at_us) as f64 / 1e6,
        idle.server_rss_kib.map_or("n/a".into(), |v| v.to_string())
    );

    // Publish.
    let count = (args.rate * args.duration).round() as u64;
    let publisher = Rc::new(Publisher::new(
        target.addr,
        &host,
        args.common.api_key.as_deref(),
        (&args.channel, &args.event),
        args.body_bytes,
        args.batch,
    ));
    let pstats = Rc::new(PublishStats::default());
    let start_us = clock.now_us() + 100_000;
    let pub_task =
        tokio::task::spawn_local(publisher.run(clock, start_us, args.rate, count, pstats.clone()));
    s.interval.borrow_mut().reset();
    let mut prev = snapshot(&clock, pid);
    let mut prev_delivered = 0;
    let mut drain_deadline = None;
    let mut tick = tokio::time::interval_at(
        tokio::time::Instant::from_std(clock.instant_at(start_us + 1_000_000)),
        Duration::from_secs(1),
    );
    loop {
        tokio::select! {
            _ = tick.tick() => {
                let now = snapshot(&clock, pid);
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
            let ok = pstats.ok.get();
            let done = s
                .conns
                .iter()
                .all(|c| !c.alive.get() || c.received.get() >= ok);
            if done || clock.now_us() >= deadline {
                break;
            }
        }
    }
    let end = snapshot(&clock, pid);
    s.stopping.set(true);

    // Report.
    let ok = pstats.ok.get();
    let live: Vec<&ConnState> = s.conns.iter().filter(|c| c.subscribed.get()).collect();
    let sum = |f: &dyn Fn(&ConnState) -> u64| live.iter().map(|c| f(c)).sum::<u64>();
    let missing = sum(&|c| ok.saturating_sub(c.received.get()));
    let gaps = sum(&|c| c.gaps.get());
    let skipped = sum(&|c| c.skipped.get());
    let dups = sum(&|c| c.dups.get());
    let first_missing = live.iter().filter(|c| c.first_seq.get() != 1).count();
    let bad_conns = live
        .iter()
        .filter(|c| {
            c.first_seq.get() != 1 || c.dups.get() > 0 || c.gaps.get() > 0 || c.received.get() < ok
        })
        .count();
    let delivered = s.delivered.get();
    let expected = ok * subscribed as u64;
    let active_us = s
        .last_recv_us
        .get()
        .saturating_sub(start_us)
        .max((args.duration * 1e6) as u64)
        .max(1);
    let per_sec = delivered as f64 * 1e6 / active_us as f64;
    let lat = s.latency.borrow();
    let conn_lat = s.connect_lat.borrow();
    let rtt = pstats.rtt.borrow();
    let d = |a: Option<u64>, b: Option<u64>| Some(a?.saturating_sub(b?));
    let pub_cpu = d(end.server_cpu_us, idle.server_cpu_us);
    let connect_cpu = d(idle.server_cpu_us, before.server_cpu_us);
    let per_conn = |kib: Option<u64>| Some(kib? as f64 / subscribed.max(1) as f64);
    let idle_rss_per = per_conn(d(idle.server_rss_kib, before.server_rss_kib));
    let end_rss_per = per_conn(d(end.server_rss_kib, before.server_rss_kib));
    let cpu_per_msg = pub_cpu.map(|c| c as f64 / delivered.max(1) as f64);
    let cpu_per_conn = connect_cpu.map(|c| c as f64 / subscribed.max(1) as f64);
    let window = end.at_us - idle.at_us;
    let server_pct = pct(end.server_cpu_us, idle.server_cpu_us, window);
    let gen_pct = pct(end.self_cpu_us, idle.self_cpu_us, window);
    let other = other_pct(&end, &idle);
    let passed = s.connect_failed.get() == 0
        && s.lost.get() == 0
        && pstats.failed.get() == 0
        && bad_conns == 0
        && s.bad_frames.get() == 0;
    let q = |h: &Histogram, q: f64| ms(h.quantile(q));
    let summary = json!({
        "scenario": "fanout",
        "url": args.common.url,
        "transport": args.transport.name(),
        "connections": n, "rate": args.rate, "batch": args.batch, "duration_s": args.duration, "body_bytes": args.body_bytes,
        "connect": {
            "subscribed": subscribed, "failed": s.connect_failed.get(),
            "seconds": (ramp_done - before.at_us) as f64 / 1e6,
            "p50_ms": q(&conn_lat, 0.5), "p99_ms": q(&conn_lat, 0.99), "max_ms": ms(conn_lat.max()),
            "server_cpu_us_per_connection": cpu_per_conn,
        },
        "publish": {
            "scheduled": count, "ok": ok, "failed": pstats.failed.get(),
            "http_p50_ms": q(&rtt, 0.5), "http_p99_ms": q(&rtt, 0.99), "http_max_ms": ms(rtt.max()),
        },
        "delivered": delivered, "expected": expected, "delivered_per_s": per_sec,
        "latency_ms": {
            "p50": q(&lat, 0.5), "p90": q(&lat, 0.9), "p99": q(&lat, 0.99), "p999": q(&lat, 0.999), "max": ms(lat.max()),
        },
        "correctness": {
            "gaps": gaps, "skipped": skipped, "duplicates": dups, "missing": missing,
            "first_event_missing": first_missing, "connections_with_errors": bad_conns,
            "connections_lost": s.lost.get(), "bad_frames": s.bad_frames.get(), "other_events": s.other_events.get(),
        },
        "server": {
            "pid": args.common.server_pid,
            "cpu_us": pub_cpu, "cpu_percent": server_pct, "cpu_us_per_delivered": cpu_per_msg,
            "rss_kib_before": before.server_rss_kib, "rss_kib_idle": idle.server_rss_kib, "rss_kib_end": end.server_rss_kib,
            "rss_kib_per_connection_idle": idle_rss_per, "rss_kib_per_connection_end": end_rss_per,
        },
        "generator_cpu_percent": gen_pct,
        "other_cpu_percent": other,
        "first_error": *s.first_error.borrow(),
        "first_publish_error": *pstats.first_error.borrow(),
        "passed": passed,
    });
    if args.common.json {
        println!("{summary}");
        return Ok(passed);
    }
    let kib = |v: Option<u64>| v.map_or("n/a".into(), |v| format!("{:.1} MiB", v as f64 / 1024.0));
    println!(
        "\n== herald-bench fanout: {n} {} × {:?}, {} events/s × {} s, ~{} B bodies ==",
        args.transport.name(),
        args.channel,
        args.rate,
        args.duration,
        args.body_bytes
    );
    println!(
        "connect      {subscribed} subscribed, {} failed in {:.2} s; connect+subscribe p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        s.connect_failed.get(),
        (ramp_done - before.at_us) as f64 / 1e6,
        q(&conn_lat, 0.5),
        q(&conn_lat, 0.99),
        ms(conn_lat.max())
    );
    println!(
        "publish      {ok}/{count} ok, {} failed; HTTP p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        pstats.failed.get(),
        q(&rtt, 0.5),
        q(&rtt, 0.99),
        ms(rtt.max())
    );
    println!(
        "delivered    {delivered} of {expected} expected; {per_sec:.0}/s (offered {:.0}/s)",
        args.rate * subscribed as f64
    );
    println!(
        "latency      p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, max {:.2} ms (receive − scheduled send)",
        q(&lat, 0.5),
        q(&lat, 0.9),
        q(&lat, 0.99),
        q(&lat, 0.999),
        ms(lat.max())
    );
    println!(
        "correctness  gaps {gaps} ({skipped} skipped), duplicates {dups}, missing {missing}, first event missing on {first_missing}, \
         connections with errors {bad_conns}, lost {}, bad frames {}",
        s.lost.get(),
        s.bad_frames.get()
    );
    println!(
        "server CPU   {} ({} of a core) → {} per delivered message; connect {} per connection",
        opt(pub_cpu.map(|c| c as f64 / 1e6), 2, " s"),
        opt(server_pct, 1, "%"),
        opt(cpu_per_msg, 2, " µs"),
        opt(cpu_per_conn, 0, " µs"),
    );
    println!(
        "server RSS   {} before, {} idle ({} per connection), {} at end ({} per connection)",
        kib(before.server_rss_kib),
        kib(idle.server_rss_kib),
        opt(idle_rss_per, 1, " KiB"),
        kib(end.server_rss_kib),
        opt(end_rss_per, 1, " KiB"),
    );
    println!(
        "generator    CPU {} of a core (near 100% = the generator is the bottleneck); other processes {}",
        opt(gen_pct, 0, "%"),
        opt(other, 0, "%")
    );
    if other.is_some_and(|o| o > 10.0) {
        println!(
            "WARNING      other processes used CPU during the run: these numbers are disturbed"
        );
    }
    if let Some(e) = &*s.first_error.borrow() {
        println!("first error  {e}");
    }
    if let Some(e) = &*pstats.first_error.borrow() {
        println!("publish err  {e}");
    }
    println!("result       {}", if passed { "PASS" } else { "FAIL" });
    Ok(passed)
}
