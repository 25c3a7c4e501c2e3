//! A connection's feed of channel events, shared by every transport binding: registration at an exact hub
//! position, replay from history, live events held back while a replay is queued (so they follow it), gap
//! notices, and a bound on what is held back.
//!
//! Subscribing is two-phase so a binding can do its own work in between — Socket.IO stores its session record
//! and acknowledges before anything that refers to the new registration is sent: [`Feed::begin`] registers and
//! holds live delivery, [`Feed::complete`] queues gaps, replays and the held events. Bindings reach both through
//! [`super::subscribe`], which adds the permission checks and the op guard.
//!
//! The feed is also where a connection's presence lives: every channel it holds, it holds with the connection's
//! presence on it ([`Member`]), joined before the registration and left with it.
//!
//! It also remembers what its client was last told of the engine's health ([`Feed::tell_status`]), so each change
//! reaches each connection once, however often the node's one relay asks.

use std::sync::Arc;

use parking_lot::Mutex;

use crate::core::Engine;
use crate::core::channel::ChannelName;
use crate::core::engine::{
    EngineError, Health, Position, PresenceGuard, Subscriber, SubscriberId, Subscription,
};
use crate::core::event::{Event, SharedEvent, now_ms};
use crate::core::gap::{Gap, GapReason};
use crate::core::presence::Member;
use crate::core::state;
use crate::registry::Transport;

use super::stats;

/// Most bytes a replay keeps queued ahead of a connection's socket: thousands of connections may be catching up
/// at once, and each holds its own encoding of what it replays (unlike live events, shared by all).
pub const REPLAY_WINDOW: usize = 256 << 10;

/// The connection is gone; stop sending to it.
#[derive(Debug, Clone, Copy)]
pub struct Gone;

/// How a binding puts events on its wire.
pub trait Outlet: Send + Sync + 'static {
    /// The transport it writes to (what its deliveries are counted under).
    const TRANSPORT: Transport;
    /// Sends a live event (use the event's shared encoding).
    fn live(&self, event: &Arc<SharedEvent>) -> Result<(), Gone>;
    /// Sends an event replayed from history for registration `reg`.
    fn replayed(&self, event: &Event, reg: &Registered) -> Result<(), Gone>;
    /// Tells the client that events were lost.
    fn gap(&self, gap: &Gap) -> Result<(), Gone>;
    /// Tells the client the engine's health changed (out of band: not a channel event, no cursor).
    fn status(&self, health: &Health) -> Result<(), Gone>;
    /// Closes the connection: it fell too far behind while a replay was queued.
    fn overflow(&self);
    /// Closes the connection because a replay could not be read: the client reconnects and resumes, instead of
    /// holding a subscription whose start it never received.
    fn fail(&self);
    /// Resolves when at most [`REPLAY_WINDOW`] bytes of what the connection queued up to its last replayed event
    /// still wait for the socket (backpressure for replays, which are bounded by retention rather than by the
    /// live-traffic queue bound; live events queued after it do not hold the replay back).
    fn room(&self) -> impl std::future::Future<Output = ()> + Send;
}

/// A channel a connection wants, and where it stands.
#[derive(Debug, Clone)]
pub struct Want {
    /// The channel.
    pub channel: ChannelName,
    /// Last offset the client has; `None` means "only new events".
    pub after: Option<u64>,
    /// Epoch the client's offset belongs to, if it said.
    pub epoch: Option<String>,
    /// A loss already known to the caller (from recovery).
    pub gap: Option<Gap>,
}

impl Want {
    /// Only new events of `channel`.
    pub fn new_events(channel: ChannelName) -> Self {
        Self {
            channel,
            after: None,
            epoch: None,
            gap: None,
        }
    }
}

/// A registered subscription, before and after its replay.
#[derive(Debug, Clone)]
pub struct Registered {
    /// The channel.
    pub channel: ChannelName,
    /// The replay covers offsets `(after, position.last_offset]`; live events follow.
    pub after: u64,
    /// Where the channel stood at registration.
    pub position: Position,
    /// Registration number within this feed (orders registrations made at one position).
    pub k: u64,
    /// A loss to announce before the replay.
    pub gap: Option<Gap>,
    /// The client has nothing of this channel yet (no offset, or offset 0): a state channel sends its snapshot.
    pub fresh: bool,
    /// `begin` added this registration (it is not a repeat of one the feed holds): aborting it ends it.
    added: bool,
}

/// One channel the feed holds: its registration and the connection's presence on it, ended together.
struct Held {
    subscription: Subscription,
    _presence: PresenceGuard,
}

#[derive(Default)]
struct State {
    /// Registrations, in order; dropping one ends its live delivery and the presence on its channel.
    channels: Vec<Held>,
    next_k: u64,
    replaying: bool,
    held: Vec<Arc<SharedEvent>>,
    held_bytes: usize,
    closed: bool,
    /// The engine health the client was last told; `None` until the binding opens the connection for notices.
    told: Option<Health>,
}

/// One connection's subscriptions and delivery state.
pub struct Feed<O: Outlet> {
    engine: Arc<dyn Engine>,
    /// The binding's wire.
    pub outlet: O,
    id: SubscriberId,
    /// The connection as presence shows it.
    member: Arc<Member>,
    max_held_bytes: usize,
    state: Mutex<State>,
    op: Arc<tokio::sync::Mutex<()>>,
}

impl<O: Outlet> Subscriber for Feed<O> {
    fn deliver(&self, event: &Arc<SharedEvent>) {
        let mut st = self.state.lock();
        if st.closed {
            return;
        }
        if st.replaying {
            st.held_bytes += event.event.data.get().len();
            if st.held_bytes > self.max_held_bytes {
                st.closed = true;
                self.outlet.overflow();
                return;
            }
            st.held.push(event.clone());
        } else if self.outlet.live(event).is_err() {
            st.closed = true;
        } else {
            stats::delivered(O::TRANSPORT);
        }
    }

    fn lost(&self, _channel: &ChannelName) {
        // Closing makes the client resume by its cursor, which is where gaps are reported (with the snapshot).
        let mut st = self.state.lock();
        if !st.closed {
            st.closed = true;
            self.outlet.fail();
        }
    }
}

impl<O: Outlet> Feed<O> {
    /// A feed with no subscriptions for the connection `member`; `max_held_bytes` bounds what waits behind a
    /// replay.
    pub fn new(
        engine: Arc<dyn Engine>,
        outlet: O,
        max_held_bytes: usize,
        member: Arc<Member>,
    ) -> Arc<Self> {
        Arc::new(Self {
            engine,
            outlet,
            id: SubscriberId::next(),
            member,
            max_held_bytes,
            state: Mutex::new(State::default()),
            op: Arc::new(tokio::sync::Mutex::new(())),
        })
    }

    /// Continues registration numbering from `k` (a resumed session's next number).
    pub fn number_from(&self, k: u64) {
        let mut st = self.state.lock();
        st.next_k = st.next_k.max(k);
    }

    /// Serialises subscription changes of this feed; hold the guard across `begin`…`complete` (it may be moved
    /// to the task that completes).
    pub async fn serialize(&self) -> tokio::sync::OwnedMutexGuard<()> {
        self.op.clone().lock_owned().await
    }

    /// Phase 1: holds live delivery, registers every want at one hub position, and decides where each replay starts.
    /// On an engine error nothing stays registered and live delivery resumes.
    pub async fn begin(self: &Arc<Self>, wants: Vec<Want>) -> Result<Vec<Registered>, EngineError> {
        let channels: Vec<ChannelName> = wants.iter().map(|w| w.channel.clone()).collect();
        // Present on every channel before its registration; presence counts a connection once per channel, so
        // the extra guard of a channel already held is simply dropped below.
        let mut presence = Vec::with_capacity(channels.len());
        for channel in &channels {
            presence.push(self.engine.join(channel, self.member.clone()).await?);
        }
        self.state.lock().replaying = true;
        let sub: Arc<dyn Subscriber> = self.clone();
        let positions = match self.engine.subscribe(&channels, self.id, sub).await {
            Ok(p) => p,
            Err(e) => {
                self.release();
                return Err(e);
            }
        };
        let mut extra = Vec::new();
        let mut st = self.state.lock();
        if st.closed {
            // Detached meanwhile (a subscription asked for by a forward's answer that came after the disconnect):
            // registering now would leave the engine holding a feed nobody detaches, present on the channel.
            drop(st);
            drop(positions);
            drop(presence);
            self.release();
            return Ok(Vec::new());
        }
        let regs = wants
            .into_iter()
            .zip(positions)
            .zip(presence)
            .map(|((want, (position, subscription)), presence)| {
                let mut after = want
                    .after
                    .unwrap_or(position.last_offset)
                    .min(position.last_offset);
                let mut gap = want.gap;
                // An empty epoch is what a channel without events reports: any later epoch continues it. A client
                // that saw events of a channel which now has none (the engine lost it: Redis or memory restarted
                // empty) must not take the next offsets for ones it has: that is a new epoch too.
                let stale = want.epoch.as_deref().is_some_and(|e| {
                    !e.is_empty()
                        && if position.epoch.is_empty() {
                            want.after.is_some_and(|a| a > 0)
                        } else {
                            *e != *position.epoch
                        }
                });
                if stale && gap.is_none() {
                    gap = Some(Gap {
                        channel: want.channel.clone(),
                        reason: GapReason::EpochChanged,
                        epoch: position.epoch.clone(),
                        from: None,
                        to: None,
                    });
                    after = 0;
                }
                let fresh = matches!(want.after, None | Some(0));
                // A state channel's snapshot stands for everything through the position; until the client has
                // all of it, it has nothing (a reconnect then gets the whole snapshot again).
                if fresh && position.state.is_some() {
                    after = 0;
                }
                let k = st.next_k;
                st.next_k += 1;
                // Registering a channel again keeps its one registration (the engine dedupes by subscriber id).
                let added = !st
                    .channels
                    .iter()
                    .any(|h| h.subscription.channel() == &want.channel);
                if added {
                    st.channels.push(Held {
                        subscription,
                        _presence: presence,
                    });
                } else {
                    subscription.disarm();
                    extra.push(presence);
                }
                Registered {
                    channel: want.channel,
                    after,
                    position,
                    k,
                    gap,
                    fresh,
                    added,
                }
            })
            .collect();
        drop(st);
        drop(extra);
        Ok(regs)
    }

    /// Undoes `begin` (the caller could not complete the registration): the registrations it added end, with the
    /// live events held for them (the client was refused them); those it repeated stay as they were.
    pub fn abort(&self, regs: &[Registered]) {
        let added: Vec<&ChannelName> = regs
            .iter()
            .filter(|r| r.added)
            .map(|r| &r.channel)
            .collect();
        self.end(&added);
        self.release();
    }

    /// Phase 2: queues gap notices and replays in registration order, then the live events held meanwhile.
    pub async fn complete(&self, regs: &[Registered]) -> Result<(), EngineError> {
        let result = self.replay(regs).await;
        if result.is_err() {
            self.state.lock().closed = true;
            self.outlet.fail();
        }
        self.release();
        result
    }

    async fn replay(&self, regs: &[Registered]) -> Result<(), EngineError> {
        for reg in regs {
            // A state channel catches a client up with its snapshot when it has nothing yet or lost events.
            if reg.position.state.is_some() && (reg.fresh || reg.gap.is_some()) {
                if !reg.fresh {
                    stats::resumed(stats::Resume::Snapshot);
                }
                if !self.send_snapshot(reg, reg.gap.as_ref()).await {
                    return Ok(());
                }
                continue;
            }
            let mut lost = reg.gap.is_some();
            if !self.replay_one(reg, &mut lost).await? {
                return Ok(());
            }
            // A cursor (a resume): what it came to.
            if !reg.fresh {
                stats::resumed(match (lost, reg.position.state.is_some()) {
                    (true, true) => stats::Resume::Snapshot,
                    (true, false) => stats::Resume::Gap,
                    (false, _) => stats::Resume::Recovered,
                });
            }
        }
        Ok(())
    }

    /// Replays `reg`'s range page by page, each page read only once the connection has room for it, so a
    /// subscriber far behind holds one page of history, not its whole backlog; sets `lost` when it announces a
    /// hole. Returns false when the connection is gone.
    async fn replay_one(&self, reg: &Registered, lost: &mut bool) -> Result<bool, EngineError> {
        let upto = reg.position.last_offset;
        let mut after = reg.after;
        let mut gap = reg.gap.clone();
        loop {
            if self.state.lock().closed {
                return Ok(false);
            }
            let page = if after < upto {
                if !self.room().await {
                    return Ok(false);
                }
                Some(self.engine.replay(&reg.channel, after, upto).await?)
            } else {
                None
            };
            let (events, first_offset) =
                page.map_or((Vec::new(), after + 1), |p| (p.events, p.first_offset));
            // History may hold none of the range, or lose part of it while a slow subscriber replays (trimmed by
            // count or age): each hole is announced where it is.
            let start = events.first().map_or(first_offset, |e| e.offset);
            // A hole is announced even right after a known loss with a range (a resume whose history was trimmed
            // further before its first page): each notice names its own range. A loss without a range (the epoch
            // changed) already stands for everything before what follows.
            let covered = gap.as_ref().is_some_and(|g| g.to.is_none());
            let hole = (!covered && after < upto && start > after + 1).then(|| Gap {
                channel: reg.channel.clone(),
                reason: GapReason::HistoryTrimmed,
                epoch: reg.position.epoch.clone(),
                from: Some(after + 1),
                to: Some((start - 1).min(upto)),
            });
            *lost |= hole.is_some();
            for g in [gap.take(), hole].into_iter().flatten() {
                // A state channel's snapshot stands for everything through the position.
                if reg.position.state.is_some() {
                    return Ok(self.send_snapshot(reg, Some(&g)).await);
                }
                if self.outlet.gap(&g).is_err() {
                    self.state.lock().closed = true;
                    return Ok(false);
                }
            }
            let Some(last) = events.last().map(|e| e.offset) else {
                return Ok(true);
            };
            for e in &events {
                if !self.room().await {
                    return Ok(false);
                }
                if self.outlet.replayed(e, reg).is_err() {
                    self.state.lock().closed = true;
                    return Ok(false);
                }
                stats::delivered(O::TRANSPORT);
            }
            stats::REPLAYED.add(events.len() as u64);
            after = last;
        }
    }

    /// Sends a state channel's snapshot (after the gap notice, if any) as replayed events at the registration's
    /// position. Only the last carries that offset: the others carry 0 ("nothing yet"), so a client cut off
    /// mid-snapshot resumes with a whole snapshot again. Returns false when the connection is gone.
    async fn send_snapshot(&self, reg: &Registered, gap: Option<&Gap>) -> bool {
        let Some((values, style)) = &reg.position.state else {
            return true;
        };
        if gap.is_some_and(|g| self.outlet.gap(g).is_err()) {
            self.state.lock().closed = true;
            return false;
        }
        let events = state::render(values, style);
        let count = events.len();
        let time = now_ms();
        for (i, (name, data)) in events.into_iter().enumerate() {
            let offset = if i + 1 == count {
                reg.position.last_offset
            } else {
                0
            };
            let event = Event {
                channel: reg.channel.clone(),
                offset,
                epoch: reg.position.epoch.clone(),
                id: format!("snapshot:{}:{i}", reg.position.last_offset),
                name,
                data,
                time,
                seq: reg.position.seq,
                channel_id: reg.position.channel_id,
                state: None,
            };
            if !self.room().await {
                return false;
            }
            if self.outlet.replayed(&event, reg).is_err() {
                self.state.lock().closed = true;
                return false;
            }
            stats::delivered(O::TRANSPORT);
        }
        true
    }

    /// Waits until the connection has room for more of a replay; false if the feed closed meanwhile (detached,
    /// or overflowed by what it held).
    async fn room(&self) -> bool {
        self.outlet.room().await;
        !self.state.lock().closed
    }

    /// Sends the held live events and resumes direct delivery.
    fn release(&self) {
        let mut st = self.state.lock();
        let held = std::mem::take(&mut st.held);
        st.held_bytes = 0;
        st.replaying = false;
        for ev in &held {
            if st.closed || self.outlet.live(ev).is_err() {
                st.closed = true;
                return;
            }
            stats::delivered(O::TRANSPORT);
        }
    }

    /// From now on the client hears of the engine's health (Socket.IO: once its CONNECT reply is queued, which
    /// must be its first packet): told at once if the engine is unavailable. A client assumes it is ok.
    pub fn open_status(&self) {
        self.state.lock().told.get_or_insert(Health::Ok);
        self.tell_status();
    }

    /// Tells the client the engine's health now if it differs from what it was last told (nothing before
    /// [`Feed::open_status`]). Read under the feed's lock, so concurrent calls never send an older state last.
    pub fn tell_status(&self) {
        let mut st = self.state.lock();
        if st.closed {
            return;
        }
        let now = self.engine.health().borrow().clone();
        match &st.told {
            Some(told) if *told != now => {
                if self.outlet.status(&now).is_err() {
                    st.closed = true;
                } else {
                    st.told = Some(now);
                }
            }
            _ => {}
        }
    }

    /// Stops delivery of `channel`.
    pub fn unsubscribe(&self, channel: &ChannelName) {
        self.end(&[channel]);
    }

    /// Ends the registrations of `channels`, with their live events still held.
    fn end(&self, channels: &[&ChannelName]) {
        let gone: Vec<Held> = {
            let mut guard = self.state.lock();
            let st = &mut *guard;
            let (gone, kept) = std::mem::take(&mut st.channels)
                .into_iter()
                .partition(|h| channels.contains(&h.subscription.channel()));
            st.channels = kept;
            st.held.retain(|e| {
                let keep = !channels.contains(&&e.event.channel);
                if !keep {
                    st.held_bytes = st.held_bytes.saturating_sub(e.event.data.get().len());
                }
                keep
            });
            gone
        };
        // Dropped outside the feed's lock: ending a registration takes the engine's fan-out lock, under which
        // `deliver` takes the feed's.
        drop(gone);
    }

    /// Stops all delivery: the connection ended.
    pub fn detach(&self) {
        let channels = {
            let mut st = self.state.lock();
            st.closed = true;
            std::mem::take(&mut st.channels)
        };
        drop(channels);
    }

    /// The subscribed channels, in registration order.
    pub fn channels(&self) -> Vec<ChannelName> {
        self.state
            .lock()
            .channels
            .iter()
            .map(|h| h.subscription.channel().clone())
            .collect()
    }
}

#[cfg(test)]
mod tests;
