//! The memory engine: everything the SQLite engine keeps, kept in this process only (`herald serve --engine
//! memory`): nothing is written to disk and everything is gone when the process stops. For development, tests
//! and throw-away deployments; bounded by the same retention rules as the durable engine.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use parking_lot::Mutex;
use tokio::sync::mpsc;

use super::{
    ChannelInfo, Demand, Engine, EngineError, Lane, Position, PresenceGuard, ReadLimit, Subscriber,
    SubscriberId, Subscription,
};
use crate::core::channel::{ChannelName, Pattern};
use crate::core::dispatcher::Dispatcher;
use crate::core::event::{Event, NewEvent, PublishResult, SharedEvent, now_ms};
use crate::core::hub::Hub;
use crate::core::presence::{Member, Presence, PresenceEvent};
use crate::core::retention::Retention;
use crate::core::state::{Snapshot, Values};

/// How often age-based retention and session expiry run (on the next operation after this long).
const SWEEP_EVERY: Duration = Duration::from_secs(2);

struct Channel {
    info: ChannelInfo,
    /// Retained events, oldest first (offsets `first_offset..=last_offset`).
    events: VecDeque<Event>,
    /// Idempotency ids of the retained events → offset.
    ids: HashMap<String, u64>,
}

impl Channel {
    /// Drops the oldest event, recording how far history was trimmed.
    fn trim_one(&mut self) {
        if let Some(e) = self.events.pop_front() {
            self.ids.remove(&e.id);
            self.info.first_offset = e.offset + 1;
            self.info.trimmed_seq = self.info.trimmed_seq.max(e.seq);
        }
    }
}

struct Session {
    record: String,
    detached_at: Option<i64>,
}

struct Data {
    channels: HashMap<ChannelName, Channel>,
    next_channel_id: u64,
    last_seq: u64,
    last_time: i64,
    sessions: HashMap<String, Session>,
    next_sweep: Instant,
    closed: bool,
}

/// History, state and sessions in memory; fan-out and presence as in the SQLite engine.
pub struct MemoryEngine {
    data: Mutex<Data>,
    hub: Arc<Hub>,
    dispatcher: Dispatcher,
    presence: Arc<Presence>,
    retention: Retention,
    session_ttl: Duration,
}

impl MemoryEngine {
    /// An empty engine (fails only if its fan-out thread cannot start).
    pub fn open(
        retention: Retention,
        session_ttl: Duration,
    ) -> Result<Arc<dyn Engine>, EngineError> {
        Ok(Arc::new(Self {
            data: Mutex::new(Data {
                channels: HashMap::new(),
                next_channel_id: 1,
                last_seq: 0,
                last_time: 0,
                sessions: HashMap::new(),
                next_sweep: Instant::now() + SWEEP_EVERY,
                closed: false,
            }),
            hub: Arc::new(Hub::default()),
            dispatcher: Dispatcher::start().map_err(EngineError::unavailable)?,
            presence: Arc::default(),
            retention,
            session_ttl,
        }))
    }

    /// Locks the data, first running the periodic sweep if it is due.
    fn lock(&self) -> Result<parking_lot::MutexGuard<'_, Data>, EngineError> {
        let mut d = self.data.lock();
        if d.closed {
            return Err(EngineError::Closed);
        }
        if Instant::now() >= d.next_sweep {
            self.sweep(&mut d);
            d.next_sweep = Instant::now() + SWEEP_EVERY;
        }
        Ok(d)
    }

    fn sweep(&self, d: &mut Data) {
        let now = now_ms();
        for ch in d.channels.values_mut() {
            let max_age = self.retention.limits(ch.info.channel.as_str()).max_age;
            let cutoff = now - max_age.as_millis() as i64;
            while ch.events.front().is_some_and(|e| e.time < cutoff) {
                ch.trim_one();
            }
        }
        let expired = now - self.session_ttl.as_millis() as i64;
        d.sessions
            .retain(|_, s| s.detached_at.is_none_or(|t| t >= expired));
    }
}

/// A fresh random epoch.
fn new_epoch() -> Arc<str> {
    format!("{:08x}", rand::random::<u32>()).into()
}

#[async_trait]
impl Engine for MemoryEngine {
    async fn publish(&self, events: Vec<NewEvent>) -> Result<Vec<PublishResult>, EngineError> {
        // Wait for room before committing: the fan-out queue stays bounded and the commit order is the queue's.
        self.dispatcher.room().await;
        let mut guard = self.lock()?;
        let d = &mut *guard;
        let mut results = Vec::with_capacity(events.len());
        let mut fresh = Vec::new();
        let mut touched: Vec<ChannelName> = Vec::new();
        for ev in events {
            let ch = d.channels.entry(ev.channel.clone()).or_insert_with(|| {
                let id = d.next_channel_id;
                d.next_channel_id += 1;
                Channel {
                    info: ChannelInfo {
                        channel: ev.channel.clone(),
                        epoch: new_epoch(),
                        first_offset: 1,
                        last_offset: 0,
                        id,
                        trimmed_seq: 0,
                    },
                    events: VecDeque::new(),
                    ids: HashMap::new(),
                }
            });
            if let Some(offset) = ev.id.as_ref().and_then(|id| ch.ids.get(id)) {
                results.push(PublishResult {
                    channel: ev.channel,
                    offset: *offset,
                    epoch: ch.info.epoch.clone(),
                    id: ev.id.unwrap_or_default(),
                    duplicate: true,
                });
                continue;
            }
            d.last_seq += 1;
            d.last_time = d.last_time.max(now_ms());
            ch.info.last_offset += 1;
            let id = ev
                .id
                .unwrap_or_else(|| format!("{:016x}", rand::random::<u64>()));
            let event = Event {
                channel: ev.channel.clone(),
                offset: ch.info.last_offset,
                epoch: ch.info.epoch.clone(),
                id: id.clone(),
                name: ev.name,
                data: ev.data,
                time: d.last_time,
                seq: d.last_seq,
                channel_id: ch.info.id,
                state: None,
            };
            ch.ids.insert(id.clone(), event.offset);
            ch.events.push_back(event.clone());
            fresh.push(SharedEvent::new(Event {
                state: ev.state,
                ..event
            }));
            if !touched.contains(&ev.channel) {
                touched.push(ev.channel.clone());
            }
            results.push(PublishResult {
                channel: ev.channel,
                offset: ch.info.last_offset,
                epoch: ch.info.epoch.clone(),
                id,
                duplicate: false,
            });
        }
        for name in touched {
            let max = self.retention.limits(name.as_str()).max_events;
            if let Some(ch) = d.channels.get_mut(&name) {
                while ch.events.len() as u64 > max {
                    ch.trim_one();
                }
            }
        }
        // Into the hub under the lock, so in commit order: once a publish is acknowledged, every later
        // subscription's position includes it. The fan-out thread delivers.
        if !fresh.is_empty() {
            self.dispatcher.send(self.hub.commit(&fresh));
        }
        Ok(results)
    }

    async fn subscribe(
        &self,
        channels: &[ChannelName],
        id: SubscriberId,
        sub: Arc<dyn Subscriber>,
    ) -> Result<Vec<(Position, Subscription)>, EngineError> {
        Ok(self.hub.subscribe_handles(channels, id, &sub))
    }

    fn demand(&self, pattern: Pattern) -> mpsc::UnboundedReceiver<Demand> {
        self.hub.demand(pattern)
    }

    fn declare_state(&self, pattern: Pattern, snapshot: Snapshot) {
        self.hub.declare_state(pattern, snapshot);
    }

    fn is_state_channel(&self, channel: &ChannelName) -> bool {
        self.hub.is_state_channel(channel)
    }

    async fn state_of(&self, channel: &ChannelName) -> Result<Option<Values>, EngineError> {
        Ok(self.hub.state_of(channel))
    }

    async fn channel(&self, name: &ChannelName) -> Result<Option<ChannelInfo>, EngineError> {
        Ok(self.lock()?.channels.get(name).map(|c| c.info.clone()))
    }

    async fn channels(&self) -> Result<Vec<ChannelInfo>, EngineError> {
        let mut all: Vec<ChannelInfo> = self
            .lock()?
            .channels
            .values()
            .map(|c| c.info.clone())
            .collect();
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
        let d = self.lock()?;
        let Some(ch) = d.channels.get(channel) else {
            return Ok(None);
        };
        let upto = upto.unwrap_or(ch.info.last_offset);
        // Offsets are contiguous from `first_offset`, so the start is an index.
        let skip = (after + 1).saturating_sub(ch.info.first_offset) as usize;
        let mut events = Vec::new();
        let mut bytes = 0;
        for e in ch.events.iter().skip(skip) {
            if e.offset > upto || events.len() >= limit.events {
                break;
            }
            bytes += e.data.get().len();
            events.push(e.clone());
            if bytes >= limit.bytes {
                break;
            }
        }
        Ok(Some((ch.info.clone(), events)))
    }

    async fn last_offset_at(&self, channel_id: u64, seq: u64) -> Result<Option<u64>, EngineError> {
        let d = self.lock()?;
        let Some(ch) = d.channels.values().find(|c| c.info.id == channel_id) else {
            return Ok(None);
        };
        // Sequences increase with offsets within a channel.
        let at = ch.events.partition_point(|e| e.seq <= seq);
        Ok(at.checked_sub(1).map(|i| ch.events[i].offset))
    }

    async fn put_session(&self, pid: &str, record: String) -> Result<(), EngineError> {
        let session = Session {
            record,
            detached_at: None,
        };
        self.lock()?.sessions.insert(pid.to_owned(), session);
        Ok(())
    }

    async fn session(&self, pid: &str) -> Result<Option<String>, EngineError> {
        Ok(self.lock()?.sessions.get(pid).map(|s| s.record.clone()))
    }

    fn session_detached(&self, pid: &str) {
        if let Ok(mut d) = self.lock()
            && let Some(s) = d.sessions.get_mut(pid)
        {
            s.detached_at = Some(now_ms());
        }
    }

    fn delete_session(&self, pid: &str) {
        if let Ok(mut d) = self.lock() {
            d.sessions.remove(pid);
        }
    }

    async fn join(
        &self,
        channel: &ChannelName,
        member: Arc<Member>,
    ) -> Result<PresenceGuard, EngineError> {
        Ok(self.presence.join(channel, member))
    }

    async fn presence(&self, channel: &ChannelName) -> Result<Vec<Member>, EngineError> {
        Ok(self.presence.members(channel))
    }

    async fn delivered(&self) -> Result<(), EngineError> {
        self.dispatcher.delivered().await;
        Ok(())
    }

    fn presence_events(&self, pattern: Pattern) -> mpsc::Receiver<PresenceEvent> {
        self.presence.events(pattern)
    }

    fn counts(&self) -> crate::core::stats::Counts {
        self.hub.counts()
    }

    async fn shutdown(&self) {
        self.data.lock().closed = true;
    }
}
