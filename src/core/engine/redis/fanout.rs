//! This node's pub/sub connection: it subscribes in Redis to exactly the channels this process has subscribers
//! on, feeds what arrives to the in-process hub in arrival order (which is the commit order, see the parent
//! module), and offers a barrier that says "everything Redis published before now has been dispatched here".
//!
//! # Reconnecting
//! When the connection drops, the reader reconnects with backoff ([`RETRY_FIRST`] doubling to [`RETRY_MAX`]),
//! resubscribes every channel with local subscribers and, before reading the new connection, catches each one up
//! from history: it knows the last offset it dispatched per channel (or, for a channel that had no event yet,
//! the lowest position a subscription started at), reads the history after it and dispatches it in order. Live
//! messages that the new connection delivers meanwhile wait in its stream and are then deduplicated by offset,
//! so each subscriber gets every event once, in order. Messages the old connection received but lost are in that
//! history (a publish commits before it publishes).
//!
//! When history no longer covers the hole — trimmed meanwhile, or the channel gone or under a new epoch because
//! Redis lost its data — the channel's subscribers are told through [`crate::core::engine::Subscriber::lost`]:
//! a connection's feed then closes the connection, and the client resumes by its cursor like after any other
//! disconnect, getting the gap notice (epoch changed or history trimmed) and, on state channels, the snapshot.
//! That reuses the one resume path every binding already has instead of inventing a live gap message.
//!
//! A connection can also break silently (a stateful firewall or NAT dropping it, a half-open TCP connection): no
//! error, just no more messages. The reader therefore `PING`s it every [`PING_EVERY`] while it is quiet and treats
//! a reply missing for the command timeout as a drop — reconnect, resubscribe, catch up from history — so such a
//! connection is replaced within `PING_EVERY + TIMEOUT` (8 s) and nothing published meanwhile is lost.
//!
//! A publish to a channel with local subscribers waits, in its barrier, for the connection to be back and caught
//! up (at most the command timeout), and cuts the backoff short: its commit shows Redis is reachable again.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures_util::{FutureExt, StreamExt};
use parking_lot::Mutex;
use redis::aio::{PubSubSink, PubSubStream};
use serde_json::value::RawValue;
use tokio::sync::{Notify, mpsc, oneshot, watch};

use super::{TIMEOUT, map_err, read_range};
use crate::core::channel::{ChannelName, Pattern};
use crate::core::engine::{EngineError, Position, REPLAY_PAGE};
use crate::core::event::{Event, SharedEvent};
use crate::core::hub::Hub;
use crate::core::state::StateChange;

/// First wait before reconnecting the pub/sub connection.
pub const RETRY_FIRST: Duration = Duration::from_millis(100);

/// Longest wait between reconnection attempts.
pub const RETRY_MAX: Duration = Duration::from_secs(5);

/// How long the pub/sub connection may stay quiet before the reader checks it with a `PING`.
pub const PING_EVERY: Duration = Duration::from_secs(3);

/// Where a channel's live delivery on this node stands.
#[derive(Debug, Clone)]
struct Mark {
    epoch: Arc<str>,
    offset: u64,
    /// Set by a dispatch (exact); unset, it is the lowest position a subscription started at (a floor).
    dispatched: bool,
}

/// The Redis subscriptions of this process.
pub struct Fanout {
    /// For the pub/sub connection and the catch-up reads after it drops.
    client: redis::Client,
    /// Orders SUBSCRIBE and UNSUBSCRIBE (and the resubscription after a reconnect): each decision is taken and
    /// sent under this lock. `None` while the connection is down.
    sink: tokio::sync::Mutex<Option<PubSubSink>>,
    /// For barriers' PINGs (replies come in order with messages on the one connection).
    ping: Mutex<Option<PubSubSink>>,
    /// Subscriptions under way per channel: subscribed in Redis, not yet registered in the hub.
    pending: Mutex<HashMap<ChannelName, usize>>,
    /// Per subscribed channel, what live delivery reached (what a catch-up starts after).
    marks: Mutex<HashMap<ChannelName, Mark>>,
    /// Asks the reader to confirm it dispatched everything received so far.
    barrier: mpsc::UnboundedSender<oneshot::Sender<()>>,
    /// Whether the connection is up and caught up (barriers wait for it).
    up: watch::Sender<bool>,
    /// How many times the connection dropped (a subscription that straddles a drop cannot trust its start).
    drops: AtomicU64,
    /// Cuts the reconnect backoff short: a publish just committed, so Redis is back.
    kick: Notify,
    /// Key prefix (`{herald}`).
    keys: String,
    /// Pub/sub channel prefix (`{herald}:c:`).
    prefix: String,
    hub: Arc<Hub>,
}

impl Fanout {
    /// Starts the reader (which also reconnects) and the task that unsubscribes channels this process no longer
    /// needs.
    pub fn start(
        client: redis::Client,
        sink: PubSubSink,
        stream: PubSubStream,
        keys: &str,
        hub: Arc<Hub>,
    ) -> (Arc<Self>, Vec<tokio::task::JoinHandle<()>>) {
        let (barrier, barriers) = mpsc::unbounded_channel();
        let fanout = Arc::new(Self {
            client,
            ping: Mutex::new(Some(sink.clone())),
            sink: tokio::sync::Mutex::new(Some(sink)),
            pending: Mutex::default(),
            marks: Mutex::default(),
            barrier,
            up: watch::Sender::new(true),
            kick: Notify::new(),
            drops: AtomicU64::new(0),
            keys: keys.to_owned(),
            prefix: format!("{keys}:c:"),
            hub: hub.clone(),
        });
        let reader = tokio::spawn(run(fanout.clone(), stream, barriers));
        let mut demand = hub.demand(Pattern::new("*"));
        let weak = Arc::downgrade(&fanout);
        let releaser = tokio::spawn(async move {
            while let Some(d) = demand.recv().await {
                let Some(fanout) = weak.upgrade() else { break };
                if !d.active {
                    fanout.release(&d.channel).await;
                }
            }
        });
        (fanout, vec![reader, releaser])
    }

    fn topic(&self, channel: &ChannelName) -> String {
        format!("{}{}", self.prefix, channel.as_str())
    }

    /// Subscribes in Redis to `channels` and waits for the confirmation: from then on every publish to them
    /// reaches this node. Each call must be followed by [`Fanout::settled`].
    pub async fn listen(&self, channels: &[ChannelName]) -> Result<(), EngineError> {
        let mut sink = self.sink.lock().await;
        {
            let mut pending = self.pending.lock();
            for c in channels {
                *pending.entry(c.clone()).or_default() += 1;
            }
        }
        let Some(sink) = sink.as_mut() else {
            return Err(EngineError::unavailable("redis pub/sub connection is down"));
        };
        let topics: Vec<String> = channels.iter().map(|c| self.topic(c)).collect();
        bounded(sink.subscribe(&topics)).await
    }

    /// Whether the connection is up and caught up, now and at each change (what the engine's health follows).
    pub fn connected(&self) -> watch::Receiver<bool> {
        self.up.subscribe()
    }

    /// How many times the connection has dropped so far: a subscription that saw it change between its
    /// [`Fanout::listen`] and its [`Fanout::started`] may have missed events nothing will catch up.
    pub fn drops(&self) -> u64 {
        self.drops.load(Ordering::Acquire)
    }

    /// Notes where new subscriptions start, so a catch-up after a reconnect covers them even if no event of
    /// their channel was dispatched yet.
    pub fn started(&self, channels: &[ChannelName], positions: &[Position]) {
        let mut marks = self.marks.lock();
        for (c, p) in channels.iter().zip(positions) {
            let floor = Mark {
                epoch: p.epoch.clone(),
                offset: p.last_offset,
                dispatched: false,
            };
            match marks.get_mut(c) {
                None => {
                    marks.insert(c.clone(), floor);
                }
                // A dispatched mark is exact: everything up to it reached every subscriber registered then,
                // and later subscriptions start at or after it.
                Some(m) if m.dispatched => {}
                Some(m) if m.epoch == floor.epoch => m.offset = m.offset.min(floor.offset),
                Some(m) => *m = floor,
            }
        }
    }

    /// The subscriptions begun by [`Fanout::listen`] are registered in the hub (or failed).
    pub async fn settled(&self, channels: &[ChannelName]) {
        {
            let mut pending = self.pending.lock();
            for c in channels {
                if let Some(n) = pending.get_mut(c) {
                    *n -= 1;
                    if *n == 0 {
                        pending.remove(c);
                    }
                }
            }
        }
        for c in channels {
            self.release(c).await;
        }
    }

    /// Unsubscribes `channel` in Redis unless a subscriber is on it or on its way.
    async fn release(&self, channel: &ChannelName) {
        let mut sink = self.sink.lock().await;
        if self.pending.lock().contains_key(channel) || self.hub.has_subscribers(channel) {
            return;
        }
        self.marks.lock().remove(channel);
        // While the connection is down there is nothing to unsubscribe: the reconnect subscribes only what
        // is wanted then.
        if let Some(sink) = sink.as_mut()
            && let Err(e) = bounded(sink.unsubscribe(self.topic(channel))).await
        {
            tracing::warn!(error = %e, channel = %channel, "redis unsubscribe failed");
        }
    }

    /// Returns once every message Redis sent this node before now has been dispatched to the hub. While the
    /// connection is being re-established it waits for it (and its catch-up, which dispatches what committed
    /// meanwhile); it fails as unavailable if that takes longer than the command timeout.
    pub async fn barrier(&self) -> Result<(), EngineError> {
        let down = || EngineError::unavailable("redis pub/sub connection is down");
        let wait = async {
            let mut up = self.up.subscribe();
            if !*up.borrow_and_update() {
                self.kick.notify_one();
                up.wait_for(|up| *up).await.map_err(|_| down())?;
            }
            let mut ping = self.ping.lock().clone().ok_or_else(down)?;
            ping.ping::<()>().await.map_err(map_err)?;
            let (tx, rx) = oneshot::channel();
            self.barrier.send(tx).map_err(|_| down())?;
            rx.await.map_err(|_| down())
        };
        tokio::time::timeout(TIMEOUT, wait)
            .await
            .map_err(|_| down())?
    }

    /// Dispatches one live message unless a catch-up already did (same epoch, offset not after the mark).
    fn dispatch(&self, msg: redis::Msg) {
        let Some(name) = msg.get_channel_name().strip_prefix(&self.prefix) else {
            return;
        };
        let event = match ChannelName::any(name)
            .map_err(|e| e.to_string())
            .and_then(|c| decode(c, msg.get_payload_bytes()))
        {
            Ok(event) => event,
            Err(e) => {
                tracing::error!(error = %e, channel = name, "undecodable redis event");
                return;
            }
        };
        {
            let mut marks = self.marks.lock();
            if let Some(m) = marks.get(&event.channel)
                && m.epoch == event.epoch
                && event.offset <= m.offset
                && m.dispatched
            {
                return;
            }
            marks.insert(
                event.channel.clone(),
                Mark {
                    epoch: event.epoch.clone(),
                    offset: event.offset,
                    dispatched: true,
                },
            );
        }
        self.hub.dispatch(&[SharedEvent::new(event)]);
    }

    /// Reads `stream` until it ends (or stops answering `PING`s), dispatching in arrival order and answering
    /// barriers.
    async fn read(
        &self,
        stream: &mut PubSubStream,
        barriers: &mut mpsc::UnboundedReceiver<oneshot::Sender<()>>,
    ) {
        let mut probe: Option<futures_util::future::BoxFuture<'static, bool>> = None;
        let mut quiet_since = tokio::time::Instant::now();
        loop {
            let check_at = quiet_since + PING_EVERY;
            tokio::select! {
                biased;
                msg = stream.next() => match msg {
                    Some(msg) => {
                        quiet_since = tokio::time::Instant::now();
                        self.dispatch(msg);
                    }
                    None => return,
                },
                alive = async {
                    match probe.as_mut() {
                        Some(p) => p.await,
                        None => std::future::pending().await,
                    }
                }, if probe.is_some() => {
                    probe = None;
                    if !alive {
                        tracing::warn!(
                            "redis pub/sub connection did not answer a PING: treating it as lost"
                        );
                        return;
                    }
                    quiet_since = tokio::time::Instant::now();
                }
                () = tokio::time::sleep_until(check_at), if probe.is_none() => {
                    let Some(mut sink) = self.ping.lock().clone() else { return };
                    probe = Some(Box::pin(async move {
                        matches!(
                            tokio::time::timeout(TIMEOUT, sink.ping::<()>()).await,
                            Ok(Ok(()))
                        )
                    }));
                }
                Some(done) = barriers.recv() => {
                    // The PING's reply came after these messages, so they are queued already.
                    while let Some(Some(msg)) = stream.next().now_or_never() {
                        self.dispatch(msg);
                    }
                    let _ = done.send(());
                }
            }
        }
    }

    /// Reconnects until it succeeds, waiting [`RETRY_FIRST`] doubling to [`RETRY_MAX`] between attempts.
    async fn reconnect(&self) -> PubSubStream {
        let mut wait = RETRY_FIRST;
        loop {
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = self.kick.notified() => {}
            }
            match self.resume().await {
                Ok(stream) => {
                    tracing::info!("redis pub/sub connection restored; subscribers caught up");
                    return stream;
                }
                Err(e) => {
                    tracing::debug!(error = %e, retry_in = ?wait, "redis pub/sub reconnect failed");
                    wait = (wait * 2).min(RETRY_MAX);
                }
            }
        }
    }

    /// One reconnection attempt: connect, resubscribe every wanted channel, catch them up from history.
    async fn resume(&self) -> Result<PubSubStream, EngineError> {
        let connect = self.client.get_async_pubsub();
        let (mut sink, stream) = tokio::time::timeout(TIMEOUT, connect)
            .await
            .map_err(|_| EngineError::unavailable("redis connect timed out"))?
            .map_err(map_err)?
            .split();
        let channels = {
            let mut current = self.sink.lock().await;
            let mut channels = self.hub.subscribed_channels();
            channels.extend(self.pending.lock().keys().cloned());
            channels.sort_by(|a, b| a.as_str().cmp(b.as_str()));
            channels.dedup();
            if !channels.is_empty() {
                let topics: Vec<String> = channels.iter().map(|c| self.topic(c)).collect();
                bounded(sink.subscribe(&topics)).await?;
            }
            *self.ping.lock() = Some(sink.clone());
            *current = Some(sink);
            channels
        };
        // Subscribed first, so whatever commits after a channel's catch-up read arrives on the new stream. Read
        // over a connection of its own: the command connection may be as silently broken as the old pub/sub one
        // was (its client does not replace a connection that only times out).
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(TIMEOUT))
            .set_response_timeout(Some(TIMEOUT));
        let reader = tokio::time::timeout(
            TIMEOUT,
            self.client
                .get_multiplexed_async_connection_with_config(&config),
        )
        .await
        .map_err(|_| EngineError::unavailable("redis connect timed out"))
        .and_then(|r| r.map_err(map_err));
        let reader = match reader {
            Ok(r) => r,
            Err(e) => {
                self.drops.fetch_add(1, Ordering::AcqRel);
                *self.sink.lock().await = None;
                *self.ping.lock() = None;
                return Err(e);
            }
        };
        for c in &channels {
            if let Err(e) = self.catch_up(reader.clone(), c).await {
                // Subscriptions made on this connection meanwhile are as unsure of their start as at a drop.
                self.drops.fetch_add(1, Ordering::AcqRel);
                *self.sink.lock().await = None;
                *self.ping.lock() = None;
                return Err(e);
            }
        }
        Ok(stream)
    }

    /// Dispatches `channel`'s history after its mark, or tells its subscribers that events were lost.
    async fn catch_up(
        &self,
        con: redis::aio::MultiplexedConnection,
        channel: &ChannelName,
    ) -> Result<(), EngineError> {
        let Some(mut mark) = self.marks.lock().get(channel).cloned() else {
            return Ok(());
        };
        loop {
            let page = read_range(
                con.clone(),
                &self.keys,
                channel,
                mark.offset,
                None,
                REPLAY_PAGE,
            )
            .await?;
            let Some((info, events)) = page else {
                // The channel is gone (Redis lost its data): a subscriber that had events lost them.
                if mark.offset > 0 {
                    self.lose(channel, None);
                }
                return Ok(());
            };
            // An empty epoch is a channel that had no events: any epoch continues it.
            let reset = !mark.epoch.is_empty() && mark.epoch != info.epoch;
            if reset || info.first_offset > mark.offset + 1 {
                self.lose(channel, Some((info.epoch, info.last_offset)));
                return Ok(());
            }
            let Some(last) = events.last() else {
                return Ok(());
            };
            mark = Mark {
                epoch: info.epoch,
                offset: last.offset,
                dispatched: true,
            };
            let shared: Vec<_> = events.into_iter().map(SharedEvent::new).collect();
            self.marks.lock().insert(channel.clone(), mark.clone());
            self.hub.dispatch(&shared);
            if mark.offset >= info.last_offset {
                return Ok(());
            }
        }
    }

    /// Tells `channel`'s subscribers that live delivery missed events history cannot give; live delivery goes
    /// on from `now` (the channel's current epoch and last offset), if it still exists.
    fn lose(&self, channel: &ChannelName, now: Option<(Arc<str>, u64)>) {
        tracing::warn!(channel = %channel, "events missed during a redis outage are not in history; subscribers must resume");
        {
            let mut marks = self.marks.lock();
            match now {
                Some((epoch, offset)) => {
                    marks.insert(
                        channel.clone(),
                        Mark {
                            epoch,
                            offset,
                            dispatched: true,
                        },
                    );
                }
                None => {
                    marks.remove(channel);
                }
            }
        }
        self.hub.lost(channel);
    }
}

/// A pub/sub command, failing as unavailable if it gets no reply within the command timeout (a connection that
/// is silently gone).
async fn bounded(
    cmd: impl std::future::Future<Output = redis::RedisResult<()>>,
) -> Result<(), EngineError> {
    tokio::time::timeout(TIMEOUT, cmd)
        .await
        .map_err(|_| EngineError::unavailable("redis pub/sub command timed out"))?
        .map_err(map_err)
}

/// The reader: reads the connection, and when it drops, reconnects and catches up before reading the new one.
async fn run(
    fanout: Arc<Fanout>,
    mut stream: PubSubStream,
    mut barriers: mpsc::UnboundedReceiver<oneshot::Sender<()>>,
) {
    loop {
        fanout.read(&mut stream, &mut barriers).await;
        tracing::warn!(
            "redis pub/sub connection lost: reconnecting (live delivery on this node resumes after it)"
        );
        fanout.drops.fetch_add(1, Ordering::AcqRel);
        fanout.up.send_replace(false);
        *fanout.sink.lock().await = None;
        *fanout.ping.lock() = None;
        stream = fanout.reconnect().await;
        fanout.up.send_replace(true);
    }
}

/// Decodes a published event: `seq,offset,channel id,time,state op,len epoch,len id,len name,len key,len value|`
/// then those strings and the data, as the publish script writes it.
pub fn decode(channel: ChannelName, payload: &[u8]) -> Result<Event, String> {
    let bad = || "malformed event payload".to_string();
    let bar = payload.iter().position(|b| *b == b'|').ok_or_else(bad)?;
    let header = std::str::from_utf8(&payload[..bar]).map_err(|_| bad())?;
    let nums: Vec<u64> = header
        .split(',')
        .map(str::parse)
        .collect::<Result<_, _>>()
        .map_err(|_| bad())?;
    let [seq, offset, channel_id, time, op, lens @ ..] = nums.as_slice() else {
        return Err(bad());
    };
    let mut rest = &payload[bar + 1..];
    let mut strings = Vec::with_capacity(lens.len());
    for len in lens {
        let n = usize::try_from(*len).map_err(|_| bad())?;
        if n > rest.len() {
            return Err(bad());
        }
        let (head, tail) = rest.split_at(n);
        strings.push(String::from_utf8(head.to_vec()).map_err(|_| bad())?);
        rest = tail;
    }
    let data = String::from_utf8(rest.to_vec()).map_err(|_| bad())?;
    let [epoch, id, name, key, value]: [String; 5] = strings.try_into().map_err(|_| bad())?;
    let json = |s: String| RawValue::from_string(s).map_err(|e| e.to_string());
    let state = match op {
        1 => Some(StateChange::Set {
            key,
            value: json(value)?,
        }),
        2 => Some(StateChange::Remove { key }),
        _ => None,
    };
    Ok(Event {
        channel,
        offset: *offset,
        epoch: epoch.into(),
        id,
        name,
        data: json(data)?,
        time: *time as i64,
        seq: *seq,
        channel_id: *channel_id,
        state,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_what_the_publish_script_writes() {
        let c = ChannelName::new("a").unwrap();
        let e = decode(c.clone(), b"7,3,2,1000,1,2,1,4,1,2|e1kset|k10{\"v\":10}").unwrap();
        assert_eq!((e.seq, e.offset, e.channel_id, e.time), (7, 3, 2, 1000));
        assert_eq!(
            (&*e.epoch, e.id.as_str(), e.name.as_str()),
            ("e1", "k", "set|")
        );
        assert_eq!(e.data.get(), "{\"v\":10}");
        assert!(
            matches!(e.state, Some(StateChange::Set { ref key, ref value }) if key == "k" && value.get() == "10")
        );
        // Lengths beyond the payload, missing fields or bad JSON are refused, not guessed at.
        assert!(decode(c.clone(), b"7,3,2,1000,0,2,1,4,0,0|e1k").is_err());
        assert!(decode(c.clone(), b"7,3,2|x").is_err());
        assert!(decode(c, b"7,3,2,1000,0,0,0,0,0,0|{").is_err());
    }
}
