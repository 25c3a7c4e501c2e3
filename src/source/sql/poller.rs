//! One channel's poller: query, diff with the last result, publish the change once; back off while the
//! database fails and tell subscribers; and the PostgreSQL `LISTEN` task that makes pollers re-query at once.
//! In a cluster a channel is queried only by the node holding its lease `sql:{source}:{channel}`
//! ([`crate::core::engine::lease`]): a poller without it stands by (retrying every `LEASE_TTL / 2`) while its
//! subscribers get the holder's publishes through the engine, and re-reads the channel's state before it polls, so
//! it diffs against what the other node published. A dead holder's channels are polled again within
//! `LEASE_TTL + LEASE_TTL / 2` (15 s); a holder whose own subscribers all leave releases the lease at once, and a
//! node that still has subscribers takes it at its next retry (within `LEASE_TTL / 2`).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use serde_json::json;
use serde_json::value::RawValue;

use super::db::{DbError, Row};
use super::stats;
use super::template::Params;
use super::{ChannelStatus, LastResult, STATUS_EVENT, Source, shaped, with_deadline};
use super::{ResultShape, SqlMode};
use crate::core::Engine;
use crate::core::channel::ChannelName;
use crate::core::engine::EngineError;
use crate::core::engine::lease::{LEASE_TTL, Lease};
use crate::core::event::NewEvent;
use crate::core::state::StateChange;
use crate::core::stats::Origin;
use crate::source::keyed::{self, Change};

/// Longest pause between two attempts while the database fails.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Everything one channel's poller needs.
pub(super) struct Poller {
    pub source: Arc<Source>,
    pub core: Arc<dyn Engine>,
    pub channel: ChannelName,
    pub params: Params,
    pub stopped: tokio::sync::watch::Receiver<bool>,
    pub status: Arc<parking_lot::Mutex<ChannelStatus>>,
    pub last: Option<LastResult>,
}

/// What one poll found wrong, as subscribers are told.
#[derive(Debug, Clone, PartialEq)]
enum Health {
    Ok,
    Error(String),
}

/// Polls until asked to stop (and not re-activated meanwhile).
pub(super) async fn run(mut p: Poller) {
    let cfg = p.source.config.clone();
    let mut wake = p.source.wake.subscribe();
    let mut health = Health::Ok;
    let mut failures: u32 = 0;
    let args = match p.source.live.args(&p.params) {
        Ok(a) => a,
        Err(e) => {
            // Unreachable after start-up checks (every SQL parameter is in the template); reported, not fatal.
            tracing::error!(source = %cfg.id, channel = %p.channel, error = %e, "cannot bind the query");
            Vec::new()
        }
    };
    let lease_name = format!("sql:{}:{}", cfg.id, p.channel);
    let mut lease: Option<Lease> = None;
    // Whether another node may have polled (and published) since `p.last` was read.
    let mut stale = false;
    loop {
        if *p.stopped.borrow_and_update() {
            let last = p.last.clone().unwrap_or_default();
            if p.source.try_retire(&p.channel, &last) {
                return;
            }
        }
        if lease.as_ref().is_none_or(Lease::is_lost) {
            if lease.take().is_some() {
                stale = true;
            }
            match p.core.lease(&lease_name, LEASE_TTL).await {
                Ok(Some(l)) => lease = Some(l),
                // Held elsewhere, or the engine is shut down (nothing to report).
                Ok(None) | Err(EngineError::Closed) => {}
                Err(e) => {
                    tracing::warn!(source = %cfg.id, channel = %p.channel, error = %e, "cannot acquire the poll lease")
                }
            }
            if lease.is_none() {
                // Another node polls this channel; its publishes reach this node's subscribers through the engine.
                stale = true;
                {
                    let mut s = p.status.lock();
                    (s.status, s.message) =
                        ("standby", Some("another node polls this channel".into()));
                }
                tokio::select! {
                    () = tokio::time::sleep(LEASE_TTL / 2) => {}
                    _ = p.stopped.changed() => {}
                }
                continue;
            }
            if stale {
                stale = false;
                p.last = stored_state(&*p.core, &p.channel, cfg.mode, cfg.result).await;
            }
        }
        p.source.queries.fetch_add(1, Ordering::Relaxed);
        let polling = std::time::Instant::now();
        let fetched = with_deadline(
            cfg.statement_timeout,
            p.source
                .db
                .fetch(&p.source.live.statement, &args, cfg.max_rows),
        )
        .await;
        stats::POLL_SECONDS.observe_duration(polling.elapsed());
        if let Ok(f) = &fetched {
            stats::ROWS.add(f.rows.len() as u64);
        }
        let now = crate::core::event::format_time(now_ms());
        {
            let mut s = p.status.lock();
            s.queries += 1;
            s.last_poll = Some(now);
        }
        let next = match fetched {
            Ok(f) if f.over_limit => {
                failures = 0;
                Health::Error(format!(
                    "the result has more than {} rows (max_rows); still showing the last good result",
                    cfg.max_rows
                ))
            }
            Ok(f) => {
                failures = 0;
                match p.apply(f.rows).await {
                    Ok(()) => Health::Ok,
                    Err(m) => Health::Error(m),
                }
            }
            Err(e) => {
                failures = failures.saturating_add(1);
                Health::Error(describe(&e))
            }
        };
        match next {
            Health::Ok => stats::POLLS_OK.inc(),
            Health::Error(_) => stats::POLLS_FAILED.inc(),
        }
        {
            let mut s = p.status.lock();
            (s.status, s.message) = match &next {
                Health::Ok => ("ok", None),
                Health::Error(m) => ("error", Some(m.clone())),
            };
        }
        if next != health {
            p.report(&next).await;
            health = next;
        }
        let pause = if failures == 0 {
            cfg.interval
        } else {
            let factor = 2u32.saturating_pow(failures.min(16));
            cfg.interval
                .saturating_mul(factor)
                .min(MAX_BACKOFF)
                .max(cfg.interval)
        };
        tokio::select! {
            () = tokio::time::sleep(pause) => {}
            _ = p.stopped.changed() => {}
            // A notification while the database fails is no reason to hammer it.
            _ = wake.changed(), if failures == 0 => {}
            () = lost(&mut lease) => {}
        }
    }
}

/// Resolves when the held lease is lost (never without one).
async fn lost(lease: &mut Option<Lease>) {
    match lease {
        Some(l) => l.lost().await,
        None => std::future::pending().await,
    }
}

fn describe(e: &DbError) -> String {
    e.to_string()
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

impl Poller {
    /// Diffs `rows` with the last result and publishes the change; an error message if the result is unusable
    /// or could not be published (the last result then stays, so the next poll tries again).
    async fn apply(&mut self, rows: Vec<Row>) -> Result<(), String> {
        let cfg = &self.source.config;
        let keyed = match cfg.mode {
            SqlMode::Rows => keyed(&rows, &cfg.key)?,
            SqlMode::Full => BTreeMap::new(),
        };
        // A result that cannot take its configured shape is an error before any diff: the last good result stays.
        if cfg.result == ResultShape::Object && rows.len() > 1 {
            shaped(&rows, cfg.result)?;
        }
        let events = match (&self.last, cfg.mode) {
            (Some(last), SqlMode::Full) if same(&last.rows, &rows) => Vec::new(),
            (_, SqlMode::Full) => {
                let data = shaped(&rows, cfg.result)?;
                vec![NewEvent {
                    channel: self.channel.clone(),
                    name: cfg.event.clone(),
                    data: data.clone(),
                    id: None,
                    state: Some(StateChange::Set {
                        key: String::new(),
                        value: data,
                    }),
                }]
            }
            (last, SqlMode::Rows) => {
                let empty = BTreeMap::new();
                let before = last.as_ref().map_or(&empty, |l| &l.keyed);
                row_events(&self.channel, before, &keyed)
            }
        };
        let count = rows.len();
        if !events.is_empty() {
            if let Err(e) = self.core.publish_from(Origin::Sql, events).await {
                tracing::error!(source = %cfg.id, channel = %self.channel, error = %e, "cannot publish a change");
                return Err(format!("cannot publish the change: {e}"));
            }
            tracing::debug!(source = %cfg.id, channel = %self.channel, rows = count, "change published");
        }
        self.last = Some(LastResult { rows, keyed });
        self.status.lock().rows = count;
        Ok(())
    }

    /// Tells subscribers (and the log) that the channel's health changed. Not a state event: a status is news,
    /// not part of the result.
    async fn report(&self, health: &Health) {
        let cfg = &self.source.config;
        let (status, message) = match health {
            Health::Ok => {
                tracing::info!(source = %cfg.id, channel = %self.channel, "source recovered");
                ("ok", None)
            }
            Health::Error(m) => {
                tracing::warn!(source = %cfg.id, channel = %self.channel, error = %m, "source failing");
                ("error", Some(m.clone()))
            }
        };
        let data = json!({
            "source": cfg.id,
            "channel": self.channel,
            "status": status,
            "message": message,
        });
        let Ok(data) = RawValue::from_string(data.to_string()) else {
            return;
        };
        let event = NewEvent {
            channel: self.channel.clone(),
            name: STATUS_EVENT.into(),
            data,
            id: None,
            state: None,
        };
        if let Err(e) = self.core.publish_from(Origin::Sql, vec![event]).await {
            tracing::error!(source = %cfg.id, channel = %self.channel, error = %e, "cannot publish a status event");
        }
    }
}

/// The channel's current state in the core, as a last result (what a restarted poller diffs against).
pub(super) async fn stored_state(
    core: &dyn Engine,
    channel: &ChannelName,
    mode: SqlMode,
    shape: ResultShape,
) -> Option<LastResult> {
    let values = core.state_of(channel).await.ok()??;
    if values.is_empty() {
        return None;
    }
    let row = |v: &RawValue| -> Option<Row> {
        RawValue::from_string(v.get().to_owned())
            .ok()
            .map(Arc::from)
    };
    match mode {
        SqlMode::Full => {
            let entry = values.get("")?;
            let rows: Vec<&RawValue> = match shape {
                ResultShape::Array => serde_json::from_str(entry.value.get()).ok()?,
                ResultShape::Object if entry.value.get() == "null" => Vec::new(),
                ResultShape::Object => vec![&*entry.value],
            };
            Some(LastResult {
                rows: rows.into_iter().filter_map(row).collect(),
                keyed: BTreeMap::new(),
            })
        }
        SqlMode::Rows => {
            let keyed: BTreeMap<String, Row> = values
                .iter()
                .filter_map(|e| Some((e.key.clone(), row(&e.value)?)))
                .collect();
            Some(LastResult {
                rows: keyed.values().cloned().collect(),
                keyed,
            })
        }
    }
}

fn same(a: &[Row], b: &[Row]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.get() == y.get())
}

/// The rows by key. A single key column keys by its value (a string as is, anything else as JSON); several by
/// the JSON array of their values.
fn keyed(rows: &[Row], key: &[String]) -> Result<BTreeMap<String, Row>, String> {
    let mut out = BTreeMap::new();
    for row in rows {
        let fields: std::collections::HashMap<String, &RawValue> =
            serde_json::from_str(row.get()).map_err(|e| format!("row is not an object: {e}"))?;
        let mut parts = Vec::with_capacity(key.len());
        for k in key {
            let v = fields
                .get(k)
                .ok_or_else(|| format!("key column {k:?} is not in the result"))?;
            parts.push(*v);
        }
        let k = match parts.as_slice() {
            [one] => match serde_json::from_str::<String>(one.get()) {
                Ok(s) => s,
                Err(_) => one.get().to_owned(),
            },
            many => format!(
                "[{}]",
                many.iter().map(|v| v.get()).collect::<Vec<_>>().join(",")
            ),
        };
        if out.insert(k.clone(), row.clone()).is_some() {
            return Err(format!(
                "key {k:?} appears in more than one row; the key column(s) must identify a row"
            ));
        }
    }
    Ok(out)
}

/// The `delete`/`insert`/`update` events turning `before` into `after`, removals first.
fn row_events(
    channel: &ChannelName,
    before: &BTreeMap<String, Row>,
    after: &BTreeMap<String, Row>,
) -> Vec<NewEvent> {
    let boxed = |r: &Row| -> Box<RawValue> {
        RawValue::from_string(r.get().to_owned()).unwrap_or_else(|_| super::empty_array())
    };
    keyed::diff(before, after, |a, b| a.get() == b.get())
        .into_iter()
        .map(|change| {
            let (name, row) = match &change {
                Change::Remove { old, .. } => ("delete", *old),
                Change::Insert { new, .. } => ("insert", *new),
                Change::Update { new, .. } => ("update", *new),
            };
            NewEvent {
                channel: channel.clone(),
                name: name.into(),
                data: boxed(row),
                id: None,
                state: Some(change.state(boxed)),
            }
        })
        .collect()
}

/// Follows a PostgreSQL `LISTEN` channel; every notification makes the source's pollers re-query at once.
/// Reconnects by itself (sqlx's listener re-establishes the connection and re-issues `LISTEN`).
pub(super) async fn listen(source: Arc<Source>, pool: sqlx::PgPool, channel: String) {
    let id = source.config.id.clone();
    // A connection of its own: the listener holds it for good, and must not take one of the pollers'.
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect_lazy_with((*pool.connect_options()).clone());
    let mut backoff = Duration::from_millis(500);
    loop {
        let mut listener = match sqlx::postgres::PgListener::connect_with(&pool).await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(source = %id, error = %e, "LISTEN connection failed; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
        };
        if let Err(e) = listener.listen(&channel).await {
            tracing::warn!(source = %id, error = %e, "LISTEN failed; retrying");
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
            continue;
        }
        tracing::info!(source = %id, listen = %channel, "listening for notifications");
        backoff = Duration::from_millis(500);
        loop {
            match listener.try_recv().await {
                Ok(Some(_)) => {
                    source.wake.send_modify(|n| *n = n.wrapping_add(1));
                }
                // The connection was lost and re-established: changes in between were not notified.
                Ok(None) => source.wake.send_modify(|n| *n = n.wrapping_add(1)),
                Err(e) => {
                    tracing::warn!(source = %id, error = %e, "LISTEN connection lost; reconnecting");
                    tokio::time::sleep(backoff).await;
                    break;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(s: &str) -> Row {
        Arc::from(RawValue::from_string(s.to_owned()).unwrap())
    }

    #[test]
    fn rows_diff_by_key() {
        let key = vec!["id".to_string()];
        let before = keyed(
            &[row(r#"{"id":1,"v":"a"}"#), row(r#"{"id":2,"v":"b"}"#)],
            &key,
        )
        .unwrap();
        let after = keyed(
            &[row(r#"{"id":2,"v":"B"}"#), row(r#"{"id":3,"v":"c"}"#)],
            &key,
        )
        .unwrap();
        let ch = ChannelName::new("t").unwrap();
        let names: Vec<(String, String)> = row_events(&ch, &before, &after)
            .into_iter()
            .map(|e| (e.name, e.data.get().to_owned()))
            .collect();
        assert_eq!(
            names,
            vec![
                ("delete".into(), r#"{"id":1,"v":"a"}"#.into()),
                ("update".into(), r#"{"id":2,"v":"B"}"#.into()),
                ("insert".into(), r#"{"id":3,"v":"c"}"#.into()),
            ]
        );
        assert!(row_events(&ch, &after, &after).is_empty());
        assert!(keyed(&[row(r#"{"id":1}"#), row(r#"{"id":1}"#)], &key).is_err());
        assert!(keyed(&[row(r#"{"x":1}"#)], &key).is_err());
        let two = keyed(&[row(r#"{"a":"x","b":2}"#)], &["a".into(), "b".into()]).unwrap();
        assert!(two.contains_key(r#"["x",2]"#));
    }
}
