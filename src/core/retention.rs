//! History retention: how many events, and how old, each channel keeps.

use std::time::Duration;

use serde::Deserialize;

use super::channel::Pattern;
use crate::config_error::InvalidConfig;

/// Bounds on one channel's history.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Most events kept.
    pub max_events: u64,
    /// Oldest event kept.
    pub max_age: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_events: 1000,
            max_age: Duration::from_secs(24 * 3600),
        }
    }
}

/// Retention rules: the first pattern that matches a channel wins, else the defaults.
#[derive(Debug, Clone, Default)]
pub struct Retention {
    /// Limits for channels no rule matches.
    pub defaults: Limits,
    /// Ordered pattern rules.
    pub rules: Vec<(Pattern, Limits)>,
}

impl Retention {
    /// The limits that apply to `channel`.
    pub fn limits(&self, channel: &str) -> Limits {
        self.rules
            .iter()
            .find(|(p, _)| p.matches(channel))
            .map_or(self.defaults, |(_, l)| *l)
    }
}

/// The `[history]` section: retention defaults and per-pattern rules.
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

/// Retention for channels matching a pattern (`[[history.rules]]`).
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

impl HistoryConfig {
    /// Checks that every channel keeps at least one event.
    pub fn validate(&self) -> Result<(), InvalidConfig> {
        if self.max_events == 0 || self.rules.iter().any(|r| r.max_events == Some(0)) {
            return Err(InvalidConfig(
                "history max_events must be at least 1".into(),
            ));
        }
        Ok(())
    }

    /// Every age limit set, for the check on durations all sections share.
    pub fn ages(&self) -> impl Iterator<Item = Duration> + '_ {
        std::iter::once(self.max_age).chain(self.rules.iter().filter_map(|r| r.max_age))
    }

    /// The retention rules as the engine applies them.
    pub fn retention(&self) -> Retention {
        let defaults = Limits {
            max_events: self.max_events,
            max_age: self.max_age,
        };
        Retention {
            defaults,
            rules: self
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_override_the_defaults_field_by_field() {
        let c: HistoryConfig = toml::from_str(
            "max_events = 10\nmax_age = \"1h\"\n[[rules]]\npattern = \"short:*\"\nmax_events = 5\n",
        )
        .unwrap();
        c.validate().unwrap();
        let r = c.retention();
        assert_eq!(r.limits("short:x").max_events, 5);
        assert_eq!(r.limits("short:x").max_age, Duration::from_secs(3600));
        assert_eq!(r.limits("other").max_events, 10);
    }

    #[test]
    fn every_channel_keeps_an_event() {
        let c: HistoryConfig =
            toml::from_str("[[rules]]\npattern = \"a\"\nmax_events = 0\n").unwrap();
        let e = c.validate().unwrap_err().to_string();
        assert_eq!(e, "history max_events must be at least 1");
    }
}
