//! The one-time import of `monitors.db`, the side database earlier Herald versions kept the monitor's data in:
//! its definitions, runtime states and recent check log (at most `log_keep` entries per monitor, none older than
//! `log_max_age`) are published into the engine through [`MonitorStore`], then the file is renamed
//! `monitors.db.migrated` so it is never read again.
//!
//! An import cut short (a crash before the rename) is repeated at the next start without duplicates: log entries
//! carry their old row id as idempotency id, and a monitor whose record the engine already holds keeps it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, params};

use super::MonitorConfig;
use super::runtime::Runtime;
use super::spec::MonitorSpec;
use super::store::{LoggedCheck, MonitorStore};
use crate::core::engine::EngineError;
use crate::core::event::now_ms;

/// The former side database's file name, in the data directory.
pub const LEGACY_FILE: &str = "monitors.db";
/// What it is renamed to once imported.
pub const MIGRATED_FILE: &str = "monitors.db.migrated";
/// Log entries published per batch.
const CHUNK: usize = 500;

/// Why the import failed (Herald does not start: the data would otherwise be silently left behind).
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    /// The file could not be read as the old schema.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// What SQLite said.
        source: rusqlite::Error,
    },
    /// The file could not be renamed after the import.
    #[error("imported {path} but cannot rename it: {source}")]
    Rename {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The engine refused the imported data.
    #[error("cannot import monitors.db: {0}")]
    Engine(#[from] EngineError),
    /// The blocking read failed.
    #[error("cannot import monitors.db: {0}")]
    Task(String),
}

/// One monitor of the old file.
struct Legacy {
    id: String,
    spec: String,
    runtime: Option<String>,
    /// `(row id, check)`, oldest first.
    log: Vec<(i64, LoggedCheck)>,
}

/// Imports `dir/monitors.db` into `store` if it exists, then renames it; returns whether there was one.
pub async fn import(
    store: &MonitorStore,
    dir: &Path,
    cfg: &MonitorConfig,
) -> Result<bool, MigrateError> {
    let path = dir.join(LEGACY_FILE);
    if !path.is_file() {
        return Ok(false);
    }
    let cutoff =
        now_ms().saturating_sub(i64::try_from(cfg.log_max_age.as_millis()).unwrap_or(i64::MAX));
    let keep = cfg.log_keep;
    let read_path = path.clone();
    let monitors = tokio::task::spawn_blocking(move || read(&read_path, keep, cutoff))
        .await
        .map_err(|e| MigrateError::Task(e.to_string()))?
        .map_err(|source| MigrateError::Read {
            path: path.clone(),
            source,
        })?;
    let existing: Vec<String> = store.load().await?.into_iter().map(|s| s.id).collect();
    let (mut monitors_in, mut entries_in) = (0usize, 0usize);
    for m in monitors {
        let Ok(spec) = serde_json::from_str::<MonitorSpec>(&m.spec) else {
            tracing::warn!(id = %m.id, "not importing a monitor whose definition no longer parses");
            continue;
        };
        if spec.id.as_deref().is_some_and(|id| id != m.id) || !super::spec::valid_id(&m.id) {
            tracing::warn!(id = %m.id, "not importing a monitor with an invalid id");
            continue;
        }
        let mut events = Vec::with_capacity(m.log.len());
        for (row, check) in &m.log {
            events.push(store.check(&m.id, check, Some(format!("{LEGACY_FILE}:{row}")))?);
        }
        entries_in += events.len();
        while !events.is_empty() {
            let rest = events.split_off(events.len().min(CHUNK));
            store.publish(std::mem::replace(&mut events, rest)).await?;
        }
        if existing.contains(&m.id) {
            continue;
        }
        let runtime = m
            .runtime
            .and_then(|r| serde_json::from_str::<Runtime>(&r).ok())
            .unwrap_or_default();
        store
            .publish(vec![store.record(&m.id, &spec, &runtime, 0, 0)])
            .await?;
        monitors_in += 1;
    }
    rename(dir)?;
    tracing::info!(
        monitors = monitors_in,
        log_entries = entries_in,
        "imported {LEGACY_FILE} into the engine; the file is now {MIGRATED_FILE}"
    );
    Ok(true)
}

/// Reads every monitor and its recent log from the old schema (`monitors`, `log`).
fn read(path: &Path, keep: usize, cutoff: i64) -> rusqlite::Result<Vec<Legacy>> {
    // Read-write (never create): closing the last connection folds a leftover WAL into the file before the rename.
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(Duration::from_secs(5))?;
    let mut monitors = {
        let mut st = conn.prepare("SELECT id, spec, runtime FROM monitors ORDER BY id")?;
        let rows = st.query_map([], |r| {
            Ok(Legacy {
                id: r.get(0)?,
                spec: r.get(1)?,
                runtime: r.get(2)?,
                log: Vec::new(),
            })
        })?;
        rows.collect::<Result<Vec<_>, _>>()?
    };
    let mut st = conn.prepare(
        "SELECT id, time, status, ms, message FROM log WHERE monitor = ?1 AND time >= ?2
         ORDER BY id DESC LIMIT ?3",
    )?;
    for m in &mut monitors {
        let rows = st.query_map(
            params![m.id, cutoff, i64::try_from(keep).unwrap_or(i64::MAX)],
            |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    LoggedCheck {
                        time: r.get(1)?,
                        status: r.get(2)?,
                        ms: r.get(3)?,
                        message: r.get(4)?,
                    },
                ))
            },
        )?;
        m.log = rows.collect::<Result<Vec<_>, _>>()?;
        m.log.reverse();
    }
    Ok(monitors)
}

/// Renames the file (and a WAL or shared-memory file SQLite left beside it, under the matching new names).
fn rename(dir: &Path) -> Result<(), MigrateError> {
    for suffix in ["", "-wal", "-shm"] {
        let from = dir.join(format!("{LEGACY_FILE}{suffix}"));
        if suffix.is_empty() || from.exists() {
            let to = dir.join(format!("{MIGRATED_FILE}{suffix}"));
            std::fs::rename(&from, &to)
                .map_err(|source| MigrateError::Rename { path: from, source })?;
        }
    }
    Ok(())
}
