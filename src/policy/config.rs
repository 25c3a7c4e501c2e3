//! The admission policy's section, `[limits]`: rate and concurrency limits, their defaults and their checks.

use std::time::Duration;

use serde::Deserialize;

use crate::config_error::InvalidConfig;

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
    /// Events per second one connection may publish through mapped client events (`publish = "…"`); 0: no limit.
    pub client_publishes_per_second: u32,
    /// Client publishes a connection may make at once before the rate applies; unset: twice the rate.
    pub client_publishes_burst: Option<u32>,
    /// Largest data a client publish may carry, in bytes (also bounded by `max_event_bytes`).
    pub client_publish_max_bytes: usize,
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
            client_publishes_per_second: 10,
            client_publishes_burst: None,
            client_publish_max_bytes: 16 << 10,
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

    /// The per-connection client publish bucket's size.
    pub fn client_publishes_burst(&self) -> u32 {
        self.client_publishes_burst
            .unwrap_or(self.client_publishes_per_second.saturating_mul(2))
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

    /// Checks the bursts and the deadlines.
    pub fn validate(&self) -> Result<(), InvalidConfig> {
        // A burst of zero would refuse everything while the rate says otherwise; `0` turns the rate off instead.
        let bursts = [
            ("connections_burst", self.connections_burst),
            ("messages_burst", self.messages_burst),
            ("publishes_burst", self.publishes_burst),
            ("client_publishes_burst", self.client_publishes_burst),
        ];
        if let Some((name, _)) = bursts.iter().find(|(_, b)| *b == Some(0)) {
            return Err(InvalidConfig(format!(
                "limits.{name} must be at least 1 (set the rate to 0 to turn the limit off)"
            )));
        }
        if self.request_head_timeout > Duration::from_secs(3600)
            || self.keep_alive_timeout > Duration::from_secs(3600)
        {
            return Err(InvalidConfig(
                "limits.request_head_timeout and keep_alive_timeout must be at most 1h".into(),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_bursts_and_socket_budget_default_to_todays_behaviour_and_can_be_named() {
        let l: LimitsConfig =
            toml::from_str("connections_per_second_per_ip = 20\nconnections_per_ip = 30\n")
                .unwrap();
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
        let l: LimitsConfig = toml::from_str(
            "connections_burst = 3\nmessages_burst = 4\npublishes_burst = 5\nsockets_per_ip = 7\nrequest_head_timeout = \"0s\"\n",
        )
        .unwrap();
        assert_eq!(
            (
                l.connections_burst(),
                l.messages_burst(),
                l.publishes_burst()
            ),
            (3, 4, 5)
        );
        assert_eq!((l.sockets_per_ip(), l.request_head_timeout()), (7, None));
        let l: LimitsConfig = toml::from_str("messages_burst = 0\n").unwrap();
        assert!(l.validate().is_err(), "a burst of 0 is refused");
    }

    #[test]
    fn client_publish_limits_default_and_refuse_a_zero_burst() {
        let l = LimitsConfig::default();
        assert_eq!(
            (
                l.client_publishes_per_second,
                l.client_publishes_burst(),
                l.client_publish_max_bytes
            ),
            (10, 20, 16 << 10)
        );
        let l: LimitsConfig = toml::from_str("client_publishes_burst = 0\n").unwrap();
        let e = l.validate().unwrap_err().to_string();
        assert!(e.contains("client_publishes_burst"), "{e}");
    }
}
