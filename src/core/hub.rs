//! In-process fan-out: which subscribers are on which channel, and the position every subscriber has been fed to.
//!
//! The store hands committed events to [`Hub::dispatch`] in commit order. A subscription taken with
//! [`Hub::subscribe`] is registered atomically with respect to dispatch, so the caller learns the exact position
//! from which it will receive live events: everything at or before it is in history, everything after arrives live.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;

use super::channel::ChannelName;
use super::event::SharedEvent;
use super::store::ChannelInfo;

/// Receives live events. Called with the hub lock held: must not block, must not call back into the hub.
pub trait Subscriber: Send + Sync {
    /// Takes one event of a channel this subscriber is on.
    fn deliver(&self, event: &Arc<SharedEvent>);
}

/// Identifies one subscriber registration, for unsubscribing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
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
    /// Node-wide commit sequence dispatched so far: events with a higher `seq` arrive live.
    pub seq: u64,
    /// The channel's last dispatched offset (0 when it has none).
    pub last_offset: u64,
    /// The channel's epoch (empty when the channel does not exist yet).
    pub epoch: Arc<str>,
    /// The channel's numeric id in the store (0 when it does not exist yet).
    pub channel_id: u64,
}

#[derive(Default)]
struct ChannelState {
    subscribers: Vec<(SubscriberId, Arc<dyn Subscriber>)>,
    last_offset: u64,
    epoch: Option<Arc<str>>,
    channel_id: u64,
}

#[derive(Default)]
struct State {
    channels: HashMap<ChannelName, ChannelState>,
    dispatched_seq: u64,
}

/// The in-process fan-out hub.
#[derive(Default)]
pub struct Hub {
    state: Mutex<State>,
}

impl Hub {
    /// A hub positioned after everything already committed.
    pub fn new(channels: &[ChannelInfo], last_seq: u64) -> Self {
        let channels = channels
            .iter()
            .map(|c| {
                let state = ChannelState {
                    last_offset: c.last_offset,
                    epoch: Some(c.epoch.clone()),
                    channel_id: c.id,
                    ..Default::default()
                };
                (c.channel.clone(), state)
            })
            .collect();
        Self {
            state: Mutex::new(State {
                channels,
                dispatched_seq: last_seq,
            }),
        }
    }

    /// Positions the hub after everything already committed (called once, before any publish).
    pub fn load(&self, channels: &[ChannelInfo], last_seq: u64) {
        *self.state.lock() = Self::new(channels, last_seq).state.into_inner();
    }

    /// Feeds committed events (in commit order) to every subscriber of their channels.
    pub fn dispatch(&self, events: &[Arc<SharedEvent>]) {
        let mut state = self.state.lock();
        for shared in events {
            let ev = &shared.event;
            let ch = state.channels.entry(ev.channel.clone()).or_default();
            ch.last_offset = ev.offset;
            ch.channel_id = ev.channel_id;
            if ch.epoch.as_ref() != Some(&ev.epoch) {
                ch.epoch = Some(ev.epoch.clone());
            }
            for (_, sub) in &ch.subscribers {
                sub.deliver(shared);
            }
            state.dispatched_seq = ev.seq;
        }
    }

    /// Registers `sub` on every channel in `channels` at one position, returned per channel in order.
    pub fn subscribe(
        &self,
        channels: &[ChannelName],
        id: SubscriberId,
        sub: &Arc<dyn Subscriber>,
    ) -> Vec<Position> {
        let mut state = self.state.lock();
        let seq = state.dispatched_seq;
        channels
            .iter()
            .map(|name| {
                let ch = state.channels.entry(name.clone()).or_default();
                if !ch.subscribers.iter().any(|(i, _)| *i == id) {
                    ch.subscribers.push((id, sub.clone()));
                }
                Position {
                    seq,
                    last_offset: ch.last_offset,
                    epoch: ch.epoch.clone().unwrap_or_else(|| "".into()),
                    channel_id: ch.channel_id,
                }
            })
            .collect()
    }

    /// Removes subscription `id` from `channel`.
    pub fn unsubscribe(&self, channel: &ChannelName, id: SubscriberId) {
        let mut state = self.state.lock();
        if let Some(ch) = state.channels.get_mut(channel) {
            ch.subscribers.retain(|(i, _)| *i != id);
            // A channel that has no events and no subscribers leaves no trace (subscribing to arbitrary
            // names must not grow memory).
            if ch.subscribers.is_empty() && ch.epoch.is_none() {
                state.channels.remove(channel);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::event::Event;
    use serde_json::value::RawValue;

    struct Collect(Mutex<Vec<u64>>);
    impl Subscriber for Collect {
        fn deliver(&self, event: &Arc<SharedEvent>) {
            self.0.lock().push(event.event.offset);
        }
    }

    fn event(channel: &ChannelName, offset: u64, seq: u64) -> Arc<SharedEvent> {
        SharedEvent::new(Event {
            channel: channel.clone(),
            offset,
            epoch: "e".into(),
            id: format!("{seq}"),
            name: "x".into(),
            data: RawValue::from_string("1".into()).unwrap(),
            time: 0,
            seq,
            channel_id: 1,
        })
    }

    #[test]
    fn subscription_position_splits_history_from_live() {
        let hub = Hub::new(&[], 0);
        let a = ChannelName::new("a").unwrap();
        hub.dispatch(&[event(&a, 1, 1), event(&a, 2, 2)]);
        let sub = Arc::new(Collect(Mutex::new(vec![])));
        let dyn_sub: Arc<dyn Subscriber> = sub.clone();
        let id = SubscriberId::next();
        let pos = hub.subscribe(std::slice::from_ref(&a), id, &dyn_sub);
        assert_eq!(
            (pos[0].seq, pos[0].last_offset, &*pos[0].epoch),
            (2, 2, "e")
        );
        hub.dispatch(&[event(&a, 3, 3)]);
        hub.unsubscribe(&a, id);
        hub.dispatch(&[event(&a, 4, 4)]);
        assert_eq!(*sub.0.lock(), vec![3]);
    }
}
