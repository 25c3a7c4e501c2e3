//! The Redis engine under faults, on a `redis-server` each test starts, stops and restarts itself: publishes
//! during an outage fail as unavailable (never acknowledged and then lost), the pub/sub connection comes back by
//! itself and catches its subscribers up from history exactly once, and a Redis that lost its data (or history
//! trimmed past what a node missed) gives them the lost signal — after data loss with a new epoch, from which a
//! feed's resume reports the gap. The engine's health is unavailable for the outage and ok once the subscribers
//! are caught up. One test runs `herald serve` itself for the HTTP answers and an SSE client.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use herald::binding::feed::{Feed, Gone, Outlet, Registered, Want};
use herald::core::Engine;
use herald::core::channel::ChannelName;
use herald::core::engine::{
    self, EngineError, EngineKind, EngineOptions, Health, Subscriber, SubscriberId,
};
use herald::core::event::{Event, NewEvent, SharedEvent};
use herald::core::gap::{Gap, GapReason};
use herald::core::presence::Member;
use herald::core::retention::Retention;
use parking_lot::Mutex;
use serde_json::value::RawValue;

#[path = "support/redis_server.rs"]
mod redis_server;
use redis_server::RedisServer;

/// Longest any condition below is waited for.
const DEADLINE: Duration = Duration::from_secs(30);

async fn open(server: &RedisServer) -> Arc<dyn Engine> {
    engine::open(EngineOptions {
        kind: EngineKind::Redis {
            url: server.url.clone(),
            prefix: format!("faults{}", std::process::id()),
        },
        retention: Retention::default(),
        session_ttl: Duration::from_secs(3600),
    })
    .await
    .unwrap()
}

fn ch(name: &str) -> ChannelName {
    ChannelName::new(name).unwrap()
}

fn ev(channel: &str, n: u64) -> NewEvent {
    NewEvent {
        channel: ch(channel),
        name: "tick".into(),
        data: RawValue::from_string(format!("{{\"n\":{n}}}")).unwrap(),
        id: Some(format!("p{n}")),
        state: None,
    }
}

/// Polls `cond` until it holds; fails the test after [`DEADLINE`].
async fn until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Restarts `server` off the async workers (starting it polls PING synchronously).
async fn restart(server: &Arc<RedisServer>) {
    let s = server.clone();
    tokio::task::spawn_blocking(move || s.restart())
        .await
        .unwrap();
}

/// Records the `(epoch, offset)` of every live event and whether it was told of a loss.
#[derive(Default)]
struct Record {
    events: Mutex<Vec<(Arc<str>, u64)>>,
    lost: AtomicBool,
}
impl Subscriber for Record {
    fn deliver(&self, e: &Arc<SharedEvent>) {
        self.events
            .lock()
            .push((e.event.epoch.clone(), e.event.offset));
    }
    fn lost(&self, _: &ChannelName) {
        self.lost.store(true, Ordering::SeqCst);
    }
}

async fn subscribe(core: &Arc<dyn Engine>, channel: &str) -> (Arc<Record>, engine::Subscription) {
    let rec = Arc::new(Record::default());
    let sub: Arc<dyn Subscriber> = rec.clone();
    let mut regs = core
        .subscribe(&[ch(channel)], SubscriberId::next(), sub)
        .await
        .unwrap();
    let (_, handle) = regs.pop().unwrap();
    (rec, handle)
}

/// What the publisher saw.
#[derive(Default)]
struct Outcomes {
    /// Acknowledged offsets, in order.
    acked: Mutex<Vec<u64>>,
    failed: AtomicU64,
    /// Anything that should not happen: another error kind, an ack before local delivery.
    wrong: Mutex<Vec<String>>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_fails_publishes_and_subscribers_catch_up_exactly_once() {
    let server = RedisServer::private_with_aof();
    let core = open(&server).await;
    let (rec, _sub) = subscribe(&core, "a").await;

    let out = Arc::new(Outcomes::default());
    let stop = Arc::new(AtomicBool::new(false));
    let publisher = tokio::spawn({
        let (core, rec, out, stop) = (core.clone(), rec.clone(), out.clone(), stop.clone());
        async move {
            for n in 1.. {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                match core.publish(vec![ev("a", n)]).await {
                    Ok(r) => {
                        let offset = r[0].offset;
                        // Local subscribers have an event before its publish is acknowledged.
                        if !rec.events.lock().iter().any(|(_, o)| *o == offset) {
                            out.wrong
                                .lock()
                                .push(format!("offset {offset} acknowledged before delivery"));
                        }
                        out.acked.lock().push(offset);
                    }
                    Err(EngineError::Unavailable(_)) => {
                        out.failed.fetch_add(1, Ordering::SeqCst);
                    }
                    Err(e) => out.wrong.lock().push(format!("publish {n}: {e}")),
                }
                // Pacing the load (not synchronisation): a failing publish returns at once.
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
    });

    until("publishes before the outage", || {
        out.acked.lock().len() >= 50
    })
    .await;
    let mut health = core.health();
    assert_eq!(*health.borrow_and_update(), Health::Ok);
    server.stop();
    tokio::time::timeout(
        DEADLINE,
        health.wait_for(|h| matches!(h, Health::Unavailable { .. })),
    )
    .await
    .expect("the engine reports the outage")
    .unwrap();
    until("a publish to fail", || {
        out.failed.load(Ordering::SeqCst) > 0
    })
    .await;
    let acked_before = out.acked.lock().len();
    // The outage itself (its length is the point of the test, not a synchronisation).
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        out.acked.lock().len(),
        acked_before,
        "nothing is acknowledged while Redis is down"
    );
    restart(&server).await;
    tokio::time::timeout(DEADLINE, health.wait_for(|h| *h == Health::Ok))
        .await
        .expect("the engine reports it is back")
        .unwrap();
    until("publishes after the restart", || {
        out.acked.lock().len() >= acked_before + 50
    })
    .await;
    stop.store(true, Ordering::SeqCst);
    publisher.await.unwrap();

    let info = core.channel(&ch("a")).await.unwrap().unwrap();
    until("the subscriber to reach the last offset", || {
        rec.events.lock().last().map(|(_, o)| *o) == Some(info.last_offset)
    })
    .await;
    assert!(out.wrong.lock().is_empty(), "{:?}", out.wrong.lock());
    assert!(!rec.lost.load(Ordering::SeqCst), "nothing was lost");
    // Every committed event (acknowledged or whose reply was lost) exactly once, in order, in one epoch.
    let events = rec.events.lock().clone();
    let offsets: Vec<u64> = events.iter().map(|(_, o)| *o).collect();
    assert_eq!(offsets, (1..=info.last_offset).collect::<Vec<_>>());
    assert!(events.iter().all(|(e, _)| *e == info.epoch));
    let acked = out.acked.lock().clone();
    assert!(acked.windows(2).all(|w| w[0] < w[1]));
    assert!(acked.last().is_some_and(|o| *o <= info.last_offset));
}

/// A feed's wire: gap notices with their reason, replayed and live offsets, and whether it was closed for a
/// resume.
#[derive(Default)]
struct Wire {
    sent: Mutex<Vec<String>>,
    failed: AtomicBool,
}
impl Outlet for Wire {
    const TRANSPORT: herald::registry::Transport = herald::registry::Transport::WebSocket;
    fn live(&self, e: &Arc<SharedEvent>) -> Result<(), Gone> {
        self.sent.lock().push(format!("live {}", e.event.offset));
        Ok(())
    }
    fn replayed(&self, e: &Event, _: &Registered) -> Result<(), Gone> {
        self.sent.lock().push(format!("{}", e.offset));
        Ok(())
    }
    fn gap(&self, g: &Gap) -> Result<(), Gone> {
        self.sent.lock().push(format!("gap {:?}", g.reason));
        Ok(())
    }
    fn status(&self, _: &Health) -> Result<(), Gone> {
        Ok(())
    }
    fn overflow(&self) {}
    fn fail(&self) {
        self.failed.store(true, Ordering::SeqCst);
    }
    async fn room(&self) {}
}

fn member(conn: &str) -> Arc<Member> {
    Arc::new(Member {
        conn: conn.into(),
        user: None,
        roles: vec![],
        transport: "sse",
        connected_at: 0,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_that_lost_its_data_changes_the_epoch_and_signals_the_loss() {
    let server = RedisServer::private();
    let core = open(&server).await;
    let (rec, _sub) = subscribe(&core, "a").await;
    let feed = Feed::new(core.clone(), Wire::default(), 1 << 20, member("f1"));
    let regs = feed.begin(vec![Want::new_events(ch("a"))]).await.unwrap();
    feed.complete(&regs).await.unwrap();
    let mut old = None;
    for n in 1..=3 {
        old = Some(
            core.publish(vec![ev("a", n)]).await.unwrap()[0]
                .epoch
                .clone(),
        );
    }
    let old = old.unwrap();
    assert_eq!(rec.events.lock().len(), 3);

    restart(&server).await; // persistence off: it comes back empty
    until("the loss signal", || {
        rec.lost.load(Ordering::SeqCst) && feed.outlet.failed.load(Ordering::SeqCst)
    })
    .await;
    let r = core.publish(vec![ev("a", 4)]).await.unwrap();
    assert_ne!(r[0].epoch, old, "offsets after data loss start a new epoch");
    assert_eq!(r[0].offset, 1);
    feed.detach();

    // The client's resume by its cursor (offset 3 of the old epoch) is told the epoch changed.
    let resumed = Feed::new(core.clone(), Wire::default(), 1 << 20, member("f2"));
    let regs = resumed
        .begin(vec![Want {
            channel: ch("a"),
            after: Some(3),
            epoch: Some(old.to_string()),
            gap: None,
        }])
        .await
        .unwrap();
    resumed.complete(&regs).await.unwrap();
    let sent = resumed.outlet.sent.lock().clone();
    assert_eq!(
        sent.first(),
        Some(&format!("gap {:?}", GapReason::EpochChanged)),
        "{sent:?}"
    );
    resumed.detach();
}

/// A `herald serve` process on the Redis engine, killed when dropped.
struct Herald {
    child: std::process::Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl Drop for Herald {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts the binary on an ephemeral loopback port and waits (bounded) for its listening line.
fn start_herald(redis: &RedisServer) -> Herald {
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("herald.toml");
    std::fs::write(
        &config,
        format!(
            "[engine]\nkind = \"redis\"\nurl = \"{}\"\nprefix = \"http{}\"\n",
            redis.url,
            std::process::id()
        ),
    )
    .unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path().join("data"))
        .arg("--config")
        .arg(&config)
        .env_remove("HERALD_ENGINE_URL")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if let Some(url) = line.strip_prefix("herald listening on ") {
                let _ = tx.send(url.trim().to_owned());
            }
        }
    });
    let url = rx
        .recv_timeout(DEADLINE)
        .expect("herald printed its listening line");
    Herald {
        child,
        url,
        _dir: dir,
    }
}

/// Publishes `{"n":n}` to channel `a` over HTTP: the status and the JSON body.
async fn http_publish(http: &reqwest::Client, herald: &Herald, n: u64) -> (u16, serde_json::Value) {
    let r = http
        .post(format!("{}/api/publish", herald.url))
        .json(&serde_json::json!({"channel": "a", "event": "x", "data": {"n": n}, "id": format!("h{n}")}))
        .timeout(DEADLINE)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_http_an_outage_is_503_and_an_sse_client_stays_and_catches_up() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let server = RedisServer::private_with_aof();
    let herald = start_herald(&server);
    let http = reqwest::Client::new();
    let mut sse = http
        .get(format!("{}/sse/a", herald.url))
        .send()
        .await
        .unwrap();
    assert_eq!(sse.status(), 200);
    assert_eq!(http_publish(&http, &herald, 1).await.0, 200);

    server.stop();
    let (status, body) = http_publish(&http, &herald, 2).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "engine_unavailable", "{body}");
    restart(&server).await;
    // The command connection reconnects on the next command (polled with a deadline).
    let deadline = Instant::now() + DEADLINE;
    let mut n = 3;
    loop {
        let (status, body) = http_publish(&http, &herald, n).await;
        if status == 200 {
            break;
        }
        assert_eq!(body["error"]["code"], "engine_unavailable", "{body}");
        assert!(Instant::now() < deadline, "publishes did not recover");
        n += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // The same SSE response (never closed) carries event 1 and the first acknowledged one after the outage,
    // each once and in order.
    let mut text = String::new();
    let want = format!("data: {{\"n\":{n}}}");
    let read = async {
        while !text.contains(&want) {
            match sse.chunk().await {
                Ok(Some(c)) => text.push_str(&String::from_utf8_lossy(&c)),
                other => panic!("the SSE stream ended during the outage: {other:?}; got {text}"),
            }
        }
    };
    tokio::time::timeout(DEADLINE, read)
        .await
        .unwrap_or_else(|_| panic!("SSE never carried {want}"));
    let data: Vec<&str> = text.lines().filter(|l| l.starts_with("data:")).collect();
    assert_eq!(data.first(), Some(&"data: {\"n\":1}"), "{text}");
    assert_eq!(data.iter().filter(|l| **l == want).count(), 1, "{text}");
    assert!(!text.contains("herald:gap"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hole_trimmed_from_history_while_the_pub_sub_was_down_signals_the_loss() {
    use herald::core::retention::Limits;
    let server = RedisServer::private();
    // An admin user of its own, so the test can lock the engine's (default) user out and back in.
    let admin_url = server.url.replace("redis://", "redis://admin:pw@");
    let mut admin = redis::Client::open(server.url.as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let _: () = redis::cmd("ACL")
        .arg(&["SETUSER", "admin", "on", ">pw", "~*", "&*", "+@all"][..])
        .query_async(&mut admin)
        .await
        .unwrap();
    let mut admin = redis::Client::open(admin_url.as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let retention = Retention {
        defaults: Limits {
            max_events: 3,
            max_age: Duration::from_secs(3600),
        },
        rules: vec![],
    };
    let prefix = format!("trim{}", std::process::id());
    let node = |url: String| {
        engine::open(EngineOptions {
            kind: EngineKind::Redis {
                url,
                prefix: prefix.clone(),
            },
            retention: retention.clone(),
            session_ttl: Duration::from_secs(3600),
        })
    };
    let a = node(server.url.clone()).await.unwrap();
    let b = node(admin_url.clone()).await.unwrap();
    let (rec, _sub) = subscribe(&a, "a").await;
    b.publish(vec![ev("a", 1)]).await.unwrap();
    until("event 1 on node a", || rec.events.lock().len() == 1).await;

    // Node a's pub/sub connection drops and cannot come back while node b publishes past its retention.
    let _: () = redis::cmd("ACL")
        .arg(&["SETUSER", "default", "off"][..])
        .query_async(&mut admin)
        .await
        .unwrap();
    let _: () = redis::cmd("CLIENT")
        .arg(&["KILL", "USER", "default"][..])
        .query_async(&mut admin)
        .await
        .unwrap();
    for n in 2..=10 {
        b.publish(vec![ev("a", n)]).await.unwrap();
    }
    assert!(!rec.lost.load(Ordering::SeqCst));
    let _: () = redis::cmd("ACL")
        .arg(&["SETUSER", "default", "on"][..])
        .query_async(&mut admin)
        .await
        .unwrap();
    until("the loss signal", || rec.lost.load(Ordering::SeqCst)).await;
    assert_eq!(
        rec.events.lock().len(),
        1,
        "no event of the hole is delivered"
    );
}

/// Runs one command on `server` from a connection of the test's own.
async fn command(server: &RedisServer, args: &[&str]) {
    let client = redis::Client::open(server.url.as_str()).unwrap();
    let mut con = client.get_multiplexed_async_connection().await.unwrap();
    let mut cmd = redis::cmd(args[0]);
    for a in &args[1..] {
        cmd.arg(*a);
    }
    cmd.query_async::<redis::Value>(&mut con).await.unwrap();
}

/// Publishes `ev(channel, n)` until one is acknowledged (the first after a restart may meet the dead connection).
async fn publish_acked(core: &Arc<dyn Engine>, channel: &str, n: u64) -> (Arc<str>, u64) {
    let deadline = Instant::now() + DEADLINE;
    loop {
        match core.publish(vec![ev(channel, n)]).await {
            Ok(r) => return (r[0].epoch.clone(), r[0].offset),
            Err(EngineError::Unavailable(_)) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("publish {n}: {e}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_that_lost_its_latest_writes_moves_every_channel_to_a_new_epoch() {
    // Restarted from an RDB snapshot older than the last acknowledged writes: the channel's metadata survives at
    // an older offset, which without the instance check the next publish would reuse under the same epoch.
    let server = RedisServer::private();
    let core = open(&server).await;
    let (rec, _sub) = subscribe(&core, "a").await;
    for n in 1..=3 {
        publish_acked(&core, "a", n).await;
    }
    command(&server, &["SAVE"]).await;
    let (epoch, offset) = (
        publish_acked(&core, "a", 4).await,
        publish_acked(&core, "a", 5).await,
    )
        .1;
    assert_eq!(offset, 5);
    server.stop();
    restart(&server).await;

    let (after, offset) = publish_acked(&core, "a", 6).await;
    assert_eq!(offset, 4, "the snapshot held offsets 1–3");
    assert_ne!(
        after, epoch,
        "offset 4 is handed out again, so under a new epoch"
    );
    // A subscriber that saw offsets 4 and 5 of the old epoch gets the new event 4 live (not dropped as a repeat of
    // the old 4), or — when the publish came before its pub/sub connection was back — is told to resume.
    until(
        "the live subscriber to get the new event or the loss",
        || rec.events.lock().last() == Some(&(after.clone(), 4)) || rec.lost.load(Ordering::SeqCst),
    )
    .await;
    // A client resuming from (old epoch, 5) gets the gap notice.
    let resume = core.channel(&ch("a")).await.unwrap().unwrap();
    assert_eq!(resume.epoch, after);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_connection_to_the_same_redis_keeps_the_epoch() {
    let server = RedisServer::private();
    let core = open(&server).await;
    let (epoch, _) = publish_acked(&core, "a", 1).await;
    command(
        &server,
        &["CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes"],
    )
    .await;
    let (after, offset) = publish_acked(&core, "a", 2).await;
    assert_eq!((after, offset), (epoch, 2));
}

/// A TCP pass-through to Redis whose existing connections can be frozen: they stay open but carry nothing more in
/// either direction (a connection a firewall or NAT dropped silently). Connections made after a freeze work.
struct FreezingProxy {
    url: String,
    frozen: Arc<Mutex<Vec<Arc<AtomicBool>>>>,
}

impl FreezingProxy {
    async fn start(server: &RedisServer) -> Self {
        let target = server.url.trim_start_matches("redis://").to_owned();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("redis://{}", listener.local_addr().unwrap());
        let frozen: Arc<Mutex<Vec<Arc<AtomicBool>>>> = Arc::default();
        let list = frozen.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(upstream) = tokio::net::TcpStream::connect(&target).await else {
                    continue;
                };
                let flag = Arc::new(AtomicBool::new(false));
                list.lock().push(flag.clone());
                let (cr, cw) = client.into_split();
                let (ur, uw) = upstream.into_split();
                tokio::spawn(pipe(cr, uw, flag.clone()));
                tokio::spawn(pipe(ur, cw, flag));
            }
        });
        Self { url, frozen }
    }

    /// Freezes every connection open now.
    fn freeze(&self) {
        for f in self.frozen.lock().iter() {
            f.store(true, Ordering::SeqCst);
        }
    }
}

/// Copies `from` to `to` until either ends; once `frozen`, holds both open and copies nothing.
async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    frozen: Arc<AtomicBool>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if frozen.load(Ordering::SeqCst) {
            // Keep the sockets, drop the bytes: neither side learns anything.
            let _keep = (from, to);
            std::future::pending::<()>().await;
            return;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silently_broken_pub_sub_connection_is_replaced_and_nothing_is_lost() {
    let server = RedisServer::private();
    let proxy = FreezingProxy::start(&server).await;
    let prefix = format!("silent{}", std::process::id());
    let node = |url: String| {
        let prefix = prefix.clone();
        async move {
            engine::open(EngineOptions {
                kind: EngineKind::Redis { url, prefix },
                retention: Retention::default(),
                session_ttl: Duration::from_secs(3600),
            })
            .await
            .unwrap()
        }
    };
    // The subscriber's node reaches Redis through the proxy; the publisher's directly.
    let behind = node(proxy.url.clone()).await;
    let publisher = node(server.url.clone()).await;
    let (rec, _sub) = subscribe(&behind, "a").await;
    publish_acked(&publisher, "a", 1).await;
    until("the first event", || rec.events.lock().len() == 1).await;

    // Every connection of the subscriber's node goes silent: no error, no close.
    proxy.freeze();
    let frozen = Instant::now();
    for n in 2..=5 {
        publish_acked(&publisher, "a", n).await;
    }
    // Within PING_EVERY + the command timeout (8 s) the reader notices, reconnects and catches up from history.
    until(
        "the events published while the connection was silent",
        || rec.events.lock().len() == 5,
    )
    .await;
    let took = frozen.elapsed();
    assert!(
        took < Duration::from_secs(8) + Duration::from_secs(4),
        "replaced after {took:?}"
    );
    let offsets: Vec<u64> = rec.events.lock().iter().map(|(_, o)| *o).collect();
    assert_eq!(offsets, [1, 2, 3, 4, 5], "each event once, in order");
    assert!(
        !rec.lost.load(Ordering::SeqCst),
        "history covered the silence: no loss signalled"
    );

    // Live delivery goes on over the new connection.
    publish_acked(&publisher, "a", 6).await;
    until("a live event after the replacement", || {
        rec.events.lock().len() == 6
    })
    .await;
}
