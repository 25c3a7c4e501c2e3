//! The running monitor: one scheduling task per monitor (fixed rate with start-up jitter, retries, timeouts),
//! CRUD/pause/resume/check-now, and publishing through the engine — status events as state-channel changes
//! (throttled per monitor, the final state always sent), log events, and stats — with its own durable data kept
//! through the engine as well ([`super::store`]). In a cluster each monitor's task checks only while its node
//! holds the lease `monitor:{id}` ([`crate::core::engine::lease`]); the other nodes wait for it, so a dead
//! holder's monitors are checked again elsewhere within `LEASE_TTL + LEASE_TTL / 2` (15 s).
//!
//! Definitions are shared through the store's channels: every node follows `herald:monitors` and
//! `herald:monitor-runtime` and reconciles its monitors with what is stored after each change (a monitor created,
//! changed, paused or deleted through any node's API is so on every node; a node that does not check a monitor
//! shows the runtime its checker stores). Changes and reconciling are serialised on one node, and a change is
//! stored before it is answered, so what is stored is never older than what a node holds.
//!
//! A check asked of a node that does not check the monitor (`POST /api/monitors/{id}/check`, a client's
//! `request:refresh`) is forwarded to the one that does through `herald:monitor-requests`; "check now" then answers
//! with the next entry of the monitor's log (or 503 `monitor_unavailable` if none comes in time: no node checks it).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use serde_json::{Value, json};
use tokio::sync::Notify;
use tokio::task::AbortHandle;
use tokio::time::Instant;

use super::MonitorConfig;
use super::check::{FieldError, Outcome};
use super::events::{self, Events};
use super::migrate::{self, MigrateError};
use super::runtime::{Runtime, Status};
use super::spec::MonitorSpec;
use super::store::{LogEntry, LoggedCheck, MonitorStore, RUNTIME_EVERY};
use super::target;
use crate::core::Engine;
use crate::core::channel::{ChannelName, Pattern};
use crate::core::engine::lease::{self, LEASE_TTL};
use crate::core::engine::{EngineError, Subscriber, SubscriberId, Subscription};
use crate::core::event::NewEvent;
use crate::core::event::SharedEvent;
use crate::core::event::now_ms;
use crate::core::state::{Snapshot, StateChange};
use crate::core::stats::Origin;
use crate::source::keyed;

/// Why a monitor operation failed.
#[derive(Debug, thiserror::Error)]
pub enum MonitorError {
    /// The definition is invalid.
    #[error(transparent)]
    Invalid(#[from] FieldError),
    /// No such monitor.
    #[error("no monitor {0:?}")]
    NotFound(String),
    /// The id is taken.
    #[error("a monitor with id {0:?} exists")]
    Conflict(String),
    /// Checked too recently.
    #[error("monitor {0:?} was checked less than {1:?} ago")]
    TooSoon(String, Duration),
    /// No node of the cluster answered a forwarded check in time.
    #[error(
        "monitor {0:?} is checked by another node of the cluster, which did not answer in time (it may be handing the monitor over); its results reach every node on its channel, or ask again in a moment"
    )]
    Unavailable(String),
    /// Storage failed.
    #[error("monitor storage: {0}")]
    Storage(#[from] EngineError),
    /// The former `monitors.db` could not be imported.
    #[error(transparent)]
    Migration(#[from] MigrateError),
}

/// When a monitor's record was last stored, and whether its runtime changed since.
struct Saved {
    at: Instant,
    dirty: bool,
}

struct Emit {
    last_sent: Option<Instant>,
    pending: bool,
    last_full: Option<Value>,
}

struct Entry {
    id: String,
    spec: Mutex<MonitorSpec>,
    rt: Mutex<Runtime>,
    refresh: Notify,
    running: tokio::sync::Mutex<()>,
    task: Mutex<Option<AbortHandle>>,
    emit: Mutex<Emit>,
    /// Serialises status sends, so the last one published carries the latest state.
    sending: tokio::sync::Mutex<()>,
    /// Serialises storing the record (held while it is published), so the last stored is the latest.
    storing: tokio::sync::Mutex<Saved>,
    /// Offset of its log channel after which its own entries start (older ones are a deleted namesake's).
    log_after: u64,
    /// Revision of the definition, incremented by each change.
    rev: AtomicU64,
    /// How many of its checking tasks run on this node (holding its lease): more than 0 while it is checked here.
    /// A count, not a flag: a replaced task's guard is dropped when its abort takes effect, which may be after its
    /// successor started and marked the entry, and must not unmark it.
    held: tokio::sync::watch::Sender<usize>,
}

/// Most check requests from other nodes waiting to be handed to their monitors (beyond, a request is dropped:
/// the monitor is checked on schedule anyway).
pub const REQUESTS_QUEUE: usize = 256;

/// Takes other nodes' check requests (the monitor ids) to the task that wakes their monitors.
struct Requests(tokio::sync::mpsc::Sender<String>);
impl Subscriber for Requests {
    fn deliver(&self, event: &Arc<SharedEvent>) {
        #[derive(serde::Deserialize)]
        struct Request {
            id: String,
        }
        if let Ok(r) = serde_json::from_str::<Request>(event.event.data.get()) {
            let _ = self.0.try_send(r.id);
        }
    }
}

/// Hands the first event it gets to a waiting "check now" (a check's log entry).
struct FirstEvent(Mutex<Option<tokio::sync::oneshot::Sender<Arc<SharedEvent>>>>);
impl Subscriber for FirstEvent {
    fn deliver(&self, event: &Arc<SharedEvent>) {
        if let Some(tx) = self.0.lock().take() {
            let _ = tx.send(event.clone());
        }
    }
}

/// Marks an entry checked here while its checking task runs (dropped with the task when the lease is lost).
struct Held(Arc<Entry>);
impl Held {
    fn new(e: Arc<Entry>) -> Self {
        e.held.send_modify(|n| *n += 1);
        Self(e)
    }
}
impl Drop for Held {
    fn drop(&mut self) {
        self.0.held.send_modify(|n| *n = n.saturating_sub(1));
    }
}

/// Wakes the reconciling task on any change of the stored definitions or runtimes (coalesced: a [`Notify`]
/// holds one wake-up, so nothing queues however fast records change).
struct Follow(Arc<Notify>);
impl Subscriber for Follow {
    fn deliver(&self, _event: &Arc<SharedEvent>) {
        self.0.notify_one();
    }
    fn lost(&self, _channel: &ChannelName) {
        self.0.notify_one();
    }
}

impl Entry {
    fn channel(&self, default: &ChannelName) -> ChannelName {
        self.spec
            .lock()
            .channel
            .as_deref()
            .and_then(|c| ChannelName::new(c).ok())
            .unwrap_or_else(|| default.clone())
    }
}

/// How late scheduled checks started (the check-time drift).
#[derive(Debug, Default, Clone, Copy)]
pub struct Lateness {
    /// Scheduled checks started.
    pub checks: u64,
    /// Sum of their delays, in microseconds.
    pub total_us: u64,
    /// Largest delay, in microseconds.
    pub max_us: u64,
}

/// The service monitor.
pub struct Monitors {
    core: Arc<dyn Engine>,
    store: MonitorStore,
    events: Events,
    channel: ChannelName,
    refresh_interval: Duration,
    entries: Mutex<BTreeMap<String, Arc<Entry>>>,
    /// The last stats published; held across computing and publishing, so the newest counts are published last.
    stats: tokio::sync::Mutex<Option<Value>>,
    lateness: Mutex<Lateness>,
    checks: AtomicU64,
    /// Serialises definition changes with reconciling them against the store.
    defs: tokio::sync::Mutex<()>,
    /// This node's registrations on the store's channels (see the module docs).
    follow: Mutex<Vec<Subscription>>,
}

impl Monitors {
    /// Loads the stored monitors (first importing a former `monitors.db` found in `legacy_dir`, once), applies
    /// the configured monitors and starts checking.
    pub async fn start(
        core: Arc<dyn Engine>,
        legacy_dir: Option<&std::path::Path>,
        cfg: &MonitorConfig,
    ) -> Result<Arc<Self>, MonitorError> {
        let channel = ChannelName::new(&cfg.channel)
            .map_err(|e| FieldError::new("monitor.channel", e.to_string()))?;
        let events = Events::resolve(cfg.preset, &cfg.events, &cfg.channel, cfg.throttle);
        ChannelName::new(&events.stats_channel)
            .map_err(|e| FieldError::new("monitor.events.stats_channel", e.to_string()))?;
        if events.stats_channel == cfg.channel && matches!(events.snapshot, Snapshot::Bulk { .. }) {
            return Err(FieldError::new(
                "monitor.events.stats_channel",
                "cannot be the monitor channel when its snapshot is a bulk event (the stats would be in the array)",
            )
            .into());
        }
        let store = MonitorStore::new(core.clone())?;
        if let Some(dir) = legacy_dir {
            migrate::import(&store, dir, cfg).await?;
        }
        let stored = store.load().await?;
        let this = Arc::new(Self {
            core,
            store,
            events,
            channel,
            refresh_interval: cfg.refresh_interval,
            entries: Mutex::new(BTreeMap::new()),
            stats: tokio::sync::Mutex::new(None),
            lateness: Mutex::new(Lateness::default()),
            checks: AtomicU64::new(0),
            defs: tokio::sync::Mutex::new(()),
            follow: Mutex::new(Vec::new()),
        });
        for s in stored {
            this.insert(s.id, s.spec, s.runtime, s.log_after, s.rev);
        }
        for (i, spec) in cfg.monitors.iter().enumerate() {
            let field = |e: FieldError| {
                FieldError::new(format!("monitor.monitors[{i}].{}", e.field), e.message)
            };
            let Some(id) = spec.id.clone() else {
                return Err(FieldError::new(
                    format!("monitor.monitors[{i}].id"),
                    "required for monitors declared in the config",
                )
                .into());
            };
            spec.validate().map_err(field)?;
            let existing = this.entries.lock().get(&id).cloned();
            match existing {
                Some(e) if *e.spec.lock() == *spec => {}
                Some(e) => {
                    let before = e.channel(&this.channel);
                    *e.spec.lock() = spec.clone();
                    e.rev.fetch_add(1, Ordering::Relaxed);
                    this.store_record(&e).await?;
                    this.left_channel(&e, before).await;
                }
                None => {
                    let log_after = this.store.log_end(&id).await?;
                    let e = this.insert(id, spec.clone(), Runtime::default(), log_after, 1);
                    this.store_record(&e).await?;
                }
            }
        }
        this.declare();
        let entries = this.all();
        this.resume_published(&entries).await;
        for e in &entries {
            let interval = e.spec.lock().interval();
            // Spread the first checks so monitors loaded together do not fire in lockstep.
            let jitter = interval
                .min(Duration::from_secs(5))
                .mul_f64(rand::random::<f64>());
            this.publish_status(e, true).await;
            this.schedule(e, jitter);
        }
        this.publish_stats().await;
        this.follow_store().await?;
        Ok(this)
    }

    /// Follows the store's channels (registered now, so no change after this point is missed) and reconciles on
    /// each change.
    async fn follow_store(self: &Arc<Self>) -> Result<(), MonitorError> {
        let wake = Arc::new(Notify::new());
        let subs = self
            .core
            .subscribe(
                &self.store.channels(),
                SubscriberId::next(),
                Arc::new(Follow(wake.clone())),
            )
            .await?;
        let (requests_tx, mut requests) = tokio::sync::mpsc::channel(REQUESTS_QUEUE);
        let more = self
            .core
            .subscribe(
                &[self.store.requests()?],
                SubscriberId::next(),
                Arc::new(Requests(requests_tx)),
            )
            .await?;
        *self.follow.lock() = subs.into_iter().chain(more).map(|(_, s)| s).collect();
        let this = self.clone();
        tokio::spawn(async move {
            while let Some(id) = requests.recv().await {
                let entry = this.entries.lock().get(&id).cloned();
                if let Some(e) = entry.filter(|e| *e.held.borrow() > 0) {
                    e.refresh.notify_one();
                }
            }
        });
        let this = self.clone();
        tokio::spawn(async move {
            loop {
                wake.notified().await;
                if let Err(e) = this.reconcile().await {
                    tracing::warn!(error = %e, "monitor could not read the stored definitions; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    wake.notify_one();
                }
            }
        });
        Ok(())
    }

    /// Makes this node's monitors what the store holds: monitors created, changed or deleted on other nodes are
    /// so here; monitors this node does not check take the stored runtime.
    async fn reconcile(self: &Arc<Self>) -> Result<(), MonitorError> {
        let _defs = self.defs.lock().await;
        let stored = self.store.load().await?;
        let mut changed = false;
        let mut ids = std::collections::HashSet::with_capacity(stored.len());
        for s in stored {
            ids.insert(s.id.clone());
            let existing = self.entries.lock().get(&s.id).cloned();
            match existing {
                None => {
                    let e = self.insert(s.id, s.spec, s.runtime, s.log_after, s.rev);
                    self.declare();
                    self.schedule(&e, Duration::ZERO);
                    changed = true;
                }
                Some(e) if *e.spec.lock() != s.spec || e.rev.load(Ordering::Relaxed) != s.rev => {
                    *e.spec.lock() = s.spec;
                    *e.rt.lock() = s.runtime;
                    e.rev.store(s.rev, Ordering::Relaxed);
                    self.declare();
                    self.schedule(&e, Duration::ZERO);
                    changed = true;
                }
                Some(e) => {
                    if *e.held.borrow() == 0 {
                        *e.rt.lock() = s.runtime;
                    }
                }
            }
        }
        let gone: Vec<Arc<Entry>> = self
            .all()
            .into_iter()
            .filter(|e| !ids.contains(&e.id))
            .collect();
        for e in gone {
            let mut task = e.task.lock();
            if let Some(t) = task.take() {
                t.abort();
            }
            self.entries.lock().remove(&e.id);
            changed = true;
        }
        if changed {
            self.publish_stats().await;
        }
        Ok(())
    }

    /// Takes what subscribers already have (the durable state of the monitor channels) as what was last sent, so
    /// a restart publishes only the monitors (and stats) that changed meanwhile, and seed 002's changed-field
    /// deltas are relative to what clients hold.
    async fn resume_published(&self, entries: &[Arc<Entry>]) {
        let stored = async |channel: &ChannelName, key: &str| -> Option<Value> {
            let values = self.core.state_of(channel).await.ok()??;
            serde_json::from_str(values.get(key)?.value.get()).ok()
        };
        for e in entries {
            let last = stored(&e.channel(&self.channel), &e.id).await;
            e.emit.lock().last_full = last;
        }
        if let Ok(channel) = ChannelName::new(&self.events.stats_channel) {
            *self.stats.lock().await = stored(&channel, self.events.stats_key).await;
        }
    }

    /// Declares the monitor channels state channels with the preset's snapshot.
    fn declare(&self) {
        let mut channels: Vec<ChannelName> = vec![self.channel.clone()];
        for e in self.entries.lock().values() {
            let c = e.channel(&self.channel);
            if !channels.contains(&c) {
                channels.push(c);
            }
        }
        let stats_apart = !channels
            .iter()
            .any(|c| c.as_str() == self.events.stats_channel);
        for c in channels {
            self.core
                .declare_state(Pattern::new(c.as_str()), self.events.snapshot.clone());
        }
        // Stats sharing a monitor channel are one more key of its state.
        if stats_apart {
            self.core
                .declare_state(Pattern::new(&self.events.stats_channel), Snapshot::Each);
        }
    }

    fn insert(
        &self,
        id: String,
        spec: MonitorSpec,
        mut rt: Runtime,
        log_after: u64,
        rev: u64,
    ) -> Arc<Entry> {
        let dirty = if spec.paused {
            rt.set_status(Status::Paused, now_ms())
        } else if rt.status == Status::Paused {
            rt.set_status(Status::Pending, now_ms())
        } else {
            false
        };
        let e = Arc::new(Entry {
            id: id.clone(),
            spec: Mutex::new(spec),
            rt: Mutex::new(rt),
            refresh: Notify::new(),
            running: tokio::sync::Mutex::new(()),
            task: Mutex::new(None),
            emit: Mutex::new(Emit {
                last_sent: None,
                pending: false,
                last_full: None,
            }),
            sending: tokio::sync::Mutex::new(()),
            storing: tokio::sync::Mutex::new(Saved {
                at: Instant::now(),
                dirty,
            }),
            log_after,
            rev: AtomicU64::new(rev),
            held: tokio::sync::watch::channel(0).0,
        });
        self.entries.lock().insert(id, e.clone());
        e
    }

    fn entry(&self, id: &str) -> Result<Arc<Entry>, MonitorError> {
        self.entries
            .lock()
            .get(id)
            .cloned()
            .ok_or_else(|| MonitorError::NotFound(id.to_owned()))
    }

    /// Every monitor's full object, ordered by id.
    pub fn list(&self) -> Vec<Value> {
        let now = now_ms();
        let entries = self.all();
        entries.iter().map(|e| self.view(e, now)).collect()
    }

    /// One monitor's full object.
    pub fn get(&self, id: &str) -> Result<Value, MonitorError> {
        Ok(self.view(&*self.entry(id)?, now_ms()))
    }

    /// The definition of one monitor.
    pub fn spec(&self, id: &str) -> Result<MonitorSpec, MonitorError> {
        Ok(self.entry(id)?.spec.lock().clone())
    }

    /// Creates a monitor (validated, host names resolved) and checks it at once.
    pub async fn create(self: &Arc<Self>, mut spec: MonitorSpec) -> Result<Value, MonitorError> {
        spec.validate()?;
        spec.check
            .validate_reachable(Duration::from_secs(5))
            .await?;
        let id = match spec.id.clone() {
            Some(id) => id,
            None => new_id(),
        };
        spec.id = Some(id.clone());
        let defs = self.defs.lock().await;
        let log_after = self.store.log_end(&id).await?;
        if self.entries.lock().contains_key(&id) {
            return Err(MonitorError::Conflict(id));
        }
        let e = self.insert(id.clone(), spec, Runtime::default(), log_after, 1);
        if let Err(err) = self.store_record(&e).await {
            self.entries.lock().remove(&id);
            return Err(err);
        }
        drop(defs);
        self.declare();
        // The new monitor's first status event is its first check's, as with seed 000's backend: its frontend
        // pushes the POST answer onto its list and applies `target:updated` by id, so a status event published
        // before the answer reached it (as an immediate "pending" event could) would be added twice. A paused
        // monitor runs no check: its status goes out at once.
        let this = self.clone();
        let entry = e.clone();
        let paused = e.spec.lock().paused;
        tokio::spawn(async move {
            this.publish_stats().await;
            if paused {
                this.publish_status(&entry, true).await;
            } else {
                this.schedule(&entry, Duration::ZERO);
            }
        });
        Ok(self.view(&e, now_ms()))
    }

    /// Replaces a monitor's definition (its id stays) and checks it at once.
    pub async fn update(
        self: &Arc<Self>,
        id: &str,
        mut spec: MonitorSpec,
    ) -> Result<Value, MonitorError> {
        if spec.id.as_deref().is_some_and(|s| s != id) {
            return Err(FieldError::new("id", "does not match the URL").into());
        }
        spec.id = Some(id.to_owned());
        spec.validate()?;
        spec.check
            .validate_reachable(Duration::from_secs(5))
            .await?;
        let defs = self.defs.lock().await;
        let e = self.entry(id)?;
        let paused = spec.paused;
        let before = e.channel(&self.channel);
        *e.spec.lock() = spec;
        e.rev.fetch_add(1, Ordering::Relaxed);
        self.left_channel(&e, before).await;
        {
            let mut rt = e.rt.lock();
            let status = if paused {
                Status::Paused
            } else {
                Status::Pending
            };
            rt.failures = 0;
            rt.set_status(status, now_ms());
        }
        self.store_record(&e).await?;
        drop(defs);
        self.declare();
        self.publish_status(&e, true).await;
        self.publish_stats().await;
        self.schedule(&e, Duration::ZERO);
        Ok(self.view(&e, now_ms()))
    }

    /// Deletes a monitor; subscribers get its removal.
    pub async fn delete(self: &Arc<Self>, id: &str) -> Result<(), MonitorError> {
        let _defs = self.defs.lock().await;
        let e = self.entry(id)?;
        // The send lock keeps a status send that is under way from publishing after the removal, the store lock
        // a check's record from being stored after it.
        let _sending = e.sending.lock().await;
        let _storing = e.storing.lock().await;
        if !self.is_current(&e) {
            return Err(MonitorError::NotFound(id.to_owned()));
        }
        // Subscribers' removal and the stored record's, in one commit.
        let mut batch = vec![self.removal(&e, e.channel(&self.channel))];
        batch.extend(self.store.removal(id));
        self.store.publish(batch).await?;
        {
            let mut task = e.task.lock();
            if let Some(t) = task.take() {
                t.abort();
            }
            self.entries.lock().remove(id);
        }
        self.publish_stats().await;
        Ok(())
    }

    /// Removes `e` from the state of `before` if it moved to another channel (else it would stay there for good).
    async fn left_channel(&self, e: &Entry, before: ChannelName) {
        if e.channel(&self.channel) != before {
            self.publish(vec![self.removal(e, before)]).await;
        }
    }

    /// The event that removes `e` from `channel`'s state (deleted, or moved elsewhere).
    fn removal(&self, e: &Entry, channel: ChannelName) -> NewEvent {
        NewEvent {
            channel,
            name: self.events.removed.clone(),
            data: crate::json::raw(&json!({"id": e.id, "serviceId": e.id})),
            id: None,
            state: Some(StateChange::Remove { key: e.id.clone() }),
        }
    }

    /// Every monitor, ordered by id (a copy: no lock is held while they are used).
    fn all(&self) -> Vec<Arc<Entry>> {
        self.entries.lock().values().cloned().collect()
    }

    /// Pauses or resumes a monitor.
    pub async fn set_paused(
        self: &Arc<Self>,
        id: &str,
        paused: bool,
    ) -> Result<Value, MonitorError> {
        let defs = self.defs.lock().await;
        let e = self.entry(id)?;
        e.spec.lock().paused = paused;
        e.rev.fetch_add(1, Ordering::Relaxed);
        {
            let mut rt = e.rt.lock();
            rt.failures = 0;
            rt.set_status(
                if paused {
                    Status::Paused
                } else {
                    Status::Pending
                },
                now_ms(),
            );
        }
        self.store_record(&e).await?;
        drop(defs);
        self.publish_status(&e, true).await;
        self.publish_stats().await;
        self.schedule(&e, Duration::ZERO);
        Ok(self.view(&e, now_ms()))
    }

    /// Runs a check now and returns what it found.
    pub async fn check_now(self: &Arc<Self>, id: &str) -> Result<Outcome, MonitorError> {
        let e = self.entry(id)?;
        if e.spec.lock().paused {
            return Err(FieldError::new("paused", "the monitor is paused; resume it first").into());
        }
        // Checked here only by the lease holder (its task may be just starting: a moment's wait).
        let mut held = e.held.subscribe();
        let waited = tokio::time::timeout(Duration::from_secs(1), held.wait_for(|n| *n > 0))
            .await
            .is_ok_and(|r| r.is_ok());
        if !waited {
            return self.check_elsewhere(&e).await;
        }
        Ok(self.check(&e).await)
    }

    /// Asks the node that checks `e` for a check now and returns what the check logged (the next log entry,
    /// awaited for the check's timeout and 5 s more).
    async fn check_elsewhere(&self, e: &Arc<Entry>) -> Result<Outcome, MonitorError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let log = self.store.log_of(&e.id)?;
        // Registered before the request is published, so the entry its check logs cannot be missed.
        let _sub = self
            .core
            .subscribe(
                &[log],
                SubscriberId::next(),
                Arc::new(FirstEvent(Mutex::new(Some(tx)))),
            )
            .await?;
        self.store.publish(vec![self.store.request(&e.id)?]).await?;
        let within = e.spec.lock().timeout() + Duration::from_secs(5);
        let event = tokio::time::timeout(within, rx)
            .await
            .ok()
            .and_then(Result::ok)
            .ok_or_else(|| MonitorError::Unavailable(e.id.clone()))?;
        let logged: LoggedCheck = serde_json::from_str(event.event.data.get())
            .map_err(|_| MonitorError::Unavailable(e.id.clone()))?;
        Ok(Outcome {
            ok: matches!(logged.status.as_str(), "up" | "degraded"),
            response_ms: logged.ms,
            message: logged.message,
            cert_days: None,
        })
    }

    /// A client asked for a fresh check (`request:refresh`): wakes the monitor's task unless it was checked
    /// within the refresh interval.
    pub fn refresh(&self, id: &str) -> Result<(), MonitorError> {
        let e = self.entry(id)?;
        let last = e.rt.lock().last_check;
        if last.is_some_and(|t| now_ms() - t < self.refresh_interval.as_millis() as i64) {
            return Err(MonitorError::TooSoon(id.to_owned(), self.refresh_interval));
        }
        if *e.held.borrow() > 0 {
            e.refresh.notify_one();
        } else if let Ok(request) = self.store.request(id) {
            // Checked by another node of the cluster: ask it.
            let core = self.core.clone();
            tokio::spawn(async move {
                if let Err(e) = core.publish_from(Origin::Monitor, vec![request]).await {
                    tracing::warn!(error = %e, "monitor check request not forwarded");
                }
            });
        }
        Ok(())
    }

    /// The channel a monitor's events go to.
    pub fn channel_of(&self, id: &str) -> Result<ChannelName, MonitorError> {
        Ok(self.entry(id)?.channel(&self.channel))
    }

    /// The latest log entries of a monitor, newest first.
    pub async fn log(&self, id: &str, limit: usize) -> Result<Vec<LogEntry>, MonitorError> {
        let e = self.entry(id)?;
        Ok(self.store.recent(id, e.log_after, limit).await?)
    }

    /// Why the monitor's last write to the engine failed, if it did (cleared by the next that succeeds).
    pub fn store_failing(&self) -> Option<String> {
        self.store.failing()
    }

    /// Check-time drift so far, and the number of checks run.
    pub fn lateness(&self) -> (Lateness, u64) {
        (*self.lateness.lock(), self.checks.load(Ordering::Relaxed))
    }

    /// Stores every runtime state not stored since it changed (at shutdown).
    pub async fn flush(&self) {
        let entries = self.all();
        let mut held = Vec::new();
        let mut batch = Vec::new();
        for e in &entries {
            let saved = e.storing.lock().await;
            if saved.dirty && self.is_current(e) {
                batch.push(self.store.runtime(&e.id, &e.rt.lock()));
                held.push(saved);
            }
        }
        match self.store.publish(batch).await {
            Ok(_) => {
                for mut saved in held {
                    saved.dirty = false;
                }
            }
            Err(e) => tracing::error!(error = %e, "monitor could not store its runtime state"),
        }
    }

    /// The event storing `e`'s definition and runtime as they are now.
    fn record_of(&self, e: &Entry) -> NewEvent {
        let spec = e.spec.lock().clone();
        let rt = e.rt.lock();
        self.store.record(
            &e.id,
            &spec,
            &rt,
            e.log_after,
            e.rev.load(Ordering::Relaxed),
        )
    }

    /// Stores `e`'s definition and runtime as they are now (unless it was deleted meanwhile).
    async fn store_record(&self, e: &Arc<Entry>) -> Result<(), MonitorError> {
        let mut saved = e.storing.lock().await;
        if !self.is_current(e) {
            return Ok(());
        }
        let runtime = self.store.runtime(&e.id, &e.rt.lock());
        self.store.publish(vec![self.record_of(e), runtime]).await?;
        *saved = Saved {
            at: Instant::now(),
            dirty: false,
        };
        Ok(())
    }

    /// Appends a check to `e`'s log, storing the runtime with it when the status changed or it was last stored
    /// [`RUNTIME_EVERY`] ago; the entry's id, or `None` if `e` was deleted meanwhile.
    async fn store_check(&self, e: &Arc<Entry>, check: LoggedCheck, changed: bool) -> Option<i64> {
        let mut saved = e.storing.lock().await;
        if !self.is_current(e) {
            return None;
        }
        let event = match self.store.check(&e.id, &check, None) {
            Ok(event) => event,
            Err(err) => {
                tracing::error!(error = %err, id = %e.id, "monitor could not log a check");
                return Some(0);
            }
        };
        let due = changed || saved.at.elapsed() >= RUNTIME_EVERY;
        let mut batch = vec![event];
        if due {
            batch.push(self.store.runtime(&e.id, &e.rt.lock()));
        }
        match self.store.publish(batch).await {
            Ok(results) => {
                if due {
                    *saved = Saved {
                        at: Instant::now(),
                        dirty: false,
                    };
                } else {
                    saved.dirty = true;
                }
                Some(
                    results
                        .first()
                        .map_or(0, |r| i64::try_from(r.offset).unwrap_or(i64::MAX)),
                )
            }
            Err(err) => {
                tracing::error!(error = %err, id = %e.id, "monitor could not log a check");
                saved.dirty = true;
                Some(0)
            }
        }
    }

    /// (Re)starts a monitor's task; its first check after `first`.
    fn schedule(self: &Arc<Self>, e: &Arc<Entry>, first: Duration) {
        // Under the task lock, and only for the entry that is current: a delete (which aborts under the same lock)
        // racing an update or resume must not leave a task checking a monitor that no longer exists.
        let mut task = e.task.lock();
        if let Some(t) = task.take() {
            t.abort();
        }
        if e.spec.lock().paused || !self.is_current(e) {
            return;
        }
        let this = self.clone();
        let entry = e.clone();
        // Checked by one node of a cluster at a time: the holder of the monitor's lease (see `lease`).
        let handle = tokio::spawn(async move {
            let core = this.core.clone();
            let name = format!("monitor:{}", entry.id);
            lease::while_held(&*core, &name, LEASE_TTL, || {
                let held = Held::new(entry.clone());
                let run = this.clone().run(entry.clone(), first);
                async move {
                    let _held = held;
                    run.await
                }
            })
            .await
        });
        *task = Some(handle.abort_handle());
    }

    /// Whether `e` is the monitor registered under its id (not a deleted or replaced one).
    fn is_current(&self, e: &Arc<Entry>) -> bool {
        self.entries
            .lock()
            .get(&e.id)
            .is_some_and(|cur| Arc::ptr_eq(cur, e))
    }

    async fn run(self: Arc<Self>, e: Arc<Entry>, first: Duration) {
        let mut next = Instant::now() + first;
        // A monitor checked at once (just created or resumed) takes a random phase after that first check, so
        // monitors created together do not stay in lockstep.
        let mut spread = first.is_zero();
        loop {
            let scheduled = tokio::select! {
                _ = tokio::time::sleep_until(next) => true,
                _ = e.refresh.notified() => false,
            };
            if scheduled {
                let late = Instant::now().saturating_duration_since(next).as_micros() as u64;
                let mut l = self.lateness.lock();
                l.checks += 1;
                l.total_us += late;
                l.max_us = l.max_us.max(late);
            }
            self.check(&e).await;
            if spread {
                spread = false;
                let phase = 0.5 + 0.5 * rand::random::<f64>();
                next = Instant::now() + e.spec.lock().interval().mul_f64(phase);
            } else if scheduled {
                // Fixed rate: the next check is due one interval after this one was due, not after it ended.
                next += e.spec.lock().interval();
                let now = Instant::now();
                if next < now {
                    next = now + e.spec.lock().interval();
                }
            }
        }
    }

    /// Runs one check of `e` (never two at once), records it and publishes what changed.
    async fn check(self: &Arc<Self>, e: &Arc<Entry>) -> Outcome {
        let _running = e.running.lock().await;
        let spec = e.spec.lock().clone();
        let outcome = spec.check.run(spec.timeout()).await;
        self.checks.fetch_add(1, Ordering::Relaxed);
        let now = now_ms();
        if e.spec.lock().paused {
            // Paused while the check ran: the monitor stays PAUSED.
            return outcome;
        }
        let (changed, status) = {
            let mut rt = e.rt.lock();
            let changed = rt.apply(&outcome, now, spec.retries, spec.degraded_ms);
            (changed, rt.status)
        };
        let logged = LoggedCheck {
            status: status.as_str().into(),
            ms: outcome.response_ms,
            message: outcome.message.clone(),
            time: now,
        };
        let Some(log_id) = self.store_check(e, logged, changed).await else {
            return outcome;
        };
        let mut batch = Vec::new();
        if let Some(name) = &self.events.log {
            let data = events::log_entry(log_id, &e.id, &spec.name, &e.rt.lock(), now);
            batch.push(NewEvent {
                channel: e.channel(&self.channel),
                name: name.clone(),
                data: crate::json::raw(&data),
                id: None,
                state: None,
            });
        }
        self.publish(batch).await;
        self.publish_status(e, false).await;
        if changed {
            self.publish_stats().await;
        }
        outcome
    }

    /// Publishes `e`'s status event now, or — within the throttle period of the last one — once it ends
    /// (with whatever the state is then). `force` skips the throttle (definition changes).
    async fn publish_status(self: &Arc<Self>, e: &Arc<Entry>, force: bool) {
        let wait = {
            let mut em = e.emit.lock();
            let now = Instant::now();
            match em.last_sent {
                Some(last) if !force && now < last + self.events.throttle => {
                    if em.pending {
                        return;
                    }
                    em.pending = true;
                    Some(last + self.events.throttle)
                }
                _ => None,
            }
        };
        if let Some(at) = wait {
            // The trailing send runs on its own, so a throttled check does not wait for it.
            let this = self.clone();
            let e = e.clone();
            tokio::spawn(async move {
                tokio::time::sleep_until(at).await;
                e.emit.lock().pending = false;
                // Counted from when it was due, not when it went out: later sends do not drift a period behind.
                this.send_status(&e, at).await;
            });
            return;
        }
        self.send_status(e, Instant::now()).await;
    }

    async fn send_status(&self, e: &Arc<Entry>, at: Instant) {
        // The state is read under the send lock: of two sends racing (a trailing one and a check's own), the later
        // publishes the newer state, and an unchanged state is not published twice.
        let _sending = e.sending.lock().await;
        if !self.is_current(e) {
            return;
        }
        let now = now_ms();
        let full = self.view(e, now);
        let (data, state) = {
            let mut em = e.emit.lock();
            let Some(change) =
                keyed::change(&e.id, em.last_full.as_ref(), Some(&full), |a, b| a == b)
            else {
                return;
            };
            // Seed 002: a check that found what clients already hold sends nothing (each update animates a card).
            let rt = self.events.response_time_is_change;
            if self.events.service_fields
                && em.last_full.as_ref().is_some_and(|last| {
                    events::significant(last, rt) == events::significant(&full, rt)
                })
            {
                return;
            }
            let state = change.state(crate::json::raw);
            em.last_sent = Some(at);
            let data = if self.events.changed_only {
                events::changed_fields(em.last_full.as_ref(), &full, now)
            } else if self.events.service_fields {
                events::with_service_fields(&full, now)
            } else {
                full.clone()
            };
            em.last_full = Some(full);
            (data, state)
        };
        let event = NewEvent {
            channel: e.channel(&self.channel),
            name: self.events.status.clone(),
            data: crate::json::raw(&data),
            id: None,
            state: Some(state),
        };
        self.publish(vec![event]).await;
    }

    async fn publish_stats(&self) {
        let Some(name) = &self.events.stats else {
            return;
        };
        let mut last = self.stats.lock().await;
        let stats = self.stats_now();
        let key = self.events.stats_key;
        let Some(change) = keyed::change(key, last.as_ref(), Some(&stats), |a, b| a == b) else {
            return;
        };
        let state = change.state(crate::json::raw);
        *last = Some(stats.clone());
        let Ok(channel) = ChannelName::new(&self.events.stats_channel) else {
            return;
        };
        let event = NewEvent {
            channel,
            name: name.clone(),
            data: crate::json::raw(&stats),
            id: None,
            state: Some(state),
        };
        self.publish(vec![event]).await;
    }

    /// What the status page needs to follow the monitors: the channel and the event names and shapes.
    pub fn page_config(&self) -> Value {
        let bulk = match &self.events.snapshot {
            Snapshot::Bulk { event } => Some(event.clone()),
            Snapshot::Each => None,
        };
        json!({
            "channel": self.channel,
            "statusEvent": self.events.status,
            "changedOnly": self.events.changed_only,
            "bulkEvent": bulk,
            "removedEvent": self.events.removed,
            "logEvent": self.events.log,
            // Stats sharing the monitor channel arrive in its stream (the page only needs to know the name).
            "statsEvent": self.events.stats.as_ref().filter(|_| self.events.stats_channel == self.channel.as_str()),
        })
    }

    /// Whether the `targets` preset is on (seed 000's `/api/targets` routes are served).
    pub fn serves_targets(&self) -> bool {
        self.events.flat_targets
    }

    /// A monitor's full object, with seed 000's flat fields when the preset wants them.
    fn view(&self, e: &Entry, now: i64) -> Value {
        let spec = e.spec.lock().clone();
        let mut v = {
            let rt = e.rt.lock();
            events::full(&e.id, &spec, &rt, now)
        };
        if self.events.flat_targets
            && let Value::Object(m) = &mut v
        {
            m.extend(target::flat_fields(&spec, true));
        }
        v
    }

    /// Counts of monitors per status.
    pub fn stats_now(&self) -> Value {
        let mut counts: BTreeMap<&'static str, u64> =
            ["up", "down", "degraded", "pending", "paused"]
                .into_iter()
                .map(|s| (s, 0))
                .collect();
        let entries = self.all();
        for e in &entries {
            *counts.entry(e.rt.lock().status.as_str()).or_default() += 1;
        }
        json!({
            "total": entries.len(),
            "up": counts["up"],
            "down": counts["down"],
            "degraded": counts["degraded"],
            "pending": counts["pending"],
            "paused": counts["paused"],
        })
    }

    async fn publish(&self, events: Vec<NewEvent>) {
        if events.is_empty() {
            return;
        }
        if let Err(e) = self.core.publish_from(Origin::Monitor, events).await {
            tracing::error!(error = %e, "monitor could not publish its events");
        }
    }

    /// Monitors with their runtime, for metrics: `(id, spec, runtime)`.
    pub fn snapshot(&self) -> Vec<(String, MonitorSpec, Runtime)> {
        let entries = self.all();
        entries
            .iter()
            .map(|e| (e.id.clone(), e.spec.lock().clone(), e.rt.lock().clone()))
            .collect()
    }
}

fn new_id() -> String {
    let n: u64 = rand::random();
    format!("m{:012x}", n >> 16)
}
