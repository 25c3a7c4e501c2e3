//! Live SQL sources: a query per channel, polled only while the channel has subscribers, its result diffed
//! and published as state events through the core.
//!
//! A source's channel template (`unit:{unit}`) names a family of channels; each channel binds the query's
//! parameters. The first subscriber of a channel (a [`Demand`] from the core) starts one poller for it, however
//! many clients and transports watch it; the last one leaving stops it. Each change is published once, with a
//! [`StateChange`], so the core gives every new subscriber the current result before later changes.

pub mod config;
pub mod db;
mod poller;
mod routes;
pub mod stats;
pub mod template;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures_util::future::BoxFuture;
use serde::Serialize;
use serde_json::value::RawValue;

use crate::api::Mounts;
use crate::core::Engine;
use crate::core::channel::{ChannelName, Pattern};
use crate::core::state::Snapshot;
use db::{Database, DbError, PoolSettings};
use template::{ChannelTemplate, Params, SqlTemplate};

pub use config::{HistoryBody, ResultShape, SqlMode, SqlSourceConfig};

pub use crate::core::event::SOURCE_STATUS_EVENT as STATUS_EVENT;
/// Event name of the bulk snapshot of a `rows` source.
pub const ROWS_SNAPSHOT_EVENT: &str = "snapshot";
/// How long start-up waits for a database before leaving the SQL check to the first poll.
const STARTUP_CONNECT: Duration = Duration::from_secs(5);

/// Starts the `[[sources.sql]]` sources as one [`super::Source`].
pub fn start<'a>(
    setup: &'a super::Setup<'a>,
) -> BoxFuture<'a, Result<Arc<dyn super::Source>, super::SourceError>> {
    Box::pin(async move {
        let sources: Arc<dyn super::Source> =
            SqlSources::start(setup.engine, &setup.sections.sources.sql).await?;
        Ok(sources)
    })
}

impl super::Source for SqlSources {
    fn routes(self: Arc<Self>) -> Mounts {
        routes::mounts(self)
    }

    fn readiness(&self) -> BoxFuture<'_, Vec<crate::api::ready::Readiness>> {
        Box::pin(SqlSources::readiness(self))
    }

    fn shutdown(&self) -> BoxFuture<'_, ()> {
        Box::pin(SqlSources::shutdown(self))
    }
}

/// Least time between two readiness probes of one source's database.
const READY_PROBE_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// How long a source's database has to answer `/readyz`'s probe: less than the part timeout, so a slow database
/// is reported as this source's, not as the whole kind's.
const READY_PROBE_TIMEOUT: std::time::Duration = std::time::Duration::from_millis(1500);

/// Why the SQL sources could not start.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// A source's definition is wrong.
    #[error("sources.sql {id:?}, field `{field}`: {message}")]
    Invalid {
        /// Source id.
        id: String,
        /// Offending field.
        field: &'static str,
        /// What is wrong.
        message: String,
    },
}

/// Why a one-shot query was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    /// No source has this id.
    #[error("no SQL source {0:?}")]
    UnknownSource(String),
    /// The source has no `history_sql`.
    #[error("source {0:?} has no history_sql")]
    NoHistory(String),
    /// A parameter of the query is missing from the request.
    #[error("missing query parameter {0:?}")]
    MissingParam(String),
    /// The result has more rows than `max_rows`.
    #[error("the result has more than {0} rows (max_rows)")]
    TooManyRows(usize),
    /// An answer shaped as one object found more than one row.
    #[error("{0}")]
    NotOneRow(String),
    /// The database failed.
    #[error(transparent)]
    Db(#[from] DbError),
}

/// A statement ready to run: the SQL sent and the parameter names in binding order.
#[derive(Debug, Clone)]
struct Prepared {
    statement: String,
    order: Vec<String>,
}

impl Prepared {
    fn new(db: &Database, sql: &SqlTemplate) -> Self {
        let (rendered, order) = sql.render(db.markers());
        Self {
            statement: db.statement(&rendered),
            order,
        }
    }

    fn args(&self, params: &Params) -> Result<Vec<String>, QueryError> {
        self.order
            .iter()
            .map(|n| {
                params
                    .get(n)
                    .cloned()
                    .ok_or_else(|| QueryError::MissingParam(n.clone()))
            })
            .collect()
    }
}

/// Status of one polled channel.
#[derive(Debug, Clone, Serialize)]
pub struct ChannelStatus {
    /// Channel name.
    pub channel: ChannelName,
    /// `starting`, `ok`, `error`, or `standby` (another node of the cluster polls it).
    pub status: &'static str,
    /// Why it is in error.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Queries run for this channel since its poller started.
    pub queries: u64,
    /// Rows in the last good result.
    pub rows: usize,
    /// Time of the last query, RFC 3339.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_poll: Option<String>,
}

/// A running poller, as the source's channel map holds it.
struct PollerHandle {
    /// `true` asks the poller to stop at its next pause; set back to `false` if a subscriber returns first.
    stop: tokio::sync::watch::Sender<bool>,
    status: Arc<parking_lot::Mutex<ChannelStatus>>,
}

/// The last result of a channel, kept across poller restarts so a returning subscriber does not cause a
/// spurious change.
#[derive(Debug, Clone, Default)]
pub(crate) struct LastResult {
    rows: Vec<db::Row>,
    keyed: BTreeMap<String, db::Row>,
}

/// Retained results kept for channels without a poller; beyond this, arbitrary ones are forgotten.
const MAX_RETAINED: usize = 10_000;

/// One configured source.
pub struct Source {
    config: SqlSourceConfig,
    template: ChannelTemplate,
    db: Database,
    live: Prepared,
    history: Option<Prepared>,
    history_params: Vec<String>,
    pollers: parking_lot::Mutex<HashMap<ChannelName, PollerHandle>>,
    retained: parking_lot::Mutex<HashMap<ChannelName, LastResult>>,
    /// Bumped by a PostgreSQL notification: every poller of the source re-queries at once.
    wake: tokio::sync::watch::Sender<u64>,
    queries: AtomicU64,
    /// The last readiness probe and when it ran: `/readyz` needs no key, so however often it is asked, the
    /// database is probed at most once per [`READY_PROBE_EVERY`] (callers meanwhile wait for the one probing).
    ready: tokio::sync::Mutex<Option<(std::time::Instant, Result<(), String>)>>,
}

/// Summary of a source for the API.
#[derive(Debug, Serialize)]
pub struct SourceInfo {
    /// Source id.
    pub id: String,
    /// `postgres`, `mysql` or `sqlite`.
    pub database: &'static str,
    /// `full` or `rows`.
    pub mode: SqlMode,
    /// Channel template.
    pub channel: String,
    /// Key columns.
    pub key: Vec<String>,
    /// Poll interval in milliseconds.
    pub interval_ms: u128,
    /// Row limit.
    pub max_rows: usize,
    /// PostgreSQL `LISTEN` channel.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<String>,
    /// Shape of a `full` result: `array` or `object`.
    pub result: ResultShape,
    /// Parameters of the one-shot query (`/api/sources/{id}/query`), if it has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub history_params: Option<Vec<String>>,
    /// The further path serving the one-shot query, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub history_path: Option<String>,
    /// Queries run since start.
    pub queries: u64,
    /// Channels being polled now.
    pub channels: Vec<ChannelStatus>,
}

impl Source {
    /// Whether the database answers a trivial statement now, probed at most once per [`READY_PROBE_EVERY`].
    async fn probe(&self) -> Result<(), String> {
        let mut last = self.ready.lock().await;
        if let Some((at, result)) = &*last
            && at.elapsed() < READY_PROBE_EVERY
        {
            return result.clone();
        }
        let result =
            match tokio::time::timeout(READY_PROBE_TIMEOUT, self.db.check("SELECT 1")).await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(format!("its database does not answer: {e}")),
                Err(_) => Err(format!(
                    "its database did not answer within {READY_PROBE_TIMEOUT:?}"
                )),
            };
        *last = Some((std::time::Instant::now(), result.clone()));
        result
    }

    fn info(&self) -> SourceInfo {
        let mut channels: Vec<ChannelStatus> = self
            .pollers
            .lock()
            .values()
            .map(|p| p.status.lock().clone())
            .collect();
        channels.sort_by(|a, b| a.channel.cmp(&b.channel));
        SourceInfo {
            id: self.config.id.clone(),
            database: self.db.kind(),
            mode: self.config.mode,
            channel: self.template.as_str().to_owned(),
            key: self.config.key.clone(),
            interval_ms: self.config.interval.as_millis(),
            max_rows: self.config.max_rows,
            listen: self.config.listen.clone(),
            result: self.config.result,
            history_params: self.history.as_ref().map(|_| self.history_params.clone()),
            history_path: self.config.history_path.clone(),
            queries: self.queries.load(Ordering::Relaxed),
            channels,
        }
    }

    /// Starts the channel's poller, or keeps a stopping one.
    fn activate(self: &Arc<Self>, core: &Arc<dyn Engine>, channel: ChannelName, params: Params) {
        let mut pollers = self.pollers.lock();
        if let Some(p) = pollers.get(&channel) {
            p.stop.send_replace(false);
            return;
        }
        if pollers.len() >= self.config.max_channels {
            tracing::warn!(
                source = %self.config.id,
                %channel,
                max_channels = self.config.max_channels,
                "not polling: the source already polls its most channels"
            );
            return;
        }
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let status = Arc::new(parking_lot::Mutex::new(ChannelStatus {
            channel: channel.clone(),
            status: "starting",
            message: None,
            queries: 0,
            rows: 0,
            last_poll: None,
        }));
        pollers.insert(
            channel.clone(),
            PollerHandle {
                stop,
                status: status.clone(),
            },
        );
        // Across restarts the last result is the channel's durable state, so nothing already published is
        // published again and rows deleted meanwhile are still noticed.
        let retained = self.retained.lock().remove(&channel);
        tracing::debug!(source = %self.config.id, %channel, "poller started");
        let source = self.clone();
        let core = core.clone();
        tokio::spawn(async move {
            let last = match retained {
                Some(last) => Some(last),
                None => {
                    let (mode, shape) = (source.config.mode, source.config.result);
                    poller::stored_state(&*core, &channel, mode, shape).await
                }
            };
            poller::run(poller::Poller {
                source,
                core,
                channel,
                params,
                stopped,
                status,
                last,
            })
            .await
        });
    }

    fn deactivate(&self, channel: &ChannelName) {
        if let Some(p) = self.pollers.lock().get(channel) {
            p.stop.send_replace(true);
        }
    }

    /// Called by a poller about to exit: leaves only if nobody re-activated it meanwhile.
    fn try_retire(&self, channel: &ChannelName, last: &LastResult) -> bool {
        let mut pollers = self.pollers.lock();
        let Some(p) = pollers.get(channel) else {
            return true;
        };
        if !*p.stop.borrow() {
            return false;
        }
        pollers.remove(channel);
        let mut retained = self.retained.lock();
        if retained.len() >= MAX_RETAINED
            && let Some(k) = retained.keys().next().cloned()
        {
            retained.remove(&k);
        }
        retained.insert(channel.clone(), last.clone());
        tracing::debug!(source = %self.config.id, %channel, "poller stopped");
        true
    }
}

/// Every SQL source of the server.
#[derive(Default)]
pub struct SqlSources {
    sources: Vec<Arc<Source>>,
    tasks: parking_lot::Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

impl SqlSources {
    /// Opens every source's pool, checks its SQL against the database (when reachable), declares its channels
    /// as state channels and starts following their demand.
    pub async fn start(
        core: &Arc<dyn Engine>,
        configs: &[SqlSourceConfig],
    ) -> Result<Arc<Self>, SourceError> {
        let mut sources = Vec::new();
        for cfg in configs {
            sources.push(Arc::new(open_source(cfg).await?));
        }
        let this = Arc::new(Self {
            sources,
            tasks: parking_lot::Mutex::new(Vec::new()),
        });
        // The core takes the first declaration matching a channel: the most specific templates go first, so
        // `{unit}` (every channel without a `:`) does not claim `rows:{unit}`'s channels.
        let mut ordered: Vec<&Arc<Source>> = this.sources.iter().collect();
        ordered.sort_by_key(|s| std::cmp::Reverse(s.template.glob().replace('*', "").len()));
        for source in ordered {
            let glob = Pattern::new(&source.template.glob());
            let snapshot = match source.config.mode {
                SqlMode::Full => Snapshot::Each,
                SqlMode::Rows => Snapshot::Bulk {
                    event: ROWS_SNAPSHOT_EVENT.into(),
                },
            };
            core.declare_state(glob.clone(), snapshot);
            let demand = core.demand(glob);
            let mut tasks = this.tasks.lock();
            tasks.push(tokio::spawn(follow_demand(
                source.clone(),
                core.clone(),
                demand,
            )));
            if let (Some(listen), Database::Postgres(pool)) = (&source.config.listen, &source.db) {
                tasks.push(tokio::spawn(poller::listen(
                    source.clone(),
                    pool.clone(),
                    listen.clone(),
                )));
            }
            tracing::info!(source = %source.config.id, database = source.db.kind(), channel = source.template.as_str(), "SQL source ready");
        }
        Ok(this)
    }

    /// Summaries of every source.
    pub fn list(&self) -> Vec<SourceInfo> {
        self.sources.iter().map(|s| s.info()).collect()
    }

    /// Summary of source `id`.
    pub fn get(&self, id: &str) -> Option<SourceInfo> {
        self.find(id).map(|s| s.info())
    }

    fn find(&self, id: &str) -> Option<&Arc<Source>> {
        self.sources.iter().find(|s| s.config.id == id)
    }

    /// The `history_path` of every source that has one: `(path, source id, body shape)`.
    pub fn history_routes(&self) -> Vec<(String, String, HistoryBody)> {
        self.sources
            .iter()
            .filter_map(|s| {
                let path = s.config.history_path.clone()?;
                Some((path, s.config.id.clone(), s.config.history_body))
            })
            .collect()
    }

    /// Runs source `id`'s one-shot `history_sql` with `params` bound; the rows, shaped as `shape`.
    pub async fn query_as(
        &self,
        id: &str,
        params: &Params,
        shape: ResultShape,
    ) -> Result<Box<RawValue>, QueryError> {
        let rows = self.query_rows(id, params).await?;
        shaped(&rows, shape).map_err(QueryError::NotOneRow)
    }

    async fn query_rows(&self, id: &str, params: &Params) -> Result<Vec<db::Row>, QueryError> {
        let source = self
            .find(id)
            .ok_or_else(|| QueryError::UnknownSource(id.to_owned()))?;
        let history = source
            .history
            .as_ref()
            .ok_or_else(|| QueryError::NoHistory(id.to_owned()))?;
        let args = history.args(params)?;
        let max = source.config.max_rows;
        let fetched = with_deadline(
            source.config.statement_timeout,
            source.db.fetch(&history.statement, &args, max),
        )
        .await?;
        if fetched.over_limit {
            return Err(QueryError::TooManyRows(max));
        }
        Ok(fetched.rows)
    }

    /// Each source's readiness (`sql:ID`): its database answers a trivial statement now. Required only with
    /// `ready_required`.
    pub async fn readiness(&self) -> Vec<crate::api::ready::Readiness> {
        use crate::api::ready::Readiness;
        let probes = self.sources.iter().map(|s| async move {
            let name = format!("sql:{}", s.config.id);
            let required = s.config.ready_required;
            match s.probe().await {
                Ok(()) => Readiness::ready(name, "sql", required),
                Err(message) => Readiness::not_ready(name, "sql", required, message),
            }
        });
        futures_util::future::join_all(probes).await
    }

    /// Stops every poller and closes the pools.
    pub async fn shutdown(&self) {
        for t in self.tasks.lock().drain(..) {
            t.abort();
        }
        for s in &self.sources {
            for p in s.pollers.lock().values() {
                p.stop.send_replace(true);
            }
            s.db.close().await;
        }
    }
}

/// A database call bounded by the statement timeout plus a margin, for a server that stops answering.
async fn with_deadline<T>(
    timeout: Duration,
    work: impl Future<Output = Result<T, DbError>>,
) -> Result<T, DbError> {
    let limit = timeout + Duration::from_secs(2);
    tokio::time::timeout(limit, work)
        .await
        .unwrap_or(Err(DbError::Timeout(timeout)))
}

/// `[row,row,…]` from rows already encoded.
fn json_array(rows: &[db::Row]) -> Box<RawValue> {
    let mut s = String::with_capacity(2 + rows.iter().map(|r| r.get().len() + 1).sum::<usize>());
    s.push('[');
    for (i, r) in rows.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        s.push_str(r.get());
    }
    s.push(']');
    // Each row is valid JSON, so the array is too.
    RawValue::from_string(s).unwrap_or_else(|_| empty_array())
}

/// The rows as `shape` says: the array, or the only row as an object (`null` for none). More than one row for
/// an object is an error, the message saying so.
pub(crate) fn shaped(rows: &[db::Row], shape: ResultShape) -> Result<Box<RawValue>, String> {
    match (shape, rows) {
        (ResultShape::Array, _) => Ok(json_array(rows)),
        (ResultShape::Object, []) => Ok(RawValue::from_string("null".into()).unwrap_or_default()),
        (ResultShape::Object, [one]) => {
            Ok(RawValue::from_string(one.get().to_owned()).unwrap_or_else(|_| empty_array()))
        }
        (ResultShape::Object, many) => Err(format!(
            "result = \"object\" needs at most one row, and the query returned {}",
            many.len()
        )),
    }
}

fn empty_array() -> Box<RawValue> {
    RawValue::from_string("[]".into()).unwrap_or_default()
}

async fn follow_demand(
    source: Arc<Source>,
    core: Arc<dyn Engine>,
    mut demand: tokio::sync::mpsc::UnboundedReceiver<crate::core::engine::Demand>,
) {
    while let Some(d) = demand.recv().await {
        // Herald's own channels (a source following its store, say) are never a user's demand.
        if d.channel.is_internal() {
            continue;
        }
        let Some(params) = source.template.bind(d.channel.as_str()) else {
            continue;
        };
        if d.active {
            source.activate(&core, d.channel, params);
        } else {
            source.deactivate(&d.channel);
        }
    }
}

async fn open_source(cfg: &SqlSourceConfig) -> Result<Source, SourceError> {
    let invalid = |field: &'static str, message: String| SourceError::Invalid {
        id: cfg.id.clone(),
        field,
        message,
    };
    let template =
        ChannelTemplate::parse(&cfg.channel).map_err(|e| invalid("channel", e.to_string()))?;
    let sql = SqlTemplate::parse(&cfg.sql).map_err(|e| invalid("sql", e.to_string()))?;
    let db = Database::open(
        &cfg.url,
        PoolSettings {
            size: cfg.pool_size,
            statement_timeout: cfg.statement_timeout,
        },
    )
    .map_err(|e| invalid("url", e.to_string()))?;
    let live = Prepared::new(&db, &sql);
    let (history, history_params) = match &cfg.history_sql {
        Some(h) => {
            let t = SqlTemplate::parse(h).map_err(|e| invalid("history_sql", e.to_string()))?;
            let params = t.params().into_iter().map(str::to_owned).collect();
            (Some(Prepared::new(&db, &t)), params)
        }
        None => (None, Vec::new()),
    };
    // Bad SQL is a start-up error when the database can say so; a database that is down is not: the source
    // starts, reports its status to subscribers and recovers once the database is back.
    let statements =
        std::iter::once(("sql", &live)).chain(history.iter().map(|h| ("history_sql", h)));
    for (field, prepared) in statements {
        match tokio::time::timeout(STARTUP_CONNECT, db.check(&prepared.statement)).await {
            Ok(Ok(())) => {}
            Ok(Err(DbError::Query(m))) => return Err(invalid(field, m)),
            Ok(Err(e)) => {
                tracing::warn!(source = %cfg.id, error = %e, "cannot check the SQL now; the database is unavailable");
                break;
            }
            Err(_) => {
                tracing::warn!(source = %cfg.id, "cannot check the SQL now; the database did not answer in {STARTUP_CONNECT:?}");
                break;
            }
        }
    }
    let (wake, _) = tokio::sync::watch::channel(0);
    Ok(Source {
        config: cfg.clone(),
        template,
        db,
        live,
        history,
        history_params,
        pollers: parking_lot::Mutex::new(HashMap::new()),
        retained: parking_lot::Mutex::new(HashMap::new()),
        wake,
        queries: AtomicU64::new(0),
        ready: tokio::sync::Mutex::new(None),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn object_results_are_one_row() {
        let row = |s: &str| -> db::Row { Arc::from(RawValue::from_string(s.to_owned()).unwrap()) };
        assert_eq!(shaped(&[], ResultShape::Object).unwrap().get(), "null");
        assert_eq!(
            shaped(&[row(r#"{"a":1}"#)], ResultShape::Object)
                .unwrap()
                .get(),
            r#"{"a":1}"#
        );
        let e = shaped(&[row("{}"), row("{}")], ResultShape::Object).unwrap_err();
        assert!(e.contains("at most one row") && e.contains('2'), "{e}");
        assert_eq!(
            shaped(&[row("{}")], ResultShape::Array).unwrap().get(),
            "[{}]"
        );
    }
}
