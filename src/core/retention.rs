//! History retention: how many events, and how old, each channel keeps.

use std::time::Duration;

use super::channel::Pattern;

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
