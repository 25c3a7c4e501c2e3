//! The engine: the one interface every producer publishes through and every binding subscribes through.
//!
//! # The contract
//! An implementation keeps, per channel, gapless offsets starting at 1 under an epoch that changes only when the
//! channel's history is lost or reset, and a bounded history (retention by count and age); it commits a publish
//! (a batch of events, possibly on several channels) atomically, answers a repeated idempotency id with the first
//! result, and keeps a state channel's latest value per key in the same commit as the event that sets it.
//! Every committed event also has a place in one **total commit order** (`seq`, increasing across all channels):
//! live events reach every subscriber in that order, and a subscription's [`Position`] says where in it the
//! subscription starts — everything at or before it is history, everything after arrives live, exactly once, and a
//! subscription registered after a publish was acknowledged starts after it. A publish is acknowledged on its commit;
//! live delivery may follow (the local engines fan out on a thread of their own, [`crate::core::dispatcher`]), and
//! [`Engine::delivered`] waits for it. The Socket.IO binding's single-cursor
//! resume relies on that order (the stock client echoes one offset for all of its channels), so the contract carries
//! it instead of per-channel cursors in every packet; a distributed engine provides it with one sequencer (Redis: an
//! `INCR` inside the publish script on the primary, and its pub/sub delivers on one connection in script order).
//! Sessions are opaque records stored durably before the engine acknowledges them; presence is who is on a channel
//! now (never durable); demand reports a channel's first subscriber arriving and its last leaving; a lease names work
//! one node of a cluster does at a time ([`lease`]).
//!
//! An engine also reports its **health** ([`Engine::health`]): [`Health::Unavailable`] while this node cannot reach
//! the storage behind it (publishes then fail with [`EngineError::Unavailable`] and live delivery waits), back to
//! [`Health::Ok`] once it can and its subscribers have been caught up on what was committed meanwhile. Subscribers
//! are not dropped for an outage: the bindings tell their clients of each change, and `/readyz` reports it. Local
//! engines are always healthy.
//!
//! # Implementations
//! [`sqlite`] (the default: a SQLite file, in-process fan-out), [`memory`] (nothing on disk) and [`redis`] (history,
//! state and sessions in a Redis 7 / Valkey server, fan-out through its pub/sub). All use the in-process
//! [`crate::core::hub`] for fan-out to this process's subscribers and [`crate::core::presence`] for this process's
//! presence; the
//! conformance suite in `tests/engine.rs` runs unchanged against each.

pub mod lease;
pub mod memory;
pub mod redis;
pub mod sqlite;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use serde::Serialize;
use tokio::sync::{mpsc, watch};

pub use lease::Lease;

use super::channel::{ChannelName, Pattern};
use super::event::{Event, NewEvent, PublishResult, SharedEvent};
use super::presence::{Member, PresenceEvent};
use super::retention::Retention;
use super::state::{Snapshot, Values};

/// Most presence notifications queued for one watcher of [`Engine::presence_events`].
pub const PRESENCE_EVENTS_QUEUE: usize = 1024;

/// Most events read from history per query.
pub const MAX_PAGE: usize = 1000;

/// One page of a replay: a catching-up subscriber holds at most this much history in memory at a time
/// (thousands of subscribers may be replaying at once).
pub const REPLAY_PAGE: ReadLimit = ReadLimit {
    events: 256,
    bytes: 256 << 10,
};

/// Engine failures, whatever the implementation.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The storage behind the engine failed or cannot be reached; the operation may succeed later.
    #[error("engine unavailable: {0}")]
    Unavailable(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The engine is shutting down.
    #[error("engine is shut down")]
    Closed,
    /// The request cannot be served as asked (the caller's mistake, not the engine's).
    #[error("invalid request: {0}")]
    Invalid(String),
}

impl EngineError {
    /// An `Unavailable` error from any cause, counted in [`super::stats::ENGINE_ERRORS`] (every engine raises its
    /// storage failures here).
    pub fn unavailable(e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        super::stats::ENGINE_ERRORS.inc();
        Self::Unavailable(e.into())
    }
}

/// Whether this node reaches the storage behind its engine, as [`Engine::health`] reports it. Serialises as the
/// status notice clients get: `{"engine":"ok"}` or `{"engine":"unavailable","since":"<RFC 3339>"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "engine", rename_all = "snake_case")]
pub enum Health {
    /// Reachable: publishes commit and live events flow.
    Ok,
    /// Unreachable since `since` (ms since the UNIX epoch): publishes fail, live delivery resumes (caught up from
    /// history) when it is back.
    Unavailable {
        /// When this node lost the storage.
        #[serde(serialize_with = "serialize_since")]
        since: i64,
    },
}

fn serialize_since<S: serde::Serializer>(ms: &i64, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&super::event::format_time(*ms))
}

/// A channel's position and bounds, as committed.
#[derive(Debug, Clone, Serialize)]
pub struct ChannelInfo {
    /// Channel name.
    pub channel: ChannelName,
    /// Current epoch.
    pub epoch: Arc<str>,
    /// Oldest offset still in history (`last_offset + 1` when history is empty).
    pub first_offset: u64,
    /// Last offset assigned.
    pub last_offset: u64,
    /// The channel's numeric id in the engine (stable for the channel's life).
    #[serde(skip)]
    pub id: u64,
    /// Highest commit sequence ever trimmed from this channel.
    #[serde(skip)]
    pub trimmed_seq: u64,
}

/// A bound on one read of events: at most `events` of them, and no more once `bytes` of payload were read
/// (the first event always counts, so a read makes progress).
#[derive(Debug, Clone, Copy)]
pub struct ReadLimit {
    /// Most events.
    pub events: usize,
    /// Payload bytes after which no further event is read.
    pub bytes: usize,
}

/// Which reads queue together: subscribers catching up queue behind each other, not in front of session loads,
/// history requests and other short reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lane {
    /// Replay pages.
    Replay,
    /// Everything else.
    Other,
}

/// What a replay found.
#[derive(Debug)]
pub struct Replay {
    /// The events, oldest first.
    pub events: Vec<Event>,
    /// The channel's oldest offset still in history when read: a replay starting before it lost events.
    pub first_offset: u64,
}

/// A page of one channel's history.
#[derive(Debug, serde::Serialize)]
pub struct HistoryPage {
    /// The channel's position.
    #[serde(flatten)]
    pub info: ChannelInfo,
    /// Events, oldest first.
    pub events: Vec<Event>,
}

/// Receives live events. Called with the fan-out lock held: must not block, must not call back into the engine.
pub trait Subscriber: Send + Sync {
    /// Takes one event of a channel this subscriber is on.
    fn deliver(&self, event: &Arc<SharedEvent>);

    /// Live delivery on `channel` missed events that history no longer holds (a distributed engine's outage
    /// outlasted retention, or its server lost its data): the subscriber must resume from its own cursor, which
    /// reports the gap. Same calling rules as [`Subscriber::deliver`]; local engines never call it.
    fn lost(&self, _channel: &ChannelName) {}
}

/// Identifies one subscriber (a connection's feed), for its registrations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SubscriberId(u64);

impl SubscriberId {
    /// A fresh id, unique in this process.
    pub fn next() -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        Self(NEXT.fetch_add(1, Ordering::Relaxed))
    }
}

/// Where a channel stood when a subscription was registered.
#[derive(Debug, Clone)]
pub struct Position {
    /// Commit sequence delivered so far: events with a higher `seq` arrive live.
    pub seq: u64,
    /// The channel's last delivered offset (0 when it has none).
    pub last_offset: u64,
    /// The channel's epoch (empty when the channel does not exist yet).
    pub epoch: Arc<str>,
    /// The channel's numeric id (0 when it does not exist yet).
    pub channel_id: u64,
    /// For a state channel: its values at this position and how to send them.
    pub state: Option<(Values, Snapshot)>,
}

/// A channel gained its first subscriber or lost its last one (what starts and stops a source's polling).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Demand {
    /// The channel.
    pub channel: ChannelName,
    /// True when it now has subscribers.
    pub active: bool,
}

/// Ends a registration; what a [`Subscription`] calls when dropped.
pub trait Unsubscribe: Send + Sync {
    /// Removes registration `id` from `channel`.
    fn unsubscribe(&self, channel: &ChannelName, id: SubscriberId);
}

/// One channel registration: live delivery to its subscriber stops when this is dropped.
pub struct Subscription {
    channel: ChannelName,
    id: SubscriberId,
    owner: Option<Arc<dyn Unsubscribe>>,
}

impl Subscription {
    /// A registration of `id` on `channel`, ended through `owner`.
    pub fn new(channel: ChannelName, id: SubscriberId, owner: Arc<dyn Unsubscribe>) -> Self {
        Self {
            channel,
            id,
            owner: Some(owner),
        }
    }

    /// Drops this handle without ending the registration: another handle of the same subscriber and channel
    /// owns it (registering twice keeps one registration).
    pub fn disarm(mut self) {
        self.owner = None;
    }

    /// The channel.
    pub fn channel(&self) -> &ChannelName {
        &self.channel
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        if let Some(owner) = self.owner.take() {
            owner.unsubscribe(&self.channel, self.id);
        }
    }
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription")
            .field("channel", &self.channel)
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

/// Ends a presence entry; what a [`PresenceGuard`] calls when dropped.
pub trait Leave: Send + Sync {
    /// Removes connection `conn` from `channel`'s presence.
    fn leave(&self, channel: &ChannelName, conn: &str);
}

/// One connection's presence on one channel: it leaves when this is dropped.
pub struct PresenceGuard {
    channel: ChannelName,
    conn: Arc<str>,
    owner: Arc<dyn Leave>,
}

impl PresenceGuard {
    /// The presence of `conn` on `channel`, ended through `owner`.
    pub fn new(channel: ChannelName, conn: Arc<str>, owner: Arc<dyn Leave>) -> Self {
        Self {
            channel,
            conn,
            owner,
        }
    }
}

impl Drop for PresenceGuard {
    fn drop(&mut self) {
        self.owner.leave(&self.channel, &self.conn);
    }
}

/// The `[engine]` section: which implementation runs.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EngineConfig {
    /// `sqlite` (the default), `memory` or `redis`.
    pub kind: EngineChoice,
    /// The Redis server for `kind = "redis"`: `redis://[:password@]host[:port][/db]`, or `rediss://` for TLS.
    pub url: Option<String>,
    /// Prefix of every Redis key and pub/sub channel, so several Herald clusters can share one Redis.
    pub prefix: String,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            kind: EngineChoice::default(),
            url: None,
            prefix: "herald".into(),
        }
    }
}

impl EngineConfig {
    /// Checks that the chosen engine has what it needs.
    pub fn validate(&self) -> Result<(), crate::config_error::InvalidConfig> {
        use crate::config_error::InvalidConfig;
        if self.kind == EngineChoice::Redis {
            match self.url.as_deref() {
                None => {
                    return Err(InvalidConfig(
                        "engine url is required with kind = \"redis\" (or set HERALD_ENGINE_URL)"
                            .into(),
                    ));
                }
                Some(url) if !(url.starts_with("redis://") || url.starts_with("rediss://")) => {
                    return Err(InvalidConfig(
                        "engine url must start with redis:// or rediss://".into(),
                    ));
                }
                Some(_) => {}
            }
            if self.prefix.is_empty() || self.prefix.contains(['{', '}']) {
                return Err(InvalidConfig(
                    "engine prefix must be non-empty and contain no braces".into(),
                ));
            }
        }
        Ok(())
    }
}

/// The implementations a configuration can name.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EngineChoice {
    /// A SQLite file in the data directory.
    #[default]
    Sqlite,
    /// Nothing on disk.
    Memory,
    /// A Redis server (`[engine] url`).
    Redis,
}

impl std::str::FromStr for EngineChoice {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "sqlite" => Ok(Self::Sqlite),
            "memory" => Ok(Self::Memory),
            "redis" => Ok(Self::Redis),
            other => Err(format!(
                "unknown engine {other:?} (sqlite, memory or redis)"
            )),
        }
    }
}

/// Which engine to run, and its settings.
#[derive(Debug, Clone)]
pub struct EngineOptions {
    /// The implementation.
    pub kind: EngineKind,
    /// History bounds.
    pub retention: Retention,
    /// Disconnected sessions older than this are forgotten.
    pub session_ttl: Duration,
}

/// The engine implementations.
#[derive(Debug, Clone)]
pub enum EngineKind {
    /// A SQLite file in `data_dir` (durable across restarts).
    Sqlite {
        /// Directory holding `herald.db`.
        data_dir: std::path::PathBuf,
        /// Fsync policy.
        durability: sqlite::Durability,
    },
    /// Everything in memory: lost when the process stops.
    Memory,
    /// A Redis server.
    Redis {
        /// `redis://` or `rediss://` URL (password and database in it).
        url: String,
        /// Key and pub/sub channel prefix.
        prefix: String,
    },
}

/// Opens the configured engine (connecting to its server, for Redis).
pub async fn open(opts: EngineOptions) -> Result<Arc<dyn Engine>, EngineError> {
    Ok(match opts.kind {
        EngineKind::Sqlite {
            data_dir,
            durability,
        } => sqlite::SqliteEngine::open(sqlite::Options {
            data_dir,
            durability,
            retention: opts.retention,
            session_ttl: opts.session_ttl,
        })?,
        EngineKind::Memory => memory::MemoryEngine::open(opts.retention, opts.session_ttl)?,
        EngineKind::Redis { url, prefix } => {
            redis::RedisEngine::open(redis::Options {
                url,
                prefix,
                retention: opts.retention,
                session_ttl: opts.session_ttl,
            })
            .await?
        }
    })
}

/// The engine interface (see the module docs for what every implementation guarantees).
#[async_trait]
pub trait Engine: Send + Sync + 'static {
    /// Publishes events atomically (all or none); returns one result per event, in order, once they are durable.
    async fn publish(&self, events: Vec<NewEvent>) -> Result<Vec<PublishResult>, EngineError>;

    /// [`Engine::publish`], counted under `origin` in [`super::stats`] (events by outcome, latency, failures).
    async fn publish_from(
        &self,
        origin: super::stats::Origin,
        events: Vec<NewEvent>,
    ) -> Result<Vec<PublishResult>, EngineError> {
        let started = std::time::Instant::now();
        let count = events.len();
        let result = self.publish(events).await;
        super::stats::record_publish(origin, count, started, &result);
        result
    }

    /// Registers `sub` (as `id`) on every channel in `channels` at one position, returned per channel in order with
    /// the handle that ends the registration. Registering `id` again on a channel it is on keeps one registration.
    async fn subscribe(
        &self,
        channels: &[ChannelName],
        id: SubscriberId,
        sub: Arc<dyn Subscriber>,
    ) -> Result<Vec<(Position, Subscription)>, EngineError>;

    /// Reports channels matching `pattern` gaining their first subscriber or losing their last, on every
    /// transport (what starts and stops a source's work); channels already subscribed are reported at once.
    fn demand(&self, pattern: Pattern) -> mpsc::UnboundedReceiver<Demand>;

    /// Declares channels matching `pattern` state channels: a new subscriber first gets `snapshot`.
    fn declare_state(&self, pattern: Pattern, snapshot: Snapshot);

    /// Whether `channel` is a declared state channel.
    fn is_state_channel(&self, channel: &ChannelName) -> bool;

    /// The current values of a state channel (without subscribing); `None` if it holds none.
    async fn state_of(&self, channel: &ChannelName) -> Result<Option<Values>, EngineError>;

    /// One channel's committed position, if it exists.
    async fn channel(&self, name: &ChannelName) -> Result<Option<ChannelInfo>, EngineError>;

    /// Every channel's committed position, by name.
    async fn channels(&self) -> Result<Vec<ChannelInfo>, EngineError>;

    /// The committed position of `channel` and its events with offset in `(after, upto]` (`upto` `None`: up to
    /// the position), oldest first, within `limit`; `None` if the channel does not exist. Position and events are
    /// read together, so they agree even while retention trims the channel.
    async fn range(
        &self,
        lane: Lane,
        channel: &ChannelName,
        after: u64,
        upto: Option<u64>,
        limit: ReadLimit,
    ) -> Result<Option<(ChannelInfo, Vec<Event>)>, EngineError>;

    /// Highest offset of channel `channel_id` among retained events committed at or before `seq`.
    async fn last_offset_at(&self, channel_id: u64, seq: u64) -> Result<Option<u64>, EngineError>;

    /// Durably stores a session record under `pid`, attached (it does not expire while attached).
    async fn put_session(&self, pid: &str, record: String) -> Result<(), EngineError>;

    /// Loads a session record.
    async fn session(&self, pid: &str) -> Result<Option<String>, EngineError>;

    /// Marks a session detached now (its expiry clock starts); does not wait.
    fn session_detached(&self, pid: &str);

    /// Forgets a session; does not wait.
    fn delete_session(&self, pid: &str);

    /// Records that this node, reachable at `owner`, holds the Engine.IO sessions `sids`, for `ttl` (calling again
    /// refreshes it). An in-process engine serves one node: there is nothing to record.
    async fn claim_sids(
        &self,
        _sids: &[Arc<str>],
        _owner: &str,
        _ttl: std::time::Duration,
    ) -> Result<(), EngineError> {
        Ok(())
    }

    /// Forgets this node's claim on `sid`; does not wait.
    fn release_sid(&self, _sid: &str) {}

    /// The address of the node holding Engine.IO session `sid`, if one claimed it.
    async fn sid_owner(&self, _sid: &str) -> Result<Option<String>, EngineError> {
        Ok(None)
    }

    /// Adds `member` to `channel`'s presence until the guard is dropped (one entry per connection and channel).
    async fn join(
        &self,
        channel: &ChannelName,
        member: Arc<Member>,
    ) -> Result<PresenceGuard, EngineError>;

    /// Who is on `channel` now, by connection id. (`member` is shared: a connection's one `Member` serves all its
    /// channels.)
    async fn presence(&self, channel: &ChannelName) -> Result<Vec<Member>, EngineError>;

    /// Join and leave notifications of channels matching `pattern`, from now on. A watcher more than
    /// [`PRESENCE_EVENTS_QUEUE`] notifications behind is dropped: its receiver ends, and it re-reads
    /// [`Engine::presence`] instead of the engine queueing without bound.
    fn presence_events(&self, pattern: Pattern) -> mpsc::Receiver<PresenceEvent>;

    /// Flushes and stops; later calls fail with [`EngineError::Closed`].
    async fn shutdown(&self);

    /// Returns once every event committed before the call has been handed to this process's subscribers (a
    /// publish is acknowledged on its commit; its fan-out follows in commit order). For graceful shutdown and tests.
    async fn delivered(&self) -> Result<(), EngineError>;

    /// Whether the storage behind the engine answers now (what `/readyz` asks besides [`Engine::health`]);
    /// in-process engines always do.
    async fn ping(&self) -> Result<(), EngineError> {
        Ok(())
    }

    /// How many channels and subscriptions this node's fan-out holds now (for `/metrics`).
    fn counts(&self) -> super::stats::Counts {
        super::stats::Counts::default()
    }

    /// The engine's health now and each change of it (one watch per engine, so a node's connections share it).
    /// In-process engines are always [`Health::Ok`]: their receiver never changes.
    fn health(&self) -> watch::Receiver<Health> {
        watch::channel(Health::Ok).1
    }

    /// Lease `name` for this holder for `ttl` (renewed while the guard is kept, released when it is dropped),
    /// or `None` if another holder has it; see [`lease`]. A single node grants every lease.
    async fn lease(&self, name: &str, ttl: Duration) -> Result<Option<Lease>, EngineError> {
        let _ = (name, ttl);
        Ok(Some(Lease::granted()))
    }

    /// Events of `channel` after offset `after`, at most `limit` (capped at [`MAX_PAGE`]); `None` if the channel
    /// does not exist.
    async fn history(
        &self,
        channel: &ChannelName,
        after: u64,
        limit: usize,
    ) -> Result<Option<HistoryPage>, EngineError> {
        let limit = ReadLimit {
            events: limit.min(MAX_PAGE),
            bytes: usize::MAX,
        };
        let page = self.range(Lane::Other, channel, after, None, limit).await?;
        Ok(page.map(|(info, events)| HistoryPage { info, events }))
    }

    /// The first events of `channel` in `(after, upto]` still in history, at most one [`REPLAY_PAGE`]; the caller
    /// continues after the last one it got.
    async fn replay(
        &self,
        channel: &ChannelName,
        after: u64,
        upto: u64,
    ) -> Result<Replay, EngineError> {
        let mut out = Replay {
            events: Vec::new(),
            first_offset: after + 1,
        };
        if upto <= after {
            return Ok(out);
        }
        // One read: a retention sweep between the position and the events would hide a gap.
        if let Some((info, events)) = self
            .range(Lane::Replay, channel, after, Some(upto), REPLAY_PAGE)
            .await?
        {
            out.first_offset = info.first_offset;
            out.events = events;
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(toml: &str) -> EngineConfig {
        toml::from_str(toml).unwrap()
    }

    #[test]
    fn a_redis_engine_needs_a_redis_url_and_a_plain_prefix() {
        let ok = parse("kind = \"redis\"\nurl = \"rediss://:pw@cache:6380/2\"\nprefix = \"blue\"");
        assert_eq!((ok.kind, ok.prefix.as_str()), (EngineChoice::Redis, "blue"));
        assert!(ok.validate().is_ok());
        assert_eq!(
            parse("kind = \"redis\"\nurl = \"redis://h\"").prefix,
            "herald"
        );
        let no_url = parse("kind = \"redis\"").validate().unwrap_err();
        assert!(no_url.0.contains("engine url"), "{no_url}");
        assert!(
            parse("kind = \"redis\"\nurl = \"http://h\"")
                .validate()
                .is_err()
        );
        assert!(
            parse("kind = \"redis\"\nurl = \"redis://h\"\nprefix = \"{x}\"")
                .validate()
                .is_err()
        );
        // Other engines ignore the Redis settings.
        assert!(parse("kind = \"sqlite\"").validate().is_ok());
        assert_eq!("redis".parse::<EngineChoice>(), Ok(EngineChoice::Redis));
    }
}
