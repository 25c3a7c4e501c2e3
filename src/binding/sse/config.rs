//! The Server-Sent Events binding's section, `[sse]`.

use std::time::Duration;

use serde::Deserialize;

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
