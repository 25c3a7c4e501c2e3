//! The Redis engine: history, state, idempotency ids, sessions and the commit order in a Redis 7 / Valkey server,
//! fan-out through its pub/sub (`[engine] kind = "redis"`). Leases make sources run once per cluster ([`lease`]);
//! polling without sticky sessions uses `directory`; publishes go through [`instance`]'s verified connections;
//! presence is cluster-wide ([`presence`]: each node's members in Redis under a heartbeat).
//!
//! # Client
//! `redis` (redis-rs): the most used Rust client, maintained by the Redis organisation, with `EVALSHA` scripts that
//! reload themselves on `NOSCRIPT`, a reconnecting multiplexed connection ([`redis::aio::ConnectionManager`]) for
//! commands and a dedicated RESP2 pub/sub connection whose replies and messages share one ordered stream (what the
//! barrier below relies on). fred has more cluster machinery, which one sequencer key makes moot.
//!
//! # Keys
//! With `prefix = "herald"` every key starts with `{herald}`, so under Redis Cluster they all hash to one slot
//! (the sequencer makes publishes one serial stream anyway) and a second cluster with another prefix shares the
//! server without touching them:
//! - `{herald}:seq` — the total commit order (`INCR` per event); `{herald}:chanid` — channel id counter;
//!   `{herald}:time` — the last commit time (times never go backwards, whatever the server's clock does).
//! - `{herald}:m:<channel>` — hash: `id`, `epoch`, `first`, `last` (offsets), `tseq` (highest trimmed sequence),
//!   `age` (the channel's age limit in ms). `{herald}:ids` (name → id) and `{herald}:names` (id → name).
//! - `{herald}:h:<channel>` — stream of the retained events, entry id `<offset>-<seq>` (so `XRANGE` reads by
//!   offset and the sequence needs no lookup), fields `s` seq, `t` time, `i` id, `n` name, `d` data.
//! - `{herald}:s:<channel>` — hash: state key → `<event name> NUL <value>`.
//! - `{herald}:i:<channel id>:<idempotency id>` — `<epoch> <offset>`, expiring with the channel's age limit.
//! - `{herald}:expiry` — sorted set: channel → when its oldest event expires (what the age sweep reads).
//! - `{herald}:session:<pid>` — a Socket.IO session record; expires `session_ttl` after it is marked detached.
//! - `{herald}:sid:<sid>` — the address of the node holding an Engine.IO session (`directory`).
//! - `{herald}:instance` — the `run_id` of the Redis instance the last verified publish connection met ([`instance`]).
//! - Pub/sub channel `{herald}:c:<channel>` — each committed event, as `fanout::decode` reads it.
//! - `{herald}:presence:*` and pub/sub `{herald}:presence` — cluster-wide presence ([`presence`]).
//!
//! # Scripts
//! `scripts` holds one Lua script per operation. A publish batch is one script: per event the idempotency check,
//! `INCR` of the sequence, `HINCRBY` of the channel's offset (a channel without its metadata key gets a new epoch,
//! so offsets reused after data loss never match a client's old epoch), `XADD`, the state hash, and `PUBLISH`;
//! then trimming by count (exact `XTRIM MAXLEN`) and the expiry index. Age limits are applied by a sweep script
//! every [`SWEEP_EVERY`] on each node (idempotent). Reads that must agree (a channel's position with its events;
//! the sequence with the channels' positions and state) are single scripts too.
//!
//! # Order and the history/live split
//! Scripts run one at a time, so `seq` is the total commit order, and Redis delivers pub/sub messages to one
//! connection in the order they were published: this node receives its channels' events in `seq` order and feeds
//! them to the hub in that order. A subscription first `SUBSCRIBE`s (and waits for the confirmation), then
//! registers in the hub behind a gate that holds what arrives, then reads the sequence and the channels' positions
//! and state in one script, and opens the gate at that sequence: events at or below it are dropped, later ones
//! delivered in order. An event the hub dispatched before the registration was committed before the read, so it
//! is in the history the read saw; one committed after the read was published after the `SUBSCRIBE` took effect,
//! so it arrives, after the registration, and passes the gate. Each event is therefore in history or live,
//! exactly once. A channel is unsubscribed in Redis only when the hub has no
//! subscriber on it and no subscription is between its `SUBSCRIBE` and its registration (decided and sent under
//! one lock, so an `UNSUBSCRIBE` never overtakes a later `SUBSCRIBE`).
//!
//! A publish returns once the script has committed it and, if this process has subscribers on one of its
//! channels, once the pub/sub reader has dispatched it: a `PING` on the pub/sub connection is answered after
//! every message published before it, so when the reply is in, the reader need only drain what it has queued.
//!
//! # Durability
//! An acknowledged publish or session is in Redis's memory. With AOF (`appendonly yes`, `appendfsync everysec`
//! or `always`) it survives a Redis restart, losing at most the last second with `everysec`; without persistence
//! a restart loses everything, and each channel then starts again under a new epoch, so resuming clients get a
//! gap notice and the snapshot instead of reused offsets. A Redis that lost only its latest writes (`everysec`,
//! an RDB snapshot, a promoted replica) is caught by [`instance`]: publishes use connections verified against the
//! server instance, and a new instance that may lack writes moves every channel to a new epoch first. Leases (one node at a time per monitor and SQL channel)
//! are keys with an expiry, renewed by their holder ([`lease`]). Presence is never durable: each node mirrors its
//! connections into Redis and they leave with it ([`presence`]). State-channel declarations are configuration,
//! kept in the hub.
//!
//! # Faults
//! A command that cannot reach Redis fails with [`EngineError::Unavailable`] (after 5 s at most; the HTTP API
//! answers 503 `engine_unavailable`), and the command connection reconnects by itself on the next command. A
//! publish that fails so was not acknowledged; it may still have committed (the reply was lost), which a retry
//! with the same idempotency id answers. Nothing is acknowledged that is not committed: the reply of the script
//! is what a publish returns. The pub/sub connection reconnects with backoff, resubscribes and catches each local
//! channel up from history before live delivery resumes, exactly once; where history no longer covers the
//! outage (trimmed, or Redis lost its data), the subscribers are told to resume by their cursors, which report
//! the gap ([`fanout`] explains both). Otherwise connected clients stay connected throughout.
//!
//! The engine's [`Engine::health`] follows the pub/sub connection: unavailable from the moment it drops (a
//! server that went away closes both connections; the command connection fails on its next command), ok again
//! once it is back, has caught its subscribers up and the command connection answers a `PING`. `/readyz` also
//! `PING`s over the command connection.

mod directory;
mod fanout;
mod instance;
mod lease;
mod presence;
mod scripts;

pub use presence::{
    HEARTBEAT as PRESENCE_HEARTBEAT, MAX_NODE_ENTRIES as PRESENCE_MAX_NODE_ENTRIES,
    NODE_TTL as PRESENCE_NODE_TTL,
};

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::Mutex;
use redis::aio::ConnectionManager;
use redis::{AsyncCommands, RedisError};
use serde_json::value::RawValue;
use tokio::sync::{mpsc, oneshot, watch};

use super::{
    ChannelInfo, Demand, Engine, EngineError, Health, Lane, Position, PresenceGuard, ReadLimit,
    Subscriber, SubscriberId, Subscription,
};
use crate::core::channel::{ChannelName, Pattern};
use crate::core::event::{Event, NewEvent, PublishResult, SharedEvent, now_ms};
use crate::core::hub::Hub;
use crate::core::presence::{Member, PresenceEvent};
use crate::core::retention::Retention;
use crate::core::state::{self, StateChange, Table, Values};
use fanout::Fanout;
use scripts::*;

/// How often each node runs the age sweep.
pub const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// Most channels one sweep run trims (the next run continues).
const SWEEP_BATCH: u32 = 200;

/// How long a command may wait for its reply or a connection before the engine reports it unavailable.
const TIMEOUT: Duration = Duration::from_secs(5);

/// Longest expiry set in ms (idempotency ids, detached sessions): longer limits would overflow Redis's.
const MAX_TTL_MS: u128 = 100 * 365 * 24 * 3600 * 1000;

/// What the Redis engine needs.
#[derive(Debug, Clone)]
pub struct Options {
    /// `redis://` or `rediss://` URL.
    pub url: String,
    /// Key prefix (wrapped in braces as a hash tag).
    pub prefix: String,
    /// History bounds.
    pub retention: Retention,
    /// How long a detached session is kept.
    pub session_ttl: Duration,
}

/// A session write, applied in the order issued.
enum SessionOp {
    Put(String, String, oneshot::Sender<Result<(), EngineError>>),
    Detached(String),
    Delete(String),
    /// Answers once every earlier write is applied.
    Flush(oneshot::Sender<()>),
}

/// The engine on a Redis server.
pub struct RedisEngine {
    con: ConnectionManager,
    /// Publishes go through this connection, verified per server instance ([`instance`]).
    writer: instance::Writer,
    /// `{prefix}`.
    keys: String,
    hub: Arc<Hub>,
    presence: Arc<presence::ClusterPresence>,
    fanout: Arc<Fanout>,
    retention: Retention,
    sessions: mpsc::UnboundedSender<SessionOp>,
    closed: AtomicBool,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    leases: lease::Leases,
    /// Follows the pub/sub connection ([`follow_health`]).
    health: watch::Receiver<Health>,
}

/// Maps a client error: a server that cannot be reached (or is loading, read-only, out of memory) is
/// unavailable; a reply that contradicts the key layout means the prefix is shared with other data.
fn map_err(e: RedisError) -> EngineError {
    if e.code() == Some("WRONGTYPE") {
        EngineError::Invalid(format!(
            "redis keys under the engine prefix hold other data: {e}"
        ))
    } else {
        EngineError::unavailable(e)
    }
}

impl RedisEngine {
    /// Connects (commands and pub/sub) and starts the sweep, session and fan-out tasks.
    pub async fn open(opts: Options) -> Result<Arc<dyn Engine>, EngineError> {
        let client = redis::Client::open(opts.url.as_str())
            .map_err(|e| EngineError::Invalid(format!("engine url: {e}")))?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(TIMEOUT))
            .set_response_timeout(Some(TIMEOUT))
            .set_number_of_retries(2);
        let con = client
            .get_connection_manager_with_config(config)
            .await
            .map_err(map_err)?;
        let (sink, stream) = client.get_async_pubsub().await.map_err(map_err)?.split();
        let keys = format!("{{{}}}", opts.prefix);
        let hub = Arc::new(Hub::default());
        let (fanout, mut tasks) = Fanout::start(client.clone(), sink, stream, &keys, hub.clone());
        let (health_tx, health) = watch::channel(Health::Ok);
        tasks.push(tokio::spawn(follow_health(
            fanout.connected(),
            con.clone(),
            health_tx,
        )));
        let (sessions, ops) = mpsc::unbounded_channel();
        tasks.push(tokio::spawn(write_sessions(
            con.clone(),
            keys.clone(),
            opts.session_ttl,
            ops,
        )));
        tasks.push(tokio::spawn(sweep(con.clone(), keys.clone())));
        let node = format!("{:016x}", rand::random::<u64>());
        let leases = lease::Leases::new(&keys, &node);
        let (presence, presence_tasks) =
            presence::ClusterPresence::start(client.clone(), con.clone(), &keys, &node).await?;
        tasks.extend(presence_tasks);
        let writer = instance::Writer::new(&client, &keys)?;
        Ok(Arc::new(Self {
            con,
            writer,
            keys,
            hub,
            presence,
            fanout,
            retention: opts.retention,
            sessions,
            closed: AtomicBool::new(false),
            tasks: Mutex::new(tasks),
            leases,
            health,
        }))
    }

    fn open_con(&self) -> Result<ConnectionManager, EngineError> {
        if self.closed.load(Ordering::Acquire) {
            return Err(EngineError::Closed);
        }
        Ok(self.con.clone())
    }

    /// Reads the positions `channels` start at, with the commit sequence they share.
    async fn positions(&self, channels: &[ChannelName]) -> Result<Vec<Position>, EngineError> {
        let mut inv = POSITIONS_SCRIPT.prepare_invoke();
        inv.arg(&self.keys);
        for c in channels {
            inv.arg(c.as_str());
        }
        let (seq, rows): (u64, Vec<PositionRow>) = inv
            .invoke_async(&mut self.open_con()?)
            .await
            .map_err(map_err)?;
        channels
            .iter()
            .zip(rows)
            .map(|(name, (channel_id, epoch, last_offset, stored))| {
                let style = self.hub.snapshot_style(name);
                let state = if stored.is_empty() {
                    style.map(|s| (Values::default(), s))
                } else {
                    Some((values(stored)?, style.unwrap_or(state::Snapshot::Each)))
                };
                Ok(Position {
                    seq,
                    last_offset,
                    epoch: epoch.into(),
                    channel_id,
                    state,
                })
            })
            .collect()
    }
}

impl Drop for RedisEngine {
    fn drop(&mut self) {
        self.leases.shutdown();
        for t in self.tasks.lock().drain(..) {
            t.abort();
        }
    }
}

/// A state hash's entries as values ordered by key.
fn values(stored: Vec<(String, String)>) -> Result<Values, EngineError> {
    let mut table = Table::default();
    for (key, packed) in stored {
        let (name, value) = packed
            .rsplit_once('\0')
            .ok_or_else(|| EngineError::Invalid(format!("malformed state value of {key:?}")))?;
        let value = RawValue::from_string(value.to_owned())
            .map_err(|e| EngineError::Invalid(format!("state value of {key:?}: {e}")))?;
        table.load(state::Entry {
            key,
            name: name.to_owned(),
            value,
        });
    }
    Ok(table.values())
}

/// A subscriber's gate: registered in the hub before the position is read, it holds what arrives until the
/// position's sequence is known, then passes on only events after it (those at or before it are in the history
/// the position read).
struct Gate {
    inner: Arc<dyn Subscriber>,
    state: Mutex<GateState>,
}

enum GateState {
    Holding(Vec<Arc<SharedEvent>>),
    After(u64),
}

impl Gate {
    /// Opens the gate at `seq`, passing on what it held after it, in order.
    fn open(&self, seq: u64) {
        let mut state = self.state.lock();
        if let GateState::Holding(held) = std::mem::replace(&mut *state, GateState::After(seq)) {
            // Under the gate's lock, so a concurrent delivery waits and stays behind these.
            for e in held.iter().filter(|e| e.event.seq > seq) {
                self.inner.deliver(e);
            }
        }
    }
}

impl Subscriber for Gate {
    fn deliver(&self, event: &Arc<SharedEvent>) {
        match &mut *self.state.lock() {
            GateState::Holding(held) => held.push(event.clone()),
            GateState::After(seq) if event.event.seq > *seq => self.inner.deliver(event),
            GateState::After(_) => {}
        }
    }
    fn lost(&self, channel: &ChannelName) {
        self.inner.lost(channel);
    }
}

/// A channel's position and its history after `after` (through `upto`), as one script reads them.
async fn read_range(
    mut con: impl redis::aio::ConnectionLike + Send,
    keys: &str,
    channel: &ChannelName,
    after: u64,
    upto: Option<u64>,
    limit: ReadLimit,
) -> Result<Option<(ChannelInfo, Vec<Event>)>, EngineError> {
    let reply: Option<(MetaRow, Vec<EntryRow>)> = RANGE_SCRIPT
        .arg(keys)
        .arg(channel.as_str())
        .arg(after)
        .arg(upto.map(|u| u.to_string()).unwrap_or_default())
        .arg(limit.events)
        .invoke_async(&mut con)
        .await
        .map_err(map_err)?;
    let Some(((id, epoch, first_offset, last_offset, trimmed_seq), rows)) = reply else {
        return Ok(None);
    };
    let epoch: Arc<str> = epoch.into();
    let info = ChannelInfo {
        channel: channel.clone(),
        epoch: epoch.clone(),
        first_offset,
        last_offset,
        id,
        trimmed_seq,
    };
    let mut events = Vec::new();
    let mut bytes = 0;
    for (sid, seq, time, event_id, name, data) in rows {
        let offset = sid
            .split_once('-')
            .and_then(|(o, _)| o.parse().ok())
            .ok_or_else(|| EngineError::Invalid(format!("malformed history id {sid}")))?;
        bytes += data.len();
        let data = RawValue::from_string(data)
            .map_err(|e| EngineError::Invalid(format!("stored event data: {e}")))?;
        events.push(Event {
            channel: channel.clone(),
            offset,
            epoch: epoch.clone(),
            id: event_id,
            name,
            data,
            time,
            seq,
            channel_id: id,
            state: None,
        });
        if bytes >= limit.bytes {
            break;
        }
    }
    Ok(Some((info, events)))
}

/// Applies session writes one after another, so a later write is never overtaken by an earlier one.
async fn write_sessions(
    mut con: ConnectionManager,
    keys: String,
    ttl: Duration,
    mut ops: mpsc::UnboundedReceiver<SessionOp>,
) {
    let key = |pid: &str| format!("{keys}:session:{pid}");
    while let Some(op) = ops.recv().await {
        let done = match op {
            SessionOp::Put(pid, record, reply) => {
                // SET clears any expiry: an attached session does not expire.
                let r = con.set::<_, _, ()>(key(&pid), record).await;
                let _ = reply.send(r.map_err(map_err));
                Ok(())
            }
            SessionOp::Detached(pid) => {
                con.pexpire::<_, ()>(key(&pid), ttl.as_millis().min(MAX_TTL_MS) as i64)
                    .await
            }
            SessionOp::Delete(pid) => con.del::<_, ()>(key(&pid)).await,
            SessionOp::Flush(reply) => {
                let _ = reply.send(());
                Ok(())
            }
        };
        if let Err(e) = done {
            tracing::warn!(error = %e, "redis session write failed");
        }
    }
}

/// Keeps the engine's health in step with the pub/sub connection: down, live delivery has stopped; up again, it
/// has reconnected and caught its subscribers up — and the command connection answers a `PING` (it reconnects on
/// its first command after an outage: that one is this `PING`, not a client's publish or subscription). Repeats of
/// a state are not changes.
async fn follow_health(
    mut up: watch::Receiver<bool>,
    mut con: ConnectionManager,
    health: watch::Sender<Health>,
) {
    loop {
        let connected = *up.borrow_and_update();
        if connected && let Err(e) = redis::cmd("PING").query_async::<()>(&mut con).await {
            tracing::debug!(error = %e, "redis command connection not back yet");
            tokio::select! {
                () = tokio::time::sleep(fanout::RETRY_FIRST) => continue,
                changed = up.changed() => match changed {
                    Ok(()) => continue,
                    Err(_) => return,
                },
            }
        }
        health.send_if_modified(|h| match (connected, &*h) {
            (true, Health::Unavailable { .. }) => {
                *h = Health::Ok;
                true
            }
            (false, Health::Ok) => {
                *h = Health::Unavailable { since: now_ms() };
                true
            }
            _ => false,
        });
        if up.changed().await.is_err() {
            return;
        }
    }
}

/// Runs the age sweep every [`SWEEP_EVERY`].
async fn sweep(mut con: ConnectionManager, keys: String) {
    let mut tick = tokio::time::interval(SWEEP_EVERY);
    loop {
        tick.tick().await;
        let r: Result<u32, _> = SWEEP_SCRIPT
            .arg(&keys)
            .arg(SWEEP_BATCH)
            .invoke_async(&mut con)
            .await;
        if let Err(e) = r {
            tracing::debug!(error = %e, "redis age sweep failed");
        }
    }
}

/// One channel row of the channels script.
type ChannelRow = (String, u64, String, u64, u64, u64);

/// A channel's metadata in the range script: id, epoch, first, last, trimmed seq.
type MetaRow = (u64, String, u64, u64, u64);

/// One channel of the positions script: id, epoch, last offset, state hash.
type PositionRow = (u64, String, u64, Vec<(String, String)>);

/// One history entry of the range script: stream id, seq, time, id, name, data.
type EntryRow = (String, u64, i64, String, String, String);

#[async_trait]
impl Engine for RedisEngine {
    async fn publish(&self, events: Vec<NewEvent>) -> Result<Vec<PublishResult>, EngineError> {
        self.open_con()?;
        if events.is_empty() {
            return Ok(Vec::new());
        }
        let epoch = format!("{:08x}", rand::random::<u32>());
        let mut inv = PUBLISH_SCRIPT.prepare_invoke();
        inv.arg(&self.keys).arg(&epoch).arg(events.len());
        let mut ids = Vec::with_capacity(events.len());
        for ev in &events {
            let limits = self.retention.limits(ev.channel.as_str());
            let (id, own) = match &ev.id {
                Some(id) => (id.clone(), "1"),
                None => (format!("{:016x}", rand::random::<u64>()), "0"),
            };
            let (op, key, value) = match &ev.state {
                None => ("0", "", ""),
                Some(StateChange::Set { key, value }) => ("1", key.as_str(), value.get()),
                Some(StateChange::Remove { key }) => ("2", key.as_str(), ""),
            };
            inv.arg(ev.channel.as_str())
                .arg(&ev.name)
                .arg(ev.data.get())
                .arg(&id)
                .arg(own)
                .arg(op)
                .arg(key)
                .arg(value)
                .arg(limits.max_events)
                .arg(limits.max_age.as_millis().clamp(1, MAX_TTL_MS) as u64);
            ids.push(id);
        }
        let (generation, mut con) = self.writer.connection().await?;
        let rows: Vec<(u64, String, u8, u64, i64, u64)> = match inv.invoke_async(&mut con).await {
            Ok(rows) => rows,
            Err(e) => {
                self.writer.failed(generation, &e).await;
                return Err(map_err(e));
            }
        };
        if rows.len() != events.len() {
            return Err(EngineError::Invalid("publish script answered short".into()));
        }
        // Subscribers in this process have the events before the publish is acknowledged (as with the local
        // engines); a subscription registered later starts after them by its position.
        if events.iter().any(|e| self.hub.has_subscribers(&e.channel)) {
            self.fanout.barrier().await?;
        }
        Ok(events
            .into_iter()
            .zip(ids)
            .zip(rows)
            .map(|((ev, id), (offset, epoch, dup, ..))| PublishResult {
                channel: ev.channel,
                offset,
                epoch: epoch.into(),
                id,
                duplicate: dup == 1,
            })
            .collect())
    }

    async fn subscribe(
        &self,
        channels: &[ChannelName],
        id: SubscriberId,
        sub: Arc<dyn Subscriber>,
    ) -> Result<Vec<(Position, Subscription)>, EngineError> {
        self.open_con()?;
        if channels.is_empty() {
            return Ok(Vec::new());
        }
        // SUBSCRIBE, register, then read the position: an event dispatched before the registration was
        // committed before the read (in its history); one after it reaches the gate, which keeps only those
        // after the position.
        let drops = self.fanout.drops();
        let result = match self.fanout.listen(channels).await {
            Ok(()) => {
                let gate = Arc::new(Gate {
                    inner: sub,
                    state: Mutex::new(GateState::Holding(Vec::new())),
                });
                let gated: Arc<dyn Subscriber> = gate.clone();
                let handles = self.hub.subscribe_handles(channels, id, &gated);
                self.positions(channels).await.and_then(|positions| {
                    self.fanout.started(channels, &positions);
                    // A pub/sub reconnect between the SUBSCRIBE and the mark may have skipped this
                    // subscription's catch-up: refuse it (the caller retries) rather than start with a hole.
                    if self.fanout.drops() != drops {
                        return Err(EngineError::unavailable(
                            "redis pub/sub connection dropped during the subscription",
                        ));
                    }
                    gate.open(positions.first().map_or(0, |p| p.seq));
                    Ok(positions
                        .into_iter()
                        .zip(handles)
                        .map(|(pos, (_, handle))| (pos, handle))
                        .collect())
                })
            }
            Err(e) => Err(e),
        };
        self.fanout.settled(channels).await;
        result
    }

    fn demand(&self, pattern: Pattern) -> mpsc::UnboundedReceiver<Demand> {
        self.hub.demand(pattern)
    }

    fn declare_state(&self, pattern: Pattern, snapshot: state::Snapshot) {
        self.hub.declare_state(pattern, snapshot);
    }

    fn is_state_channel(&self, channel: &ChannelName) -> bool {
        self.hub.is_state_channel(channel)
    }

    async fn state_of(&self, channel: &ChannelName) -> Result<Option<Values>, EngineError> {
        let stored: Vec<(String, String)> = self
            .open_con()?
            .hgetall(format!("{}:s:{}", self.keys, channel.as_str()))
            .await
            .map_err(map_err)?;
        if stored.is_empty() {
            return Ok(None);
        }
        values(stored).map(Some)
    }

    async fn channel(&self, name: &ChannelName) -> Result<Option<ChannelInfo>, EngineError> {
        let none = ReadLimit {
            events: 0,
            bytes: 0,
        };
        Ok(self
            .range(Lane::Other, name, 0, None, none)
            .await?
            .map(|(info, _)| info))
    }

    async fn channels(&self) -> Result<Vec<ChannelInfo>, EngineError> {
        let rows: Vec<ChannelRow> = CHANNELS_SCRIPT
            .arg(&self.keys)
            .invoke_async(&mut self.open_con()?)
            .await
            .map_err(map_err)?;
        let mut all = rows
            .into_iter()
            .filter_map(
                |(name, id, epoch, first_offset, last_offset, trimmed_seq)| {
                    Some(ChannelInfo {
                        channel: ChannelName::any(&name).ok()?,
                        epoch: epoch.into(),
                        first_offset,
                        last_offset,
                        id,
                        trimmed_seq,
                    })
                },
            )
            .collect::<Vec<_>>();
        all.sort_by(|a, b| a.channel.as_str().cmp(b.channel.as_str()));
        Ok(all)
    }

    async fn range(
        &self,
        _lane: Lane,
        channel: &ChannelName,
        after: u64,
        upto: Option<u64>,
        limit: ReadLimit,
    ) -> Result<Option<(ChannelInfo, Vec<Event>)>, EngineError> {
        read_range(self.open_con()?, &self.keys, channel, after, upto, limit).await
    }

    async fn last_offset_at(&self, channel_id: u64, seq: u64) -> Result<Option<u64>, EngineError> {
        LAST_OFFSET_AT_SCRIPT
            .arg(&self.keys)
            .arg(channel_id)
            .arg(seq)
            .invoke_async(&mut self.open_con()?)
            .await
            .map_err(map_err)
    }

    async fn put_session(&self, pid: &str, record: String) -> Result<(), EngineError> {
        self.open_con()?;
        let (tx, rx) = oneshot::channel();
        self.sessions
            .send(SessionOp::Put(pid.to_owned(), record, tx))
            .map_err(|_| EngineError::Closed)?;
        rx.await.map_err(|_| EngineError::Closed)?
    }

    async fn session(&self, pid: &str) -> Result<Option<String>, EngineError> {
        self.open_con()?
            .get(format!("{}:session:{pid}", self.keys))
            .await
            .map_err(map_err)
    }

    fn session_detached(&self, pid: &str) {
        let _ = self.sessions.send(SessionOp::Detached(pid.to_owned()));
    }

    fn delete_session(&self, pid: &str) {
        let _ = self.sessions.send(SessionOp::Delete(pid.to_owned()));
    }

    async fn claim_sids(
        &self,
        sids: &[Arc<str>],
        owner: &str,
        ttl: Duration,
    ) -> Result<(), EngineError> {
        directory::claim(self.open_con()?, &self.keys, sids, owner, ttl).await
    }

    fn release_sid(&self, sid: &str) {
        if let Ok(con) = self.open_con() {
            directory::release(con, &self.keys, sid);
        }
    }

    async fn sid_owner(&self, sid: &str) -> Result<Option<String>, EngineError> {
        directory::owner(self.open_con()?, &self.keys, sid).await
    }

    async fn join(
        &self,
        channel: &ChannelName,
        member: Arc<Member>,
    ) -> Result<PresenceGuard, EngineError> {
        if self.closed.load(Ordering::Acquire) {
            return Err(EngineError::Closed);
        }
        Ok(self.presence.join(channel, member).await)
    }

    async fn presence(&self, channel: &ChannelName) -> Result<Vec<Member>, EngineError> {
        self.open_con()?;
        self.presence.members(channel).await
    }

    fn presence_events(&self, pattern: Pattern) -> mpsc::Receiver<PresenceEvent> {
        self.presence.events(pattern)
    }

    fn counts(&self) -> crate::core::stats::Counts {
        self.hub.counts()
    }

    async fn delivered(&self) -> Result<(), EngineError> {
        // Publishes return after their local fan-out; what other nodes published arrives by pub/sub.
        self.fanout.barrier().await
    }

    async fn ping(&self) -> Result<(), EngineError> {
        redis::cmd("PING")
            .query_async::<()>(&mut self.open_con()?)
            .await
            .map_err(map_err)
    }

    fn health(&self) -> watch::Receiver<Health> {
        self.health.clone()
    }

    async fn shutdown(&self) {
        self.closed.store(true, Ordering::Release);
        self.leases.shutdown();
        // Session writes already queued are applied before the tasks stop.
        let (tx, rx) = oneshot::channel();
        if self.sessions.send(SessionOp::Flush(tx)).is_ok() {
            let _ = rx.await;
        }
        // This node's connections leave everyone's presence now rather than at the heartbeat's expiry.
        self.presence.remove_node().await;
        for t in self.tasks.lock().drain(..) {
            t.abort();
        }
    }

    async fn lease(&self, name: &str, ttl: Duration) -> Result<Option<super::Lease>, EngineError> {
        self.leases.acquire(self.open_con()?, name, ttl).await
    }
}
