//! Configuration: a TOML file, overridden by environment variables, overridden by command-line flags.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::core::channel::{ChannelName, Pattern};
use crate::core::engine::sqlite::Durability;
use crate::core::retention::{Limits, Retention};

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
    Invalid(String),
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
    pub monitor: crate::monitor::MonitorConfig,
}

/// A state channel declaration: events published with a `key` keep a latest value per key, and a new
/// subscriber first gets the snapshot.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateConfig {
    /// Channel pattern (`*` wildcards).
    pub channels: String,
    /// Send the snapshot as one event of this name carrying the array of values; without it, each value is
    /// sent as the event that set it.
    pub bulk_event: Option<String>,
}

impl StateConfig {
    /// The snapshot style.
    pub fn snapshot(&self) -> crate::core::state::Snapshot {
        match &self.bulk_event {
            Some(event) => crate::core::state::Snapshot::Bulk {
                event: event.clone(),
            },
            None => crate::core::state::Snapshot::Each,
        }
    }
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
            monitor: crate::monitor::MonitorConfig::default(),
        }
    }
}

/// An API key: a bare string has every scope; a table can restrict it.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum ApiKey {
    /// Full access.
    Plain(String),
    /// A key with scopes.
    Scoped {
        /// The key.
        key: String,
        /// Channel patterns it may publish to.
        #[serde(default = "any_channel")]
        publish: Vec<String>,
        /// Whether it may use the admin endpoints (e.g. closing connections).
        #[serde(default)]
        admin: bool,
    },
}

fn any_channel() -> Vec<String> {
    vec!["*".into()]
}

impl ApiKey {
    /// The secret itself.
    pub fn key(&self) -> &str {
        match self {
            ApiKey::Plain(k) | ApiKey::Scoped { key: k, .. } => k,
        }
    }

    /// Whether this key may publish to `channel`.
    pub fn may_publish(&self, channel: &str) -> bool {
        match self {
            ApiKey::Plain(_) => true,
            ApiKey::Scoped { publish, .. } => {
                publish.iter().any(|p| Pattern::new(p).matches(channel))
            }
        }
    }

    /// Whether this key may use the admin endpoints.
    pub fn is_admin(&self) -> bool {
        matches!(self, ApiKey::Plain(_) | ApiKey::Scoped { admin: true, .. })
    }
}

/// Certificate and key files (PEM); re-read on SIGHUP.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// Certificate chain, leaf first.
    pub cert: PathBuf,
    /// Private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

/// Rate and concurrency limits; zero turns a limit off.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// New connections per second from one IP address.
    pub connections_per_second_per_ip: u32,
    /// New connections from one address admitted at once before the rate applies (token-bucket size); unset:
    /// twice `connections_per_second_per_ip`.
    pub connections_burst: Option<u32>,
    /// Open connections from one IP address.
    pub connections_per_ip: usize,
    /// Open TCP sockets from one IP address, whatever they carry (idle keep-alive, requests, upgraded
    /// WebSockets, HTTP/2); unset: twice `connections_per_ip` plus 100.
    pub sockets_per_ip: Option<usize>,
    /// How long a new socket may take to deliver its first complete request head (TLS handshake included);
    /// `0s` turns it off.
    #[serde(with = "humantime_serde")]
    pub request_head_timeout: Duration,
    /// How long an idle HTTP/1.1 keep-alive socket may take to deliver its next request head. Longer than
    /// `request_head_timeout`: a client reusing a connection the server is closing at that moment gets an
    /// error, and clients keep idle connections for a few seconds (Node's fetch 4 s). `0s` turns it off.
    #[serde(with = "humantime_serde")]
    pub keep_alive_timeout: Duration,
    /// Messages per second a client connection may send.
    pub messages_per_second: u32,
    /// Messages a connection may send at once before the rate applies; unset: twice `messages_per_second`.
    pub messages_burst: Option<u32>,
    /// Channels one connection may be subscribed to.
    pub subscriptions_per_connection: usize,
    /// Publish requests per second per API key.
    pub publishes_per_second_per_key: u32,
    /// Publish requests a key may make at once before the rate applies; unset: `publishes_per_second_per_key`.
    pub publishes_burst: Option<u32>,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            connections_per_second_per_ip: 100,
            connections_burst: None,
            connections_per_ip: 2000,
            sockets_per_ip: None,
            request_head_timeout: Duration::from_secs(5),
            keep_alive_timeout: Duration::from_secs(60),
            messages_per_second: 100,
            messages_burst: None,
            subscriptions_per_connection: 500,
            publishes_per_second_per_key: 5000,
            publishes_burst: None,
        }
    }
}

/// Sockets per address beyond twice `connections_per_ip` when `sockets_per_ip` is unset.
pub const SOCKET_HEADROOM: usize = 100;

impl LimitsConfig {
    /// The connection bucket's size.
    pub fn connections_burst(&self) -> u32 {
        self.connections_burst
            .unwrap_or(self.connections_per_second_per_ip.saturating_mul(2))
    }

    /// The per-connection message bucket's size.
    pub fn messages_burst(&self) -> u32 {
        self.messages_burst
            .unwrap_or(self.messages_per_second.saturating_mul(2))
    }

    /// The per-key publish bucket's size.
    pub fn publishes_burst(&self) -> u32 {
        self.publishes_burst
            .unwrap_or(self.publishes_per_second_per_key)
    }

    /// Open sockets allowed per address (0: no limit). Unset: twice the connections plus [`SOCKET_HEADROOM`] — a
    /// long-polling Socket.IO client holds two sockets (its pending GET and its POST), a WebSocket or SSE connection
    /// a socket as well as its connection slot, and the headroom is for API calls (a loopback publisher shares its
    /// address with local clients) and for attempts the connection limits refuse with a readable 429.
    pub fn sockets_per_ip(&self) -> usize {
        self.sockets_per_ip
            .unwrap_or(match self.connections_per_ip {
                0 => 0,
                n => n.saturating_mul(2).saturating_add(SOCKET_HEADROOM),
            })
    }

    /// The request-head deadline, if on.
    pub fn request_head_timeout(&self) -> Option<Duration> {
        (!self.request_head_timeout.is_zero()).then_some(self.request_head_timeout)
    }

    /// The idle keep-alive deadline, if on.
    pub fn keep_alive_timeout(&self) -> Option<Duration> {
        (!self.keep_alive_timeout.is_zero()).then_some(self.keep_alive_timeout)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        // A burst of zero would refuse everything while the rate says otherwise; `0` turns the rate off instead.
        let bursts = [
            ("connections_burst", self.connections_burst),
            ("messages_burst", self.messages_burst),
            ("publishes_burst", self.publishes_burst),
        ];
        if let Some((name, _)) = bursts.iter().find(|(_, b)| *b == Some(0)) {
            return Err(ConfigError::Invalid(format!(
                "limits.{name} must be at least 1 (set the rate to 0 to turn the limit off)"
            )));
        }
        if self.request_head_timeout > Duration::from_secs(3600)
            || self.keep_alive_timeout > Duration::from_secs(3600)
        {
            return Err(ConfigError::Invalid(
                "limits.request_head_timeout and keep_alive_timeout must be at most 1h".into(),
            ));
        }
        Ok(())
    }
}

/// History retention: defaults and per-pattern rules.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HistoryConfig {
    /// Events kept per channel.
    pub max_events: u64,
    /// Age beyond which events are dropped.
    #[serde(with = "humantime_serde")]
    pub max_age: Duration,
    /// Per-pattern overrides; the first match wins.
    pub rules: Vec<HistoryRule>,
}

impl Default for HistoryConfig {
    fn default() -> Self {
        let l = Limits::default();
        Self {
            max_events: l.max_events,
            max_age: l.max_age,
            rules: Vec::new(),
        }
    }
}

/// Retention for channels matching a pattern.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HistoryRule {
    /// Channel-name pattern (`*` matches any run of characters).
    pub pattern: String,
    /// Events kept; the default if absent.
    pub max_events: Option<u64>,
    /// Age limit; the default if absent.
    #[serde(default, with = "humantime_serde")]
    pub max_age: Option<Duration>,
}

/// Socket.IO transport settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SocketIoConfig {
    /// URL path.
    pub path: String,
    /// Interval between server pings.
    #[serde(with = "humantime_serde")]
    pub ping_interval: Duration,
    /// How long to wait for a pong.
    #[serde(with = "humantime_serde")]
    pub ping_timeout: Duration,
    /// Largest Engine.IO message or polling body.
    pub max_payload: usize,
    /// How long a connection may stay without joining a namespace.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Per-connection outbound queue bound; a client beyond it is disconnected and resumes.
    pub max_queue_bytes: usize,
    /// Channels every client is subscribed to on connect.
    pub server_side_channels: Vec<String>,
    /// How long a disconnected session stays recoverable.
    #[serde(with = "humantime_serde")]
    pub session_ttl: Duration,
    /// Application events clients emit, mapped to subscriptions or actions (e.g. seed 002's
    /// `"subscribe:status" = { subscribe = "monitors" }`, `"request:refresh" = { action = "monitor.refresh" }`).
    pub client_events: std::collections::HashMap<String, ClientEvent>,
}

/// What a mapped client event does. In a channel, `{arg}` is the event's first argument and `{arg.FIELD}` a field
/// of it (see [`crate::binding::template`]).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
pub enum ClientEvent {
    /// Subscribes to the channel.
    Subscribe(String),
    /// Unsubscribes from the channel.
    Unsubscribe(String),
    /// Runs a named action (`monitor.refresh`).
    Action(String),
}

impl Default for SocketIoConfig {
    fn default() -> Self {
        // The protocol layer's defaults are the reference server's; keep one copy of them.
        let t = crate::transport::socketio::SocketIoConfig::default();
        Self {
            path: t.path,
            ping_interval: t.ping_interval,
            ping_timeout: t.ping_timeout,
            max_payload: t.max_payload,
            connect_timeout: t.connect_timeout,
            max_queue_bytes: t.max_queue_bytes,
            server_side_channels: Vec::new(),
            session_ttl: Duration::from_secs(24 * 3600),
            client_events: std::collections::HashMap::new(),
        }
    }
}

/// Plain WebSocket settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebSocketConfig {
    /// Interval between WebSocket ping frames.
    #[serde(with = "humantime_serde")]
    pub ping_interval: Duration,
    /// How long to wait for the pong before dropping the peer.
    #[serde(with = "humantime_serde")]
    pub ping_timeout: Duration,
    /// Interval of `{"type":"heartbeat"}` messages; zero disables them.
    #[serde(with = "humantime_serde")]
    pub heartbeat_interval: Duration,
    /// Largest client message.
    pub max_message_bytes: usize,
    /// Per-connection outbound bound.
    pub max_queue_bytes: usize,
    /// Negotiate permessage-deflate when the client offers it.
    pub compression: bool,
    /// Payload shape on direct URLs, per channel pattern.
    pub direct: Vec<DirectRule>,
}

impl Default for WebSocketConfig {
    fn default() -> Self {
        Self {
            ping_interval: Duration::from_secs(25),
            ping_timeout: Duration::from_secs(20),
            heartbeat_interval: Duration::from_secs(30),
            max_message_bytes: 64 << 10,
            max_queue_bytes: 4 << 20,
            compression: true,
            direct: Vec::new(),
        }
    }
}

/// What a direct WebSocket URL sends for channels matching `pattern`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DirectRule {
    /// Channel-name pattern.
    pub pattern: String,
    /// Message shape.
    pub payload: PayloadShape,
}

/// The shape of an event message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum PayloadShape {
    /// Herald's envelope: channel, offset, epoch, id, event, data, time.
    #[default]
    Envelope,
    /// The event's bare JSON payload, for frontends that expect only that.
    Data,
}

/// Server-Sent Events settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SseConfig {
    /// Interval of comment heartbeats.
    #[serde(with = "humantime_serde")]
    pub heartbeat_interval: Duration,
    /// Reconnection delay advertised to browsers.
    #[serde(with = "humantime_serde")]
    pub retry: Duration,
    /// Per-stream outbound bound.
    pub max_queue_bytes: usize,
}

impl Default for SseConfig {
    fn default() -> Self {
        Self {
            heartbeat_interval: Duration::from_secs(15),
            retry: Duration::from_secs(2),
            max_queue_bytes: 4 << 20,
        }
    }
}

impl WebSocketConfig {
    /// The payload shape of direct URLs for `channel`.
    pub fn direct_payload(&self, channel: &str) -> PayloadShape {
        self.direct
            .iter()
            .find(|r| Pattern::new(&r.pattern).matches(channel))
            .map_or(PayloadShape::Envelope, |r| r.payload)
    }
}

/// Client authentication and channel permissions (`[auth]`); the full reference is `docs/auth.md`.
///
/// With no `keys`, tokens cannot be verified: every client is anonymous and `anonymous` defaults to `true`.
/// With keys, `anonymous` defaults to `false` and every token must carry `exp`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// Admit clients without a token; `None` → [`AuthConfig::anonymous_allowed`] decides.
    pub anonymous: Option<bool>,
    /// Claim holding the user id (a string or an integer).
    pub user_claim: String,
    /// Claim holding the roles (a string or an array of strings).
    pub roles_claim: String,
    /// Clock skew tolerated on `exp` and `nbf`.
    #[serde(with = "humantime_serde")]
    pub leeway: Duration,
    /// Required `aud` value, if any.
    pub audience: Option<String>,
    /// Required `iss` value, if any.
    pub issuer: Option<String>,
    /// Cookie carrying the token, if any (not read unless named).
    pub cookie: Option<String>,
    /// Query parameter carrying the token; empty → not read.
    pub query_param: String,
    /// Claim listing channels a client is subscribed to on connect (server-side subscriptions).
    pub subscriptions_claim: Option<String>,
    /// Verification keys; each pins its algorithm.
    pub keys: Vec<KeyConfig>,
    /// Channel permission rules; the first rule that applies decides, per action.
    pub rules: Vec<AuthRule>,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            anonymous: None,
            user_claim: "sub".into(),
            roles_claim: "roles".into(),
            leeway: Duration::from_secs(30),
            audience: None,
            issuer: None,
            cookie: None,
            query_param: "token".into(),
            subscriptions_claim: None,
            keys: Vec::new(),
            rules: Vec::new(),
        }
    }
}

impl AuthConfig {
    /// Whether clients without a token are admitted: `anonymous` if set, else `true` only while no key is configured.
    pub fn anonymous_allowed(&self) -> bool {
        self.anonymous.unwrap_or(self.keys.is_empty())
    }

    /// Checks what can be checked without reading files or the environment.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(format!("auth: {m}")));
        if self.user_claim.is_empty() || self.roles_claim.is_empty() {
            return bad("user_claim and roles_claim must not be empty".into());
        }
        if self.cookie.as_deref() == Some("") {
            return bad("cookie must not be empty (omit it to read no cookie)".into());
        }
        for (i, key) in self.keys.iter().enumerate() {
            key.validate().or_else(|m| bad(format!("keys[{i}]: {m}")))?;
        }
        for (i, rule) in self.rules.iter().enumerate() {
            crate::auth::check_pattern(&rule.pattern)
                .or_else(|m| bad(format!("rules[{i}] pattern {:?}: {m}", rule.pattern)))?;
        }
        Ok(())
    }
}

/// One verification key source (`[[auth.keys]]`), tagged by `kind`.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum KeyConfig {
    /// A shared HMAC secret (`HS256`, `HS384`, `HS512`), inline or from an environment variable.
    Hmac {
        /// The algorithm tokens must declare.
        algorithm: jsonwebtoken::Algorithm,
        /// The secret itself (at least 32 bytes).
        #[serde(default)]
        secret: Option<String>,
        /// Environment variable holding the secret.
        #[serde(default)]
        secret_env: Option<String>,
        /// Key id; if set, a token naming another `kid` is not tried against this key.
        #[serde(default)]
        kid: Option<String>,
    },
    /// A public key in a PEM file (`RS*`, `PS*`, `ES256`, `ES384`, `EdDSA`).
    Pem {
        /// The algorithm tokens must declare.
        algorithm: jsonwebtoken::Algorithm,
        /// PEM file (SPKI `PUBLIC KEY`, or `RSA PUBLIC KEY`).
        path: PathBuf,
        /// Key id; if set, a token naming another `kid` is not tried against this key.
        #[serde(default)]
        kid: Option<String>,
    },
    /// A JSON Web Key Set, from a file (read at start) or a URL (fetched, cached, refreshed).
    Jwks {
        /// JWKS file.
        #[serde(default)]
        path: Option<PathBuf>,
        /// JWKS URL (`http://` or `https://`).
        #[serde(default)]
        url: Option<String>,
        /// How often a URL is fetched again.
        #[serde(default = "default_jwks_refresh", with = "humantime_serde")]
        refresh: Duration,
        /// Least time between two fetches triggered by an unknown `kid`.
        #[serde(default = "default_jwks_cooldown", with = "humantime_serde")]
        refetch_cooldown: Duration,
    },
}

fn default_jwks_refresh() -> Duration {
    Duration::from_secs(300)
}

fn default_jwks_cooldown() -> Duration {
    Duration::from_secs(30)
}

impl KeyConfig {
    fn validate(&self) -> Result<(), String> {
        use jsonwebtoken::{Algorithm as A, AlgorithmFamily as F};
        match self {
            KeyConfig::Hmac {
                algorithm,
                secret,
                secret_env,
                ..
            } => {
                if algorithm.family() != F::Hmac {
                    return Err(format!(
                        "kind \"hmac\" needs HS256, HS384 or HS512, not {algorithm:?}"
                    ));
                }
                match (secret, secret_env) {
                    (Some(s), None) if s.len() < crate::auth::MIN_HMAC_SECRET => Err(format!(
                        "secret must be at least {} bytes",
                        crate::auth::MIN_HMAC_SECRET
                    )),
                    (Some(_), None) | (None, Some(_)) => Ok(()),
                    _ => Err("set exactly one of secret and secret_env".into()),
                }
            }
            KeyConfig::Pem { algorithm, .. } => match algorithm {
                A::HS256 | A::HS384 | A::HS512 => {
                    Err("kind \"pem\" holds a public key; HMAC secrets use kind \"hmac\"".into())
                }
                _ => Ok(()),
            },
            KeyConfig::Jwks {
                path, url, refresh, ..
            } => {
                if path.is_some() == url.is_some() {
                    return Err("set exactly one of path and url".into());
                }
                if let Some(url) = url
                    && !(url.starts_with("http://") || url.starts_with("https://"))
                {
                    return Err("url must start with http:// or https://".into());
                }
                if refresh.is_zero() {
                    return Err("refresh must be positive".into());
                }
                Ok(())
            }
        }
    }
}

/// A channel permission rule (`[[auth.rules]]`).
///
/// A rule applies to a request when its pattern matches the channel, the identity qualifies (`anonymous`, `roles`)
/// and the rule sets the requested action; the first rule that applies decides.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthRule {
    /// Channel pattern: `*` matches any run of characters; `{claim}` is replaced by the claim's value(s).
    pub pattern: String,
    /// Allow (`true`) or refuse (`false`) subscribing; absent → this rule does not decide subscribing.
    #[serde(default)]
    pub subscribe: Option<bool>,
    /// Allow (`true`) or refuse (`false`) publishing; absent → this rule does not decide publishing.
    #[serde(default)]
    pub publish: Option<bool>,
    /// The rule applies only to identities holding one of these roles; empty → any authenticated identity.
    #[serde(default)]
    pub roles: Vec<String>,
    /// The rule also applies to anonymous identities.
    #[serde(default)]
    pub anonymous: bool,
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
}

impl Config {
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
        if !overrides.api_keys.is_empty() {
            config.api_keys = overrides.api_keys.into_iter().map(ApiKey::Plain).collect();
        }
        config.api_keys.retain(|k| !k.key().is_empty());
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        for st in &self.state {
            if st.channels.is_empty() || st.bulk_event.as_deref() == Some("") {
                return Err(ConfigError::Invalid(
                    "state: `channels` and `bulk_event` must not be empty".into(),
                ));
            }
        }
        for (event, mapping) in &self.socketio.client_events {
            let bad = |m: &str| {
                Err(ConfigError::Invalid(format!(
                    "socketio.client_events {event:?}: {m}"
                )))
            };
            if crate::transport::socketio::packet::RESERVED_EVENTS.contains(&event.as_str())
                || ["subscribe", "unsubscribe"].contains(&event.as_str())
                || event.is_empty()
            {
                return bad("this event name is reserved");
            }
            match mapping {
                ClientEvent::Subscribe(t) | ClientEvent::Unsubscribe(t) => {
                    // Placeholders are filled in per event; the rest must already be a valid channel name.
                    if let Err(e) = crate::binding::template::check(t) {
                        return bad(&format!("channel {t:?}: {e}"));
                    }
                }
                ClientEvent::Action(a) if a != "monitor.refresh" => {
                    return bad("unknown action; known: monitor.refresh");
                }
                ClientEvent::Action(_) => {}
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
                return Err(ConfigError::Invalid(format!(
                    "{field} {name:?}: names starting with {:?} are reserved for Herald's own notices",
                    crate::core::event::RESERVED_PREFIX
                )));
            }
        }
        for name in &self.socketio.server_side_channels {
            ChannelName::new(name)
                .map_err(|e| ConfigError::Invalid(format!("server_side_channels {name:?}: {e}")))?;
        }
        if !self.socketio.path.starts_with('/') {
            return Err(ConfigError::Invalid(
                "socketio.path must start with '/'".into(),
            ));
        }
        if self.history.max_events == 0
            || self.history.rules.iter().any(|r| r.max_events == Some(0))
        {
            return Err(ConfigError::Invalid(
                "history max_events must be at least 1".into(),
            ));
        }
        const CENTURY: Duration = Duration::from_secs(100 * 365 * 86_400);
        let ages = [self.history.max_age, self.socketio.session_ttl];
        if ages
            .iter()
            .chain(self.history.rules.iter().filter_map(|r| r.max_age.as_ref()))
            .any(|d| *d > CENTURY)
        {
            return Err(ConfigError::Invalid(
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
            return Err(ConfigError::Invalid(
                "ping intervals, ping timeouts and the SSE heartbeat interval must be positive"
                    .into(),
            ));
        }
        self.limits.validate()?;
        self.auth.validate()?;
        crate::source::sql::check_config(&self.sources.sql, &self.socketio.path)
            .map_err(ConfigError::Invalid)?;
        Ok(())
    }

    /// The retention rules as the core uses them.
    pub fn retention(&self) -> Retention {
        let defaults = Limits {
            max_events: self.history.max_events,
            max_age: self.history.max_age,
        };
        Retention {
            defaults,
            rules: self
                .history
                .rules
                .iter()
                .map(|r| {
                    let limits = Limits {
                        max_events: r.max_events.unwrap_or(defaults.max_events),
                        max_age: r.max_age.unwrap_or(defaults.max_age),
                    };
                    (Pattern::new(&r.pattern), limits)
                })
                .collect(),
        }
    }

    /// Server-side channels, validated.
    pub fn server_side_channels(&self) -> Vec<ChannelName> {
        self.socketio
            .server_side_channels
            .iter()
            .filter_map(|n| ChannelName::new(n).ok())
            .collect()
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Built-in sources (`[sources]`): live SQL queries. Checked by `crate::source::sql::check_config`; see
// `docs/sources.md`.
// ---------------------------------------------------------------------------------------------------------------

/// Built-in sources.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SourcesConfig {
    /// Live SQL queries (`[[sources.sql]]`).
    pub sql: Vec<SqlSourceConfig>,
}

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

#[cfg(test)]
mod tests {
    use super::*;

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
        let r = c.retention();
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
    fn limits_bursts_and_socket_budget_default_to_todays_behaviour_and_can_be_named() {
        let c: Config = toml::from_str(
            "[limits]\nconnections_per_second_per_ip = 20\nconnections_per_ip = 30\n",
        )
        .unwrap();
        let l = &c.limits;
        assert_eq!(
            (
                l.connections_burst(),
                l.messages_burst(),
                l.publishes_burst()
            ),
            (40, 200, 5000)
        );
        assert_eq!(l.sockets_per_ip(), 160);
        assert_eq!(l.request_head_timeout(), Some(Duration::from_secs(5)));
        let c: Config = toml::from_str(
            "[limits]\nconnections_burst = 3\nmessages_burst = 4\npublishes_burst = 5\nsockets_per_ip = 7\nrequest_head_timeout = \"0s\"\n",
        )
        .unwrap();
        let l = &c.limits;
        assert_eq!(
            (
                l.connections_burst(),
                l.messages_burst(),
                l.publishes_burst()
            ),
            (3, 4, 5)
        );
        assert_eq!((l.sockets_per_ip(), l.request_head_timeout()), (7, None));
        let c: Config = toml::from_str("[limits]\nmessages_burst = 0\n").unwrap();
        assert!(c.validate().is_err(), "a burst of 0 is refused");
    }

    #[test]
    fn rejects_unknown_keys_and_bad_channels() {
        assert!(toml::from_str::<Config>("lisen = 1").is_err());
        let c: Config = toml::from_str("[socketio]\nserver_side_channels = [\"a/b\"]").unwrap();
        assert!(c.validate().is_err());
    }

    #[test]
    fn client_event_templates_are_checked_at_start_up() {
        let with = |t: &str| {
            let text =
                format!("[socketio.client_events]\n\"join_room\" = {{ subscribe = \"{t}\" }}\n");
            toml::from_str::<Config>(&text).unwrap().validate()
        };
        assert!(with("{arg.room}").is_ok());
        assert!(with("scan_{arg}").is_ok());
        let e = with("{room}").unwrap_err().to_string();
        assert!(
            e.contains("\"join_room\"") && e.contains("unknown placeholder {room}"),
            "{e}"
        );
    }
}
