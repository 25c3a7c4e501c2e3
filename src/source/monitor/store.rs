//! The monitor's durable data, kept through the engine like any producer's, so whichever engine runs carries it
//! (on disk with SQLite, nowhere with the memory engine, to every node with a shared one):
//!
//! - `herald:monitors`, a state channel: key = monitor id, value = its definition, its runtime state (status
//!   machine, counters, uptime buckets) and where its log starts. Only the state is read; the channel keeps one
//!   event of history.
//! - `herald:monitor-runtime`, a state channel: key = monitor id, value = its latest runtime state. Checks store
//!   their runtime here, never the definition, so a node checking with a definition another node has just changed
//!   cannot write the old definition back (the record's runtime is the fallback for records stored before).
//! - `herald:monitor-log:{id}`, one channel per monitor: each check is one event of its history, bounded by the
//!   engine's retention to `log_keep` entries and `log_max_age` (see [`retention`]).
//!
//! Writes stay bounded: a check appends its log event, and stores the runtime in the same atomic publish only when
//! the status changed or [`RUNTIME_EVERY`] passed since it was last stored (definition changes and shutdown store
//! it too). A crash loses at most that much of the uptime counters, never a log entry or a definition.
//!
//! A deleted monitor's record is removed; its log channel cannot be, so a monitor created later under the same id
//! starts its log after the channel's last entry (the record's `logAfter`), and the old entries age out.

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::MonitorConfig;
use super::runtime::Runtime;
use super::spec::MonitorSpec;
use crate::core::Engine;
use crate::core::channel::{ChannelName, INTERNAL_PREFIX, Pattern};
use crate::core::engine::{EngineError, Lane, ReadLimit};
use crate::core::event::{NewEvent, PublishResult, format_time};
use crate::core::retention::Limits;
use crate::core::state::StateChange;
use crate::core::stats::Origin;

/// The state channel of definitions and runtime states (after the internal prefix).
const MONITORS: &str = "monitors";
/// The state channel of runtime states (after the internal prefix).
const RUNTIME: &str = "monitor-runtime";
/// The channel of check requests for the node checking a monitor (after the internal prefix).
const REQUESTS: &str = "monitor-requests";
/// Prefix of the per-monitor log channels (after the internal prefix).
const LOG: &str = "monitor-log:";
/// Name of the events that store a record.
const RECORD_EVENT: &str = "monitor";
/// Name of a check's log event.
const CHECK_EVENT: &str = "check";

/// Longest a check's runtime goes unstored while its status does not change.
pub const RUNTIME_EVERY: Duration = Duration::from_secs(60);

/// One check log entry, as `/api/monitors/{id}/log` serves it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LogEntry {
    /// Entry id, increasing (its offset in the monitor's log channel).
    pub id: i64,
    /// The monitor.
    pub monitor_id: String,
    /// Status after the check.
    pub status: String,
    /// Response time in milliseconds.
    #[serde(serialize_with = "crate::number::serialize")]
    pub response_time: f64,
    /// What the check found.
    pub message: String,
    /// Check time, RFC 3339.
    pub created_at: String,
}

/// A check as its log event stores it.
#[derive(Serialize, Deserialize)]
pub struct LoggedCheck {
    /// Status after the check.
    pub status: String,
    /// Response time in milliseconds.
    pub ms: f64,
    /// What the check found.
    pub message: String,
    /// Check time, ms since the UNIX epoch.
    pub time: i64,
}

/// A stored monitor, as loaded at start-up.
pub struct Stored {
    /// Id.
    pub id: String,
    /// The definition.
    pub spec: MonitorSpec,
    /// The runtime state (the default if none was stored or it no longer parses).
    pub runtime: Runtime,
    /// Offset of its log channel after which its own entries start.
    pub log_after: u64,
    /// Revision of the definition (incremented by each change).
    pub rev: u64,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct RecordOut<'a> {
    spec: &'a MonitorSpec,
    runtime: &'a Runtime,
    log_after: u64,
    rev: u64,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RecordIn {
    spec: Value,
    #[serde(default)]
    runtime: Option<Value>,
    #[serde(default)]
    log_after: u64,
    #[serde(default)]
    rev: u64,
}

/// The retention rules the monitor's channels need, ahead of the configured ones: each log keeps
/// `log_keep` entries for `log_max_age`; the record channel's history is never read.
pub fn retention(cfg: &MonitorConfig) -> Vec<(Pattern, Limits)> {
    vec![
        (
            Pattern::new(&format!("{INTERNAL_PREFIX}{LOG}*")),
            Limits {
                max_events: cfg.log_keep.max(1) as u64,
                max_age: cfg.log_max_age,
            },
        ),
        (
            Pattern::new(&format!("{INTERNAL_PREFIX}{MONITORS}")),
            Limits {
                max_events: 1,
                max_age: Limits::default().max_age,
            },
        ),
        (
            Pattern::new(&format!("{INTERNAL_PREFIX}{REQUESTS}")),
            Limits {
                max_events: 1,
                max_age: Limits::default().max_age,
            },
        ),
        (
            Pattern::new(&format!("{INTERNAL_PREFIX}{RUNTIME}")),
            Limits {
                max_events: 1,
                max_age: Limits::default().max_age,
            },
        ),
    ]
}

/// The monitor's storage on the engine.
pub struct MonitorStore {
    core: Arc<dyn Engine>,
    monitors: ChannelName,
    runtimes: ChannelName,
    /// Why the last write failed, until one succeeds (the monitor's readiness).
    failing: parking_lot::Mutex<Option<String>>,
}

impl MonitorStore {
    /// The store on `core`.
    pub fn new(core: Arc<dyn Engine>) -> Result<Self, EngineError> {
        Ok(Self {
            core,
            monitors: internal(MONITORS)?,
            runtimes: internal(RUNTIME)?,
            failing: parking_lot::Mutex::new(None),
        })
    }

    /// Every stored monitor, ordered by id; records that no longer parse are skipped with a warning.
    pub async fn load(&self) -> Result<Vec<Stored>, EngineError> {
        let Some(values) = self.core.state_of(&self.monitors).await? else {
            return Ok(Vec::new());
        };
        let runtimes = self.core.state_of(&self.runtimes).await?;
        let mut out = Vec::with_capacity(values.len());
        for entry in values.iter() {
            let parsed = serde_json::from_str::<RecordIn>(entry.value.get())
                .ok()
                .and_then(|mut r| {
                    let spec = serde_json::from_value::<MonitorSpec>(r.spec.take()).ok()?;
                    Some((spec, r))
                });
            let Some((spec, record)) = parsed else {
                tracing::warn!(id = %entry.key, "skipping a stored monitor whose definition no longer parses");
                continue;
            };
            let stored_runtime = runtimes
                .as_ref()
                .and_then(|r| r.get(&entry.key))
                .and_then(|v| serde_json::from_str::<Runtime>(v.value.get()).ok());
            let runtime = stored_runtime
                .or_else(|| {
                    record
                        .runtime
                        .and_then(|r| serde_json::from_value::<Runtime>(r).ok())
                })
                .unwrap_or_default();
            out.push(Stored {
                id: entry.key.clone(),
                spec,
                runtime,
                log_after: record.log_after,
                rev: record.rev,
            });
        }
        Ok(out)
    }

    /// The stored runtime states by monitor id (records without one are absent).
    pub async fn runtimes(&self) -> Result<Vec<(String, Runtime)>, EngineError> {
        let Some(values) = self.core.state_of(&self.runtimes).await? else {
            return Ok(Vec::new());
        };
        Ok(values
            .iter()
            .filter_map(|v| Some((v.key.clone(), serde_json::from_str(v.value.get()).ok()?)))
            .collect())
    }

    /// The channel check requests go to (another node asking the checking node for a check now).
    pub fn requests(&self) -> Result<ChannelName, EngineError> {
        internal(REQUESTS)
    }

    /// The event asking the node that checks `id` for a check now.
    pub fn request(&self, id: &str) -> Result<NewEvent, EngineError> {
        Ok(NewEvent {
            channel: self.requests()?,
            name: CHECK_EVENT.into(),
            data: crate::json::raw(&serde_json::json!({ "id": id })),
            id: None,
            state: None,
        })
    }

    /// `id`'s log channel (each check is one event, its data a [`LoggedCheck`]).
    pub fn log_of(&self, id: &str) -> Result<ChannelName, EngineError> {
        log_channel(id)
    }

    /// The channels whose changes other nodes follow (definitions, runtime states).
    pub fn channels(&self) -> [ChannelName; 2] {
        [self.monitors.clone(), self.runtimes.clone()]
    }

    /// The last offset of `id`'s log channel: a monitor created now starts its log after it.
    pub async fn log_end(&self, id: &str) -> Result<u64, EngineError> {
        let info = self.core.channel(&log_channel(id)?).await?;
        Ok(info.map_or(0, |i| i.last_offset))
    }

    /// The event that stores `id`'s record.
    pub fn record(
        &self,
        id: &str,
        spec: &MonitorSpec,
        runtime: &Runtime,
        log_after: u64,
        rev: u64,
    ) -> NewEvent {
        let record = RecordOut {
            spec,
            runtime,
            log_after,
            rev,
        };
        NewEvent {
            channel: self.monitors.clone(),
            name: RECORD_EVENT.into(),
            data: crate::json::raw(&serde_json::json!({ "id": id })),
            id: None,
            state: Some(StateChange::Set {
                key: id.to_owned(),
                value: crate::json::raw(&record),
            }),
        }
    }

    /// The event that removes `id`'s record.
    pub fn removal(&self, id: &str) -> [NewEvent; 2] {
        let removal = |channel: &ChannelName| NewEvent {
            channel: channel.clone(),
            name: RECORD_EVENT.into(),
            data: crate::json::raw(&serde_json::json!({ "id": id })),
            id: None,
            state: Some(StateChange::Remove { key: id.to_owned() }),
        };
        [removal(&self.monitors), removal(&self.runtimes)]
    }

    /// The event that stores `id`'s runtime state alone (what a check stores).
    pub fn runtime(&self, id: &str, runtime: &Runtime) -> NewEvent {
        NewEvent {
            channel: self.runtimes.clone(),
            name: RECORD_EVENT.into(),
            data: crate::json::raw(&serde_json::json!({ "id": id })),
            id: None,
            state: Some(StateChange::Set {
                key: id.to_owned(),
                value: crate::json::raw(runtime),
            }),
        }
    }

    /// The log event of one check of `id`; `idempotency` makes a repeated import write it once.
    pub fn check(
        &self,
        id: &str,
        check: &LoggedCheck,
        idempotency: Option<String>,
    ) -> Result<NewEvent, EngineError> {
        Ok(NewEvent {
            channel: log_channel(id)?,
            name: CHECK_EVENT.into(),
            data: crate::json::raw(check),
            id: idempotency,
            state: None,
        })
    }

    /// Publishes `events` atomically.
    pub async fn publish(&self, events: Vec<NewEvent>) -> Result<Vec<PublishResult>, EngineError> {
        if events.is_empty() {
            return Ok(Vec::new());
        }
        let result = self.core.publish_from(Origin::Monitor, events).await;
        *self.failing.lock() = result.as_ref().err().map(ToString::to_string);
        result
    }

    /// Why the last write failed, if the last one did.
    pub fn failing(&self) -> Option<String> {
        self.failing.lock().clone()
    }

    /// The latest `limit` log entries of `id` after offset `after`, newest first.
    pub async fn recent(
        &self,
        id: &str,
        after: u64,
        limit: usize,
    ) -> Result<Vec<LogEntry>, EngineError> {
        let channel = log_channel(id)?;
        let Some(info) = self.core.channel(&channel).await? else {
            return Ok(Vec::new());
        };
        let from = info.last_offset.saturating_sub(limit as u64).max(after);
        let read = ReadLimit {
            events: limit,
            bytes: usize::MAX,
        };
        let Some((_, events)) = self
            .core
            .range(Lane::Other, &channel, from, Some(info.last_offset), read)
            .await?
        else {
            return Ok(Vec::new());
        };
        let mut out: Vec<LogEntry> = events
            .iter()
            .filter(|e| e.name == CHECK_EVENT)
            .filter_map(|e| {
                let c: LoggedCheck = serde_json::from_str(e.data.get()).ok()?;
                Some(LogEntry {
                    id: i64::try_from(e.offset).unwrap_or(i64::MAX),
                    monitor_id: id.to_owned(),
                    status: c.status,
                    response_time: c.ms,
                    message: c.message,
                    created_at: format_time(c.time),
                })
            })
            .collect();
        out.reverse();
        Ok(out)
    }
}

fn internal(suffix: &str) -> Result<ChannelName, EngineError> {
    ChannelName::internal(suffix).map_err(|e| EngineError::Invalid(e.to_string()))
}

/// The log channel of monitor `id` (ids are validated, so this fails only for ids that bypassed validation).
fn log_channel(id: &str) -> Result<ChannelName, EngineError> {
    internal(&format!("{LOG}{id}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::engine::memory::MemoryEngine;
    use crate::core::retention::Retention;

    fn store(log_keep: usize) -> MonitorStore {
        let cfg = MonitorConfig {
            log_keep,
            ..MonitorConfig::default()
        };
        let retention = Retention {
            rules: retention(&cfg),
            ..Retention::default()
        };
        MonitorStore::new(MemoryEngine::open(retention, Duration::from_secs(60)).unwrap()).unwrap()
    }

    fn spec(id: &str) -> MonitorSpec {
        MonitorSpec::from_json(serde_json::json!({
            "id": id, "name": "A", "check": {"kind": "tcp", "host": "127.0.0.1", "port": 9}
        }))
        .unwrap()
    }

    fn check(n: i64) -> LoggedCheck {
        LoggedCheck {
            status: "up".into(),
            ms: 1.5,
            message: format!("check {n}"),
            time: 1_795_000_000_000 + n,
        }
    }

    async fn log(s: &MonitorStore, id: &str, from: i64, to: i64) {
        let events = (from..=to)
            .map(|n| s.check(id, &check(n), None).unwrap())
            .collect();
        s.publish(events).await.unwrap();
    }

    #[tokio::test]
    async fn records_round_trip_and_removal_forgets_them() {
        let s = store(10);
        let mut rt = Runtime::default();
        rt.message = "stored".into();
        s.publish(vec![
            s.record("a", &spec("a"), &rt, 7, 0),
            s.record("b", &spec("b"), &rt, 0, 0),
        ])
        .await
        .unwrap();
        let loaded = s.load().await.unwrap();
        assert_eq!(
            loaded.iter().map(|m| m.id.as_str()).collect::<Vec<_>>(),
            ["a", "b"]
        );
        assert_eq!(loaded[0].spec, spec("a"));
        assert_eq!(loaded[0].runtime.message, "stored");
        assert_eq!(loaded[0].log_after, 7);
        s.publish(s.removal("a").into()).await.unwrap();
        let ids: Vec<String> = s.load().await.unwrap().into_iter().map(|m| m.id).collect();
        assert_eq!(ids, ["b"]);
    }

    #[tokio::test]
    async fn the_log_keeps_log_keep_entries_newest_first_and_starts_after_log_after() {
        let s = store(3);
        assert!(s.recent("a", 0, 50).await.unwrap().is_empty());
        log(&s, "a", 1, 5).await;
        log(&s, "b", 1, 1).await;
        let got = s.recent("a", 0, 50).await.unwrap();
        let messages: Vec<&str> = got.iter().map(|e| e.message.as_str()).collect();
        assert_eq!(messages, ["check 5", "check 4", "check 3"]);
        assert_eq!(got[0].id, 5);
        assert_eq!(got[0].created_at, format_time(1_795_000_000_005));
        assert_eq!(s.recent("a", 0, 2).await.unwrap().len(), 2);
        // A monitor created after a deleted namesake sees none of its entries.
        let after = s.log_end("a").await.unwrap();
        assert_eq!(after, 5);
        assert!(s.recent("a", after, 50).await.unwrap().is_empty());
        log(&s, "a", 6, 6).await;
        let fresh = s.recent("a", after, 50).await.unwrap();
        assert_eq!(fresh.len(), 1);
        assert_eq!(fresh[0].message, "check 6");
    }

    #[test]
    fn its_channels_are_internal() {
        let s = store(1);
        assert!(
            s.record("a", &spec("a"), &Runtime::default(), 0, 0)
                .channel
                .is_internal()
        );
        assert!(s.check("a", &check(1), None).unwrap().channel.is_internal());
    }
}
