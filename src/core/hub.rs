//! In-process fan-out: which subscribers are on which channel, and the position every subscriber has been fed to.
//!
//! Committed events enter the hub in commit order through [`Hub::commit`], which updates each channel's position
//! and state and takes, per event, the channel's subscribers *as of that commit* (a shared, copy-on-write list).
//! A subscription taken with [`Hub::subscribe`] is registered atomically with respect to commits, so the caller
//! learns the exact position from which it receives live events: everything at or before it is in history (the
//! engine committed it before the hub saw it), everything after arrives live. The [`Deliveries`] a commit returns
//! can then be handed to subscribers later and elsewhere — the local engines give them to
//! [`crate::core::dispatcher`] so a publish is answered on its commit, not after its fan-out — without changing who
//! gets what: a subscriber registered after the commit is not in its list and finds the event in history.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;

use tokio::sync::mpsc;

use super::channel::{ChannelName, Pattern};
use super::engine::{
    ChannelInfo, Demand, Position, Subscriber, SubscriberId, Subscription, Unsubscribe,
};
use super::event::SharedEvent;
use super::state::{self, Declarations, Snapshot, Table, Values};

/// A channel's subscribers: copied on write only while a commit's [`Deliveries`] still hold the old list.
type Subscribers = Arc<Vec<(SubscriberId, Arc<dyn Subscriber>)>>;

/// Committed events with the subscribers each must reach (those registered when it committed), in commit order.
#[must_use = "deliveries do nothing until delivered"]
pub struct Deliveries(Vec<(Arc<SharedEvent>, Subscribers)>);

impl Deliveries {
    /// How many events have someone to reach.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether no event has a subscriber.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Hands each event to its subscribers, in order.
    pub fn deliver(self) {
        for (event, subscribers) in self.0 {
            for (_, sub) in subscribers.iter() {
                sub.deliver(&event);
            }
        }
    }
}

#[derive(Default)]
struct ChannelState {
    subscribers: Subscribers,
    last_offset: u64,
    epoch: Option<Arc<str>>,
    channel_id: u64,
    state: Option<Table>,
}

#[derive(Default)]
struct State {
    channels: HashMap<ChannelName, ChannelState>,
    /// The commit sequence of the last event committed into the hub.
    committed_seq: u64,
    declarations: Declarations,
    watchers: Vec<(Pattern, mpsc::UnboundedSender<Demand>)>,
}

impl State {
    fn notify(&mut self, channel: &ChannelName, active: bool) {
        self.watchers.retain(|(pattern, tx)| {
            !pattern.matches(channel.as_str())
                || tx
                    .send(Demand {
                        channel: channel.clone(),
                        active,
                    })
                    .is_ok()
        });
    }
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
                committed_seq: last_seq,
                ..Default::default()
            }),
        }
    }

    /// Positions the hub after everything already committed, with the stored state values (called once, before
    /// any publish).
    pub fn load(
        &self,
        channels: &[ChannelInfo],
        last_seq: u64,
        values: Vec<(ChannelName, state::Entry)>,
    ) {
        let mut loaded = Self::new(channels, last_seq).state.into_inner();
        for (channel, entry) in values {
            let ch = loaded.channels.entry(channel).or_default();
            ch.state.get_or_insert_with(Table::default).load(entry);
        }
        let mut st = self.state.lock();
        loaded.declarations = std::mem::take(&mut st.declarations);
        loaded.watchers = std::mem::take(&mut st.watchers);
        *st = loaded;
    }

    /// Declares channels matching `pattern` state channels whose snapshots are sent as `snapshot`.
    pub fn declare_state(&self, pattern: Pattern, snapshot: Snapshot) {
        self.state.lock().declarations.declare(pattern, snapshot);
    }

    /// Whether `channel` is declared a state channel (`[[state]]`, or the channels of a built-in source).
    pub fn is_state_channel(&self, channel: &ChannelName) -> bool {
        self.state
            .lock()
            .declarations
            .style(channel.as_str())
            .is_some()
    }

    /// How a declared state channel's snapshot is sent, if `channel` is declared.
    pub fn snapshot_style(&self, channel: &ChannelName) -> Option<Snapshot> {
        self.state
            .lock()
            .declarations
            .style(channel.as_str())
            .cloned()
    }

    /// Whether `channel` has a subscriber in this process.
    pub fn has_subscribers(&self, channel: &ChannelName) -> bool {
        self.state
            .lock()
            .channels
            .get(channel)
            .is_some_and(|c| !c.subscribers.is_empty())
    }

    /// How many channels the hub knows and how many registrations they hold (for `/metrics`).
    pub fn counts(&self) -> super::stats::Counts {
        let st = self.state.lock();
        super::stats::Counts {
            channels: st.channels.len() as u64,
            subscriptions: st
                .channels
                .values()
                .map(|c| c.subscribers.len() as u64)
                .sum(),
        }
    }

    /// The channels with a subscriber in this process.
    pub fn subscribed_channels(&self) -> Vec<ChannelName> {
        self.state
            .lock()
            .channels
            .iter()
            .filter(|(_, c)| !c.subscribers.is_empty())
            .map(|(name, _)| name.clone())
            .collect()
    }

    /// Tells every subscriber of `channel` that live delivery lost events ([`Subscriber::lost`]).
    pub fn lost(&self, channel: &ChannelName) {
        let state = self.state.lock();
        if let Some(ch) = state.channels.get(channel) {
            for (_, sub) in ch.subscribers.iter() {
                sub.lost(channel);
            }
        }
    }

    /// The current values of a state channel (without subscribing to it).
    pub fn state_of(&self, channel: &ChannelName) -> Option<Values> {
        let mut st = self.state.lock();
        st.channels
            .get_mut(channel)
            .and_then(|ch| ch.state.as_mut())
            .map(Table::values)
    }

    /// Reports channels matching `pattern` gaining their first subscriber or losing their last; channels that
    /// already have subscribers are reported at once.
    pub fn demand(&self, pattern: Pattern) -> mpsc::UnboundedReceiver<Demand> {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut st = self.state.lock();
        for (name, ch) in &st.channels {
            if !ch.subscribers.is_empty() && pattern.matches(name.as_str()) {
                let _ = tx.send(Demand {
                    channel: name.clone(),
                    active: true,
                });
            }
        }
        st.watchers.push((pattern, tx));
        rx
    }

    /// Feeds committed events (in commit order) to every subscriber of their channels, now.
    pub fn dispatch(&self, events: &[Arc<SharedEvent>]) {
        self.commit(events).deliver();
    }

    /// Takes committed events (in commit order): advances each channel's position and state, and returns whom each
    /// event must reach. Deliver them in the order commits return them.
    pub fn commit(&self, events: &[Arc<SharedEvent>]) -> Deliveries {
        let mut out = Vec::new();
        let mut state = self.state.lock();
        for shared in events {
            let ev = &shared.event;
            let ch = state.channels.entry(ev.channel.clone()).or_default();
            ch.last_offset = ev.offset;
            ch.channel_id = ev.channel_id;
            if ch.epoch.as_ref() != Some(&ev.epoch) {
                ch.epoch = Some(ev.epoch.clone());
            }
            if let Some(change) = &ev.state {
                ch.state
                    .get_or_insert_with(Table::default)
                    .apply(&ev.name, change);
            }
            if !ch.subscribers.is_empty() {
                out.push((shared.clone(), ch.subscribers.clone()));
            }
            state.committed_seq = ev.seq;
        }
        Deliveries(out)
    }

    /// [`Hub::subscribe`] with the handles that end each registration.
    pub fn subscribe_handles(
        self: &Arc<Self>,
        channels: &[ChannelName],
        id: SubscriberId,
        sub: &Arc<dyn Subscriber>,
    ) -> Vec<(Position, Subscription)> {
        let owner: Arc<dyn Unsubscribe> = self.clone();
        self.subscribe(channels, id, sub)
            .into_iter()
            .zip(channels)
            .map(|(pos, ch)| (pos, Subscription::new(ch.clone(), id, owner.clone())))
            .collect()
    }

    /// Registers `sub` on every channel in `channels` at one position, returned per channel in order.
    pub fn subscribe(
        &self,
        channels: &[ChannelName],
        id: SubscriberId,
        sub: &Arc<dyn Subscriber>,
    ) -> Vec<Position> {
        let mut guard = self.state.lock();
        let state = &mut *guard;
        let seq = state.committed_seq;
        let mut activated = Vec::new();
        let positions = channels
            .iter()
            .map(|name| {
                let ch = state.channels.entry(name.clone()).or_default();
                if !ch.subscribers.iter().any(|(i, _)| *i == id) {
                    if ch.subscribers.is_empty() {
                        activated.push(name);
                    }
                    Arc::make_mut(&mut ch.subscribers).push((id, sub.clone()));
                }
                // A declared channel has a (possibly empty) snapshot; an undeclared one that carries state
                // sends each value as the event that set it.
                let style = state.declarations.style(name.as_str()).cloned();
                let state = match (&mut ch.state, style) {
                    (Some(t), style) => Some((t.values(), style.unwrap_or(Snapshot::Each))),
                    (None, Some(style)) => Some((Values::default(), style)),
                    (None, None) => None,
                };
                Position {
                    seq,
                    last_offset: ch.last_offset,
                    epoch: ch.epoch.clone().unwrap_or_else(|| "".into()),
                    channel_id: ch.channel_id,
                    state,
                }
            })
            .collect();
        if !state.watchers.is_empty() {
            for name in activated {
                state.notify(name, true);
            }
        }
        positions
    }
}

impl Unsubscribe for Hub {
    fn unsubscribe(&self, channel: &ChannelName, id: SubscriberId) {
        let mut state = self.state.lock();
        if let Some(ch) = state.channels.get_mut(channel) {
            let before = ch.subscribers.len();
            if ch.subscribers.iter().any(|(i, _)| *i == id) {
                Arc::make_mut(&mut ch.subscribers).retain(|(i, _)| *i != id);
            }
            let emptied = before > 0 && ch.subscribers.is_empty();
            // A channel that has no events and no subscribers leaves no trace (subscribing to arbitrary
            // names must not grow memory).
            if ch.subscribers.is_empty() && ch.epoch.is_none() && ch.state.is_none() {
                state.channels.remove(channel);
            }
            if emptied && !state.watchers.is_empty() {
                state.notify(channel, false);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::engine::Unsubscribe;
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
            state: None,
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

    #[test]
    fn demand_reports_first_subscriber_and_last_leaving() {
        let hub = Hub::new(&[], 0);
        let a = ChannelName::new("unit:a").unwrap();
        let other = ChannelName::new("other").unwrap();
        let sub: Arc<dyn Subscriber> = Arc::new(Collect(Mutex::new(vec![])));
        let (x, y) = (SubscriberId::next(), SubscriberId::next());
        hub.subscribe(std::slice::from_ref(&a), x, &sub);
        // Already-active channels are reported when the watcher registers.
        let mut rx = hub.demand(Pattern::new("unit:*"));
        assert_eq!(
            rx.try_recv().unwrap(),
            Demand {
                channel: a.clone(),
                active: true
            }
        );
        hub.subscribe(std::slice::from_ref(&a), y, &sub);
        hub.subscribe(std::slice::from_ref(&other), y, &sub);
        hub.unsubscribe(&a, x);
        assert!(
            rx.try_recv().is_err(),
            "a second subscriber or one leaving of two is not a change"
        );
        hub.unsubscribe(&a, y);
        assert_eq!(
            rx.try_recv().unwrap(),
            Demand {
                channel: a.clone(),
                active: false
            }
        );
        hub.subscribe(std::slice::from_ref(&a), x, &sub);
        assert_eq!(
            rx.try_recv().unwrap(),
            Demand {
                channel: a,
                active: true
            }
        );
    }
}
