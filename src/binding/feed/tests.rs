//! The feed's state machine against a fake outlet that records what it is sent, on the memory engine: live
//! delivery from the registered position, replays page by page under backpressure, held live events, gap
//! notices, state snapshots, overflow, a gone connection, unsubscribing, a failing engine and engine status
//! notices.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use serde_json::value::RawValue;
use tokio::sync::{mpsc, watch};

use super::*;
use crate::core::channel::Pattern;
use crate::core::engine::{
    ChannelInfo, Demand, Lane, PresenceGuard, REPLAY_PAGE, ReadLimit, memory::MemoryEngine,
};
use crate::core::event::{NewEvent, PublishResult};
use crate::core::presence::{Member, PresenceEvent};
use crate::core::retention::{Limits, Retention};
use crate::core::state::{Snapshot, StateChange, Values};

/// Longest a test waits for the feed to reach a state before failing (a guard against hanging, not a pause).
const PATIENCE: Duration = Duration::from_secs(10);

/// One delivered event as the outlet saw it.
#[derive(Debug, Clone, PartialEq)]
struct Ev {
    channel: String,
    offset: u64,
    name: String,
    data: String,
}

/// One call the feed made on the outlet (only accepted pushes are recorded; refused ones are counted).
#[derive(Debug, Clone, PartialEq)]
enum Call {
    Live(Ev),
    Replayed(Ev),
    Gap(Gap),
    Status(Health),
    Overflow,
    Fail,
}

/// What the fake connection holds and how it behaves.
struct Wire {
    calls: Vec<Call>,
    /// Replayed events queued since the test last drained the connection.
    queued: usize,
    /// `room` waits while `queued` is at least this.
    window: usize,
    /// `room` calls waiting now.
    waiting: usize,
    /// The connection is gone: pushes are refused and `room` resolves at once (as a closed outbox does).
    closed: bool,
    /// Pushes refused because the connection was gone.
    refused: usize,
}

/// An outlet that records every call and whose window and liveness the test controls.
struct Fake {
    wire: watch::Sender<Wire>,
}

impl Fake {
    fn new() -> Self {
        Self {
            wire: watch::Sender::new(Wire {
                calls: Vec::new(),
                queued: 0,
                window: usize::MAX,
                waiting: 0,
                closed: false,
                refused: 0,
            }),
        }
    }

    fn push(&self, call: Call) -> Result<(), Gone> {
        let mut sent = Ok(());
        self.wire.send_modify(|w| {
            if w.closed {
                w.refused += 1;
                sent = Err(Gone);
                return;
            }
            if matches!(call, Call::Replayed(_)) {
                w.queued += 1;
            }
            w.calls.push(call);
        });
        sent
    }

    fn calls(&self) -> Vec<Call> {
        self.wire.borrow().calls.clone()
    }

    fn refused(&self) -> usize {
        self.wire.borrow().refused
    }

    /// At most `n` replayed events wait for the socket before `room` holds the replay back.
    fn window(&self, n: usize) {
        self.wire.send_modify(|w| w.window = n);
    }

    /// The socket took everything queued.
    fn drain(&self) {
        self.wire.send_modify(|w| w.queued = 0);
    }

    /// The connection goes away.
    fn close(&self) {
        self.wire.send_modify(|w| w.closed = true);
    }

    /// Waits until the wire satisfies `what`.
    async fn until(&self, what: impl FnMut(&Wire) -> bool) {
        let mut rx = self.wire.subscribe();
        tokio::time::timeout(PATIENCE, rx.wait_for(what))
            .await
            .expect("the feed did not reach the awaited state")
            .expect("the outlet is alive");
    }

    /// Waits until the replay is held back by a full window (not merely still waking from the last one).
    async fn blocked(&self) {
        self.until(|w| !w.closed && w.queued >= w.window && w.waiting > 0)
            .await;
    }
}

fn seen(e: &Event) -> Ev {
    Ev {
        channel: e.channel.to_string(),
        offset: e.offset,
        name: e.name.clone(),
        data: e.data.get().to_owned(),
    }
}

impl Outlet for Fake {
    const TRANSPORT: crate::registry::Transport = crate::registry::Transport::WebSocket;
    fn live(&self, event: &Arc<SharedEvent>) -> Result<(), Gone> {
        self.push(Call::Live(seen(&event.event)))
    }

    fn replayed(&self, event: &Event, _: &Registered) -> Result<(), Gone> {
        self.push(Call::Replayed(seen(event)))
    }

    fn gap(&self, gap: &Gap) -> Result<(), Gone> {
        self.push(Call::Gap(gap.clone()))
    }

    fn status(&self, health: &Health) -> Result<(), Gone> {
        self.push(Call::Status(health.clone()))
    }

    fn overflow(&self) {
        self.wire.send_modify(|w| {
            w.calls.push(Call::Overflow);
            w.closed = true;
        });
    }

    fn fail(&self) {
        self.wire.send_modify(|w| {
            w.calls.push(Call::Fail);
            w.closed = true;
        });
    }

    async fn room(&self) {
        let open = |w: &Wire| w.closed || w.queued < w.window;
        let mut rx = self.wire.subscribe();
        let ready = open(&rx.borrow());
        if ready {
            return;
        }
        self.wire.send_modify(|w| w.waiting += 1);
        let _ = rx.wait_for(open).await;
        self.wire.send_modify(|w| w.waiting -= 1);
    }
}

/// The memory engine behind a probe that counts history reads and can be told to fail them (or subscriptions),
/// and whose health the test sets.
struct Probe {
    inner: Arc<dyn Engine>,
    ranges: AtomicUsize,
    fail_range: AtomicBool,
    fail_subscribe: AtomicBool,
    health: watch::Sender<Health>,
}

fn unavailable() -> EngineError {
    EngineError::unavailable("the test broke the engine")
}

#[async_trait]
impl Engine for Probe {
    async fn publish(&self, events: Vec<NewEvent>) -> Result<Vec<PublishResult>, EngineError> {
        // The feed's tests look at the wire right after publishing: wait for the fan-out.
        let results = self.inner.publish(events).await?;
        self.inner.delivered().await?;
        Ok(results)
    }

    async fn delivered(&self) -> Result<(), EngineError> {
        self.inner.delivered().await
    }

    async fn subscribe(
        &self,
        channels: &[ChannelName],
        id: SubscriberId,
        sub: Arc<dyn Subscriber>,
    ) -> Result<Vec<(Position, Subscription)>, EngineError> {
        if self.fail_subscribe.load(Ordering::SeqCst) {
            return Err(unavailable());
        }
        self.inner.subscribe(channels, id, sub).await
    }

    fn demand(&self, pattern: Pattern) -> mpsc::UnboundedReceiver<Demand> {
        self.inner.demand(pattern)
    }

    fn declare_state(&self, pattern: Pattern, snapshot: Snapshot) {
        self.inner.declare_state(pattern, snapshot);
    }

    fn is_state_channel(&self, channel: &ChannelName) -> bool {
        self.inner.is_state_channel(channel)
    }

    async fn state_of(&self, channel: &ChannelName) -> Result<Option<Values>, EngineError> {
        self.inner.state_of(channel).await
    }

    async fn channel(&self, name: &ChannelName) -> Result<Option<ChannelInfo>, EngineError> {
        self.inner.channel(name).await
    }

    async fn channels(&self) -> Result<Vec<ChannelInfo>, EngineError> {
        self.inner.channels().await
    }

    async fn range(
        &self,
        lane: Lane,
        channel: &ChannelName,
        after: u64,
        upto: Option<u64>,
        limit: ReadLimit,
    ) -> Result<Option<(ChannelInfo, Vec<Event>)>, EngineError> {
        self.ranges.fetch_add(1, Ordering::SeqCst);
        if self.fail_range.load(Ordering::SeqCst) {
            return Err(unavailable());
        }
        self.inner.range(lane, channel, after, upto, limit).await
    }

    async fn last_offset_at(&self, channel_id: u64, seq: u64) -> Result<Option<u64>, EngineError> {
        self.inner.last_offset_at(channel_id, seq).await
    }

    async fn put_session(&self, pid: &str, record: String) -> Result<(), EngineError> {
        self.inner.put_session(pid, record).await
    }

    async fn session(&self, pid: &str) -> Result<Option<String>, EngineError> {
        self.inner.session(pid).await
    }

    fn session_detached(&self, pid: &str) {
        self.inner.session_detached(pid);
    }

    fn delete_session(&self, pid: &str) {
        self.inner.delete_session(pid);
    }

    async fn join(
        &self,
        channel: &ChannelName,
        member: Arc<Member>,
    ) -> Result<PresenceGuard, EngineError> {
        self.inner.join(channel, member).await
    }

    async fn presence(&self, channel: &ChannelName) -> Result<Vec<Member>, EngineError> {
        self.inner.presence(channel).await
    }

    fn presence_events(&self, pattern: Pattern) -> mpsc::Receiver<PresenceEvent> {
        self.inner.presence_events(pattern)
    }

    async fn shutdown(&self) {
        self.inner.shutdown().await;
    }

    fn health(&self) -> watch::Receiver<Health> {
        self.health.subscribe()
    }
}

/// A memory engine keeping `max_events` per channel.
fn engine(max_events: u64) -> Arc<Probe> {
    let retention = Retention {
        defaults: Limits {
            max_events,
            max_age: Duration::from_secs(3600),
        },
        rules: vec![],
    };
    Arc::new(Probe {
        inner: MemoryEngine::open(retention, Duration::from_secs(3600)).unwrap(),
        ranges: AtomicUsize::new(0),
        fail_range: AtomicBool::new(false),
        fail_subscribe: AtomicBool::new(false),
        health: watch::Sender::new(Health::Ok),
    })
}

/// Most bytes held behind a replay in tests that do not test the bound.
const ROOMY: usize = 1 << 20;

fn feed(engine: &Arc<Probe>, max_held_bytes: usize) -> Arc<Feed<Fake>> {
    let engine: Arc<dyn Engine> = engine.clone();
    let member = crate::core::presence::Member {
        conn: "c1".into(),
        user: None,
        roles: vec![],
        transport: "websocket",
        connected_at: 0,
    };
    Feed::new(engine, Fake::new(), max_held_bytes, Arc::new(member))
}

fn ch(name: &str) -> ChannelName {
    ChannelName::new(name).unwrap()
}

fn raw(json: &str) -> Box<RawValue> {
    RawValue::from_string(json.to_owned()).unwrap()
}

/// The data of tick `n` (published as the channel's `n`-th event, so `n` is its offset).
fn tick_data(n: u64) -> String {
    format!("{{\"n\":{n}}}")
}

/// Publishes ticks `ns` to `channel` one by one, checking each lands at offset `n`.
async fn publish(engine: &Probe, channel: &str, ns: std::ops::RangeInclusive<u64>) {
    for n in ns {
        let event = NewEvent {
            channel: ch(channel),
            name: "tick".into(),
            data: raw(&tick_data(n)),
            id: None,
            state: None,
        };
        let r = engine.publish(vec![event]).await.unwrap();
        assert_eq!(r[0].offset, n, "ticks are published in offset order");
    }
}

/// Publishes a state change of `channel` (named `name`, its data the new value, or `{}` for a removal).
async fn change(engine: &Probe, channel: &str, name: &str, key: &str, value: Option<&str>) {
    let event = NewEvent {
        channel: ch(channel),
        name: name.into(),
        data: raw(value.unwrap_or("{}")),
        id: None,
        state: Some(match value {
            Some(v) => StateChange::Set {
                key: key.into(),
                value: raw(v),
            },
            None => StateChange::Remove { key: key.into() },
        }),
    };
    engine.publish(vec![event]).await.unwrap();
}

async fn epoch(engine: &Probe, channel: &str) -> String {
    engine
        .channel(&ch(channel))
        .await
        .unwrap()
        .unwrap()
        .epoch
        .to_string()
}

fn want(channel: &str, after: Option<u64>, epoch: Option<&str>) -> Want {
    Want {
        channel: ch(channel),
        after,
        epoch: epoch.map(str::to_owned),
        gap: None,
    }
}

fn tick(channel: &str, n: u64) -> Ev {
    Ev {
        channel: channel.into(),
        offset: n,
        name: "tick".into(),
        data: tick_data(n),
    }
}

fn live(channel: &str, ns: std::ops::RangeInclusive<u64>) -> Vec<Call> {
    ns.map(|n| Call::Live(tick(channel, n))).collect()
}

fn replayed(channel: &str, ns: std::ops::RangeInclusive<u64>) -> Vec<Call> {
    ns.map(|n| Call::Replayed(tick(channel, n))).collect()
}

fn trimmed(channel: &str, epoch: &str, from: u64, to: u64) -> Call {
    Call::Gap(Gap {
        channel: ch(channel),
        reason: GapReason::HistoryTrimmed,
        epoch: epoch.into(),
        from: Some(from),
        to: Some(to),
    })
}

fn epoch_changed(channel: &str, epoch: &str) -> Call {
    Call::Gap(Gap {
        channel: ch(channel),
        reason: GapReason::EpochChanged,
        epoch: epoch.into(),
        from: None,
        to: None,
    })
}

/// A state-channel snapshot event, or a delta, as the outlet sees it.
fn value(channel: &str, offset: u64, name: &str, data: &str) -> Ev {
    Ev {
        channel: channel.into(),
        offset,
        name: name.into(),
        data: data.into(),
    }
}

fn concat(parts: impl IntoIterator<Item = Vec<Call>>) -> Vec<Call> {
    parts.into_iter().flatten().collect()
}

/// Runs `complete` on a task of its own (as the bindings do), so the test can act while it waits for room.
fn completing(
    feed: &Arc<Feed<Fake>>,
    regs: Vec<Registered>,
) -> tokio::task::JoinHandle<Result<(), EngineError>> {
    let feed = feed.clone();
    tokio::spawn(async move { feed.complete(&regs).await })
}

async fn finished(
    task: tokio::task::JoinHandle<Result<(), EngineError>>,
) -> Result<(), EngineError> {
    tokio::time::timeout(PATIENCE, task)
        .await
        .expect("complete did not return")
        .expect("complete panicked")
}

async fn next_demand(rx: &mut mpsc::UnboundedReceiver<Demand>) -> Demand {
    tokio::time::timeout(PATIENCE, rx.recv())
        .await
        .expect("no demand change")
        .expect("demand watcher open")
}

#[tokio::test]
async fn without_a_cursor_only_events_after_the_position_arrive_live() {
    let engine = engine(1000);
    publish(&engine, "a", 1..=3).await;
    let feed = feed(&engine, ROOMY);
    let regs = feed
        .begin(vec![Want::new_events(ch("a")), Want::new_events(ch("new"))])
        .await
        .unwrap();
    assert_eq!(
        (regs[0].after, regs[0].position.last_offset),
        (3, 3),
        "nothing to replay: the client starts at the position"
    );
    assert_eq!(
        (regs[1].after, &*regs[1].position.epoch),
        (0, ""),
        "a channel without events"
    );
    assert_eq!((regs[0].k, regs[1].k), (0, 1));
    feed.complete(&regs).await.unwrap();
    assert_eq!(
        feed.outlet.calls(),
        [],
        "events before the position are not sent"
    );
    assert_eq!(engine.ranges.load(Ordering::SeqCst), 0, "no history read");
    publish(&engine, "a", 4..=5).await;
    publish(&engine, "new", 1..=1).await;
    // A publish is acknowledged after its fan-out: what it delivered is recorded already.
    assert_eq!(
        feed.outlet.calls(),
        concat([live("a", 4..=5), live("new", 1..=1)])
    );
    assert_eq!(feed.channels(), [ch("a"), ch("new")]);
}

#[tokio::test]
async fn a_resume_replays_the_rest_then_the_events_held_meanwhile() {
    let engine = engine(1000);
    publish(&engine, "a", 1..=10).await;
    let feed = feed(&engine, ROOMY);
    let epoch = epoch(&engine, "a").await;
    let regs = feed
        .begin(vec![want("a", Some(4), Some(&epoch))])
        .await
        .unwrap();
    assert_eq!((regs[0].after, regs[0].gap.as_ref()), (4, None));
    // Registered, not yet complete: live events wait behind the replay.
    publish(&engine, "a", 11..=12).await;
    assert_eq!(feed.outlet.calls(), []);
    feed.outlet.window(3);
    let task = completing(&feed, regs);
    feed.outlet.blocked().await;
    assert_eq!(feed.outlet.calls(), replayed("a", 5..=7));
    // Published while the replay waits for room: held too.
    publish(&engine, "a", 13..=14).await;
    assert_eq!(feed.outlet.calls(), replayed("a", 5..=7));
    feed.outlet.window(usize::MAX);
    finished(task).await.unwrap();
    publish(&engine, "a", 15..=15).await;
    assert_eq!(
        feed.outlet.calls(),
        concat([replayed("a", 5..=10), live("a", 11..=15)])
    );
}

#[tokio::test]
async fn a_cursor_past_the_position_replays_nothing() {
    let engine = engine(1000);
    publish(&engine, "a", 1..=3).await;
    let feed = feed(&engine, ROOMY);
    let regs = feed.begin(vec![want("a", Some(9), None)]).await.unwrap();
    assert_eq!(regs[0].after, 3);
    feed.complete(&regs).await.unwrap();
    publish(&engine, "a", 4..=4).await;
    assert_eq!(feed.outlet.calls(), live("a", 4..=4));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_during_concurrent_publishes_gets_every_event_once_in_order() {
    const TOTAL: u64 = 3000;
    let engine = engine(10_000);
    publish(&engine, "a", 1..=500).await;
    let (started, mut running) = mpsc::unbounded_channel();
    let publisher = {
        let engine = engine.clone();
        tokio::spawn(async move {
            for n in 501..=TOTAL {
                publish(&engine, "a", n..=n).await;
                if n == 600 {
                    let _ = started.send(());
                }
            }
        })
    };
    running.recv().await.unwrap();
    let feed = feed(&engine, ROOMY);
    let regs = feed.begin(vec![want("a", Some(100), None)]).await.unwrap();
    let at = regs[0].position.last_offset;
    assert!(at >= 600);
    feed.complete(&regs).await.unwrap();
    publisher.await.unwrap();
    let calls = feed.outlet.calls();
    assert_eq!(
        calls,
        concat([replayed("a", 101..=at), live("a", at + 1..=TOTAL)]),
        "registered at {at}"
    );
}

#[tokio::test]
async fn a_long_replay_reads_a_page_at_a_time_as_the_connection_makes_room() {
    const BACKLOG: u64 = 700;
    const WINDOW: u64 = 100;
    let page = REPLAY_PAGE.events as u64;
    assert!(BACKLOG > 2 * page, "the replay spans three pages");
    let engine = engine(1000);
    publish(&engine, "a", 1..=BACKLOG).await;
    let feed = feed(&engine, ROOMY);
    let regs = feed.begin(vec![want("a", Some(0), None)]).await.unwrap();
    feed.outlet.window(WINDOW as usize);
    let task = completing(&feed, regs);
    let mut next_live = BACKLOG + 1;
    for pause in 1..BACKLOG / WINDOW {
        feed.outlet.blocked().await;
        let sent = pause * WINDOW;
        assert_eq!(
            feed.outlet.calls(),
            replayed("a", 1..=sent),
            "stopped at {sent}"
        );
        assert_eq!(
            engine.ranges.load(Ordering::SeqCst) as u64,
            (sent - 1) / page + 1,
            "a page is read only when the previous one was sent"
        );
        // Live events published meanwhile wait behind the replay.
        publish(&engine, "a", next_live..=next_live + 1).await;
        next_live += 2;
        feed.outlet.drain();
    }
    finished(task).await.unwrap();
    assert_eq!(
        feed.outlet.calls(),
        concat([
            replayed("a", 1..=BACKLOG),
            live("a", BACKLOG + 1..=next_live - 1)
        ])
    );
    assert_eq!(
        engine.ranges.load(Ordering::SeqCst) as u64,
        BACKLOG.div_ceil(page)
    );
}

#[tokio::test]
async fn another_epoch_gets_a_gap_notice_then_all_history() {
    let engine = engine(5);
    publish(&engine, "a", 1..=8).await;
    let epoch = epoch(&engine, "a").await;
    let feed = feed(&engine, ROOMY);
    let regs = feed
        .begin(vec![want("a", Some(3), Some("old-epoch"))])
        .await
        .unwrap();
    assert_eq!(regs[0].after, 0, "offsets of another epoch mean nothing");
    feed.complete(&regs).await.unwrap();
    publish(&engine, "a", 9..=9).await;
    // The epoch notice stands for everything before what follows: no second notice for the trimmed 1..=3.
    assert_eq!(
        feed.outlet.calls(),
        concat([
            vec![epoch_changed("a", &epoch)],
            replayed("a", 4..=8),
            live("a", 9..=9)
        ])
    );
}

#[tokio::test]
async fn an_empty_epoch_continues_the_channel_unless_the_client_had_events_it_lost() {
    let engine = engine(1000);
    publish(&engine, "a", 1..=4).await;
    let first = feed(&engine, ROOMY);
    // The client saw the channel before it had events; a channel that has none yet, from nothing.
    let regs = first
        .begin(vec![
            want("a", Some(2), Some("")),
            want("b", Some(0), Some("e1")),
        ])
        .await
        .unwrap();
    assert!(regs.iter().all(|r| r.gap.is_none()));
    assert_eq!((regs[0].after, regs[1].after), (2, 0));
    first.complete(&regs).await.unwrap();
    assert_eq!(first.outlet.calls(), replayed("a", 3..=4));
    // A client that had offset 2 of a channel that now has no events (the engine lost it) is told: the next
    // events will reuse offsets 1 and 2.
    let lost = feed(&engine, ROOMY);
    let regs = lost
        .begin(vec![want("c", Some(2), Some("e1"))])
        .await
        .unwrap();
    assert_eq!(
        regs[0].gap.as_ref().map(|g| g.reason),
        Some(GapReason::EpochChanged)
    );
    assert_eq!(regs[0].after, 0);
}

#[tokio::test]
async fn trimmed_history_is_announced_with_the_lost_range() {
    let engine = engine(5);
    publish(&engine, "a", 1..=10).await;
    let epoch = epoch(&engine, "a").await;
    let feed = feed(&engine, ROOMY);
    let regs = feed
        .begin(vec![want("a", Some(2), Some(&epoch))])
        .await
        .unwrap();
    feed.complete(&regs).await.unwrap();
    assert_eq!(
        feed.outlet.calls(),
        concat([vec![trimmed("a", &epoch, 3, 5)], replayed("a", 6..=10)])
    );
}

#[tokio::test]
async fn a_known_loss_is_announced_before_the_hole_history_adds() {
    let engine = engine(5);
    publish(&engine, "a", 1..=10).await;
    let epoch = epoch(&engine, "a").await;
    let known = Gap {
        channel: ch("a"),
        reason: GapReason::HistoryTrimmed,
        epoch: epoch.as_str().into(),
        from: Some(1),
        to: Some(2),
    };
    let unknown = Gap {
        reason: GapReason::SessionUnknown,
        from: None,
        to: None,
        ..known.clone()
    };
    let (with_range, without) = (feed(&engine, ROOMY), feed(&engine, ROOMY));
    for (feed, gap) in [(&with_range, &known), (&without, &unknown)] {
        let mut w = want("a", Some(2), Some(&epoch));
        w.gap = Some(gap.clone());
        let regs = feed.begin(vec![w]).await.unwrap();
        feed.complete(&regs).await.unwrap();
    }
    assert_eq!(
        with_range.outlet.calls(),
        concat([
            vec![Call::Gap(known), trimmed("a", &epoch, 3, 5)],
            replayed("a", 6..=10)
        ]),
        "each notice names its own range"
    );
    assert_eq!(
        without.outlet.calls(),
        concat([vec![Call::Gap(unknown)], replayed("a", 6..=10)]),
        "a loss without a range stands for everything before what follows"
    );
}

#[tokio::test]
async fn a_hole_retention_makes_during_the_replay_is_announced_where_it_is() {
    const KEEP: u64 = 300;
    let page = REPLAY_PAGE.events as u64;
    let engine = engine(KEEP);
    publish(&engine, "a", 1..=KEEP).await;
    let epoch = epoch(&engine, "a").await;
    let feed = feed(&engine, ROOMY);
    let regs = feed.begin(vec![want("a", Some(0), None)]).await.unwrap();
    feed.outlet.window(page as usize);
    let task = completing(&feed, regs);
    feed.outlet.blocked().await;
    assert_eq!(feed.outlet.calls(), replayed("a", 1..=page));
    // While the slow subscriber holds its first page, retention trims past where its second starts.
    publish(&engine, "a", KEEP + 1..=580).await;
    feed.outlet.drain();
    finished(task).await.unwrap();
    assert_eq!(
        feed.outlet.calls(),
        concat([
            replayed("a", 1..=page),
            vec![trimmed("a", &epoch, page + 1, 280)],
            replayed("a", 281..=KEEP),
            live("a", KEEP + 1..=580),
        ])
    );
}

/// Publishes `b` (removed again), `a` and `c` to a state channel: its values are a=2 (set by `set`) and
/// c=5 (set by `changed`), its last offset 5.
async fn fill_state(engine: &Probe, channel: &str) {
    change(engine, channel, "set", "b", Some(r#"{"v":1}"#)).await;
    change(engine, channel, "set", "a", Some(r#"{"v":2}"#)).await;
    change(engine, channel, "set", "c", Some(r#"{"v":3}"#)).await;
    change(engine, channel, "unset", "b", None).await;
    change(engine, channel, "changed", "c", Some(r#"{"v":5}"#)).await;
}

#[tokio::test]
async fn a_state_channel_sends_its_snapshot_at_the_position_then_deltas() {
    let engine = engine(1000);
    engine.declare_state(Pattern::new("each:*"), Snapshot::Each);
    engine.declare_state(
        Pattern::new("bulk:*"),
        Snapshot::Bulk {
            event: "all".into(),
        },
    );
    fill_state(&engine, "each:x").await;
    fill_state(&engine, "bulk:x").await;
    let feed = feed(&engine, ROOMY);
    let regs = feed
        .begin(vec![
            Want::new_events(ch("each:x")),
            want("bulk:x", Some(0), None),
            Want::new_events(ch("bulk:empty")),
        ])
        .await
        .unwrap();
    assert!(regs.iter().all(|r| r.fresh && r.after == 0));
    // Deltas committed after the position follow the snapshot; they are not in it.
    change(&engine, "each:x", "set", "d", Some(r#"{"v":6}"#)).await;
    change(&engine, "bulk:x", "set", "a", Some(r#"{"v":7}"#)).await;
    feed.complete(&regs).await.unwrap();
    change(&engine, "each:x", "unset", "a", None).await;
    assert_eq!(
        feed.outlet.calls(),
        [
            // By key; each value named like the event that set it; only the last carries the position.
            Call::Replayed(value("each:x", 0, "set", r#"{"v":2}"#)),
            Call::Replayed(value("each:x", 5, "changed", r#"{"v":5}"#)),
            Call::Replayed(value("bulk:x", 5, "all", r#"[{"v":2},{"v":5}]"#)),
            Call::Replayed(value("bulk:empty", 0, "all", "[]")),
            Call::Live(value("each:x", 6, "set", r#"{"v":6}"#)),
            Call::Live(value("bulk:x", 6, "set", r#"{"v":7}"#)),
            Call::Live(value("each:x", 7, "unset", "{}")),
        ]
    );
    assert_eq!(
        engine.ranges.load(Ordering::SeqCst),
        0,
        "a snapshot reads no history"
    );
}

#[tokio::test]
async fn a_state_channel_resumed_within_history_replays_instead() {
    let engine = engine(1000);
    engine.declare_state(Pattern::new("s:*"), Snapshot::Each);
    fill_state(&engine, "s:x").await;
    let epoch = epoch(&engine, "s:x").await;
    let feed = feed(&engine, ROOMY);
    let regs = feed
        .begin(vec![want("s:x", Some(3), Some(&epoch))])
        .await
        .unwrap();
    assert!(!regs[0].fresh);
    feed.complete(&regs).await.unwrap();
    assert_eq!(
        feed.outlet.calls(),
        [
            Call::Replayed(value("s:x", 4, "unset", "{}")),
            Call::Replayed(value("s:x", 5, "changed", r#"{"v":5}"#)),
        ]
    );
}

#[tokio::test]
async fn a_state_channel_that_lost_events_gets_the_notice_then_its_snapshot() {
    let engine = engine(3);
    engine.declare_state(Pattern::new("s:*"), Snapshot::Each);
    fill_state(&engine, "s:x").await;
    let epoch = epoch(&engine, "s:x").await;
    let snapshot = [
        Call::Replayed(value("s:x", 0, "set", r#"{"v":2}"#)),
        Call::Replayed(value("s:x", 5, "changed", r#"{"v":5}"#)),
    ];
    let (trim, reset) = (feed(&engine, ROOMY), feed(&engine, ROOMY));
    // History keeps 3..=5: a client at 1 lost 2.
    let regs = trim
        .begin(vec![want("s:x", Some(1), Some(&epoch))])
        .await
        .unwrap();
    trim.complete(&regs).await.unwrap();
    let regs = reset
        .begin(vec![want("s:x", Some(4), Some("old-epoch"))])
        .await
        .unwrap();
    reset.complete(&regs).await.unwrap();
    assert_eq!(
        trim.outlet.calls(),
        concat([vec![trimmed("s:x", &epoch, 2, 2)], snapshot.to_vec()])
    );
    assert_eq!(
        reset.outlet.calls(),
        concat([vec![epoch_changed("s:x", &epoch)], snapshot.to_vec()])
    );
}

#[tokio::test]
async fn too_much_held_behind_a_replay_closes_the_connection_as_a_slow_consumer() {
    let engine = engine(1000);
    publish(&engine, "a", 1..=3).await;
    let feed = feed(&engine, 20);
    let regs = feed.begin(vec![want("a", Some(0), None)]).await.unwrap();
    // Each tick's data is 7 bytes: the third one held passes the bound.
    publish(&engine, "a", 4..=5).await;
    assert_eq!(feed.outlet.calls(), []);
    publish(&engine, "a", 6..=6).await;
    assert_eq!(feed.outlet.calls(), [Call::Overflow]);
    feed.complete(&regs).await.unwrap();
    publish(&engine, "a", 7..=7).await;
    assert_eq!(
        feed.outlet.calls(),
        [Call::Overflow],
        "nothing after the close"
    );
    assert_eq!(feed.outlet.refused(), 0, "nor tried");
}

#[tokio::test]
async fn a_state_channel_overflowing_before_its_snapshot_gets_none() {
    let engine = engine(1000);
    engine.declare_state(Pattern::new("s:*"), Snapshot::Each);
    fill_state(&engine, "s:x").await;
    let feed = feed(&engine, 20);
    let regs = feed.begin(vec![Want::new_events(ch("s:x"))]).await.unwrap();
    // Each delta's data is 7 bytes: the third one held passes the bound.
    for v in 6..=8 {
        let data = format!("{{\"v\":{v}}}");
        change(&engine, "s:x", "set", "a", Some(&data)).await;
    }
    feed.complete(&regs).await.unwrap();
    assert_eq!(feed.outlet.calls(), [Call::Overflow]);
    assert_eq!(feed.outlet.refused(), 0, "no snapshot is tried");
}

#[tokio::test]
async fn a_slow_consumer_overflowing_mid_replay_gets_nothing_more() {
    let engine = engine(1000);
    publish(&engine, "a", 1..=5).await;
    let feed = feed(&engine, 20);
    let regs = feed.begin(vec![want("a", Some(0), None)]).await.unwrap();
    feed.outlet.window(2);
    let task = completing(&feed, regs);
    feed.outlet.blocked().await;
    publish(&engine, "a", 6..=8).await;
    finished(task).await.unwrap();
    assert_eq!(
        feed.outlet.calls(),
        concat([replayed("a", 1..=2), vec![Call::Overflow]])
    );
    assert_eq!(feed.outlet.refused(), 0, "the replay stops at the close");
}

#[tokio::test]
async fn a_gone_connection_is_not_sent_to_again() {
    let engine = engine(1000);
    let feed = feed(&engine, ROOMY);
    let regs = feed.begin(vec![Want::new_events(ch("a"))]).await.unwrap();
    feed.complete(&regs).await.unwrap();
    publish(&engine, "a", 1..=1).await;
    feed.outlet.close();
    publish(&engine, "a", 2..=3).await;
    assert_eq!(feed.outlet.calls(), live("a", 1..=1));
    assert_eq!(feed.outlet.refused(), 1, "the first refusal stops the feed");
}

#[tokio::test]
async fn a_connection_gone_mid_replay_ends_the_replay() {
    let engine = engine(1000);
    publish(&engine, "a", 1..=10).await;
    let feed = feed(&engine, ROOMY);
    let regs = feed.begin(vec![want("a", Some(0), None)]).await.unwrap();
    feed.outlet.window(4);
    let task = completing(&feed, regs);
    feed.outlet.blocked().await;
    publish(&engine, "a", 11..=11).await;
    feed.outlet.close();
    finished(task).await.unwrap();
    publish(&engine, "a", 12..=12).await;
    assert_eq!(feed.outlet.calls(), replayed("a", 1..=4));
    assert_eq!(
        feed.outlet.refused(),
        1,
        "neither the held nor later events are tried"
    );
}

#[tokio::test]
async fn a_connection_gone_before_its_gap_notice_gets_no_replay() {
    let engine = engine(5);
    publish(&engine, "a", 1..=10).await;
    let feed = feed(&engine, ROOMY);
    let regs = feed.begin(vec![want("a", Some(1), None)]).await.unwrap();
    feed.outlet.close();
    feed.complete(&regs).await.unwrap();
    assert_eq!(feed.outlet.calls(), []);
    assert_eq!(feed.outlet.refused(), 1);
}

#[tokio::test]
async fn unsubscribing_and_detaching_end_delivery_and_release_the_channels() {
    let engine = engine(1000);
    let mut demand = engine.demand(Pattern::new("*"));
    let feed = feed(&engine, ROOMY);
    let regs = feed
        .begin(vec![Want::new_events(ch("a")), Want::new_events(ch("b"))])
        .await
        .unwrap();
    for c in ["a", "b"] {
        assert_eq!(
            next_demand(&mut demand).await,
            Demand {
                channel: ch(c),
                active: true
            }
        );
    }
    feed.complete(&regs).await.unwrap();
    publish(&engine, "a", 1..=1).await;
    feed.unsubscribe(&ch("a"));
    assert_eq!(
        next_demand(&mut demand).await,
        Demand {
            channel: ch("a"),
            active: false
        },
        "the feed was a's last subscriber"
    );
    assert_eq!(feed.channels(), [ch("b")]);
    publish(&engine, "a", 2..=2).await;
    publish(&engine, "b", 1..=1).await;
    feed.detach();
    assert_eq!(
        next_demand(&mut demand).await,
        Demand {
            channel: ch("b"),
            active: false
        }
    );
    assert_eq!(feed.channels(), []);
    publish(&engine, "b", 2..=2).await;
    assert_eq!(
        feed.outlet.calls(),
        concat([live("a", 1..=1), live("b", 1..=1)])
    );
}

#[tokio::test]
async fn registering_a_channel_again_keeps_one_registration() {
    let engine = engine(1000);
    let mut demand = engine.demand(Pattern::new("*"));
    let feed = feed(&engine, ROOMY);
    feed.number_from(7);
    let first = feed.begin(vec![Want::new_events(ch("a"))]).await.unwrap();
    feed.complete(&first).await.unwrap();
    publish(&engine, "a", 1..=2).await;
    let again = feed.begin(vec![want("a", Some(1), None)]).await.unwrap();
    feed.complete(&again).await.unwrap();
    assert_eq!((first[0].k, again[0].k), (7, 8));
    assert_eq!(feed.channels(), [ch("a")]);
    publish(&engine, "a", 3..=3).await;
    assert_eq!(
        feed.outlet.calls(),
        concat([live("a", 1..=2), replayed("a", 2..=2), live("a", 3..=3)]),
        "one live copy of each event; the new registration replays from its cursor"
    );
    assert!(next_demand(&mut demand).await.active);
    feed.unsubscribe(&ch("a"));
    assert_eq!(
        next_demand(&mut demand).await,
        Demand {
            channel: ch("a"),
            active: false
        }
    );
}

#[tokio::test]
async fn detaching_mid_replay_sends_nothing_more() {
    let engine = engine(1000);
    publish(&engine, "a", 1..=10).await;
    let mut demand = engine.demand(Pattern::new("*"));
    let feed = feed(&engine, ROOMY);
    let regs = feed.begin(vec![want("a", Some(0), None)]).await.unwrap();
    assert!(next_demand(&mut demand).await.active);
    feed.outlet.window(3);
    let task = completing(&feed, regs);
    feed.outlet.blocked().await;
    publish(&engine, "a", 11..=11).await;
    feed.detach();
    assert_eq!(
        next_demand(&mut demand).await,
        Demand {
            channel: ch("a"),
            active: false
        }
    );
    feed.outlet.drain();
    finished(task).await.unwrap();
    publish(&engine, "a", 12..=12).await;
    assert_eq!(feed.outlet.calls(), replayed("a", 1..=3));
    assert_eq!(feed.outlet.refused(), 0);
}

#[tokio::test]
async fn aborting_a_registration_drops_it_and_what_it_held() {
    let engine = engine(1000);
    let mut demand = engine.demand(Pattern::new("*"));
    let feed = feed(&engine, ROOMY);
    let kept = feed.begin(vec![Want::new_events(ch("a"))]).await.unwrap();
    feed.complete(&kept).await.unwrap();
    assert!(next_demand(&mut demand).await.active);
    let regs = feed
        .begin(vec![Want::new_events(ch("b")), Want::new_events(ch("a"))])
        .await
        .unwrap();
    assert!(next_demand(&mut demand).await.active);
    // Held while the binding stores what it registered, which fails.
    publish(&engine, "a", 1..=1).await;
    publish(&engine, "b", 1..=1).await;
    feed.abort(&regs);
    assert_eq!(
        next_demand(&mut demand).await,
        Demand {
            channel: ch("b"),
            active: false
        }
    );
    publish(&engine, "a", 2..=2).await;
    publish(&engine, "b", 2..=2).await;
    assert_eq!(
        feed.outlet.calls(),
        live("a", 1..=2),
        "the registration held before stays; nothing of the aborted one is sent"
    );
    assert_eq!(feed.channels(), [ch("a")]);
}

#[tokio::test]
async fn a_failed_history_read_fails_the_connection() {
    let engine = engine(1000);
    publish(&engine, "a", 1..=5).await;
    let feed = feed(&engine, ROOMY);
    let regs = feed.begin(vec![want("a", Some(2), None)]).await.unwrap();
    publish(&engine, "a", 6..=6).await;
    engine.fail_range.store(true, Ordering::SeqCst);
    let result = feed.complete(&regs).await;
    assert!(
        matches!(result, Err(EngineError::Unavailable(_))),
        "{result:?}"
    );
    publish(&engine, "a", 7..=7).await;
    assert_eq!(
        feed.outlet.calls(),
        [Call::Fail],
        "no held or later events after a subscription whose start was lost"
    );
    assert_eq!(feed.outlet.refused(), 0);
}

#[tokio::test]
async fn a_history_read_failing_mid_replay_fails_the_connection() {
    let engine = engine(1000);
    let page = REPLAY_PAGE.events as u64;
    publish(&engine, "a", 1..=page + 10).await;
    let feed = feed(&engine, ROOMY);
    let regs = feed.begin(vec![want("a", Some(0), None)]).await.unwrap();
    feed.outlet.window(page as usize);
    let task = completing(&feed, regs);
    feed.outlet.blocked().await;
    engine.fail_range.store(true, Ordering::SeqCst);
    feed.outlet.drain();
    assert!(finished(task).await.is_err());
    assert_eq!(
        feed.outlet.calls(),
        concat([replayed("a", 1..=page), vec![Call::Fail]])
    );
}

#[tokio::test]
async fn a_failed_registration_leaves_nothing_registered_and_live_delivery_running() {
    let engine = engine(1000);
    let mut demand = engine.demand(Pattern::new("*"));
    let feed = feed(&engine, ROOMY);
    let regs = feed.begin(vec![Want::new_events(ch("a"))]).await.unwrap();
    feed.complete(&regs).await.unwrap();
    assert!(next_demand(&mut demand).await.active);
    engine.fail_subscribe.store(true, Ordering::SeqCst);
    let refused = feed.begin(vec![Want::new_events(ch("b"))]).await;
    assert!(matches!(refused, Err(EngineError::Unavailable(_))));
    assert_eq!(feed.channels(), [ch("a")]);
    publish(&engine, "a", 1..=1).await;
    publish(&engine, "b", 1..=1).await;
    assert_eq!(feed.outlet.calls(), live("a", 1..=1));
    assert!(demand.try_recv().is_err(), "b never had a subscriber");
}

#[tokio::test]
async fn a_feed_detached_before_it_registers_stays_unregistered_and_absent() {
    let engine = engine(1000);
    let mut demand = engine.demand(Pattern::new("*"));
    let feed = feed(&engine, ROOMY);
    feed.detach();
    let regs = feed
        .begin(vec![Want::new_events(ch("late"))])
        .await
        .unwrap();
    assert!(regs.is_empty());
    assert!(feed.channels().is_empty());
    assert!(
        engine.presence(&ch("late")).await.unwrap().is_empty(),
        "not present"
    );
    // The engine took the subscription and gave it back at once: first subscriber, then none.
    let first = next_demand(&mut demand).await;
    if first.active {
        assert!(
            !next_demand(&mut demand).await.active,
            "the registration was ended"
        );
    }
}

#[tokio::test]
async fn status_notices_go_out_once_per_change_and_only_once_opened() {
    let e = engine(100);
    let f = feed(&e, ROOMY);
    let down = Health::Unavailable { since: 7 };
    e.health.send_replace(down.clone());
    // Not opened yet (a Socket.IO connection before its CONNECT reply): nothing is sent.
    f.tell_status();
    assert_eq!(f.outlet.calls(), vec![]);
    // Opening during an outage tells it at once; asking again without a change sends nothing more.
    f.open_status();
    f.tell_status();
    assert_eq!(f.outlet.calls(), vec![Call::Status(down.clone())]);
    e.health.send_replace(Health::Ok);
    f.tell_status();
    f.tell_status();
    assert_eq!(
        f.outlet.calls(),
        vec![Call::Status(down), Call::Status(Health::Ok)]
    );
    // A connection opened while the engine is healthy is told nothing: a client assumes it is.
    let g = feed(&e, ROOMY);
    g.open_status();
    assert_eq!(g.outlet.calls(), vec![]);
    // A gone connection is not told.
    e.health.send_replace(Health::Unavailable { since: 9 });
    g.outlet.close();
    g.tell_status();
    assert_eq!(g.outlet.refused(), 1);
    g.tell_status();
    assert_eq!(g.outlet.refused(), 1, "a closed feed stops trying");
}
