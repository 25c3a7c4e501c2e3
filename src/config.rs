//! Configuration: a TOML file, overridden by environment variables, overridden by command-line flags.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::core::channel::{ChannelName, Pattern};
use crate::core::retention::{Limits, Retention};
use crate::core::store::Durability;

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
    pub api_keys: Vec<String>,
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
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 7700)),
            data_dir: PathBuf::from("herald-data"),
            api_keys: Vec::new(),
            durability: Durability::Full,
            max_body_bytes: 1 << 20,
            max_event_bytes: 64 << 10,
            history: HistoryConfig::default(),
            socketio: SocketIoConfig::default(),
            websocket: WebSocketConfig::default(),
            sse: SseConfig::default(),
        }
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

/// Overrides from the environment or flags; `None` leaves the file's value.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    /// `--listen` / `HERALD_LISTEN`.
    pub listen: Option<SocketAddr>,
    /// `--data-dir` / `HERALD_DATA_DIR`.
    pub data_dir: Option<PathBuf>,
    /// `--api-key` / `HERALD_API_KEY` (comma-separated).
    pub api_keys: Vec<String>,
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
        if !overrides.api_keys.is_empty() {
            config.api_keys = overrides.api_keys;
        }
        config.api_keys.retain(|k| !k.is_empty());
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
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
        if self.socketio.ping_interval.is_zero() || self.socketio.ping_timeout.is_zero() {
            return Err(ConfigError::Invalid(
                "socketio ping_interval and ping_timeout must be positive".into(),
            ));
        }
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
    fn rejects_unknown_keys_and_bad_channels() {
        assert!(toml::from_str::<Config>("lisen = 1").is_err());
        let c: Config = toml::from_str("[socketio]\nserver_side_channels = [\"a/b\"]").unwrap();
        assert!(c.validate().is_err());
    }
}
