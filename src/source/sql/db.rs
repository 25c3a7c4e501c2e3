//! Database access for SQL sources: bounded pools, read-only sessions with a statement timeout, bound text
//! parameters, and rows turned into JSON objects faithfully (column order kept, decimals exact).
//!
//! PostgreSQL and MySQL/MariaDB go through sqlx; SQLite through rusqlite, because the store already links
//! rusqlite's bundled SQLite and sqlx's SQLite driver cannot share the binary with it.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use futures_util::TryStreamExt as _;
use serde_json::value::RawValue;
use sqlx::{
    AssertSqlSafe, Column as _, Executor as _, Row as _, SqlSafeStr as _, TypeInfo as _,
    ValueRef as _,
};

use super::template::Markers;

/// One result row: a JSON object, as text.
pub type Row = Arc<RawValue>;

/// Why a database operation failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum DbError {
    /// The URL cannot be used.
    #[error("{0}")]
    Url(String),
    /// The database could not be reached (down, refused, pool exhausted, network).
    #[error("database unavailable: {0}")]
    Unavailable(String),
    /// The database refused or failed the statement.
    #[error("query failed: {0}")]
    Query(String),
    /// The statement ran longer than the statement timeout.
    #[error("query timed out after {0:?}")]
    Timeout(Duration),
}

impl From<sqlx::Error> for DbError {
    fn from(e: sqlx::Error) -> Self {
        match e {
            // The database's own message and SQLSTATE; sqlx's Display adds the server's source line, which
            // reads like a line of the user's SQL.
            sqlx::Error::Database(d) => DbError::Query(match d.code() {
                Some(code) => format!("{} (SQLSTATE {code})", d.message()),
                None => d.message().to_owned(),
            }),
            sqlx::Error::ColumnDecode { .. } | sqlx::Error::Decode(_) => {
                DbError::Query(e.to_string())
            }
            other => DbError::Unavailable(other.to_string()),
        }
    }
}

/// What a query returned.
#[derive(Debug)]
pub struct Fetched {
    /// Rows, at most the limit.
    pub rows: Vec<Row>,
    /// More rows than the limit were there.
    pub over_limit: bool,
}

/// Pool settings of one source.
#[derive(Debug, Clone, Copy)]
pub struct PoolSettings {
    /// Most open connections.
    pub size: u32,
    /// Longest a statement may run.
    pub statement_timeout: Duration,
}

/// A database behind a bounded pool.
#[derive(Clone)]
pub enum Database {
    /// PostgreSQL.
    Postgres(sqlx::PgPool),
    /// MySQL or MariaDB.
    MySql(sqlx::MySqlPool),
    /// SQLite, through rusqlite.
    Sqlite(Arc<SqlitePool>),
}

impl std::fmt::Debug for Database {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.kind())
    }
}

impl Database {
    /// A lazily connecting pool for `url`; nothing is contacted yet.
    pub fn open(url: &str, settings: PoolSettings) -> Result<Self, DbError> {
        let timeout = settings.statement_timeout;
        // Guard against a server that accepts and never answers: the pool gives up after this.
        let acquire = timeout.max(Duration::from_secs(2));
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            let opts: sqlx::postgres::PgConnectOptions = url
                .parse()
                .map_err(|e: sqlx::Error| DbError::Url(e.to_string()))?;
            // Startup parameters, so every session is read-only and time-limited without extra round trips.
            let opts = opts.application_name("herald").options([
                ("default_transaction_read_only", "on".to_string()),
                ("statement_timeout", format!("{}", timeout.as_millis())),
            ]);
            let pool = sqlx::postgres::PgPoolOptions::new()
                .max_connections(settings.size)
                .acquire_timeout(acquire)
                .connect_lazy_with(opts);
            Ok(Database::Postgres(pool))
        } else if let Some(rest) = url
            .strip_prefix("mysql://")
            .or_else(|| url.strip_prefix("mariadb://"))
        {
            let opts: sqlx::mysql::MySqlConnectOptions = format!("mysql://{rest}")
                .parse()
                .map_err(|e: sqlx::Error| DbError::Url(e.to_string()))?;
            let secs = timeout.as_secs_f64();
            let millis = timeout.as_millis();
            let pool = sqlx::mysql::MySqlPoolOptions::new()
                .max_connections(settings.size)
                .acquire_timeout(acquire)
                .after_connect(move |conn, _| {
                    Box::pin(async move {
                        conn.execute("SET SESSION TRANSACTION READ ONLY").await?;
                        conn.execute("SET SESSION time_zone = '+00:00'").await?;
                        // MariaDB names it max_statement_time (seconds), MySQL max_execution_time (ms).
                        let maria =
                            AssertSqlSafe(format!("SET SESSION max_statement_time = {secs}"));
                        if conn.execute(maria).await.is_err() {
                            let mysql =
                                AssertSqlSafe(format!("SET SESSION max_execution_time = {millis}"));
                            conn.execute(mysql).await?;
                        }
                        Ok(())
                    })
                })
                .connect_lazy_with(opts);
            Ok(Database::MySql(pool))
        } else if let Some(path) = url.strip_prefix("sqlite:") {
            let path = path.strip_prefix("//").unwrap_or(path);
            if path.is_empty() {
                return Err(DbError::Url("sqlite: URL has no path".into()));
            }
            Ok(Database::Sqlite(Arc::new(SqlitePool::new(
                path.into(),
                settings,
            ))))
        } else {
            Err(DbError::Url(
                "url must start with postgres://, postgresql://, mysql://, mariadb:// or sqlite:"
                    .into(),
            ))
        }
    }

    /// `postgres`, `mysql` or `sqlite`.
    pub fn kind(&self) -> &'static str {
        match self {
            Database::Postgres(_) => "postgres",
            Database::MySql(_) => "mysql",
            Database::Sqlite(_) => "sqlite",
        }
    }

    /// The bind-marker style of this database.
    pub fn markers(&self) -> Markers {
        match self {
            Database::Postgres(_) => Markers::Numbered,
            _ => Markers::Question,
        }
    }

    /// The statement actually sent for rendered user SQL: on PostgreSQL each row becomes JSON server-side.
    pub fn statement(&self, rendered: &str) -> String {
        match self {
            Database::Postgres(_) => {
                format!("select row_to_json(q)::text from (\n{rendered}\n) q")
            }
            _ => rendered.to_owned(),
        }
    }

    /// Prepares `statement` without running it: the start-up check for bad SQL.
    pub async fn check(&self, statement: &str) -> Result<(), DbError> {
        match self {
            Database::Postgres(pool) => {
                pool.prepare(AssertSqlSafe(statement).into_sql_str())
                    .await?;
            }
            Database::MySql(pool) => {
                pool.prepare(AssertSqlSafe(statement).into_sql_str())
                    .await?;
            }
            Database::Sqlite(pool) => pool.check(statement.to_owned()).await?,
        }
        Ok(())
    }

    /// Runs `statement` with `args` bound (as text), returning at most `max_rows` rows.
    pub async fn fetch(
        &self,
        statement: &str,
        args: &[String],
        max_rows: usize,
    ) -> Result<Fetched, DbError> {
        match self {
            Database::Postgres(pool) => {
                let mut q = sqlx::query(AssertSqlSafe(statement));
                for a in args {
                    q = q.bind(a.clone());
                }
                collect(q.fetch(pool), max_rows, |row| {
                    let text: String = row.try_get(0)?;
                    let raw = RawValue::from_string(text)
                        .map_err(|e| DbError::Query(format!("row is not JSON: {e}")))?;
                    Ok(Arc::from(raw))
                })
                .await
            }
            Database::MySql(pool) => {
                let mut q = sqlx::query(AssertSqlSafe(statement));
                for a in args {
                    q = q.bind(a.clone());
                }
                collect(q.fetch(pool), max_rows, mysql_row).await
            }
            Database::Sqlite(pool) => {
                pool.fetch(statement.to_owned(), args.to_vec(), max_rows)
                    .await
            }
        }
    }

    /// Closes the pool's connections.
    pub async fn close(&self) {
        match self {
            Database::Postgres(p) => p.close().await,
            Database::MySql(p) => p.close().await,
            Database::Sqlite(_) => {}
        }
    }
}

/// Reads at most `max_rows` rows of a result stream as JSON (one more tells that the limit was hit).
async fn collect<R>(
    mut stream: impl futures_util::Stream<Item = Result<R, sqlx::Error>> + Unpin,
    max_rows: usize,
    to_json: impl Fn(&R) -> Result<Arc<RawValue>, DbError>,
) -> Result<Fetched, DbError> {
    let mut rows = Vec::new();
    while let Some(row) = stream.try_next().await? {
        if rows.len() == max_rows {
            return Ok(Fetched {
                rows,
                over_limit: true,
            });
        }
        rows.push(to_json(&row)?);
    }
    Ok(Fetched {
        rows,
        over_limit: false,
    })
}

/// Builds one JSON object, column by column, keeping the database's column order.
struct ObjectWriter(String);

impl ObjectWriter {
    fn new() -> Self {
        Self(String::from("{"))
    }

    fn field(&mut self, name: &str, json: &str) {
        if self.0.len() > 1 {
            self.0.push(',');
        }
        self.0
            .push_str(&serde_json::to_string(name).unwrap_or_else(|_| "\"?\"".into()));
        self.0.push(':');
        self.0.push_str(json);
    }

    fn finish(mut self) -> Result<Row, DbError> {
        self.0.push('}');
        RawValue::from_string(self.0)
            .map(Arc::from)
            .map_err(|e| DbError::Query(format!("row could not be encoded as JSON: {e}")))
    }
}

fn json_str(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "null".into())
}

fn base64(b: &[u8]) -> String {
    json_str(&base64::engine::general_purpose::STANDARD.encode(b))
}

/// A number as the database printed it, if it is a valid JSON number; otherwise a string.
fn number_text(s: &str) -> String {
    match serde_json::from_str::<serde_json::Number>(s) {
        Ok(_) => s.to_owned(),
        Err(_) => json_str(s),
    }
}

fn mysql_row(row: &sqlx::mysql::MySqlRow) -> Result<Row, DbError> {
    let mut out = ObjectWriter::new();
    for (i, col) in row.columns().iter().enumerate() {
        let raw = row.try_get_raw(i)?;
        let json = if raw.is_null() {
            "null".to_owned()
        } else {
            mysql_value(row, i, col.type_info())?
        };
        out.field(col.name(), &json);
    }
    out.finish()
}

fn mysql_value(
    row: &sqlx::mysql::MySqlRow,
    i: usize,
    ty_info: &sqlx::mysql::MySqlTypeInfo,
) -> Result<String, DbError> {
    let ty = ty_info.name();
    Ok(match ty {
        "BOOLEAN" | "TINYINT" | "SMALLINT" | "INT" | "MEDIUMINT" | "BIGINT" | "YEAR" => {
            row.try_get_unchecked::<i64, _>(i)?.to_string()
        }
        "TINYINT UNSIGNED" | "SMALLINT UNSIGNED" | "INT UNSIGNED" | "MEDIUMINT UNSIGNED"
        | "BIGINT UNSIGNED" => row.try_get_unchecked::<u64, _>(i)?.to_string(),
        "FLOAT" => float(f64::from(row.try_get_unchecked::<f32, _>(i)?)),
        "DOUBLE" => float(row.try_get_unchecked::<f64, _>(i)?),
        "DECIMAL" => number_text(row.try_get_unchecked::<&str, _>(i)?),
        "DATE" | "DATETIME" | "TIMESTAMP" => {
            let b = row.try_get_unchecked::<&[u8], _>(i)?;
            json_str(&mysql_datetime(b, ty == "TIMESTAMP"))
        }
        "TIME" => json_str(
            &row.try_get::<sqlx::mysql::types::MySqlTime, _>(i)?
                .to_string(),
        ),
        "BIT" => {
            let b = row.try_get_unchecked::<&[u8], _>(i)?;
            b.iter()
                .fold(0u128, |acc, &x| (acc << 8) | u128::from(x))
                .to_string()
        }
        "JSON" => {
            let s = row.try_get_unchecked::<&str, _>(i)?;
            match serde_json::from_str::<&RawValue>(s) {
                Ok(v) => v.get().to_owned(),
                Err(_) => json_str(s),
            }
        }
        // The binary flag is also set on text with a `_bin` collation (MariaDB's JSON is LONGTEXT utf8mb4_bin):
        // only the `binary` collation means bytes.
        "BINARY" | "VARBINARY" | "TINYBLOB" | "BLOB" | "MEDIUMBLOB" | "LONGBLOB" | "GEOMETRY"
            if !<str as sqlx::Type<sqlx::MySql>>::compatible(ty_info) =>
        {
            base64(row.try_get_unchecked::<&[u8], _>(i)?)
        }
        _ => {
            let b = row.try_get_unchecked::<&[u8], _>(i)?;
            match std::str::from_utf8(b) {
                Ok(s) => json_str(s),
                Err(_) => base64(b),
            }
        }
    })
}

fn float(f: f64) -> String {
    if f.is_finite() {
        crate::number::text(f)
    } else {
        json_str(&f.to_string())
    }
}

/// A MySQL DATE/DATETIME/TIMESTAMP as ISO 8601. The binary protocol sends `len, year(2), month, day, hour,
/// minute, second, micros(4)`; the text protocol (queries without parameters) sends `YYYY-MM-DD hh:mm:ss`.
/// TIMESTAMPs are read in the session's UTC, so they get a `Z`.
fn mysql_datetime(b: &[u8], utc: bool) -> String {
    let z = if utc { "Z" } else { "" };
    if b.first().is_some_and(u8::is_ascii_digit) {
        let s = String::from_utf8_lossy(b);
        return if s.len() > 10 {
            format!("{}{z}", s.replacen(' ', "T", 1))
        } else {
            s.into_owned()
        };
    }
    let len = b.first().copied().unwrap_or(0) as usize;
    let d = |i: usize| b.get(i).copied().unwrap_or(0);
    if len < 4 {
        return "0000-00-00".into();
    }
    let year = u16::from_le_bytes([d(1), d(2)]);
    let date = format!("{year:04}-{:02}-{:02}", d(3), d(4));
    if len < 7 {
        // A DATE column is a bare date; DATETIME at midnight is sent short too.
        return date;
    }
    let time = format!("{:02}:{:02}:{:02}", d(5), d(6), d(7));
    if len >= 11 {
        let micros = u32::from_le_bytes([d(8), d(9), d(10), d(11)]);
        if micros != 0 {
            return format!("{date}T{time}.{micros:06}{z}");
        }
    }
    format!("{date}T{time}{z}")
}

/// A small pool of read-only rusqlite connections, used from blocking threads.
pub struct SqlitePool {
    path: std::path::PathBuf,
    idle: parking_lot::Mutex<Vec<rusqlite::Connection>>,
    slots: tokio::sync::Semaphore,
    timeout: Duration,
}

impl SqlitePool {
    fn new(path: std::path::PathBuf, settings: PoolSettings) -> Self {
        Self {
            path,
            idle: parking_lot::Mutex::new(Vec::new()),
            slots: tokio::sync::Semaphore::new(settings.size.max(1) as usize),
            timeout: settings.statement_timeout,
        }
    }

    fn connect(&self) -> Result<rusqlite::Connection, DbError> {
        use rusqlite::OpenFlags as F;
        let conn = rusqlite::Connection::open_with_flags(
            &self.path,
            F::SQLITE_OPEN_READ_ONLY | F::SQLITE_OPEN_NO_MUTEX | F::SQLITE_OPEN_URI,
        )
        .map_err(|e| DbError::Unavailable(format!("{}: {e}", self.path.display())))?;
        conn.busy_timeout(self.timeout)
            .and_then(|()| conn.pragma_update(None, "query_only", true))
            .map_err(|e| DbError::Unavailable(e.to_string()))?;
        Ok(conn)
    }

    /// Runs `work` on a pooled connection in a blocking thread, interrupting it after the statement timeout.
    async fn with_conn<T: Send + 'static>(
        self: &Arc<Self>,
        work: impl FnOnce(&rusqlite::Connection) -> Result<T, DbError> + Send + 'static,
    ) -> Result<T, DbError> {
        let _slot = self
            .slots
            .acquire()
            .await
            .map_err(|_| DbError::Unavailable("pool closed".into()))?;
        let conn = match self.idle.lock().pop() {
            Some(c) => c,
            None => self.connect()?,
        };
        let interrupt = conn.get_interrupt_handle();
        let pool = self.clone();
        let task = tokio::task::spawn_blocking(move || {
            let out = work(&conn);
            pool.idle.lock().push(conn);
            out
        });
        tokio::pin!(task);
        let joined = match tokio::time::timeout(self.timeout, &mut task).await {
            Ok(j) => j,
            Err(_) => {
                interrupt.interrupt();
                let _ = task.await;
                return Err(DbError::Timeout(self.timeout));
            }
        };
        joined.map_err(|e| DbError::Unavailable(format!("query thread failed: {e}")))?
    }

    async fn check(self: &Arc<Self>, sql: String) -> Result<(), DbError> {
        self.with_conn(move |c| {
            c.prepare(&sql)
                .map(drop)
                .map_err(|e| DbError::Query(e.to_string()))
        })
        .await
    }

    async fn fetch(
        self: &Arc<Self>,
        sql: String,
        args: Vec<String>,
        max_rows: usize,
    ) -> Result<Fetched, DbError> {
        self.with_conn(move |c| {
            let q = |e: rusqlite::Error| DbError::Query(e.to_string());
            let mut stmt = c.prepare_cached(&sql).map_err(q)?;
            let names: Vec<String> = stmt.column_names().iter().map(|s| s.to_string()).collect();
            let mut rows = stmt
                .query(rusqlite::params_from_iter(args.iter()))
                .map_err(q)?;
            let mut out = Vec::new();
            while let Some(row) = rows.next().map_err(q)? {
                if out.len() == max_rows {
                    return Ok(Fetched {
                        rows: out,
                        over_limit: true,
                    });
                }
                let mut obj = ObjectWriter::new();
                for (i, name) in names.iter().enumerate() {
                    use rusqlite::types::ValueRef as V;
                    // By each value's own type: expression columns have no declared type.
                    let json = match row.get_ref(i).map_err(q)? {
                        V::Null => "null".to_owned(),
                        V::Integer(n) => n.to_string(),
                        V::Real(f) => float(f),
                        V::Text(t) => json_str(&String::from_utf8_lossy(t)),
                        V::Blob(b) => base64(b),
                    };
                    obj.field(name, &json);
                }
                out.push(obj.finish()?);
            }
            Ok(Fetched {
                rows: out,
                over_limit: false,
            })
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mysql_datetimes_become_iso() {
        assert_eq!(
            mysql_datetime(&[4, 0xE8, 0x07, 11, 23], false),
            "2024-11-23"
        );
        assert_eq!(
            mysql_datetime(&[7, 0xE8, 0x07, 11, 23, 8, 5, 9], true),
            "2024-11-23T08:05:09Z"
        );
        assert_eq!(
            mysql_datetime(&[11, 0xE8, 0x07, 1, 2, 3, 4, 5, 0x40, 0xE2, 0x01, 0], false),
            "2024-01-02T03:04:05.123456"
        );
        assert_eq!(
            mysql_datetime(b"2024-01-02 03:04:05", false),
            "2024-01-02T03:04:05"
        );
        assert_eq!(number_text("12.50"), "12.50");
        assert_eq!(number_text("NaN"), "\"NaN\"");
    }

    #[test]
    fn urls_are_checked() {
        let s = PoolSettings {
            size: 1,
            statement_timeout: Duration::from_secs(1),
        };
        assert!(matches!(
            Database::open("oracle://x", s),
            Err(DbError::Url(_))
        ));
        assert!(matches!(Database::open("sqlite:", s), Err(DbError::Url(_))));
    }
}
