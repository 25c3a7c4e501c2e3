//! The `[forward]` section: where connects and disconnects are forwarded, and the bounds of every forward (the
//! client-event `forward = "URL"` mappings included): timeout, in-flight limits, answer size, retries, outbox.
//! ```toml
//! [forward]
//! connect = "http://127.0.0.1:4001/hooks/connect"
//! disconnect = "http://127.0.0.1:4001/hooks/disconnect"
//! timeout = "5s"
//! per_connection = 4
//! in_flight = 256
//! headers = { authorization = "Bearer s3cret" }
//! ```

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

use crate::config_error::InvalidConfig;

/// Longest `timeout` (a forward holds a client waiting, and a slot, that long).
const MAX_TIMEOUT: Duration = Duration::from_secs(300);

/// The `[forward]` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ForwardConfig {
    /// Asked on every Socket.IO and `/ws` connect: may refuse it or add subscriptions.
    pub connect: Option<String>,
    /// Told of every disconnect, at least once, from the durable outbox.
    pub disconnect: Option<String>,
    /// How long one forward may take, retries included; the client hears `backend_timeout` after it.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Forwards one connection may have in flight (`too_many_forwards` beyond).
    pub per_connection: usize,
    /// Forwards the whole server may have in flight (`too_many_forwards` beyond).
    pub in_flight: usize,
    /// Largest answer body read from the backend (`backend_error` beyond).
    pub max_answer_bytes: usize,
    /// Extra attempts when the backend refused the TCP connection (nothing was sent, so it is safe).
    pub retries: u32,
    /// Disconnect notices kept for the backend while it is down (the oldest are dropped beyond, and counted).
    pub outbox_max: u64,
    /// Longest wait between two deliveries of a disconnect notice the backend did not take.
    #[serde(with = "humantime_serde")]
    pub retry_max: Duration,
    /// Headers sent with every forward (e.g. a shared secret the backend checks).
    pub headers: BTreeMap<String, String>,
}

impl Default for ForwardConfig {
    fn default() -> Self {
        Self {
            connect: None,
            disconnect: None,
            timeout: Duration::from_secs(5),
            per_connection: 4,
            in_flight: 256,
            max_answer_bytes: 64 << 10,
            retries: 2,
            outbox_max: 10_000,
            retry_max: Duration::from_secs(30),
            headers: BTreeMap::new(),
        }
    }
}

/// Checks a URL Herald forwards to: `http://` or `https://` with a host.
pub fn check_url(url: &str) -> Result<(), String> {
    let parsed = reqwest::Url::parse(url).map_err(|e| format!("{url:?}: {e}"))?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
        return Err(format!("{url:?}: an http:// or https:// URL with a host"));
    }
    Ok(())
}

impl ForwardConfig {
    /// Checks the URLs, headers and bounds.
    pub fn validate(&self) -> Result<(), InvalidConfig> {
        let bad = |m: String| InvalidConfig(format!("forward: {m}"));
        for (key, url) in [("connect", &self.connect), ("disconnect", &self.disconnect)] {
            if let Some(url) = url {
                check_url(url).map_err(|e| bad(format!("`{key}`: {e}")))?;
            }
        }
        if self.timeout.is_zero() || self.timeout > MAX_TIMEOUT {
            return Err(bad(format!(
                "`timeout` must be above 0 and at most {} s",
                MAX_TIMEOUT.as_secs()
            )));
        }
        if self.per_connection == 0 || self.in_flight == 0 {
            return Err(bad(
                "`per_connection` and `in_flight` must be at least 1".into()
            ));
        }
        if self.max_answer_bytes < 2 {
            return Err(bad("`max_answer_bytes` must be at least 2".into()));
        }
        if self.retries > 10 {
            return Err(bad("`retries` must be at most 10".into()));
        }
        if self.outbox_max == 0 {
            return Err(bad("`outbox_max` must be at least 1".into()));
        }
        if self.retry_max < Duration::from_millis(100) {
            return Err(bad("`retry_max` must be at least 100ms".into()));
        }
        for (name, value) in &self.headers {
            http::HeaderName::try_from(name.as_str())
                .map_err(|e| bad(format!("header {name:?}: {e}")))?;
            http::HeaderValue::try_from(value.as_str())
                .map_err(|e| bad(format!("header {name:?}: {e}")))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<ForwardConfig, String> {
        let c: ForwardConfig = toml::from_str(text).map_err(|e| e.to_string())?;
        c.validate().map_err(|e| e.to_string())?;
        Ok(c)
    }

    #[test]
    fn defaults_and_checks() {
        let c = parse("").unwrap();
        assert_eq!(c.timeout, Duration::from_secs(5));
        assert!(parse(r#"connect = "http://127.0.0.1:4001/c""#).is_ok());
        for (text, expected) in [
            (r#"connect = "ftp://x/c""#, "http:// or https://"),
            (r#"disconnect = "not a url""#, "`disconnect`"),
            (r#"timeout = "0s""#, "`timeout`"),
            ("per_connection = 0", "at least 1"),
            ("outbox_max = 0", "`outbox_max`"),
            ("headers = { \"bad name\" = \"x\" }", "header"),
            ("unknown = 1", "unknown field"),
        ] {
            let e = parse(text).unwrap_err();
            assert!(e.contains(expected), "{text}: {e}");
        }
    }
}
