//! A monitor's definition as users write it (REST body or config file), and its validation: every error names
//! the field it is about.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::check::{Check, FieldError};
use crate::core::channel::ChannelName;

/// Longest monitor name.
const MAX_NAME: usize = 200;

/// What to check, how often, and where its events go.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MonitorSpec {
    /// Stable id (letters, digits, `-`, `_`); generated when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Display name.
    pub name: String,
    /// The check itself.
    pub check: Check,
    /// Seconds between checks.
    #[serde(
        default = "default_interval",
        serialize_with = "crate::number::serialize"
    )]
    pub interval: f64,
    /// Seconds a check may take before it is cut off; at most the interval.
    #[serde(default, serialize_with = "crate::number::serialize_opt")]
    pub timeout: Option<f64>,
    /// Failed checks in a row reported as PENDING before the monitor is DOWN.
    #[serde(default)]
    pub retries: u32,
    /// A successful check slower than this many milliseconds is DEGRADED.
    #[serde(default, serialize_with = "crate::number::serialize_opt")]
    pub degraded_ms: Option<f64>,
    /// Channel its events go to (default: the monitor section's channel).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel: Option<String>,
    /// Free-form labels.
    #[serde(default)]
    pub tags: Vec<String>,
    /// Created paused: no checks until resumed.
    #[serde(default)]
    pub paused: bool,
}

fn default_interval() -> f64 {
    60.0
}

impl MonitorSpec {
    /// Parses a JSON body, mapping shape errors to the field they concern.
    pub fn from_json(value: Value) -> Result<Self, FieldError> {
        let Value::Object(map) = &value else {
            return Err(FieldError::new("", "a monitor is a JSON object"));
        };
        match map.get("check") {
            None => return Err(FieldError::new("check", "missing field")),
            Some(Value::Object(check)) => match check.get("kind") {
                Some(Value::String(k)) if ["http", "tcp", "udp", "dns"].contains(&k.as_str()) => {}
                Some(Value::String(k)) => {
                    return Err(FieldError::new(
                        "check.kind",
                        format!("unknown kind {k:?}; expected http, tcp, udp or dns"),
                    ));
                }
                _ => {
                    return Err(FieldError::new(
                        "check.kind",
                        "missing; expected http, tcp, udp or dns",
                    ));
                }
            },
            Some(_) => return Err(FieldError::new("check", "must be an object")),
        }
        serde_json::from_value(value).map_err(|e| {
            let msg = e.to_string();
            // serde names the offending field in backticks; keep the message as it is for the rest.
            let field = msg
                .split('`')
                .nth(1)
                .filter(|_| msg.contains("unknown field") || msg.contains("missing field"))
                .unwrap_or("");
            FieldError::new(field, msg.clone())
        })
    }

    /// Static validation of every field.
    pub fn validate(&self) -> Result<(), FieldError> {
        if let Some(id) = &self.id
            && !valid_id(id)
        {
            return Err(FieldError::new("id", "1 to 64 letters, digits, `-` or `_`"));
        }
        if self.name.trim().is_empty() || self.name.len() > MAX_NAME {
            return Err(FieldError::new(
                "name",
                format!("must be 1 to {MAX_NAME} characters"),
            ));
        }
        if !self.interval.is_finite() || self.interval < 1.0 || self.interval > 86_400.0 {
            return Err(FieldError::new(
                "interval",
                "seconds between checks, from 1 to 86400",
            ));
        }
        if let Some(t) = self.timeout
            && (!t.is_finite() || t <= 0.0 || t > self.interval)
        {
            return Err(FieldError::new(
                "timeout",
                "seconds, more than 0 and at most the interval",
            ));
        }
        if self.retries > 100 {
            return Err(FieldError::new("retries", "at most 100"));
        }
        if let Some(d) = self.degraded_ms
            && (!d.is_finite() || d <= 0.0)
        {
            return Err(FieldError::new(
                "degraded_ms",
                "a positive number of milliseconds",
            ));
        }
        if let Some(c) = &self.channel {
            ChannelName::new(c).map_err(|e| FieldError::new("channel", e.to_string()))?;
        }
        if self.tags.len() > 32 || self.tags.iter().any(|t| t.is_empty() || t.len() > 64) {
            return Err(FieldError::new(
                "tags",
                "at most 32 tags of 1 to 64 characters",
            ));
        }
        self.check.validate()
    }

    /// The check timeout: as given, else the smaller of 10 s and 80 % of the interval.
    pub fn timeout(&self) -> Duration {
        let secs = self.timeout.unwrap_or((self.interval * 0.8).min(10.0));
        Duration::from_secs_f64(secs)
    }

    /// The interval.
    pub fn interval(&self) -> Duration {
        Duration::from_secs_f64(self.interval)
    }

    /// The kind's name (`http`, `tcp`, `udp`, `dns`; `keyword` for an HTTP check with a keyword).
    pub fn kind(&self) -> &'static str {
        match &self.check {
            Check::Http(h) if h.keyword.is_some() => "keyword",
            Check::Http(h) if h.json_path.is_some() => "json-query",
            Check::Http(_) => "http",
            Check::Tcp(_) => "port",
            Check::Udp(_) => "udp",
            Check::Dns(_) => "dns",
        }
    }
}

/// Whether `id` is a valid monitor id.
pub fn valid_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn field(v: Value) -> String {
        match MonitorSpec::from_json(v).and_then(|s| s.validate().map(|_| s)) {
            Ok(_) => "ok".into(),
            Err(e) => e.field,
        }
    }

    #[test]
    fn errors_name_the_field() {
        let ok = json!({"name": "a", "check": {"kind": "tcp", "host": "127.0.0.1", "port": 80}, "interval": 5});
        assert_eq!(field(ok.clone()), "ok");
        let mut v = ok.clone();
        v["interval"] = json!(0);
        assert_eq!(field(v), "interval");
        let mut v = ok.clone();
        v["check"]["kind"] = json!("smtp");
        assert_eq!(field(v), "check.kind");
        let mut v = ok.clone();
        v["check"] = json!({"kind": "http", "url": "not a url"});
        assert_eq!(field(v), "check.url");
        let mut v = ok.clone();
        v["name"] = json!("");
        assert_eq!(field(v), "name");
        let mut v = ok.clone();
        v["timeout"] = json!(10);
        assert_eq!(field(v), "timeout");
        let mut v = ok;
        v["colour"] = json!("red");
        assert_eq!(field(v), "colour");
        assert_eq!(field(json!({"name": "a"})), "check");
    }
}
