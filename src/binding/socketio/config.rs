//! The Socket.IO binding's section, `[socketio]`: the protocol settings, server-side channels and the mapping of
//! application events clients emit, with their checks.

use std::collections::HashMap;
use std::time::Duration;

use serde::Deserialize;

use crate::binding::client_events::ClientEvent;
use crate::config_error::InvalidConfig;
use crate::core::channel::ChannelName;

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
    pub client_events: HashMap<String, ClientEvent>,
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
            client_events: HashMap::new(),
        }
    }
}

impl SocketIoConfig {
    /// Checks the path, the server-side channel names and the client events. `actions` are the action names
    /// something serves (the sources register them; `crate::config` passes the list): a client event may run
    /// only one of those.
    pub fn validate(&self, actions: &[&str]) -> Result<(), InvalidConfig> {
        for (event, mapping) in &self.client_events {
            mapping
                .validate(event, actions)
                .map_err(|m| InvalidConfig(format!("socketio.client_events {event:?}: {m}")))?;
        }
        for name in &self.server_side_channels {
            ChannelName::new(name)
                .map_err(|e| InvalidConfig(format!("server_side_channels {name:?}: {e}")))?;
        }
        if !self.path.starts_with('/') {
            return Err(InvalidConfig("socketio.path must start with '/'".into()));
        }
        Ok(())
    }

    /// Server-side channels, validated.
    pub fn server_side_channels(&self) -> Vec<ChannelName> {
        self.server_side_channels
            .iter()
            .filter_map(|n| ChannelName::new(n).ok())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_bad_channels() {
        let c: SocketIoConfig = toml::from_str("server_side_channels = [\"a/b\"]").unwrap();
        assert!(c.validate(&[]).is_err());
    }

    #[test]
    fn client_event_templates_are_checked_at_start_up() {
        let with = |t: &str| {
            let text = format!("[client_events]\n\"join_room\" = {{ subscribe = \"{t}\" }}\n");
            toml::from_str::<SocketIoConfig>(&text)
                .unwrap()
                .validate(&[])
        };
        assert!(with("{arg.room}").is_ok());
        assert!(with("scan_{arg}").is_ok());
        let e = with("{room}").unwrap_err().to_string();
        assert!(
            e.contains("\"join_room\"") && e.contains("unknown placeholder {room}"),
            "{e}"
        );
    }

    #[test]
    fn client_event_actions_must_be_known() {
        let c: SocketIoConfig =
            toml::from_str("[client_events]\n\"r\" = { action = \"monitor.refresh\" }\n").unwrap();
        assert!(c.validate(&["monitor.refresh"]).is_ok());
        let e = c.validate(&[]).unwrap_err().to_string();
        assert!(e.contains("\"r\": unknown action"), "{e}");
    }
}
