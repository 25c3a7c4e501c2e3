//! The durable outbox of disconnect notices (`[forward] disconnect`): each disconnect is published to the
//! internal channel `herald:forward-disconnects` (so it is as durable as any event: SQLite's file, Redis), and one
//! deliverer per cluster — the holder of the `forward-disconnects` lease — POSTs them to the backend in order,
//! retrying each with backoff (up to `[forward] retry_max` between attempts) until the backend takes it, and
//! records how far it got in `herald:forward-disconnects-cursor`. A notice is delivered at least once: one the
//! backend took just before a crash or a lease change may come again (its `id` tells). The outbox holds at most
//! `[forward] outbox_max` notices for at most [`OUTBOX_AGE`]; older ones are dropped, counted and logged.

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{Value, json};

use super::{Forwarder, code, identity};
use crate::auth::Identity;
use crate::core::channel::{ChannelName, Pattern};
use crate::core::engine::EngineError;
use crate::core::engine::lease::{LEASE_TTL, while_held};
use crate::core::event::NewEvent;
use crate::core::retention::Limits;
use crate::core::stats::Origin;

/// The outbox channel (after `herald:`).
pub const OUTBOX: &str = "forward-disconnects";
/// Where the deliverer records the last notice delivered (after `herald:`).
pub const CURSOR: &str = "forward-disconnects-cursor";
/// The lease naming the one deliverer of a cluster.
const LEASE: &str = "forward-disconnects";
/// How long an undelivered notice is kept.
pub const OUTBOX_AGE: Duration = Duration::from_secs(7 * 24 * 3600);
/// Notices read at once.
const PAGE: usize = 100;
/// How often the deliverer looks for notices other nodes added (this node's wake it at once).
const POLL: Duration = Duration::from_secs(2);
/// First pause after a failed delivery (doubled up to `retry_max`).
const FIRST_PAUSE: Duration = Duration::from_millis(200);

/// How far the deliverer got: the outbox's epoch and the last offset delivered.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
struct Cursor {
    epoch: String,
    offset: u64,
}

/// The retention of the outbox and its cursor, ahead of the configured rules.
pub fn retention(outbox_max: u64) -> Vec<(Pattern, Limits)> {
    vec![
        (
            Pattern::new(&format!("herald:{CURSOR}")),
            Limits {
                max_events: 16,
                max_age: Duration::from_secs(365 * 24 * 3600),
            },
        ),
        (
            Pattern::new(&format!("herald:{OUTBOX}")),
            Limits {
                max_events: outbox_max,
                max_age: OUTBOX_AGE,
            },
        ),
    ]
}

/// Whether a failed delivery should be tried again: the backend did not take it (down, slow, 5xx, garbage), or
/// Herald could not act on its answer. A refusal with the backend's own code is an answer: delivered.
fn retry(r: &crate::binding::refusal::Refusal) -> bool {
    [
        code::UNAVAILABLE,
        code::TIMEOUT,
        code::ERROR,
        code::TOO_MANY,
        "unavailable",
    ]
    .contains(&r.code())
}

impl Forwarder {
    /// Adds the disconnect of `connection` (`who`, for `reason`) to the outbox, if a disconnect hook is configured;
    /// does not wait.
    pub fn disconnected(self: &Arc<Self>, who: &Identity, connection: &Value, reason: &str) {
        if self.config.disconnect.is_none() {
            return;
        }
        let body = json!({
            "event": "disconnect",
            "args": [{"reason": reason}],
            "identity": identity(who),
            "connection": connection,
            "id": format!("{:016x}{:016x}", rand::random::<u64>(), rand::random::<u64>()),
            "at": crate::core::event::format_time(crate::core::event::now_ms()),
        });
        let me = self.clone();
        self.storing
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        tokio::spawn(async move {
            let added = match (
                ChannelName::internal(OUTBOX),
                RawValue::from_string(body.to_string()),
            ) {
                (Ok(channel), Ok(data)) => {
                    me.engine
                        .publish_from(
                            Origin::Forward,
                            vec![NewEvent {
                                channel,
                                name: "disconnect".into(),
                                data,
                                id: None,
                                state: None,
                            }],
                        )
                        .await
                }
                (Err(e), _) => Err(EngineError::Invalid(e.to_string())),
                (_, Err(e)) => Err(EngineError::Invalid(e.to_string())),
            };
            match added {
                Ok(_) => me.outbox_added.notify_one(),
                Err(e) => {
                    me.outbox_counts.lock().2 += 1;
                    tracing::warn!(error = %e, "a disconnect notice could not be stored; it is lost");
                }
            }
            me.storing.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
            me.stored_one.notify_waiters();
        });
    }

    /// Returns once every disconnect notice handed over so far is stored (or failed to be): for shutdown.
    pub async fn stored(&self) {
        loop {
            let woken = self.stored_one.notified();
            if self.storing.load(std::sync::atomic::Ordering::Acquire) == 0 {
                return;
            }
            // A notification between the check and the wait would be missed: look again soon regardless.
            tokio::select! {
                () = woken => {}
                () = tokio::time::sleep(Duration::from_millis(20)) => {}
            }
        }
    }

    /// Starts the deliverer (when a disconnect hook is configured): it runs while this node holds the lease.
    pub fn start_outbox(self: &Arc<Self>) -> Option<tokio::task::JoinHandle<()>> {
        let url = self.config.disconnect.clone()?;
        let me = self.clone();
        Some(tokio::spawn(async move {
            let engine = me.engine.clone();
            while_held(&*engine, LEASE, LEASE_TTL, || me.drain(&url)).await;
        }))
    }

    /// Delivers notices in order from the cursor on, for as long as it is let run.
    async fn drain(&self, url: &str) {
        let (Ok(outbox), Ok(cursor_channel)) =
            (ChannelName::internal(OUTBOX), ChannelName::internal(CURSOR))
        else {
            return;
        };
        let mut cursor = loop {
            match self.load_cursor(&cursor_channel).await {
                Ok(c) => break c,
                Err(EngineError::Closed) => return,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read the disconnect outbox's cursor; retrying");
                    tokio::time::sleep(POLL).await;
                }
            }
        };
        loop {
            let page = match self.engine.history(&outbox, cursor.offset, PAGE).await {
                Ok(Some(page)) => page,
                Ok(None) => {
                    self.wait_for_more().await;
                    continue;
                }
                Err(EngineError::Closed) => return,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read the disconnect outbox; retrying");
                    tokio::time::sleep(POLL).await;
                    continue;
                }
            };
            if *page.info.epoch != *cursor.epoch {
                // First run, or the outbox's history was reset: everything it holds now is undelivered.
                if !cursor.epoch.is_empty() {
                    tracing::warn!("the disconnect outbox was reset; delivering what it holds now");
                }
                cursor = Cursor {
                    epoch: page.info.epoch.to_string(),
                    offset: 0,
                };
                continue;
            }
            if page.info.first_offset > cursor.offset + 1 {
                let lost = page.info.first_offset - cursor.offset - 1;
                self.outbox_counts.lock().2 += lost;
                tracing::warn!(
                    lost,
                    "disconnect notices dropped undelivered: the outbox was full ([forward] outbox_max) or they were too old"
                );
                cursor.offset = page.info.first_offset - 1;
            }
            if page.events.is_empty() {
                self.wait_for_more().await;
                continue;
            }
            for event in page.events {
                let body: Value = serde_json::from_str(event.data.get()).unwrap_or(Value::Null);
                self.deliver(url, &body).await;
                cursor.offset = event.offset;
                self.outbox_counts.lock().0 += 1;
                if let Err(e) = self.save_cursor(&cursor_channel, &cursor).await {
                    // Delivered again after a restart: at least once still holds.
                    tracing::warn!(error = %e, "cannot record the disconnect outbox's cursor");
                }
            }
        }
    }

    /// POSTs one notice until the backend takes it, pausing longer after each failure.
    async fn deliver(&self, url: &str, body: &Value) {
        let mut pause = FIRST_PAUSE;
        let mut failures = 0u32;
        loop {
            match self.call(url, body).await {
                Err(r) if retry(&r) => {
                    self.outbox_counts.lock().1 += 1;
                    failures += 1;
                    // One line at the first failure and then every tenth, not one per attempt.
                    if failures % 10 == 1 {
                        tracing::warn!(code = r.code(), reason = %r, failures, "the disconnect hook did not take a notice; retrying");
                    }
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(self.config.retry_max);
                }
                _ => return,
            }
        }
    }

    async fn wait_for_more(&self) {
        tokio::select! {
            () = self.outbox_added.notified() => {}
            () = tokio::time::sleep(POLL) => {}
        }
    }

    async fn load_cursor(&self, channel: &ChannelName) -> Result<Cursor, EngineError> {
        let Some(info) = self.engine.channel(channel).await? else {
            return Ok(Cursor::default());
        };
        if info.last_offset == 0 {
            return Ok(Cursor::default());
        }
        let page = self
            .engine
            .history(channel, info.last_offset - 1, 1)
            .await?;
        Ok(page
            .and_then(|p| p.events.into_iter().next())
            .and_then(|e| serde_json::from_str(e.data.get()).ok())
            .unwrap_or_default())
    }

    async fn save_cursor(&self, channel: &ChannelName, cursor: &Cursor) -> Result<(), EngineError> {
        let data = RawValue::from_string(crate::json::value(cursor).to_string())
            .map_err(|e| EngineError::Invalid(e.to_string()))?;
        self.engine
            .publish_from(
                Origin::Forward,
                vec![NewEvent {
                    channel: channel.clone(),
                    name: "cursor".into(),
                    data,
                    id: None,
                    state: None,
                }],
            )
            .await
            .map(|_| ())
    }
}
