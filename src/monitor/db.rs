//! The monitor's own SQLite file (`monitors.db` beside `herald.db`): definitions, each monitor's runtime state
//! (status, counters, uptime buckets) and the check log with retention. Writes go through one thread that
//! commits whatever is waiting in one transaction, so 100 checks a second cost a few commits, not 100.

use std::path::Path;
use std::sync::Arc;
use std::sync::mpsc;
use std::time::Duration;

use parking_lot::Mutex;
use rusqlite::{Connection, params};
use serde::Serialize;

/// Storage failures of the monitor.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// SQLite failed.
    #[error("monitor storage: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// The blocking task failed.
    #[error("monitor storage task: {0}")]
    Task(String),
}

/// One check log entry.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LogEntry {
    /// Entry id, increasing.
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
    /// Check time, ms since the UNIX epoch.
    #[serde(skip)]
    pub time: i64,
}

/// A stored monitor: its definition and its runtime state, both JSON.
pub struct Stored {
    /// Id.
    pub id: String,
    /// The definition.
    pub spec: String,
    /// The runtime state, if one was saved.
    pub runtime: Option<String>,
}

enum Write {
    Log {
        monitor: String,
        time: i64,
        status: String,
        ms: f64,
        message: String,
        id: tokio::sync::oneshot::Sender<i64>,
    },
    Monitor {
        id: String,
        spec: String,
    },
    Runtime {
        id: String,
        runtime: String,
    },
    Delete(String),
    Flush(tokio::sync::oneshot::Sender<()>),
}

/// Handle to the monitor database.
#[derive(Clone)]
pub struct Db {
    tx: mpsc::Sender<Write>,
    read: Arc<Mutex<Connection>>,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS monitors (id TEXT PRIMARY KEY, spec TEXT NOT NULL, runtime TEXT);
CREATE TABLE IF NOT EXISTS log (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    monitor TEXT NOT NULL,
    time INTEGER NOT NULL,
    status TEXT NOT NULL,
    ms REAL NOT NULL,
    message TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS log_by_monitor ON log (monitor, id);
";

impl Db {
    /// Opens (creating) `monitors.db` in `dir`; keeps at most `keep` log entries per monitor, none older than `max_age`.
    pub fn open(
        dir: &Path,
        keep: usize,
        max_age: Duration,
    ) -> Result<(Self, Vec<Stored>), DbError> {
        std::fs::create_dir_all(dir).map_err(|e| DbError::Task(e.to_string()))?;
        let path = dir.join("monitors.db");
        let conn = Connection::open(&path)?;
        conn.busy_timeout(Duration::from_secs(5))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        // A lost log line after a power cut is acceptable; the writer commits many checks at once anyway.
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.execute_batch(SCHEMA)?;
        let stored = {
            let mut st = conn.prepare("SELECT id, spec, runtime FROM monitors ORDER BY id")?;
            let rows = st.query_map([], |r| {
                Ok(Stored {
                    id: r.get(0)?,
                    spec: r.get(1)?,
                    runtime: r.get(2)?,
                })
            })?;
            rows.collect::<Result<Vec<_>, _>>()?
        };
        let read = Connection::open(&path)?;
        read.busy_timeout(Duration::from_secs(5))?;
        let (tx, rx) = mpsc::channel();
        std::thread::Builder::new()
            .name("herald-monitor-db".into())
            .spawn(move || writer(conn, rx, keep, max_age))
            .map_err(|e| DbError::Task(e.to_string()))?;
        Ok((
            Self {
                tx,
                read: Arc::new(Mutex::new(read)),
            },
            stored,
        ))
    }

    /// Appends a log entry; resolves to its id once committed.
    pub async fn log(&self, monitor: &str, time: i64, status: &str, ms: f64, message: &str) -> i64 {
        let (id, rx) = tokio::sync::oneshot::channel();
        let _ = self.tx.send(Write::Log {
            monitor: monitor.to_owned(),
            time,
            status: status.to_owned(),
            ms,
            message: message.to_owned(),
            id,
        });
        rx.await.unwrap_or(0)
    }

    /// Stores a definition.
    pub fn put_monitor(&self, id: &str, spec: String) {
        let _ = self.tx.send(Write::Monitor {
            id: id.to_owned(),
            spec,
        });
    }

    /// Stores a runtime state.
    pub fn put_runtime(&self, id: &str, runtime: String) {
        let _ = self.tx.send(Write::Runtime {
            id: id.to_owned(),
            runtime,
        });
    }

    /// Deletes a monitor and its log.
    pub fn delete(&self, id: &str) {
        let _ = self.tx.send(Write::Delete(id.to_owned()));
    }

    /// Waits until everything sent so far is committed.
    pub async fn flush(&self) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        if self.tx.send(Write::Flush(tx)).is_ok() {
            let _ = rx.await;
        }
    }

    /// The latest `limit` log entries of `monitor`, newest first.
    pub async fn recent(&self, monitor: &str, limit: usize) -> Result<Vec<LogEntry>, DbError> {
        let read = self.read.clone();
        let monitor = monitor.to_owned();
        tokio::task::spawn_blocking(move || {
            let c = read.lock();
            let mut st = c.prepare_cached(
                "SELECT id, time, status, ms, message FROM log WHERE monitor = ?1 ORDER BY id DESC LIMIT ?2",
            )?;
            let rows = st.query_map(params![monitor, limit as i64], |r| {
                let time: i64 = r.get(1)?;
                Ok(LogEntry {
                    id: r.get(0)?,
                    monitor_id: monitor.clone(),
                    status: r.get(2)?,
                    response_time: r.get(3)?,
                    message: r.get(4)?,
                    created_at: crate::core::event::format_time(time),
                    time,
                })
            })?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
        .map_err(|e| DbError::Task(e.to_string()))?
    }
}

fn writer(mut conn: Connection, rx: mpsc::Receiver<Write>, keep: usize, max_age: Duration) {
    let mut since_trim = 0usize;
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while let Ok(more) = rx.try_recv() {
            batch.push(more);
        }
        let mut ids = Vec::new();
        let mut flushes = Vec::new();
        let result = (|| -> rusqlite::Result<()> {
            let tx = conn.transaction()?;
            for w in batch {
                match w {
                    Write::Log {
                        monitor,
                        time,
                        status,
                        ms,
                        message,
                        id,
                    } => {
                        tx.prepare_cached(
                            "INSERT INTO log (monitor, time, status, ms, message) VALUES (?1, ?2, ?3, ?4, ?5)",
                        )?
                        .execute(params![monitor, time, status, ms, message])?;
                        ids.push((id, tx.last_insert_rowid()));
                        since_trim += 1;
                    }
                    Write::Monitor { id, spec } => {
                        tx.prepare_cached(
                            "INSERT INTO monitors (id, spec) VALUES (?1, ?2)
                             ON CONFLICT (id) DO UPDATE SET spec = excluded.spec",
                        )?
                        .execute(params![id, spec])?;
                    }
                    Write::Runtime { id, runtime } => {
                        tx.prepare_cached("UPDATE monitors SET runtime = ?2 WHERE id = ?1")?
                            .execute(params![id, runtime])?;
                    }
                    Write::Delete(id) => {
                        tx.execute("DELETE FROM monitors WHERE id = ?1", [&id])?;
                        tx.execute("DELETE FROM log WHERE monitor = ?1", [&id])?;
                    }
                    Write::Flush(done) => flushes.push(done),
                }
            }
            // Retention, amortised: every few thousand entries, trim each monitor to `keep` and by age.
            if since_trim >= 5000 {
                since_trim = 0;
                let cutoff = crate::core::event::now_ms() - max_age.as_millis() as i64;
                tx.execute("DELETE FROM log WHERE time < ?1", [cutoff])?;
                tx.execute(
                    "DELETE FROM log WHERE id IN (
                       SELECT id FROM (SELECT id, ROW_NUMBER() OVER (PARTITION BY monitor ORDER BY id DESC) AS n FROM log)
                       WHERE n > ?1)",
                    [keep as i64],
                )?;
            }
            tx.commit()
        })();
        if let Err(e) = result {
            tracing::error!(error = %e, "monitor storage write failed");
        }
        for (tx, id) in ids {
            let _ = tx.send(id);
        }
        for f in flushes {
            let _ = f.send(());
        }
    }
}
