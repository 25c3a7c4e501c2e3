//! The SQLite engine (the default): durable history, state and sessions in one SQLite file, fan-out and presence
//! in this process.

mod store;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::mpsc;

use super::{
    ChannelInfo, Demand, Engine, EngineError, Lane, Position, PresenceGuard, ReadLimit, Subscriber,
    SubscriberId, Subscription,
};
use crate::core::channel::{ChannelName, Pattern};
use crate::core::dispatcher::Dispatcher;
use crate::core::event::{Event, NewEvent, PublishResult, SharedEvent};
use crate::core::hub::Hub;
use crate::core::presence::{Member, Presence, PresenceEvent};
use crate::core::retention::Retention;
use crate::core::state::{Snapshot, Values};
use store::{Store, StoreError};

/// How hard a commit is made durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// fsync on every group commit: survives power loss.
    #[default]
    Full,
    /// fsync at WAL checkpoints only: survives process crashes, not power loss (after which the next start moves
    /// every channel to a new epoch, so clients never resume onto reused offsets).
    Normal,
}

/// Options of the SQLite engine.
#[derive(Debug, Clone)]
pub struct Options {
    /// Directory holding `herald.db`.
    pub data_dir: PathBuf,
    /// Fsync policy.
    pub durability: Durability,
    /// History bounds.
    pub retention: Retention,
    /// Disconnected sessions older than this are forgotten.
    pub session_ttl: Duration,
}

impl From<StoreError> for EngineError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Closed => EngineError::Closed,
            other => EngineError::unavailable(other),
        }
    }
}

/// SQLite for what lasts, the in-process hub for fan-out.
pub struct SqliteEngine {
    store: Store,
    hub: Arc<Hub>,
    dispatcher: Arc<Dispatcher>,
    presence: Arc<Presence>,
}

impl SqliteEngine {
    /// Opens (creating if needed) the database and positions fan-out after everything already committed.
    pub fn open(opts: Options) -> Result<Arc<dyn Engine>, EngineError> {
        let hub = Arc::new(Hub::default());
        let sink_hub = hub.clone();
        let dispatcher = Arc::new(Dispatcher::start().map_err(EngineError::unavailable)?);
        let sink_dispatcher = dispatcher.clone();
        // The writer commits and moves on; the fan-out thread delivers (in commit order, bounded).
        let sink = move |events: Vec<Arc<SharedEvent>>| {
            sink_dispatcher.send_blocking(sink_hub.commit(&events));
        };
        let opened = Store::open(opts, Box::new(sink))?;
        hub.load(&opened.channels, opened.last_seq, opened.state);
        Ok(Arc::new(Self {
            store: opened.store,
            hub,
            dispatcher,
            presence: Arc::default(),
        }))
    }
}

#[async_trait]
impl Engine for SqliteEngine {
    async fn publish(&self, events: Vec<NewEvent>) -> Result<Vec<PublishResult>, EngineError> {
        Ok(self.store.publish(events).await?)
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
        Ok(self.store.channel(name).await?)
    }

    async fn channels(&self) -> Result<Vec<ChannelInfo>, EngineError> {
        Ok(self.store.channels().await?)
    }

    async fn range(
        &self,
        lane: Lane,
        channel: &ChannelName,
        after: u64,
        upto: Option<u64>,
        limit: ReadLimit,
    ) -> Result<Option<(ChannelInfo, Vec<Event>)>, EngineError> {
        Ok(self.store.range(lane, channel, after, upto, limit).await?)
    }

    async fn last_offset_at(&self, channel_id: u64, seq: u64) -> Result<Option<u64>, EngineError> {
        Ok(self.store.last_offset_at(channel_id, seq).await?)
    }

    async fn put_session(&self, pid: &str, record: String) -> Result<(), EngineError> {
        Ok(self.store.put_session(pid, record).await?)
    }

    async fn session(&self, pid: &str) -> Result<Option<String>, EngineError> {
        Ok(self.store.session(pid).await?)
    }

    fn session_detached(&self, pid: &str) {
        self.store.session_detached(pid);
    }

    fn delete_session(&self, pid: &str) {
        self.store.delete_session(pid);
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
        self.store.shutdown().await;
    }
}
