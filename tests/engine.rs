//! The engine conformance suite: every test runs unchanged against each engine implementation (SQLite, memory,
//! and Redis on a `redis-server` the suite starts itself). What an engine must guarantee is written in
//! `herald::core::engine`'s module docs; each test below checks one of those promises. Tests that need durability
//! across a reopen are SQLite-only, at the end.

use std::sync::Arc;
use std::time::Duration;

use herald::binding::socketio::session::{self, Cursor, Entry, SessionRecord};
use herald::core::Engine;
use herald::core::channel::{ChannelName, Pattern};
use herald::core::engine::{
    self, Demand, EngineKind, EngineOptions, Subscriber, SubscriberId, Subscription,
};
use herald::core::event::{NewEvent, SharedEvent};
use herald::core::gap::{Gap, GapReason};
use herald::core::presence::{Member, PresenceEvent};
use herald::core::retention::{Limits, Retention};
use herald::core::state::{Snapshot, StateChange};
use parking_lot::Mutex;
use serde_json::value::RawValue;

#[path = "support/redis_server.rs"]
mod redis_server;
use redis_server::RedisServer;

/// One engine under test, with whatever keeps it alive (its data directory or its Redis server).
struct Under {
    engine: Arc<dyn Engine>,
    _dir: Option<tempfile::TempDir>,
    redis: Option<Arc<RedisServer>>,
}

impl std::ops::Deref for Under {
    type Target = Arc<dyn Engine>;
    fn deref(&self) -> &Self::Target {
        &self.engine
    }
}

/// A key prefix no other test uses, so tests can share one Redis server.
fn fresh_prefix() -> String {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("t{}-{n}", std::process::id())
}

/// Opens a fresh engine of `kind` ("sqlite", "memory" or "redis") with `retention`.
async fn open(kind: &str, retention: Retention) -> Under {
    open_on(kind, retention, None).await
}

/// [`open`], with the Redis engine on `server` instead of the shared one.
async fn open_on(kind: &str, retention: Retention, server: Option<Arc<RedisServer>>) -> Under {
    let (kind, dir, redis) = match kind {
        "sqlite" => {
            let dir = tempfile::tempdir().unwrap();
            let kind = EngineKind::Sqlite {
                data_dir: dir.path().into(),
                durability: engine::sqlite::Durability::Full,
            };
            (kind, Some(dir), None)
        }
        "redis" => {
            let server = server.unwrap_or_else(RedisServer::shared);
            let kind = EngineKind::Redis {
                url: server.url.clone(),
                prefix: fresh_prefix(),
            };
            (kind, None, Some(server))
        }
        _ => (EngineKind::Memory, None, None),
    };
    let engine = engine::open(EngineOptions {
        kind,
        retention,
        session_ttl: Duration::from_secs(24 * 3600),
    })
    .await
    .unwrap();
    Under {
        engine,
        _dir: dir,
        redis,
    }
}

fn keep(max_events: u64) -> Retention {
    Retention {
        defaults: Limits {
            max_events,
            max_age: Duration::from_secs(3600),
        },
        rules: vec![],
    }
}

/// Declares each conformance test once per engine: `mod sqlite { fn NAME }`, `mod memory { fn NAME }` and
/// `mod redis { fn NAME }`.
macro_rules! conformance {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                super::$name("sqlite").await
            })*
        }
        mod memory {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                super::$name("memory").await
            })*
        }
        mod redis {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                super::$name("redis").await
            })*
        }
    };
}

conformance!(
    concurrent_publishes_get_gapless_offsets_and_fan_out_in_order,
    repeated_id_returns_the_original_result,
    history_is_bounded_by_count_with_a_gap_signal,
    history_is_bounded_by_age,
    a_channel_keeps_its_epoch_and_a_new_one_gets_its_own,
    a_batch_is_committed_in_order_across_channels,
    subscribing_during_publishes_splits_history_from_live_exactly,
    a_state_snapshot_is_the_state_at_the_subscription_position,
    dropping_a_subscription_ends_live_delivery_and_reports_demand,
    subscribing_to_no_channels_registers_nothing,
    sessions_are_stored_loaded_and_forgotten,
    presence_tracks_joins_and_leaves,
    a_presence_watcher_that_falls_behind_is_dropped,
    resume_points_follow_the_cursor_across_channels,
    resume_reports_a_gap_when_history_was_trimmed,
    a_hole_after_a_known_loss_is_announced_too,
    a_feed_is_present_on_the_channels_it_holds,
    an_engine_that_answers_is_healthy,
    shutdown_refuses_later_publishes,
);

fn ch(name: &str) -> ChannelName {
    ChannelName::new(name).unwrap()
}

fn ev(channel: &str, n: u64, id: Option<&str>) -> NewEvent {
    NewEvent {
        channel: ch(channel),
        name: "tick".into(),
        data: RawValue::from_string(format!("{{\"n\":{n}}}")).unwrap(),
        id: id.map(str::to_owned),
        state: None,
    }
}

fn set(channel: &str, key: &str, value: &str) -> NewEvent {
    NewEvent {
        channel: ch(channel),
        name: "set".into(),
        data: RawValue::from_string(value.into()).unwrap(),
        id: None,
        state: Some(StateChange::Set {
            key: key.into(),
            value: RawValue::from_string(value.into()).unwrap(),
        }),
    }
}

/// Collects `(channel, offset)` of every live event it gets.
struct Collect(Mutex<Vec<(String, u64)>>);
impl Subscriber for Collect {
    fn deliver(&self, e: &Arc<SharedEvent>) {
        self.0
            .lock()
            .push((e.event.channel.to_string(), e.event.offset));
    }
}

impl Collect {
    fn new() -> Arc<Self> {
        Arc::new(Self(Mutex::new(vec![])))
    }
    fn offsets(&self) -> Vec<u64> {
        self.0.lock().iter().map(|(_, o)| *o).collect()
    }
}

async fn subscribe(
    e: &dyn Engine,
    channels: &[&str],
    sub: &Arc<Collect>,
) -> Vec<(engine::Position, Subscription)> {
    let names: Vec<ChannelName> = channels.iter().map(|c| ch(c)).collect();
    let sub: Arc<dyn Subscriber> = sub.clone();
    e.subscribe(&names, SubscriberId::next(), sub)
        .await
        .unwrap()
}

async fn concurrent_publishes_get_gapless_offsets_and_fan_out_in_order(kind: &str) {
    let core = open(kind, Retention::default()).await;
    let sink = Collect::new();
    let _sub = subscribe(&**core, &["a"], &sink).await;
    let mut tasks = Vec::new();
    for t in 0..40 {
        let core = core.engine.clone();
        tasks.push(tokio::spawn(async move {
            let mut offsets = Vec::new();
            for i in 0..25 {
                let r = core
                    .publish(vec![ev("a", t * 100 + i, None)])
                    .await
                    .unwrap();
                offsets.push(r[0].offset);
            }
            offsets
        }));
    }
    let mut all: Vec<u64> = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all.sort();
    assert_eq!(all, (1..=1000).collect::<Vec<_>>());
    core.delivered().await.unwrap();
    assert_eq!(
        sink.offsets(),
        (1..=1000).collect::<Vec<_>>(),
        "live delivery follows commit order"
    );
}

async fn repeated_id_returns_the_original_result(kind: &str) {
    let core = open(kind, Retention::default()).await;
    let first = core.publish(vec![ev("a", 1, Some("k1"))]).await.unwrap();
    let again = core
        .publish(vec![ev("a", 2, Some("k1")), ev("a", 3, Some("k1"))])
        .await
        .unwrap();
    assert_eq!(first[0].offset, 1);
    assert!(
        again
            .iter()
            .all(|r| r.offset == 1 && r.duplicate && r.id == "k1" && r.epoch == first[0].epoch)
    );
    // The same id on another channel is another event.
    let other = core.publish(vec![ev("b", 1, Some("k1"))]).await.unwrap();
    assert!(!other[0].duplicate);
    let next = core.publish(vec![ev("a", 4, None)]).await.unwrap();
    assert_eq!(next[0].offset, 2);
    let page = core.history(&ch("a"), 0, 100).await.unwrap().unwrap();
    assert_eq!(page.events.len(), 2);
}

async fn history_is_bounded_by_count_with_a_gap_signal(kind: &str) {
    let core = open(
        kind,
        Retention {
            defaults: Limits::default(),
            rules: vec![(
                Pattern::new("short:*"),
                Limits {
                    max_events: 5,
                    ..Limits::default()
                },
            )],
        },
    )
    .await;
    for n in 0..12 {
        core.publish(vec![ev("short:x", n, None), ev("long", n, None)])
            .await
            .unwrap();
    }
    let short = core.history(&ch("short:x"), 0, 100).await.unwrap().unwrap();
    assert_eq!((short.info.first_offset, short.info.last_offset), (8, 12));
    assert_eq!(
        short.events.iter().map(|e| e.offset).collect::<Vec<_>>(),
        vec![8, 9, 10, 11, 12]
    );
    let long = core.history(&ch("long"), 0, 100).await.unwrap().unwrap();
    assert_eq!(long.events.len(), 12);
    // Paging: after an offset, at most `limit`.
    let page = core.history(&ch("long"), 3, 4).await.unwrap().unwrap();
    assert_eq!(
        page.events.iter().map(|e| e.offset).collect::<Vec<_>>(),
        vec![4, 5, 6, 7]
    );
    // A replay from before the oldest retained offset says where history starts (the gap signal).
    let replay = core.replay(&ch("short:x"), 2, 12).await.unwrap();
    assert_eq!(replay.first_offset, 8);
    assert_eq!(replay.events.first().map(|e| e.offset), Some(8));
    assert!(core.history(&ch("nope"), 0, 10).await.unwrap().is_none());
    let names: Vec<String> = core
        .channels()
        .await
        .unwrap()
        .into_iter()
        .map(|c| c.channel.to_string())
        .collect();
    assert_eq!(names, ["long", "short:x"]);
}

async fn history_is_bounded_by_age(kind: &str) {
    let core = open(
        kind,
        Retention {
            defaults: Limits {
                max_events: 100,
                max_age: Duration::from_millis(200),
            },
            rules: vec![],
        },
    )
    .await;
    core.publish(vec![ev("a", 1, None), ev("a", 2, None)])
        .await
        .unwrap();
    // Expiry runs periodically; wait for it with a deadline (the condition, not a fixed sleep, ends the wait).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let info = core.channel(&ch("a")).await.unwrap().unwrap();
        if info.first_offset == 3 {
            assert_eq!(info.last_offset, 2, "offsets continue after expiry");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "old events never expired"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
        // The memory engine sweeps on its next operation; a publish elsewhere is one.
        core.publish(vec![ev("other", 0, None)]).await.unwrap();
    }
    let r = core.publish(vec![ev("a", 3, None)]).await.unwrap();
    assert_eq!(r[0].offset, 3);
}

async fn a_channel_keeps_its_epoch_and_a_new_one_gets_its_own(kind: &str) {
    let core = open(kind, Retention::default()).await;
    let a1 = core.publish(vec![ev("a", 1, None)]).await.unwrap();
    let a2 = core.publish(vec![ev("a", 2, None)]).await.unwrap();
    assert!(!a1[0].epoch.is_empty());
    assert_eq!(a1[0].epoch, a2[0].epoch);
    let info = core.channel(&ch("a")).await.unwrap().unwrap();
    assert_eq!(info.epoch, a1[0].epoch);
    let page = core.history(&ch("a"), 0, 10).await.unwrap().unwrap();
    assert!(page.events.iter().all(|e| e.epoch == a1[0].epoch));
    assert!(core.channel(&ch("never")).await.unwrap().is_none());
}

async fn a_batch_is_committed_in_order_across_channels(kind: &str) {
    let core = open(kind, Retention::default()).await;
    let sink = Collect::new();
    let _sub = subscribe(&**core, &["a", "b"], &sink).await;
    let r = core
        .publish(vec![ev("a", 1, None), ev("b", 1, None), ev("a", 2, None)])
        .await
        .unwrap();
    assert_eq!(
        r.iter()
            .map(|r| (r.channel.to_string(), r.offset))
            .collect::<Vec<_>>(),
        [("a".into(), 1), ("b".into(), 1), ("a".to_string(), 2)]
    );
    core.delivered().await.unwrap();
    assert_eq!(
        *sink.0.lock(),
        [("a".into(), 1), ("b".into(), 1), ("a".to_string(), 2)]
    );
    // One total order: sequences increase across channels in commit order.
    let a = core.history(&ch("a"), 0, 10).await.unwrap().unwrap();
    let b = core.history(&ch("b"), 0, 10).await.unwrap().unwrap();
    assert!(a.events[0].seq < b.events[0].seq && b.events[0].seq < a.events[1].seq);
}

async fn subscribing_during_publishes_splits_history_from_live_exactly(kind: &str) {
    let core = open(kind, Retention::default()).await;
    let publisher = {
        let core = core.engine.clone();
        tokio::spawn(async move {
            for n in 1..=300 {
                core.publish(vec![ev("a", n, None)]).await.unwrap();
            }
        })
    };
    // Subscribers registered at arbitrary moments: history through their position plus what arrives live is
    // every event exactly once.
    let mut subs = Vec::new();
    for _ in 0..20 {
        let sink = Collect::new();
        let regs = subscribe(&**core, &["a"], &sink).await;
        subs.push((sink, regs));
        tokio::task::yield_now().await;
    }
    publisher.await.unwrap();
    core.delivered().await.unwrap();
    for (sink, regs) in &subs {
        let pos = &regs[0].0;
        let mut seen: Vec<u64> = core
            .history(&ch("a"), 0, 1000)
            .await
            .unwrap()
            .unwrap()
            .events
            .iter()
            .map(|e| e.offset)
            .filter(|o| *o <= pos.last_offset)
            .collect();
        assert_eq!(seen.len() as u64, pos.last_offset);
        seen.extend(sink.offsets());
        assert_eq!(seen, (1..=300).collect::<Vec<_>>());
    }
    // An acknowledged publish is before every later subscription's position.
    let r = core.publish(vec![ev("a", 301, None)]).await.unwrap();
    let late = Collect::new();
    let regs = subscribe(&**core, &["a"], &late).await;
    assert_eq!(regs[0].0.last_offset, r[0].offset);
    assert_eq!(&*regs[0].0.epoch, &*r[0].epoch);
}

async fn a_state_snapshot_is_the_state_at_the_subscription_position(kind: &str) {
    let core = open(kind, Retention::default()).await;
    core.declare_state(Pattern::new("st:*"), Snapshot::Each);
    assert!(core.is_state_channel(&ch("st:x")));
    assert!(!core.is_state_channel(&ch("plain")));
    // A declared channel with nothing yet has an empty snapshot.
    let sink = Collect::new();
    let regs = subscribe(&**core, &["st:x"], &sink).await;
    let (values, _) = regs[0].0.state.clone().unwrap();
    assert!(values.is_empty());
    core.publish(vec![set("st:x", "k1", "1"), set("st:x", "k2", "2")])
        .await
        .unwrap();
    let before = subscribe(&**core, &["st:x"], &sink).await;
    core.publish(vec![
        set("st:x", "k1", "10"),
        NewEvent {
            state: Some(StateChange::Remove { key: "k2".into() }),
            ..set("st:x", "k2", "null")
        },
    ])
    .await
    .unwrap();
    let (at, _) = before[0].0.state.clone().unwrap();
    let got = |v: &herald::core::state::Values| {
        v.iter()
            .map(|e| (e.key.clone(), e.value.get().to_owned()))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        got(&at),
        [("k1".into(), "1".into()), ("k2".into(), "2".to_string())]
    );
    let now = core.state_of(&ch("st:x")).await.unwrap().unwrap();
    assert_eq!(got(&now), [("k1".to_string(), "10".to_string())]);
    let after = subscribe(&**core, &["st:x"], &sink).await;
    assert_eq!(got(&after[0].0.state.clone().unwrap().0), got(&now));
    assert_eq!(after[0].0.last_offset, 4);
}

async fn dropping_a_subscription_ends_live_delivery_and_reports_demand(kind: &str) {
    let core = open(kind, Retention::default()).await;
    let mut demand = core.demand(Pattern::new("d:*"));
    let sink = Collect::new();
    let regs = subscribe(&**core, &["d:1"], &sink).await;
    assert_eq!(
        demand.recv().await,
        Some(Demand {
            channel: ch("d:1"),
            active: true
        })
    );
    // A second subscriber is no change; the last leaving is.
    let other = Collect::new();
    let regs2 = subscribe(&**core, &["d:1"], &other).await;
    core.publish(vec![ev("d:1", 1, None)]).await.unwrap();
    drop(regs);
    core.publish(vec![ev("d:1", 2, None)]).await.unwrap();
    core.delivered().await.unwrap();
    assert_eq!(sink.offsets(), [1]);
    assert_eq!(other.offsets(), [1, 2]);
    drop(regs2);
    assert_eq!(
        demand.recv().await,
        Some(Demand {
            channel: ch("d:1"),
            active: false
        })
    );
    // A watcher registered later hears of channels already in demand at once.
    let sink3 = Collect::new();
    let _regs3 = subscribe(&**core, &["d:2"], &sink3).await;
    let mut late = core.demand(Pattern::new("d:*"));
    assert_eq!(
        late.recv().await,
        Some(Demand {
            channel: ch("d:2"),
            active: true
        })
    );
}

async fn subscribing_to_no_channels_registers_nothing(kind: &str) {
    let core = open(kind, Retention::default()).await;
    let sink = Collect::new();
    assert!(subscribe(&**core, &[], &sink).await.is_empty());
    core.publish(vec![ev("a", 1, None)]).await.unwrap();
    core.delivered().await.unwrap();
    assert!(sink.offsets().is_empty());
}

async fn sessions_are_stored_loaded_and_forgotten(kind: &str) {
    let core = open(kind, Retention::default()).await;
    assert_eq!(core.session("p1").await.unwrap(), None);
    core.put_session("p1", "{\"a\":1}".into()).await.unwrap();
    core.put_session("p1", "{\"a\":2}".into()).await.unwrap();
    assert_eq!(
        core.session("p1").await.unwrap().as_deref(),
        Some("{\"a\":2}")
    );
    core.session_detached("p1");
    // Detached but not expired: still there.
    core.put_session("p2", "{}".into()).await.unwrap();
    assert!(core.session("p1").await.unwrap().is_some());
    core.delete_session("p1");
    // The delete does not wait; a later write on the same engine is ordered after it.
    core.put_session("p3", "{}".into()).await.unwrap();
    assert_eq!(core.session("p1").await.unwrap(), None);
    assert!(core.session("p2").await.unwrap().is_some());
}

async fn a_presence_watcher_that_falls_behind_is_dropped(kind: &str) {
    use herald::core::engine::PRESENCE_EVENTS_QUEUE;
    let core = open(kind, Retention::default()).await;
    let mut events = core.presence_events(Pattern::new("*"));
    let mut guards = Vec::new();
    for i in 0..=PRESENCE_EVENTS_QUEUE {
        let member = Member {
            conn: format!("c{i}").as_str().into(),
            user: None,
            roles: vec![],
            transport: "sse",
            connected_at: 1,
        };
        guards.push(core.join(&ch("busy"), Arc::new(member)).await.unwrap());
    }
    // The queue held what fits, then the watcher was let go instead of the engine buffering more.
    let mut received = 0;
    while let Some(event) = events.recv().await {
        assert!(matches!(event, PresenceEvent::Join(..)));
        received += 1;
    }
    assert_eq!(received, PRESENCE_EVENTS_QUEUE);
    // Presence itself is whole.
    assert_eq!(
        core.presence(&ch("busy")).await.unwrap().len(),
        PRESENCE_EVENTS_QUEUE + 1
    );
    // A new watcher gets the next notification.
    let mut fresh = core.presence_events(Pattern::new("*"));
    drop(guards.pop());
    assert!(matches!(fresh.recv().await, Some(PresenceEvent::Leave(..))));
}

async fn presence_tracks_joins_and_leaves(kind: &str) {
    let core = open(kind, Retention::default()).await;
    let member = |conn: &str, user: Option<&str>| Member {
        conn: conn.into(),
        user: user.map(str::to_owned),
        roles: vec!["owner".into()],
        transport: "websocket",
        connected_at: 1,
    };
    let mut events = core.presence_events(Pattern::new("room:*"));
    let a = core
        .join(&ch("room:1"), Arc::new(member("c1", Some("u1"))))
        .await
        .unwrap();
    let b = core
        .join(&ch("room:1"), Arc::new(member("c2", None)))
        .await
        .unwrap();
    // Joining twice keeps one entry; it stays until both guards are gone.
    let a2 = core
        .join(&ch("room:1"), Arc::new(member("c1", Some("u1"))))
        .await
        .unwrap();
    let _elsewhere = core
        .join(&ch("lobby"), Arc::new(member("c3", None)))
        .await
        .unwrap();
    let conns = |m: Vec<Member>| {
        m.into_iter()
            .map(|m| m.conn.to_string())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        conns(core.presence(&ch("room:1")).await.unwrap()),
        ["c1", "c2"]
    );
    drop(a);
    assert_eq!(
        conns(core.presence(&ch("room:1")).await.unwrap()),
        ["c1", "c2"]
    );
    drop(a2);
    drop(b);
    assert!(core.presence(&ch("room:1")).await.unwrap().is_empty());
    let mut seen = Vec::new();
    for _ in 0..4 {
        seen.push(match events.recv().await.unwrap() {
            PresenceEvent::Join(c, m) => format!("join {c} {}", m.conn),
            PresenceEvent::Leave(c, m) => format!("leave {c} {}", m.conn),
        });
    }
    assert_eq!(
        seen,
        [
            "join room:1 c1",
            "join room:1 c2",
            "leave room:1 c1",
            "leave room:1 c2"
        ]
    );
    assert!(events.try_recv().is_err(), "the lobby is not watched");
}

async fn resume_points_follow_the_cursor_across_channels(kind: &str) {
    let core = open(kind, Retention::default()).await;
    // a@1 b@1 a@2 b@2 c@1 (seq 1..5), then a subscription registered at seq 5 on all three with since = heads.
    for (c, n) in [("a", 1), ("b", 1), ("a", 2), ("b", 2), ("c", 1)] {
        core.publish(vec![ev(c, n, None)]).await.unwrap();
    }
    let entry = |c: &str, since, k| Entry {
        channel: c.into(),
        epoch: String::new(),
        since,
        seq: 5,
        k,
    };
    let record = SessionRecord {
        sid: "s".into(),
        next_k: 3,
        channels: vec![entry("a", 2, 0), entry("b", 2, 1), entry("c", 1, 2)],
        user: None,
    };
    // Live after registration: a@3 (seq 6), b@3 (seq 7), c@2 (seq 8).
    for (c, n) in [("a", 3), ("b", 3), ("c", 2)] {
        core.publish(vec![ev(c, n, None)]).await.unwrap();
    }
    let info_b = core.channel(&ch("b")).await.unwrap().unwrap();
    // The client saw b@3 (seq 7): it has a@3, b@3, not c@2.
    let cursor = Cursor::Live {
        seq: 7,
        channel_id: info_b.id,
        offset: 3,
    };
    let after = async |cur| {
        session::resume_points(&**core, &record, cur)
            .await
            .unwrap()
            .into_iter()
            .map(|r| (r.channel.to_string(), r.after, r.gap.is_some()))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        after(Some(cursor)).await,
        vec![
            ("a".into(), 3, false),
            ("b".into(), 3, false),
            ("c".into(), 1, false)
        ]
    );
    // No cursor: nothing received since registration.
    assert_eq!(
        after(None).await,
        vec![
            ("a".into(), 2, false),
            ("b".into(), 2, false),
            ("c".into(), 1, false)
        ]
    );
    // A replay cursor of entry k=1 (b) at offset 1: a (k=0) was fully replayed, c (k=2) not at all.
    let replay = Cursor::Replay {
        seq: 5,
        k: 1,
        offset: 1,
    };
    assert_eq!(
        after(Some(replay)).await,
        vec![
            ("a".into(), 2, false),
            ("b".into(), 1, false),
            ("c".into(), 1, false)
        ]
    );
}

async fn resume_reports_a_gap_when_history_was_trimmed(kind: &str) {
    let core = open(kind, keep(3)).await;
    core.publish(vec![ev("a", 1, None)]).await.unwrap();
    let record = SessionRecord {
        sid: "s".into(),
        next_k: 1,
        channels: vec![Entry {
            channel: "a".into(),
            epoch: String::new(),
            since: 1,
            seq: 1,
            k: 0,
        }],
        user: None,
    };
    for n in 2..=10 {
        core.publish(vec![ev("a", n, None)]).await.unwrap();
    }
    let info = core.channel(&ch("a")).await.unwrap().unwrap();
    let cursor = Cursor::Live {
        seq: 3,
        channel_id: info.id,
        offset: 3,
    };
    let r = session::resume_points(&**core, &record, Some(cursor))
        .await
        .unwrap();
    let gap = r[0].gap.clone().unwrap();
    assert_eq!(
        (gap.reason, gap.from, gap.to),
        (GapReason::HistoryTrimmed, Some(4), Some(7))
    );
    assert_eq!(r[0].after, 7);
}

/// Records what a feed sends: gap notices as `gap from..to`, replayed events as their offsets.
struct Wire(Mutex<Vec<String>>);
impl herald::binding::feed::Outlet for Wire {
    const TRANSPORT: herald::registry::Transport = herald::registry::Transport::WebSocket;
    fn live(&self, e: &Arc<SharedEvent>) -> Result<(), herald::binding::feed::Gone> {
        self.0.lock().push(format!("live {}", e.event.offset));
        Ok(())
    }
    fn replayed(
        &self,
        e: &herald::core::event::Event,
        _: &herald::binding::feed::Registered,
    ) -> Result<(), herald::binding::feed::Gone> {
        self.0.lock().push(format!("{}", e.offset));
        Ok(())
    }
    fn gap(&self, g: &Gap) -> Result<(), herald::binding::feed::Gone> {
        self.0.lock().push(format!("gap {:?}..{:?}", g.from, g.to));
        Ok(())
    }
    fn status(&self, _: &engine::Health) -> Result<(), herald::binding::feed::Gone> {
        Ok(())
    }
    fn overflow(&self) {}
    fn fail(&self) {}
    async fn room(&self) {}
}

async fn a_hole_after_a_known_loss_is_announced_too(kind: &str) {
    use herald::binding::feed::{Feed, Want};
    let core = open(kind, keep(4)).await;
    for n in 1..=9 {
        core.publish(vec![ev("a", n, None)]).await.unwrap();
    }
    // A resume that knew offsets 1..2 were lost, while retention has since trimmed through 5.
    let feed = Feed::new(
        core.engine.clone(),
        Wire(Mutex::new(vec![])),
        1 << 20,
        Arc::new(feed_member("f1")),
    );
    let known = Gap {
        channel: ch("a"),
        reason: GapReason::HistoryTrimmed,
        epoch: "e".into(),
        from: Some(1),
        to: Some(2),
    };
    let regs = feed
        .begin(vec![Want {
            channel: ch("a"),
            after: Some(2),
            epoch: None,
            gap: Some(known),
        }])
        .await
        .unwrap();
    feed.complete(&regs).await.unwrap();
    assert_eq!(
        *feed.outlet.0.lock(),
        [
            "gap Some(1)..Some(2)",
            "gap Some(3)..Some(5)",
            "6",
            "7",
            "8",
            "9"
        ]
    );
    feed.detach();
}

/// A connection's member as the bindings build it (from its registry entry).
fn feed_member(conn: &str) -> Member {
    Member {
        conn: conn.into(),
        user: Some("u1".into()),
        roles: vec!["reader".into()],
        transport: "sse",
        connected_at: 7,
    }
}

async fn a_feed_is_present_on_the_channels_it_holds(kind: &str) {
    use herald::binding::feed::{Feed, Want};
    let core = open(kind, Retention::default()).await;
    let mut events = core.presence_events(Pattern::new("*"));
    let feed = Feed::new(
        core.engine.clone(),
        Wire(Mutex::new(vec![])),
        1 << 20,
        Arc::new(feed_member("f1")),
    );
    let wants = |names: &[&str]| names.iter().map(|n| Want::new_events(ch(n))).collect();
    let regs = feed.begin(wants(&["a", "b"])).await.unwrap();
    feed.complete(&regs).await.unwrap();
    assert_eq!(core.presence(&ch("a")).await.unwrap(), [feed_member("f1")]);
    // Subscribing again to a channel it holds keeps one presence, which leaves with the subscription.
    let regs = feed.begin(wants(&["a"])).await.unwrap();
    feed.complete(&regs).await.unwrap();
    feed.unsubscribe(&ch("a"));
    assert!(core.presence(&ch("a")).await.unwrap().is_empty());
    assert_eq!(core.presence(&ch("b")).await.unwrap(), [feed_member("f1")]);
    feed.detach();
    assert!(core.presence(&ch("b")).await.unwrap().is_empty());
    let mut seen = Vec::new();
    for _ in 0..4 {
        seen.push(match events.recv().await.unwrap() {
            PresenceEvent::Join(c, m) => format!("join {c} {}", m.conn),
            PresenceEvent::Leave(c, m) => format!("leave {c} {}", m.conn),
        });
    }
    assert_eq!(seen, ["join a f1", "join b f1", "leave a f1", "leave b f1"]);
    assert!(events.try_recv().is_err(), "no other notification");
}

async fn shutdown_refuses_later_publishes(kind: &str) {
    let core = open(kind, Retention::default()).await;
    core.publish(vec![ev("a", 1, None)]).await.unwrap();
    core.shutdown().await;
    assert!(matches!(
        core.publish(vec![ev("a", 2, None)]).await,
        Err(engine::EngineError::Closed)
    ));
}

// Redis only: what a client sees when the server is gone.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_publish_fails_unavailable_when_the_server_is_gone() {
    let core = open_on("redis", Retention::default(), Some(RedisServer::private())).await;
    core.publish(vec![ev("a", 1, None)]).await.unwrap();
    core.redis.as_ref().unwrap().stop();
    let r = tokio::time::timeout(
        Duration::from_secs(30),
        core.publish(vec![ev("a", 2, None)]),
    )
    .await
    .expect("a publish to a stopped Redis fails instead of hanging");
    assert!(
        matches!(r, Err(engine::EngineError::Unavailable(_))),
        "got {r:?}"
    );
    assert!(matches!(
        core.history(&ch("a"), 0, 10).await,
        Err(engine::EngineError::Unavailable(_))
    ));
}

async fn an_engine_that_answers_is_healthy(kind: &str) {
    let core = open(kind, Retention::default()).await;
    core.publish(vec![ev("a", 1, None)]).await.unwrap();
    assert_eq!(*core.health().borrow(), engine::Health::Ok);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_ping_answers_until_the_server_is_gone() {
    let core = open_on("redis", Retention::default(), Some(RedisServer::private())).await;
    core.ping().await.unwrap();
    let mut health = core.health();
    core.redis.as_ref().unwrap().stop();
    tokio::time::timeout(
        Duration::from_secs(30),
        health.wait_for(|h| matches!(h, engine::Health::Unavailable { .. })),
    )
    .await
    .expect("the engine reports the server gone")
    .unwrap();
    let r = tokio::time::timeout(Duration::from_secs(30), core.ping())
        .await
        .expect("a ping of a stopped Redis fails instead of hanging");
    assert!(
        matches!(r, Err(engine::EngineError::Unavailable(_))),
        "got {r:?}"
    );
}

// SQLite only: what survives a reopen.

#[tokio::test]
async fn sqlite_offsets_epochs_state_and_sessions_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let opts = || herald::core::sqlite_options(dir.path().into());
    let epoch;
    {
        let core = engine::open(opts()).await.unwrap();
        core.declare_state(Pattern::new("st"), Snapshot::Each);
        for n in 0..12 {
            core.publish(vec![ev("long", n, None)]).await.unwrap();
        }
        core.publish(vec![set("st", "k", "7")]).await.unwrap();
        core.put_session("p", "{}".into()).await.unwrap();
        epoch = core.channel(&ch("long")).await.unwrap().unwrap().epoch;
        core.shutdown().await;
    }
    let core = engine::open(opts()).await.unwrap();
    let r = core.publish(vec![ev("long", 99, None)]).await.unwrap();
    assert_eq!((r[0].offset, &r[0].epoch), (13, &epoch));
    let st = core.state_of(&ch("st")).await.unwrap().unwrap();
    assert_eq!(st.get("k").map(|e| e.value.get()), Some("7"));
    assert_eq!(core.session("p").await.unwrap().as_deref(), Some("{}"));
}

/// Opens a SQLite engine in `dir` with `durability`, publishes one event on `c`, and stops — cleanly or as a crash
/// (the engine dropped without its shutdown); returns the channel's epoch.
async fn sqlite_run(
    dir: &std::path::Path,
    durability: engine::sqlite::Durability,
    clean: bool,
) -> Arc<str> {
    let mut opts = herald::core::sqlite_options(dir.into());
    opts.kind = EngineKind::Sqlite {
        data_dir: dir.into(),
        durability,
    };
    let core = engine::open(opts).await.unwrap();
    let r = core.publish(vec![ev("c", 1, None)]).await.unwrap();
    if clean {
        core.shutdown().await;
    }
    r[0].epoch.clone()
}

/// Makes the database say its last run was on another boot of the machine (a power loss or kernel crash since).
fn another_boot(dir: &std::path::Path) {
    let db = rusqlite::Connection::open(dir.join("herald.db")).unwrap();
    db.busy_timeout(Duration::from_secs(5)).unwrap();
    let changed = db
        .execute(
            "UPDATE run SET value = 'another-boot' WHERE key = 'boot_id'",
            [],
        )
        .unwrap();
    assert_eq!(changed, 1);
}

#[tokio::test]
async fn sqlite_normal_after_a_crash_on_an_earlier_boot_moves_channels_to_a_new_epoch() {
    use engine::sqlite::Durability::Normal;
    let dir = tempfile::tempdir().unwrap();
    let before = sqlite_run(dir.path(), Normal, false).await;
    another_boot(dir.path());
    let after = sqlite_run(dir.path(), Normal, true).await;
    assert_ne!(
        after, before,
        "commits not checkpointed may be gone: their offsets must not be reused in the epoch"
    );
}

#[tokio::test]
async fn sqlite_keeps_epochs_after_a_process_crash_a_clean_stop_or_a_crash_under_full() {
    use engine::sqlite::Durability::{Full, Normal};
    // A process crash on the same boot: the OS still had every commit.
    let dir = tempfile::tempdir().unwrap();
    let before = sqlite_run(dir.path(), Normal, false).await;
    assert_eq!(sqlite_run(dir.path(), Normal, true).await, before);
    // A clean stop, then a machine restart.
    another_boot(dir.path());
    assert_eq!(sqlite_run(dir.path(), Normal, false).await, before);
    // Under full every acknowledged commit was fsynced: a crash before a restart loses nothing.
    let dir = tempfile::tempdir().unwrap();
    let before = sqlite_run(dir.path(), Full, false).await;
    another_boot(dir.path());
    assert_eq!(sqlite_run(dir.path(), Full, true).await, before);
}

/// Polls `sid`'s owner until it is `None` (a release does not wait; an expiry is Redis's), within 10 s.
async fn until_unclaimed(core: &Under, sid: &str) {
    tokio::time::timeout(Duration::from_secs(10), async {
        while core.sid_owner(sid).await.unwrap().is_some() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the claim goes away");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_engineio_sessions_are_claimed_released_and_expire() {
    let core = open("redis", Retention::default()).await;
    let (s1, s2): (Arc<str>, Arc<str>) = ("sid1".into(), "sid2".into());
    assert_eq!(core.sid_owner("sid1").await.unwrap(), None);
    core.claim_sids(
        &[s1.clone(), s2.clone()],
        "http://a:1",
        Duration::from_secs(60),
    )
    .await
    .unwrap();
    assert_eq!(
        core.sid_owner("sid1").await.unwrap().as_deref(),
        Some("http://a:1")
    );
    assert_eq!(
        core.sid_owner("sid2").await.unwrap().as_deref(),
        Some("http://a:1")
    );
    core.release_sid("sid1");
    until_unclaimed(&core, "sid1").await;
    assert!(core.sid_owner("sid2").await.unwrap().is_some());
    // A claim not refreshed expires.
    core.claim_sids(&[s2], "http://a:1", Duration::from_millis(50))
        .await
        .unwrap();
    until_unclaimed(&core, "sid2").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_engines_record_no_session_owners() {
    for kind in ["sqlite", "memory"] {
        let core = open(kind, Retention::default()).await;
        core.claim_sids(&["sid1".into()], "http://a:1", Duration::from_secs(60))
            .await
            .unwrap();
        assert_eq!(core.sid_owner("sid1").await.unwrap(), None, "{kind}");
    }
}
