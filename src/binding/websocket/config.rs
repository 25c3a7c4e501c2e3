//! The plain WebSocket binding's section, `[websocket]`: pings, heartbeats, bounds and the payload shape of direct
//! channel URLs.

use std::time::Duration;

use serde::Deserialize;

use crate::core::channel::Pattern;

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

impl WebSocketConfig {
    /// The payload shape of direct URLs for `channel`.
    pub fn direct_payload(&self, channel: &str) -> PayloadShape {
        self.direct
            .iter()
            .find(|r| Pattern::new(&r.pattern).matches(channel))
            .map_or(PayloadShape::Envelope, |r| r.payload)
    }
}
