//! The core: channels, durable history, fan-out and sessions. It knows nothing of HTTP or sockets.
//!
//! [`Core`] is the one API every producer (HTTP, CLI, built-in sources) publishes through and every
//! transport subscribes through.

pub mod channel;
pub mod event;
pub mod hub;
pub mod retention;
pub mod session;
pub mod state;
pub mod store;

use std::sync::Arc;
use std::time::Duration;

use channel::ChannelName;
use channel::Pattern;
use event::{Event, NewEvent, PublishResult};
use hub::{Demand, Hub};
use state::Snapshot;
use store::{ChannelInfo, ReadLimit, Store, StoreError, StoreOptions};

/// Most events read from history per query.
pub const MAX_PAGE: usize = 1000;

/// One page of a replay: a catching-up subscriber holds at most this much history in memory at a time
/// (thousands of subscribers may be replaying at once).
pub const REPLAY_PAGE: ReadLimit = ReadLimit {
    events: 256,
    bytes: 256 << 10,
};

/// The core: a store for history and a hub for live fan-out.
pub struct Core {
    /// Durable history and sessions.
    pub store: Store,
    /// Live fan-out.
    pub hub: Arc<Hub>,
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

impl Core {
    /// Opens the store and positions the hub after everything already committed.
    pub fn open(opts: StoreOptions) -> Result<Arc<Self>, StoreError> {
        let hub = Arc::new(Hub::default());
        let sink_hub = hub.clone();
        let opened = Store::open(opts, Box::new(move |events| sink_hub.dispatch(&events)))?;
        hub.load(&opened.channels, opened.last_seq, opened.state);
        Ok(Arc::new(Self {
            store: opened.store,
            hub,
        }))
    }

    /// Publishes events atomically; returns after they are durable.
    pub async fn publish(&self, events: Vec<NewEvent>) -> Result<Vec<PublishResult>, StoreError> {
        self.store.publish(events).await
    }

    /// Declares channels matching `pattern` state channels: a new subscriber first gets `snapshot`.
    pub fn declare_state(&self, pattern: Pattern, snapshot: Snapshot) {
        self.hub.declare_state(pattern, snapshot);
    }

    /// Reports channels matching `pattern` gaining their first subscriber or losing their last, on every
    /// transport (what starts and stops a source's work); channels already subscribed are reported at once.
    pub fn demand(&self, pattern: Pattern) -> tokio::sync::mpsc::UnboundedReceiver<Demand> {
        self.hub.demand(pattern)
    }

    /// Events of `channel` after offset `after`, at most `limit`; `None` if the channel does not exist.
    pub async fn history(
        &self,
        channel: &ChannelName,
        after: u64,
        limit: usize,
    ) -> Result<Option<HistoryPage>, StoreError> {
        let page = self
            .store
            .range(
                channel,
                after,
                None,
                ReadLimit {
                    events: limit.min(MAX_PAGE),
                    bytes: usize::MAX,
                },
            )
            .await?;
        Ok(page.map(|(info, events)| HistoryPage { info, events }))
    }

    /// The first events of `channel` in `(after, upto]` still in history, at most one [`REPLAY_PAGE`]; the caller
    /// continues after the last one it got.
    pub async fn replay(
        &self,
        channel: &ChannelName,
        after: u64,
        upto: u64,
    ) -> Result<Replay, StoreError> {
        let mut out = Replay {
            events: Vec::new(),
            first_offset: after + 1,
        };
        if upto <= after {
            return Ok(out);
        }
        // One read: a retention sweep between the position and the events would hide a gap.
        if let Some((info, events)) = self
            .store
            .replay_range(channel, after, upto, REPLAY_PAGE)
            .await?
        {
            out.first_offset = info.first_offset;
            out.events = events;
        }
        Ok(out)
    }

    /// Flushes and stops the store.
    pub async fn shutdown(&self) {
        self.store.shutdown().await;
    }
}

/// Options with test-friendly defaults.
pub fn store_options(data_dir: std::path::PathBuf) -> StoreOptions {
    StoreOptions {
        data_dir,
        durability: store::Durability::Full,
        retention: retention::Retention::default(),
        session_ttl: Duration::from_secs(24 * 3600),
    }
}
