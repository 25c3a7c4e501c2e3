//! Configuration: a TOML file, overridden by environment variables, overridden by command-line flags.
//!
//! This module only composes. Each section's type, defaults and checks live in the module that uses it:
//! `api_keys` in [`crate::api`], `[tls]` in [`crate::tls`], `[limits]` in [`crate::policy`], `[engine]` in
//! [`crate::core::engine`], `[history]` in [`crate::core::retention`], `[[state]]` in [`crate::core::state`],
//! `[socketio]`, `[websocket]` and `[sse]` in their bindings, `[auth]` in [`crate::auth`], `[sources]` in
//! [`crate::source`], `[monitor]` in [`crate::source::monitor`], `[cluster]` in [`crate::cluster`] and
//! `[[proxy]]` in [`crate::proxy`], `[[collections]]` in [`crate::source::collection`]. The
//! imports run one way: this module names those
//! sections and calls their `validate`, and none of them imports this module back (they share only the leaf
//! [`InvalidConfig`]). What is left here is reading the file, applying the overrides, and the checks that span
//! sections (see `Config::validate`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::api::ApiKey;
use crate::auth::AuthConfig;
use crate::binding::socketio::config::SocketIoConfig;
use crate::binding::sse::SseConfig;
use crate::binding::websocket::WebSocketConfig;
use crate::config_error::InvalidConfig;
use crate::core::engine::sqlite::Durability;
use crate::core::retention::HistoryConfig;
use crate::core::state::StateConfig;
use crate::policy::LimitsConfig;
use crate::source::SourcesConfig;
use crate::tls::TlsConfig;

/// Configuration problems, reported at start-up.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// File path.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// The file is not valid TOML for this schema.
    #[error("invalid config file {path}: {source}")]
    Parse {
        /// File path.
        path: PathBuf,
        /// Cause.
        source: Box<toml::de::Error>,
    },
    /// A value is out of range or malformed.
    #[error("invalid config: {0}")]
    Invalid(#[from] InvalidConfig),
}

/// The whole configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Directory for the SQLite database.
    pub data_dir: PathBuf,
    /// API keys accepted by the HTTP API; none → loopback only.
    pub api_keys: Vec<ApiKey>,
    /// Browser origins allowed to connect and to call the API (`*` for any); empty: no checks, no CORS.
    pub allowed_origins: Vec<String>,
    /// Rate and concurrency limits.
    pub limits: LimitsConfig,
    /// Native TLS; without it Herald speaks plain HTTP (put a proxy in front, or set this).
    pub tls: Option<TlsConfig>,
    /// Which engine keeps history, state and sessions (`[engine] kind`).
    pub engine: crate::core::engine::EngineConfig,
    /// Commit durability.
    pub durability: Durability,
    /// Largest HTTP request body.
    pub max_body_bytes: usize,
    /// Largest JSON payload of one event.
    pub max_event_bytes: usize,
    /// History retention.
    pub history: HistoryConfig,
    /// Socket.IO transport.
    pub socketio: SocketIoConfig,
    /// Plain WebSocket transport.
    pub websocket: WebSocketConfig,
    /// Server-Sent Events transport.
    pub sse: SseConfig,
    /// Client authentication (JWT) and channel permissions; see `docs/auth.md`.
    pub auth: AuthConfig,
    /// Built-in sources (`[[sources.sql]]`); see `docs/sources.md`.
    pub sources: SourcesConfig,
    /// State channels declared for HTTP publishers (sources declare their own).
    pub state: Vec<StateConfig>,
    /// The service monitor.
    pub monitor: crate::source::monitor::MonitorConfig,
    /// Presence shown to clients and the API (`[presence]`); see `docs/presence.md`.
    pub presence: crate::source::presence::PresenceConfig,
    /// Several nodes on one engine (`[cluster]`).
    pub cluster: crate::cluster::ClusterConfig,
    /// Path prefixes forwarded to an upstream HTTP server (`[[proxy]]`); see `docs/proxy.md`.
    pub proxy: Vec<crate::proxy::ProxyConfig>,
    /// Forwards to the user's backend: their bounds, and the connect/disconnect hooks (`[forward]`); see
    /// `docs/client-events.md`.
    pub forward: crate::binding::forward::ForwardConfig,
    /// Collections of JSON documents served as REST (`[[collections]]`); see `docs/collections.md`.
    pub collections: Vec<crate::source::collection::CollectionConfig>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 7700)),
            data_dir: PathBuf::from("herald-data"),
            api_keys: Vec::new(),
            allowed_origins: Vec::new(),
            limits: LimitsConfig::default(),
            tls: None,
            engine: Default::default(),
            durability: Durability::Full,
            max_body_bytes: 1 << 20,
            max_event_bytes: 64 << 10,
            history: HistoryConfig::default(),
            socketio: SocketIoConfig::default(),
            websocket: WebSocketConfig::default(),
            sse: SseConfig::default(),
            auth: AuthConfig::default(),
            sources: SourcesConfig::default(),
            state: Vec::new(),
            monitor: crate::source::monitor::MonitorConfig::default(),
            presence: crate::source::presence::PresenceConfig::default(),
            cluster: crate::cluster::ClusterConfig::default(),
            proxy: Vec::new(),
            forward: Default::default(),
            collections: Vec::new(),
        }
    }
}

/// Overrides from the environment or flags; `None` leaves the file's value.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    /// `--listen` / `HERALD_LISTEN`.
    pub listen: Option<SocketAddr>,
    /// `--data-dir` / `HERALD_DATA_DIR`.
    pub data_dir: Option<PathBuf>,
    /// `--api-key` / `HERALD_API_KEY` (comma-separated).
    pub api_keys: Vec<String>,
    /// `--engine` / `HERALD_ENGINE`.
    pub engine: Option<crate::core::engine::EngineChoice>,
    /// `--engine-url` / `HERALD_ENGINE_URL`.
    pub engine_url: Option<String>,
    /// `--engine-prefix` / `HERALD_ENGINE_PREFIX`.
    pub engine_prefix: Option<String>,
}

/// What a redacted secret reads as.
pub const REDACTED: &str = "<redacted>";

/// `url` with the password of its userinfo (`scheme://user:password@host`) replaced by [`REDACTED`].
fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split_once(':').map_or(userinfo, |(u, _)| u);
            let secret = if userinfo.contains(':') {
                format!(":{REDACTED}")
            } else {
                String::new()
            };
            format!("{scheme}://{user}{secret}@{host}{tail}")
        }
        None => url.to_owned(),
    }
}

impl Config {
    /// This configuration with every secret replaced by [`REDACTED`] (what `herald config check` prints): API
    /// keys, HMAC secrets, passwords in the engine's, SQL sources', proxies' and monitors' URLs, and monitors'
    /// request header values.
    pub fn redacted(&self) -> Config {
        let mut c = self.clone();
        for key in &mut c.api_keys {
            match key {
                ApiKey::Plain(k) | ApiKey::Scoped { key: k, .. } => *k = REDACTED.to_owned(),
            }
        }
        for key in &mut c.auth.keys {
            if let crate::auth::KeyConfig::Hmac {
                secret: Some(secret),
                ..
            } = key
            {
                *secret = REDACTED.to_owned();
            }
        }
        if let Some(url) = &mut c.engine.url {
            *url = redact_url(url);
        }
        for source in &mut c.sources.sql {
            source.url = redact_url(&source.url);
        }
        for proxy in &mut c.proxy {
            proxy.upstream = redact_url(&proxy.upstream);
        }
        for url in [&mut c.forward.connect, &mut c.forward.disconnect]
            .into_iter()
            .flatten()
        {
            *url = redact_url(url);
        }
        // Headers sent to the backend usually carry its credentials.
        for value in c.forward.headers.values_mut() {
            *value = REDACTED.to_owned();
        }
        for monitor in &mut c.monitor.monitors {
            if let crate::source::monitor::check::Check::Http(http) = &mut monitor.check {
                http.url = redact_url(&http.url);
                for value in http.headers.values_mut() {
                    *value = REDACTED.to_owned();
                }
            }
        }
        c
    }

    /// Reads `path` (if any) and applies `overrides`.
    pub fn load(path: Option<&PathBuf>, overrides: Overrides) -> Result<Self, ConfigError> {
        let mut config = match path {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.clone(),
                    source,
                })?;
                toml::from_str(&text).map_err(|source| ConfigError::Parse {
                    path: path.clone(),
                    source: Box::new(source),
                })?
            }
            None => Config::default(),
        };
        if let Some(listen) = overrides.listen {
            config.listen = listen;
        }
        if let Some(dir) = overrides.data_dir {
            config.data_dir = dir;
        }
        if let Some(kind) = overrides.engine {
            config.engine.kind = kind;
        }
        if let Some(url) = overrides.engine_url {
            config.engine.url = Some(url);
        }
        if let Some(prefix) = overrides.engine_prefix {
            config.engine.prefix = prefix;
        }
        if !overrides.api_keys.is_empty() {
            config.api_keys = overrides.api_keys.into_iter().map(ApiKey::Plain).collect();
        }
        config.api_keys.retain(|k| !k.key().is_empty());
        config.validate()?;
        Ok(config)
    }

    /// Checks every section, then what spans sections: a client event's action must be one something serves,
    /// a SQL source's `history_path` must not take the Socket.IO path nor lie under a `[[proxy]]` path, no configured event name may take Herald's
    /// reserved prefix (state, sources and the monitor name events), and the durations every section shares a
    /// rule for (ages under a century, positive pings) — one rule, one message, so it stays here.
    fn validate(&self) -> Result<(), InvalidConfig> {
        for st in &self.state {
            st.validate()?;
        }
        let actions: Vec<&str> = crate::source::action_names().collect();
        self.socketio.validate(&actions)?;
        self.history.validate()?;
        self.engine.validate()?;
        self.cluster.validate()?;
        self.limits.validate()?;
        self.auth.validate()?;
        self.sources.validate(&self.socketio.path)?;
        self.presence.validate()?;
        self.forward.validate()?;
        crate::proxy::validate(&self.proxy, &self.socketio.path)?;
        crate::source::collection::config::validate(&self.collections, &self.socketio.path)?;
        // A collection's path and a proxy prefix or a SQL history route would shadow each other.
        for c in &self.collections {
            let Some(path) = c.path.as_deref() else {
                continue;
            };
            let taken = self
                .proxy
                .iter()
                .map(|p| ("the proxy at", p.path.as_str()))
                .chain(
                    self.sources
                        .sql
                        .iter()
                        .filter_map(|s| s.history_path.as_deref())
                        .map(|h| ("the SQL history route", h)),
                )
                .find(|(_, p)| {
                    crate::api::paths::is_under(path, p) || crate::api::paths::is_under(p, path)
                });
            if let Some((what, p)) = taken {
                return Err(InvalidConfig(format!(
                    "collections {:?} path {path:?} overlaps {what} {p:?}",
                    c.name
                )));
            }
        }
        // A SQL source's history route under a proxy prefix would be shadowed by it (or shadow it).
        for s in &self.sources.sql {
            let Some(path) = s.history_path.as_deref() else {
                continue;
            };
            if let Some(p) = self
                .proxy
                .iter()
                .find(|p| crate::api::paths::is_under(path, &p.path))
            {
                return Err(InvalidConfig(format!(
                    "sources.sql (id {:?}) field `history_path`: {path:?} lies under the proxy at {:?}",
                    s.id, p.path
                )));
            }
        }
        // Herald's own notices (`herald:gap`, `herald:disconnect`) must stay recognisable: no configured
        // producer may use their prefix either (the HTTP API refuses it at publish).
        let m = &self.monitor.events;
        let named = self
            .state
            .iter()
            .map(|s| ("state bulk_event", s.bulk_event.as_deref()))
            .chain(
                self.sources
                    .sql
                    .iter()
                    .map(|s| ("sources.sql event", Some(s.event.as_str()))),
            )
            .chain([
                ("monitor.events status_event", m.status_event.as_deref()),
                ("monitor.events bulk_event", m.bulk_event.as_deref()),
                ("monitor.events removed_event", m.removed_event.as_deref()),
                ("monitor.events log_event", m.log_event.as_deref()),
                ("monitor.events stats_event", m.stats_event.as_deref()),
            ]);
        for (field, name) in named {
            if let Some(name) = name.filter(|n| n.starts_with(crate::core::event::RESERVED_PREFIX))
            {
                return Err(InvalidConfig(format!(
                    "{field} {name:?}: names starting with {:?} are reserved for Herald's own notices",
                    crate::core::event::RESERVED_PREFIX
                )));
            }
        }
        const CENTURY: Duration = Duration::from_secs(100 * 365 * 86_400);
        if self
            .history
            .ages()
            .chain([self.socketio.session_ttl])
            .any(|d| d > CENTURY)
        {
            return Err(InvalidConfig(
                "history max_age and session_ttl must be under 100 years".into(),
            ));
        }
        let pings = [
            self.socketio.ping_interval,
            self.socketio.ping_timeout,
            self.websocket.ping_interval,
            self.websocket.ping_timeout,
            self.sse.heartbeat_interval,
        ];
        if pings.iter().any(Duration::is_zero) {
            return Err(InvalidConfig(
                "ping intervals, ping timeouts and the SSE heartbeat interval must be positive"
                    .into(),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_lose_their_passwords_only() {
        assert_eq!(
            redact_url("postgres://app:s3cret@db:5432/x?sslmode=require"),
            "postgres://app:<redacted>@db:5432/x?sslmode=require"
        );
        assert_eq!(
            redact_url("redis://:pw@r:6379"),
            "redis://:<redacted>@r:6379"
        );
        assert_eq!(redact_url("redis://user@r/0"), "redis://user@r/0");
        assert_eq!(redact_url("sqlite:/tmp/a@b.db"), "sqlite:/tmp/a@b.db");
        assert_eq!(redact_url("http://h/p@q"), "http://h/p@q");
    }

    #[test]
    fn seed_001_collection_config_is_valid_and_mistakes_are_named() {
        let seed = include_str!("../examples/seed001/herald.toml");
        let c: Config = toml::from_str(seed).unwrap();
        c.validate().unwrap();
        assert_eq!(c.collections[0].path.as_deref(), Some("/books"));
        let base = "[[collections]]\nname = \"books\"\n";
        for (extra, want) in [
            (
                "path = \"/api/books\"\n",
                "collides with Herald's own route /api",
            ),
            ("path = \"/socket.io/x\"\n", "collides"),
            ("[collections.access]\nlist = \"admins\"\n", "access.list"),
            ("[collections.access]\nupdate = \"owner\"\n", "owner_field"),
            (
                "[[collections.values]]\nevent = \"s\"\nvalue = { n = \"total\" }\nchannel = \"d\"\n",
                "expression \"total\"",
            ),
            (
                "[[collections.values]]\nevent = \"s\"\nvalue = { n = \"count\" }\n",
                "a channel of its own",
            ),
            ("schema = { type = \"nonsense\" }\n", "schema"),
            ("[collections.events]\ncreated = \"herald:x\"\n", "herald:x"),
            (
                "[[collections.arrays]]\nfield = \"f\"\nmember = \"{x}\"\n",
                "member",
            ),
            ("max_documents = 0\n", "max_documents"),
        ] {
            let c: Config = toml::from_str(&format!("{base}{extra}")).unwrap();
            let e = c.validate().unwrap_err().to_string();
            assert!(e.contains(want), "{extra}: {e}");
            assert!(e.contains("\"books\""), "{extra}: {e}");
        }
        let twice = format!("{base}{base}");
        let e = toml::from_str::<Config>(&twice)
            .unwrap()
            .validate()
            .unwrap_err()
            .to_string();
        assert!(e.contains("declared twice"), "{e}");
        let proxied = format!(
            "{base}path = \"/books\"\n[[proxy]]\npath = \"/books\"\nupstream = \"http://127.0.0.1:1\"\n"
        );
        let e = toml::from_str::<Config>(&proxied)
            .unwrap()
            .validate()
            .unwrap_err()
            .to_string();
        assert!(e.contains("overlaps the proxy"), "{e}");
    }

    #[test]
    fn parses_documented_example() {
        let text = r#"
            listen = "127.0.0.1:7700"
            data_dir = "d"
            api_keys = ["k1", "k2"]
            durability = "normal"
            [history]
            max_events = 10
            max_age = "1h"
            [[history.rules]]
            pattern = "short:*"
            max_events = 5
            [socketio]
            ping_interval = "300ms"
            server_side_channels = ["uptime"]
        "#;
        let c: Config = toml::from_str(text).unwrap();
        c.validate().unwrap();
        assert_eq!(c.durability, Durability::Normal);
        let r = c.history.retention();
        assert_eq!(r.limits("short:x").max_events, 5);
        assert_eq!(r.limits("short:x").max_age, Duration::from_secs(3600));
        assert_eq!(r.limits("other").max_events, 10);
        assert_eq!(c.socketio.ping_interval, Duration::from_millis(300));
    }

    #[test]
    fn configured_event_names_may_not_take_herald_s_prefix() {
        for text in [
            "[[state]]\nchannels = \"s\"\nbulk_event = \"herald:gap\"\n",
            "[monitor.events]\nstatus_event = \"herald:status\"\n",
            "[monitor.events]\nstats_event = \"herald:stats\"\n",
            "[[sources.sql]]\nid = \"q\"\nurl = \"sqlite::memory:\"\nsql = \"SELECT 1\"\nchannel = \"q\"\nevent = \"herald:gap\"\n",
        ] {
            let c: Config = toml::from_str(text).unwrap();
            let e = c.validate().unwrap_err().to_string();
            assert!(e.contains("reserved"), "{text}: {e}");
        }
        let c: Config = toml::from_str("[monitor.events]\nstatus_event = \"heraldic\"\n").unwrap();
        c.validate().unwrap();
    }

    #[test]
    fn engine_flags_override_the_file_and_are_validated() {
        let c = Config::load(
            None,
            Overrides {
                engine: Some(crate::core::engine::EngineChoice::Redis),
                engine_url: Some("redis://127.0.0.1:6379".into()),
                engine_prefix: Some("blue".into()),
                ..Overrides::default()
            },
        )
        .unwrap();
        assert_eq!(c.engine.prefix, "blue");
        assert_eq!(c.engine.url.as_deref(), Some("redis://127.0.0.1:6379"));
        let bad = Config::load(
            None,
            Overrides {
                engine: Some(crate::core::engine::EngineChoice::Redis),
                engine_url: Some("redis://127.0.0.1:6379".into()),
                engine_prefix: Some("{blue}".into()),
                ..Overrides::default()
            },
        );
        assert!(
            bad.is_err(),
            "a prefix with braces is refused from a flag too"
        );
    }

    #[test]
    fn rejects_unknown_keys() {
        assert!(toml::from_str::<Config>("lisen = 1").is_err());
        assert!(toml::from_str::<Config>("[socketio]\npth = \"/x\"").is_err());
    }

    #[test]
    fn client_event_actions_are_those_served() {
        let with = |action: &str| {
            let text = format!("[socketio.client_events]\n\"r\" = {{ action = \"{action}\" }}\n");
            toml::from_str::<Config>(&text).unwrap().validate()
        };
        assert!(with("monitor.refresh").is_ok());
        let e = with("monitor.nope").unwrap_err().to_string();
        assert_eq!(
            e,
            "socketio.client_events \"r\": unknown action; known: monitor.refresh"
        );
    }

    #[test]
    fn sql_history_paths_may_not_take_the_socketio_path() {
        let text = "[socketio]\npath = \"/engine\"\n[[sources.sql]]\nid = \"q\"\nurl = \"sqlite::memory:\"\nsql = \"SELECT 1\"\nchannel = \"q\"\nhistory_sql = \"SELECT 2\"\nhistory_path = \"/engine/h\"\n";
        let c: Config = toml::from_str(text).unwrap();
        let e = c.validate().unwrap_err().to_string();
        assert!(
            e.contains("collides with Herald's own route /engine"),
            "{e}"
        );
    }
}
