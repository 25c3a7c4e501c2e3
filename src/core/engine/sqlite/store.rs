//! Durable history in an embedded SQLite file (WAL).
//!
//! One writer thread owns the write connection and group-commits whatever publishes and session writes are
//! waiting: one transaction and one fsync per batch, however many callers. A publish is answered only after its
//! batch committed, and just after its events were handed, in commit order, to the commit callback (which enters
//! them into the hub and queues their delivery). Reads run on a
//! small pool of read-only connections, off the async runtime.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use rusqlite::{Connection, OpenFlags, OptionalExtension, params};
use serde_json::value::RawValue;
use tokio::sync::oneshot;

use super::{Durability, Options};
use crate::core::channel::ChannelName;
use crate::core::engine::{ChannelInfo, Lane, ReadLimit};
use crate::core::event::{Event, NewEvent, PublishResult, SharedEvent, now_ms};
use crate::core::retention::Retention;
use crate::core::state::{self, StateChange};

/// Most commands folded into one transaction.
const MAX_GROUP: usize = 512;
/// How often age-based retention and session expiry run.
const SWEEP_EVERY: Duration = Duration::from_secs(2);

/// Store failures.
#[derive(Debug, thiserror::Error)]
pub(super) enum StoreError {
    /// SQLite reported an error.
    #[error("storage error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// The writer has stopped (shutdown in progress).
    #[error("store is shut down")]
    Closed,
    /// A background task failed.
    #[error("storage task failed: {0}")]
    Task(String),
}

/// Called with each committed batch of new events, in commit order, from the writer thread.
pub type CommitSink = Box<dyn Fn(Vec<Arc<SharedEvent>>) + Send>;

enum Command {
    Publish(
        Vec<NewEvent>,
        oneshot::Sender<Result<Vec<PublishResult>, StoreError>>,
    ),
    PutSession(
        String,
        String,
        Option<oneshot::Sender<Result<(), StoreError>>>,
    ),
    SessionDetached(String, i64),
    DeleteSession(String),
    Shutdown(oneshot::Sender<()>),
}

/// Handle to the store: cheap to clone.
#[derive(Clone)]
pub(super) struct Store {
    tx: mpsc::Sender<Command>,
    readers: Arc<Readers>,
}

/// What the store knew when it opened.
pub(super) struct Opened {
    /// The store handle.
    pub store: Store,
    /// Every channel, for the fan-out hub's positions.
    pub channels: Vec<ChannelInfo>,
    /// Highest commit sequence so far.
    pub last_seq: u64,
    /// Every state channel's stored values.
    pub state: Vec<(ChannelName, state::Entry)>,
}

impl Store {
    /// Opens (creating if needed) the database and starts the writer thread.
    pub fn open(opts: Options, sink: CommitSink) -> Result<Opened, StoreError> {
        std::fs::create_dir_all(&opts.data_dir)
            .map_err(|e| StoreError::Task(format!("cannot create data dir: {e}")))?;
        let path = opts.data_dir.join("herald.db");
        let conn = Connection::open(&path)?;
        conn.busy_timeout(Duration::from_secs(5))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        let sync = match opts.durability {
            Durability::Full => "FULL",
            Durability::Normal => "NORMAL",
        };
        conn.execute_batch(SCHEMA)?;
        let moved = begin_run(&conn, opts.durability, boot_id().as_deref())?;
        if moved > 0 {
            tracing::warn!(
                channels = moved,
                "the previous run (durability \"normal\") stopped uncleanly and the machine has restarted since: \
                 its last commits may be lost, so every channel moved to a new epoch and resuming clients get \
                 the gap notice instead of reused offsets"
            );
        }
        conn.pragma_update(None, "synchronous", sync)?;
        let now = now_ms();
        // Sessions attached when the previous process stopped are detached as of now.
        conn.execute(
            "UPDATE sessions SET detached_at = ?1 WHERE detached_at IS NULL",
            [now],
        )?;
        let channels = load_channels(&conn)?;
        let state = load_state(&conn)?;
        let last_seq: u64 = conn
            .query_row("SELECT value FROM meta WHERE key = 'last_seq'", [], |r| {
                r.get::<_, i64>(0)
            })
            .optional()?
            .unwrap_or(0) as u64;
        let mut writer = Writer {
            conn,
            channels: channels
                .iter()
                .map(|c| (c.channel.clone(), c.clone()))
                .collect(),
            last_seq,
            last_time: now,
            retention: opts.retention,
            session_ttl: opts.session_ttl,
            sink,
        };
        let (tx, rx) = mpsc::channel();
        std::thread::Builder::new()
            .name("herald-store".into())
            .spawn(move || writer.run(rx))
            .map_err(|e| StoreError::Task(e.to_string()))?;
        let store = Store {
            tx,
            readers: Arc::new(Readers {
                path,
                idle: Mutex::new(Vec::new()),
                replays: Arc::new(tokio::sync::Semaphore::new(READS_PER_LANE)),
                others: Arc::new(tokio::sync::Semaphore::new(READS_PER_LANE)),
            }),
        };
        Ok(Opened {
            store,
            channels,
            last_seq,
            state,
        })
    }

    /// Commits `events` (all or none) and returns one result per event, in order.
    pub async fn publish(&self, events: Vec<NewEvent>) -> Result<Vec<PublishResult>, StoreError> {
        let (tx, rx) = oneshot::channel();
        self.send(Command::Publish(events, tx))?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// Durably stores a session record (JSON) under `pid`, attached.
    pub async fn put_session(&self, pid: &str, record: String) -> Result<(), StoreError> {
        let (tx, rx) = oneshot::channel();
        self.send(Command::PutSession(pid.to_owned(), record, Some(tx)))?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// Marks a session detached now (its expiry clock starts); does not wait.
    pub fn session_detached(&self, pid: &str) {
        let _ = self.send(Command::SessionDetached(pid.to_owned(), now_ms()));
    }

    /// Forgets a session; does not wait.
    pub fn delete_session(&self, pid: &str) {
        let _ = self.send(Command::DeleteSession(pid.to_owned()));
    }

    /// Loads a session record.
    pub async fn session(&self, pid: &str) -> Result<Option<String>, StoreError> {
        let pid = pid.to_owned();
        self.read(move |c| {
            c.query_row("SELECT record FROM sessions WHERE pid = ?1", [pid], |r| {
                r.get(0)
            })
            .optional()
        })
        .await
    }

    /// One channel's committed position, if it exists.
    pub async fn channel(&self, name: &ChannelName) -> Result<Option<ChannelInfo>, StoreError> {
        let name = name.clone();
        self.read(move |c| channel_info(c, &name)).await
    }

    /// Every channel's committed position.
    pub async fn channels(&self) -> Result<Vec<ChannelInfo>, StoreError> {
        self.read(load_channels).await
    }

    /// The committed position of `channel` and its events with offset in `(after, upto]` (`upto` `None`: up
    /// to the position), oldest first, within `limit`, read in one transaction on `lane`.
    pub async fn range(
        &self,
        lane: Lane,
        channel: &ChannelName,
        after: u64,
        upto: Option<u64>,
        limit: ReadLimit,
    ) -> Result<Option<(ChannelInfo, Vec<Event>)>, StoreError> {
        let name = channel.clone();
        self.read_on(lane, move |c| {
            let tx = c.unchecked_transaction()?;
            let Some(info) = channel_info(&tx, &name)? else {
                return Ok(None);
            };
            let upto = upto.unwrap_or(info.last_offset);
            let events = events_in(&tx, &info, after, upto, limit)?;
            Ok(Some((info, events)))
        })
        .await
    }

    /// Highest offset of `channel` among retained events committed at or before `seq`.
    pub async fn last_offset_at(
        &self,
        channel_id: u64,
        seq: u64,
    ) -> Result<Option<u64>, StoreError> {
        self.read(move |c| {
            c.query_row(
                "SELECT MAX(offset) FROM events WHERE channel_id = ?1 AND seq <= ?2",
                params![channel_id as i64, seq as i64],
                |r| r.get::<_, Option<i64>>(0),
            )
            .map(|o| o.map(|o| o as u64))
        })
        .await
    }

    /// Stops the writer after the commands already queued; returns once it has.
    pub async fn shutdown(&self) {
        let (tx, rx) = oneshot::channel();
        if self.send(Command::Shutdown(tx)).is_ok() {
            let _ = rx.await;
        }
    }

    fn send(&self, cmd: Command) -> Result<(), StoreError> {
        self.tx.send(cmd).map_err(|_| StoreError::Closed)
    }

    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, StoreError> {
        self.read_on(Lane::Other, f).await
    }

    async fn read_on<T: Send + 'static>(
        &self,
        lane: Lane,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, StoreError> {
        let readers = self.readers.clone();
        let permits = match lane {
            Lane::Replay => &readers.replays,
            Lane::Other => &readers.others,
        };
        let permit = permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| StoreError::Closed)?;
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let conn = readers.take()?;
            let out = f(&conn);
            readers.idle.lock().push(conn);
            Ok(out?)
        })
        .await
        .map_err(|e| StoreError::Task(e.to_string()))?
    }
}

/// Read-only connections, at most [`READS_PER_LANE`] in use at once on each lane: every replaying subscriber reads
/// history, and an unbounded pool would open a connection (with its page cache) and a blocking thread per subscriber.
struct Readers {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
    /// Replay pages.
    replays: Arc<tokio::sync::Semaphore>,
    /// Everything else (sessions, history requests, positions).
    others: Arc<tokio::sync::Semaphore>,
}

/// Most reads running at once on one lane.
const READS_PER_LANE: usize = 4;

impl Readers {
    fn take(&self) -> Result<Connection, StoreError> {
        if let Some(c) = self.idle.lock().pop() {
            return Ok(c);
        }
        let c = Connection::open_with_flags(
            &self.path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        c.busy_timeout(Duration::from_secs(5))?;
        Ok(c)
    }
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS run (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS channels (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    epoch TEXT NOT NULL,
    first_offset INTEGER NOT NULL,
    last_offset INTEGER NOT NULL,
    trimmed_seq INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY,
    channel_id INTEGER NOT NULL,
    offset INTEGER NOT NULL,
    event_id TEXT NOT NULL,
    name TEXT NOT NULL,
    data TEXT NOT NULL,
    time INTEGER NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS events_by_offset ON events (channel_id, offset);
CREATE INDEX IF NOT EXISTS events_by_id ON events (channel_id, event_id);
CREATE TABLE IF NOT EXISTS sessions (pid TEXT PRIMARY KEY, record TEXT NOT NULL, detached_at INTEGER);
CREATE TABLE IF NOT EXISTS state (
    channel_id INTEGER NOT NULL,
    key TEXT NOT NULL,
    name TEXT NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (channel_id, key)
) WITHOUT ROWID;
";

fn load_channels(c: &Connection) -> rusqlite::Result<Vec<ChannelInfo>> {
    let mut st = c.prepare_cached(
        "SELECT id, name, epoch, first_offset, last_offset, trimmed_seq FROM channels ORDER BY name",
    )?;
    let rows = st.query_map([], row_to_channel)?;
    rows.filter_map(|r| r.transpose()).collect()
}

fn channel_info(c: &Connection, name: &ChannelName) -> rusqlite::Result<Option<ChannelInfo>> {
    c.query_row(
        "SELECT id, name, epoch, first_offset, last_offset, trimmed_seq FROM channels WHERE name = ?1",
        [name.as_str()],
        row_to_channel,
    )
    .optional()
    .map(Option::flatten)
}

/// A row whose name no longer validates (hand-edited database) is skipped rather than trusted.
fn row_to_channel(r: &rusqlite::Row<'_>) -> rusqlite::Result<Option<ChannelInfo>> {
    let name: String = r.get(1)?;
    let Ok(channel) = ChannelName::any(&name) else {
        tracing::warn!(channel = %name, "skipping channel with an invalid name in the store");
        return Ok(None);
    };
    Ok(Some(ChannelInfo {
        id: r.get::<_, i64>(0)? as u64,
        channel,
        epoch: r.get::<_, String>(2)?.into(),
        first_offset: r.get::<_, i64>(3)? as u64,
        last_offset: r.get::<_, i64>(4)? as u64,
        trimmed_seq: r.get::<_, i64>(5)? as u64,
    }))
}

/// An offset or sequence as SQLite's signed integer (larger values than any stored one stay larger).
/// Events of `ch` with offset in `(after, upto]`, oldest first, at most `limit`.
fn events_in(
    c: &Connection,
    ch: &ChannelInfo,
    after: u64,
    upto: u64,
    limit: ReadLimit,
) -> rusqlite::Result<Vec<Event>> {
    let mut st = c.prepare_cached(
        "SELECT seq, offset, event_id, name, data, time FROM events
         WHERE channel_id = ?1 AND offset > ?2 AND offset <= ?3 ORDER BY offset LIMIT ?4",
    )?;
    let rows = st.query_map(
        params![
            ch.id as i64,
            clamp(after),
            clamp(upto),
            i64::try_from(limit.events).unwrap_or(i64::MAX)
        ],
        |r| {
            let data: String = r.get(4)?;
            Ok(Event {
                channel: ch.channel.clone(),
                offset: r.get::<_, i64>(1)? as u64,
                epoch: ch.epoch.clone(),
                id: r.get(2)?,
                name: r.get(3)?,
                data: RawValue::from_string(data).map_err(|e| {
                    rusqlite::Error::FromSqlConversionFailure(
                        4,
                        rusqlite::types::Type::Text,
                        Box::new(e),
                    )
                })?,
                time: r.get(5)?,
                seq: r.get::<_, i64>(0)? as u64,
                channel_id: ch.id,
                state: None,
            })
        },
    )?;
    let mut events = Vec::new();
    let mut bytes = 0;
    for row in rows {
        let event = row?;
        bytes += event.data.get().len();
        events.push(event);
        if bytes >= limit.bytes {
            break;
        }
    }
    Ok(events)
}

fn clamp(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// This boot of the machine (Linux's `boot_id`), if the platform says.
fn boot_id() -> Option<String> {
    let id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
    Some(id.trim().to_owned()).filter(|id| !id.is_empty())
}

/// Records the start of a run (this process, this boot, its durability) and returns how many channels it moved to a
/// new epoch: under `normal`, commits not yet checkpointed survive a process crash (they are in the OS's page cache)
/// but not a machine restart, so a run that did not stop cleanly on an earlier boot may have acknowledged events
/// that are gone, and the next publishes would reuse their offsets. An unknown boot counts as a new one. The record
/// is written with a full fsync whatever the mode, so it is on disk before anything this run acknowledges.
fn begin_run(
    conn: &Connection,
    durability: Durability,
    boot: Option<&str>,
) -> Result<usize, StoreError> {
    let get = |key: &str| -> Result<Option<String>, rusqlite::Error> {
        conn.query_row("SELECT value FROM run WHERE key = ?1", [key], |r| r.get(0))
            .optional()
    };
    let crashed = get("state")?.as_deref() == Some("running");
    let lossy = get("durability")?.as_deref() == Some("normal");
    let rebooted = match (get("boot_id")?, boot) {
        (Some(before), Some(now)) => before != now,
        _ => true,
    };
    conn.pragma_update(None, "synchronous", "FULL")?;
    let tx = conn.unchecked_transaction()?;
    let moved = if crashed && lossy && rebooted {
        tx.execute("UPDATE channels SET epoch = lower(hex(randomblob(4)))", [])?
    } else {
        0
    };
    let mode = match durability {
        Durability::Full => "full",
        Durability::Normal => "normal",
    };
    for (key, value) in [
        ("state", "running"),
        ("durability", mode),
        ("boot_id", boot.unwrap_or("")),
    ] {
        tx.execute(
            "INSERT INTO run (key, value) VALUES (?1, ?2) ON CONFLICT (key) DO UPDATE SET value = ?2",
            [key, value],
        )?;
    }
    tx.commit()?;
    Ok(moved)
}

/// Records a clean stop (fsynced), after the last commit of the run.
fn end_run(conn: &Connection) -> Result<(), rusqlite::Error> {
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.execute("UPDATE run SET value = 'stopped' WHERE key = 'state'", [])?;
    Ok(())
}

/// A fresh random epoch.
fn new_epoch() -> Arc<str> {
    format!("{:08x}", rand::random::<u32>()).into()
}

/// A fresh random event id.
fn new_event_id() -> String {
    format!("{:016x}", rand::random::<u64>())
}

struct Writer {
    conn: Connection,
    channels: HashMap<ChannelName, ChannelInfo>,
    last_seq: u64,
    last_time: i64,
    retention: Retention,
    session_ttl: Duration,
    sink: CommitSink,
}

/// The outcome of one command inside a group transaction, delivered after commit.
enum Done {
    Publish(
        oneshot::Sender<Result<Vec<PublishResult>, StoreError>>,
        Vec<PublishResult>,
    ),
    Ack(oneshot::Sender<Result<(), StoreError>>),
}

impl Writer {
    fn run(&mut self, rx: mpsc::Receiver<Command>) {
        let mut next_sweep = Instant::now() + SWEEP_EVERY;
        loop {
            let first = match rx.recv_timeout(next_sweep.saturating_duration_since(Instant::now()))
            {
                Ok(cmd) => cmd,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    if let Err(e) = self.sweep() {
                        tracing::error!(error = %e, "retention sweep failed");
                    }
                    next_sweep = Instant::now() + SWEEP_EVERY;
                    continue;
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => return,
            };
            let mut batch = vec![first];
            while batch.len() < MAX_GROUP {
                match rx.try_recv() {
                    Ok(cmd) => batch.push(cmd),
                    Err(_) => break,
                }
            }
            let shutdown = batch.iter().position(|c| matches!(c, Command::Shutdown(_)));
            let rest = shutdown.map(|i| batch.split_off(i));
            self.commit_group(batch);
            if let Some(mut rest) = rest {
                // Commands behind the shutdown marker still get committed, then we stop.
                let Command::Shutdown(done) = rest.remove(0) else {
                    return;
                };
                while let Ok(cmd) = rx.try_recv() {
                    rest.push(cmd);
                }
                self.commit_group(rest);
                if let Err(e) = end_run(&self.conn) {
                    tracing::warn!(error = %e, "could not record the clean stop; the next start treats it as a crash");
                }
                let _ = self.conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)");
                let _ = done.send(());
                return;
            }
            if Instant::now() >= next_sweep {
                if let Err(e) = self.sweep() {
                    tracing::error!(error = %e, "retention sweep failed");
                }
                next_sweep = Instant::now() + SWEEP_EVERY;
            }
        }
    }

    fn commit_group(&mut self, batch: Vec<Command>) {
        if batch.is_empty() {
            return;
        }
        let mut fresh = Vec::new();
        let mut done = Vec::with_capacity(batch.len());
        let saved = (self.last_seq, self.last_time);
        crate::core::stats::COMMIT_BATCH.observe(batch.len() as u64);
        let result = self.apply(batch, &mut fresh, &mut done);
        match result {
            Ok(()) => {
                // Into the hub before answering: once a publish is acknowledged, every later subscription's
                // position includes it (no acknowledged event can arrive "live" to a subscriber that came after).
                if !fresh.is_empty() {
                    (self.sink)(fresh);
                }
                for d in done {
                    match d {
                        Done::Publish(tx, results) => {
                            let _ = tx.send(Ok(results));
                        }
                        Done::Ack(tx) => {
                            let _ = tx.send(Ok(()));
                        }
                    }
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "group commit failed; reloading channel positions");
                (self.last_seq, self.last_time) = saved;
                match load_channels(&self.conn) {
                    Ok(chs) => {
                        self.channels = chs.into_iter().map(|c| (c.channel.clone(), c)).collect()
                    }
                    Err(e) => tracing::error!(error = %e, "cannot reload channels"),
                }
                let msg = e.to_string();
                for d in done {
                    match d {
                        Done::Publish(tx, _) => {
                            let _ = tx.send(Err(StoreError::Task(msg.clone())));
                        }
                        Done::Ack(tx) => {
                            let _ = tx.send(Err(StoreError::Task(msg.clone())));
                        }
                    }
                }
            }
        }
    }

    /// Applies every command in one transaction. On error nothing is committed and `done` holds the repliers.
    fn apply(
        &mut self,
        batch: Vec<Command>,
        fresh: &mut Vec<Arc<SharedEvent>>,
        done: &mut Vec<Done>,
    ) -> Result<(), StoreError> {
        let tx = self.conn.transaction()?;
        let mut touched: Vec<ChannelName> = Vec::new();
        let mut failure = None;
        for cmd in batch {
            match cmd {
                Command::Publish(events, reply) => {
                    let mut results = Vec::with_capacity(events.len());
                    for ev in events {
                        if failure.is_some() {
                            break;
                        }
                        match publish_one(
                            &tx,
                            &mut self.channels,
                            &mut self.last_seq,
                            &mut self.last_time,
                            ev,
                        ) {
                            Ok((result, event)) => {
                                if let Some(event) = event {
                                    if !touched.contains(&event.channel) {
                                        touched.push(event.channel.clone());
                                    }
                                    fresh.push(SharedEvent::new(event));
                                }
                                results.push(result);
                            }
                            Err(e) => failure = Some(e),
                        }
                    }
                    done.push(Done::Publish(reply, results));
                }
                Command::PutSession(pid, record, reply) => {
                    if failure.is_none()
                        && let Err(e) = tx.execute(
                            "INSERT OR REPLACE INTO sessions (pid, record, detached_at) VALUES (?1, ?2, NULL)",
                            params![pid, record],
                        )
                    {
                        failure = Some(e.into());
                    }
                    if let Some(reply) = reply {
                        done.push(Done::Ack(reply));
                    }
                }
                Command::SessionDetached(pid, at) => {
                    if failure.is_none()
                        && let Err(e) = tx.execute(
                            "UPDATE sessions SET detached_at = ?2 WHERE pid = ?1",
                            params![pid, at],
                        )
                    {
                        failure = Some(e.into());
                    }
                }
                Command::DeleteSession(pid) => {
                    if failure.is_none()
                        && let Err(e) = tx.execute("DELETE FROM sessions WHERE pid = ?1", [pid])
                    {
                        failure = Some(e.into());
                    }
                }
                Command::Shutdown(_) => {}
            }
        }
        if let Some(e) = failure {
            return Err(e);
        }
        for name in touched {
            let max = self.retention.limits(name.as_str()).max_events;
            if let Some(ch) = self.channels.get_mut(&name) {
                trim_to_count(&tx, ch, max)?;
            }
        }
        tx.execute(
            "INSERT OR REPLACE INTO meta (key, value) VALUES ('last_seq', ?1)",
            [self.last_seq as i64],
        )?;
        let committing = Instant::now();
        tx.commit()?;
        crate::core::stats::COMMIT_SECONDS.observe_duration(committing.elapsed());
        Ok(())
    }

    /// Age-based retention and session expiry, in their own transaction.
    fn sweep(&mut self) -> Result<(), StoreError> {
        let now = now_ms();
        let tx = self.conn.transaction()?;
        for ch in self.channels.values_mut() {
            if ch.first_offset > ch.last_offset {
                continue;
            }
            let cutoff = now
                - self
                    .retention
                    .limits(ch.channel.as_str())
                    .max_age
                    .as_millis() as i64;
            let oldest: Option<i64> = tx
                .prepare_cached("SELECT time FROM events WHERE channel_id = ?1 AND offset = ?2")?
                .query_row(params![ch.id as i64, ch.first_offset as i64], |r| r.get(0))
                .optional()?;
            if oldest.is_none_or(|t| t >= cutoff) {
                continue;
            }
            let cut: Option<i64> = tx.query_row(
                "SELECT MAX(offset) FROM events WHERE channel_id = ?1 AND time < ?2",
                params![ch.id as i64, cutoff],
                |r| r.get(0),
            )?;
            if let Some(cut) = cut {
                trim(&tx, ch, cut as u64)?;
            }
        }
        let ttl = self.session_ttl.as_millis() as i64;
        tx.execute(
            "DELETE FROM sessions WHERE detached_at IS NOT NULL AND detached_at < ?1",
            [now - ttl],
        )?;
        tx.commit()?;
        Ok(())
    }
}

/// Stores the channel's new last offset, trimming history beyond `max` events.
fn trim_to_count(
    tx: &rusqlite::Transaction<'_>,
    ch: &mut ChannelInfo,
    max: u64,
) -> Result<(), StoreError> {
    let held = ch.last_offset + 1 - ch.first_offset;
    if held > max {
        return trim(tx, ch, ch.last_offset - max);
    }
    tx.prepare_cached("UPDATE channels SET last_offset = ?2 WHERE id = ?1")?
        .execute(params![ch.id as i64, ch.last_offset as i64])?;
    Ok(())
}

/// Deletes events of `ch` with offset ≤ `cut` and records how far history was trimmed.
fn trim(tx: &rusqlite::Transaction<'_>, ch: &mut ChannelInfo, cut: u64) -> Result<(), StoreError> {
    let trimmed: Option<i64> = tx
        .prepare_cached("SELECT MAX(seq) FROM events WHERE channel_id = ?1 AND offset <= ?2")?
        .query_row(params![ch.id as i64, cut as i64], |r| r.get(0))?;
    tx.prepare_cached("DELETE FROM events WHERE channel_id = ?1 AND offset <= ?2")?
        .execute(params![ch.id as i64, cut as i64])?;
    ch.first_offset = cut + 1;
    ch.trimmed_seq = ch.trimmed_seq.max(trimmed.unwrap_or(0) as u64);
    tx.prepare_cached(
        "UPDATE channels SET first_offset = ?2, last_offset = ?3, trimmed_seq = ?4 WHERE id = ?1",
    )?
    .execute(params![
        ch.id as i64,
        ch.first_offset as i64,
        ch.last_offset as i64,
        ch.trimmed_seq as i64
    ])?;
    Ok(())
}

/// Stores a state change beside the event that makes it (same transaction).
fn write_state(
    tx: &rusqlite::Transaction<'_>,
    channel_id: u64,
    name: &str,
    change: &StateChange,
) -> Result<(), StoreError> {
    match change {
        StateChange::Set { key, value } => {
            tx.prepare_cached(
                "INSERT OR REPLACE INTO state (channel_id, key, name, value) VALUES (?1, ?2, ?3, ?4)",
            )?
            .execute(params![channel_id as i64, key, name, value.get()])?;
        }
        StateChange::Remove { key } => {
            tx.prepare_cached("DELETE FROM state WHERE channel_id = ?1 AND key = ?2")?
                .execute(params![channel_id as i64, key])?;
        }
    }
    Ok(())
}

/// Every stored state value, for the hub (at start-up).
fn load_state(c: &Connection) -> rusqlite::Result<Vec<(ChannelName, state::Entry)>> {
    let mut st = c.prepare(
        "SELECT channels.name, state.key, state.name, state.value FROM state
         JOIN channels ON channels.id = state.channel_id",
    )?;
    let rows = st.query_map([], |r| {
        let channel: String = r.get(0)?;
        let value: String = r.get(3)?;
        Ok((
            channel,
            r.get::<_, String>(1)?,
            r.get::<_, String>(2)?,
            value,
        ))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (channel, key, name, value) = row?;
        // Rows were validated when written; a row that no longer parses is skipped rather than failing start-up.
        let (Ok(channel), Ok(value)) = (ChannelName::any(&channel), RawValue::from_string(value))
        else {
            tracing::warn!(%channel, %key, "skipping an unreadable stored state value");
            continue;
        };
        out.push((channel, state::Entry { key, name, value }));
    }
    Ok(out)
}

/// Writes one event inside the group transaction; `None` event means a duplicate id (nothing written).
fn publish_one(
    tx: &rusqlite::Transaction<'_>,
    channels: &mut HashMap<ChannelName, ChannelInfo>,
    last_seq: &mut u64,
    last_time: &mut i64,
    ev: NewEvent,
) -> Result<(PublishResult, Option<Event>), StoreError> {
    let ch = match channels.get_mut(&ev.channel) {
        Some(ch) => ch,
        None => {
            let epoch = new_epoch();
            tx.prepare_cached(
                "INSERT INTO channels (name, epoch, first_offset, last_offset, trimmed_seq) VALUES (?1, ?2, 1, 0, 0)",
            )?
            .execute(params![ev.channel.as_str(), &*epoch])?;
            let info = ChannelInfo {
                channel: ev.channel.clone(),
                epoch,
                first_offset: 1,
                last_offset: 0,
                id: tx.last_insert_rowid() as u64,
                trimmed_seq: 0,
            };
            channels.entry(ev.channel.clone()).or_insert(info)
        }
    };
    if let Some(id) = &ev.id {
        let existing: Option<i64> = tx
            .prepare_cached("SELECT offset FROM events WHERE channel_id = ?1 AND event_id = ?2")?
            .query_row(params![ch.id as i64, id], |r| r.get(0))
            .optional()?;
        if let Some(offset) = existing {
            let result = PublishResult {
                channel: ev.channel,
                offset: offset as u64,
                epoch: ch.epoch.clone(),
                id: id.clone(),
                duplicate: true,
            };
            return Ok((result, None));
        }
    }
    *last_seq += 1;
    *last_time = (*last_time).max(now_ms());
    ch.last_offset += 1;
    if let Some(change) = &ev.state {
        write_state(tx, ch.id, &ev.name, change)?;
    }
    let id = ev.id.unwrap_or_else(new_event_id);
    tx.prepare_cached(
        "INSERT INTO events (seq, channel_id, offset, event_id, name, data, time) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?
    .execute(params![
        *last_seq as i64,
        ch.id as i64,
        ch.last_offset as i64,
        id,
        ev.name,
        ev.data.get(),
        *last_time
    ])?;
    let event = Event {
        channel: ev.channel.clone(),
        offset: ch.last_offset,
        epoch: ch.epoch.clone(),
        id: id.clone(),
        name: ev.name,
        data: ev.data,
        time: *last_time,
        seq: *last_seq,
        channel_id: ch.id,
        state: ev.state,
    };
    let result = PublishResult {
        channel: ev.channel,
        offset: ch.last_offset,
        epoch: ch.epoch.clone(),
        id,
        duplicate: false,
    };
    Ok((result, Some(event)))
}
