//! A SQL source's section, `[[sources.sql]]`: the definition of one live query, its defaults, and the checks run
//! at start-up (see `docs/sources.md`).

use std::time::Duration;

use serde::Deserialize;

use super::template::{ChannelTemplate, SqlTemplate};
use crate::config_error::InvalidConfig;

/// One live SQL source: a query polled per channel, its result diffed and pushed.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SqlSourceConfig {
    /// Name in the API, in logs and in status events.
    pub id: String,
    /// `postgres://…`, `mysql://…` / `mariadb://…`, or `sqlite:PATH`.
    pub url: String,
    /// The live query; `{name}` placeholders are bound from the channel name, never spliced.
    pub sql: String,
    /// Channel-name template whose placeholders bind the query's parameters, e.g. `unit:{unit}`.
    pub channel: String,
    /// Column(s) identifying a row; required in `rows` mode.
    #[serde(default, deserialize_with = "one_or_many")]
    pub key: Vec<String>,
    /// What subscribers receive.
    #[serde(default)]
    pub mode: SqlMode,
    /// Event name of `full` results.
    #[serde(default = "default_sql_event")]
    pub event: String,
    /// Time between two queries of one channel.
    #[serde(default = "default_sql_interval", with = "humantime_serde")]
    pub interval: Duration,
    /// Most rows a result may have; a larger one is reported and not pushed.
    #[serde(default = "default_sql_max_rows")]
    pub max_rows: usize,
    /// Longest a query may run.
    #[serde(default = "default_sql_timeout", with = "humantime_serde")]
    pub statement_timeout: Duration,
    /// Most connections open to the database.
    #[serde(default = "default_sql_pool")]
    pub pool_size: u32,
    /// PostgreSQL `LISTEN` channel whose notifications re-run the query at once.
    #[serde(default)]
    pub listen: Option<String>,
    /// One-shot query served by `GET /api/sources/{id}/query`; its parameters come from the query string.
    #[serde(default)]
    pub history_sql: Option<String>,
    /// A further path serving `history_sql` (a frontend's own REST path, e.g. `/historical-data/`).
    #[serde(default)]
    pub history_path: Option<String>,
    /// Body shape of `history_path` answers.
    #[serde(default)]
    pub history_body: HistoryBody,
    /// Shape of a `full` result: the rows as an array, or the one row as an object.
    #[serde(default)]
    pub result: ResultShape,
    /// Most channels (parameter sets) polled at once: subscribers to further channels get no poller, so clients
    /// cannot make the database run arbitrarily many queries.
    #[serde(default = "default_sql_max_channels")]
    pub max_channels: usize,
    /// Whether `/readyz` answers 503 while this source's database does not answer (otherwise it is only listed).
    #[serde(default)]
    pub ready_required: bool,
}

fn default_sql_max_channels() -> usize {
    1000
}

/// What a SQL source pushes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SqlMode {
    /// The whole result, as one JSON array, whenever it changed.
    #[default]
    Full,
    /// `insert`/`update`/`delete` events, one per changed row.
    Rows,
}

/// How a `full` source's result (and a `history_body = "object"` answer) is shaped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ResultShape {
    /// The rows as a JSON array.
    #[default]
    Array,
    /// The only row as a JSON object; no row is `null`, more than one is an error.
    Object,
}

/// Body of the answers served at a source's `history_path`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum HistoryBody {
    /// `{"source":…,"rows":[…]}`, as `/api/sources/{id}/query` answers.
    #[default]
    Wrapped,
    /// The bare array of rows.
    Rows,
    /// The only row as an object (`null` when there is none; more than one is an error).
    Object,
}

fn one_or_many<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::One(s) => vec![s],
        OneOrMany::Many(v) => v,
    })
}

fn default_sql_event() -> String {
    "result".into()
}

fn default_sql_interval() -> Duration {
    Duration::from_secs(2)
}

fn default_sql_max_rows() -> usize {
    10_000
}

fn default_sql_timeout() -> Duration {
    Duration::from_secs(5)
}

fn default_sql_pool() -> u32 {
    4
}

/// Checks every `[[sources.sql]]` entry without contacting a database; the message names the source and field.
/// `socketio_path` is the one route of another section a `history_path` could collide with.
pub fn validate(sources: &[SqlSourceConfig], socketio_path: &str) -> Result<(), InvalidConfig> {
    let mut seen = std::collections::HashSet::new();
    let mut paths = std::collections::HashMap::new();
    for (i, s) in sources.iter().enumerate() {
        let bad = |field: &str, m: String| {
            Err(InvalidConfig(format!(
                "sources.sql[{i}] (id {:?}) field `{field}`: {m}",
                s.id
            )))
        };
        if s.id.is_empty()
            || !s
                .id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            return bad("id", "must be letters, digits, '-', '_' or '.'".into());
        }
        if !seen.insert(s.id.as_str()) {
            return bad("id", "another source has this id".into());
        }
        let scheme_ok = [
            "postgres://",
            "postgresql://",
            "mysql://",
            "mariadb://",
            "sqlite:",
        ]
        .iter()
        .any(|p| s.url.starts_with(p));
        if !scheme_ok {
            return bad(
                "url",
                "must start with postgres://, postgresql://, mysql://, mariadb:// or sqlite:"
                    .into(),
            );
        }
        let template = match ChannelTemplate::parse(&s.channel) {
            Ok(t) => t,
            Err(e) => return bad("channel", e.to_string()),
        };
        let sql = match SqlTemplate::parse(&s.sql) {
            Ok(t) => t,
            Err(e) => return bad("sql", e.to_string()),
        };
        if sql.params().is_empty() && s.sql.trim().is_empty() {
            return bad("sql", "is empty".into());
        }
        let channel_params: Vec<&str> = template.params().collect();
        if let Some(p) = sql
            .params()
            .into_iter()
            .find(|p| !channel_params.contains(p))
        {
            return bad(
                "sql",
                format!(
                    "unknown parameter {{{p}}}: the channel template {:?} does not bind it",
                    s.channel
                ),
            );
        }
        if let Some(p) = channel_params.iter().find(|p| !sql.params().contains(p)) {
            return bad(
                "channel",
                format!("parameter {{{p}}} is not used by the SQL"),
            );
        }
        if let Some(h) = &s.history_sql
            && let Err(e) = SqlTemplate::parse(h)
        {
            return bad("history_sql", e.to_string());
        }
        if s.mode == SqlMode::Rows && s.key.is_empty() {
            return bad(
                "key",
                "rows mode needs the key column(s) identifying a row".into(),
            );
        }
        if s.key.iter().any(String::is_empty) {
            return bad("key", "column names must not be empty".into());
        }
        if s.event.is_empty() || s.event.len() > 200 {
            return bad("event", "must be 1 to 200 characters".into());
        }
        if s.interval.is_zero() {
            return bad("interval", "must be positive".into());
        }
        if s.statement_timeout.is_zero() {
            return bad("statement_timeout", "must be positive".into());
        }
        if s.max_rows == 0 {
            return bad("max_rows", "must be at least 1".into());
        }
        if s.pool_size == 0 {
            return bad("pool_size", "must be at least 1".into());
        }
        if s.result == ResultShape::Object && s.mode == SqlMode::Rows {
            return bad(
                "result",
                "\"object\" shapes a `full` result; rows mode sends one row per event already"
                    .into(),
            );
        }
        if let Some(path) = &s.history_path {
            if s.history_sql.is_none() {
                return bad(
                    "history_path",
                    "needs history_sql, the query it serves".into(),
                );
            }
            if let Err(m) = crate::api::paths::check_literal(path, socketio_path) {
                return bad("history_path", m);
            }
            if let Some(other) = paths.insert(path.as_str(), s.id.as_str()) {
                return bad(
                    "history_path",
                    format!("source {other:?} already serves {path:?}"),
                );
            }
        }
        if let Some(l) = &s.listen {
            if !(s.url.starts_with("postgres://") || s.url.starts_with("postgresql://")) {
                return bad("listen", "LISTEN exists on PostgreSQL only".into());
            }
            if l.is_empty() || l.len() > 63 {
                return bad("listen", "must be 1 to 63 characters".into());
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SIO: &str = "/socket.io";

    fn source(sql: &str, channel: &str) -> SqlSourceConfig {
        toml::from_str(&format!(
            "id = \"s\"\nurl = \"sqlite:x.db\"\nsql = {sql:?}\nchannel = {channel:?}\n"
        ))
        .unwrap()
    }

    fn check(sources: &[SqlSourceConfig], socketio_path: &str) -> Result<(), String> {
        validate(sources, socketio_path).map_err(|e| e.0)
    }

    #[test]
    fn config_errors_name_source_and_field() {
        assert!(
            check(
                &[source("select * from t where u = {unit}", "unit:{unit}")],
                SIO
            )
            .is_ok()
        );
        let e = check(
            &[source("select * from t where u = {unti}", "unit:{unit}")],
            SIO,
        )
        .unwrap_err();
        assert!(
            e.contains("(id \"s\") field `sql`: unknown parameter {unti}"),
            "{e}"
        );
        let e = check(&[source("select 1", "unit:{unit}")], SIO).unwrap_err();
        assert!(e.contains("field `channel`"), "{e}");
        let mut s = source("select 1", "one");
        s.url = "oracle://x".into();
        assert!(check(&[s], SIO).unwrap_err().contains("field `url`"));
        let mut s = source("select 1", "one");
        s.mode = SqlMode::Rows;
        assert!(check(&[s], SIO).unwrap_err().contains("field `key`"));
        let mut s = source("select 1", "one");
        s.listen = Some("x".into());
        assert!(check(&[s], SIO).unwrap_err().contains("field `listen`"));
    }

    #[test]
    fn history_paths_are_literal_and_never_herald_routes() {
        let with_path = |path: &str| {
            let mut s = source("select 1", "one");
            s.history_sql = Some("select 2".into());
            s.history_path = Some(path.into());
            s
        };
        for ok in [
            "/historical-data/",
            "/report-data",
            "/x/y.json",
            "/apiary",
            "/socket.iox",
        ] {
            assert!(check(&[with_path(ok)], SIO).is_ok(), "{ok}");
        }
        for (bad, why) in [
            ("/api", "/api"),
            ("/api/sources/s/query", "/api"),
            ("/ws/x", "/ws"),
            ("/sse", "/sse"),
            ("/socket.io/", "/socket.io"),
            ("/healthz", "/healthz"),
            ("/readyz", "/readyz"),
            ("/metrics", "/metrics"),
            ("/status/x", "/status"),
            ("/badge/1", "/badge"),
            ("historical", "start with '/'"),
            ("/a/{b}", "may contain only"),
            ("/a//b", "empty"),
            ("/a/../b", "'..'"),
        ] {
            let e = check(&[with_path(bad)], SIO).unwrap_err();
            assert!(
                e.contains("field `history_path`") && e.contains(why),
                "{bad}: {e}"
            );
        }
        let e = check(&[with_path("/engine/")], "/engine").unwrap_err();
        assert!(e.contains("/engine"), "{e}");
        let mut other = with_path("/report-data");
        other.id = "t".into();
        let e = check(&[with_path("/report-data"), other], SIO).unwrap_err();
        assert!(e.contains("already serves"), "{e}");
        let mut no_sql = source("select 1", "one");
        no_sql.history_path = Some("/h".into());
        assert!(
            check(&[no_sql], SIO)
                .unwrap_err()
                .contains("needs history_sql")
        );
    }

    #[test]
    fn object_results_are_full_mode_only() {
        let mut s = source("select 1", "one");
        s.mode = SqlMode::Rows;
        s.key = vec!["a".into()];
        s.result = ResultShape::Object;
        assert!(check(&[s], SIO).unwrap_err().contains("field `result`"));
    }
}
