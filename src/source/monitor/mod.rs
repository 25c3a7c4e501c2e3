//! The service monitor: periodic HTTP/TCP/UDP/DNS checks whose results become live channel events.
//!
//! `check` probes a target; `spec` is a monitor's definition; `runtime` its status machine and uptime; `store` its
//! persistence through the engine (`migrate` imports the side database earlier versions kept); `events` the names
//! and shapes subscribers see; `target` seed 000's flat targets; `service` runs it all and publishes through the
//! engine like any producer, as state channels (a new subscriber gets every monitor first, then changes).

pub mod check;
pub mod events;
pub mod metrics;
pub mod migrate;
pub mod runtime;
pub mod service;
pub mod spec;
pub mod store;
pub mod target;

use std::time::Duration;

use serde::Deserialize;

pub use service::{MonitorError, Monitors};

/// The `[monitor]` configuration section.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MonitorConfig {
    /// Channel of monitors that name none.
    pub channel: String,
    /// Event names and shapes.
    pub preset: events::Preset,
    /// Per-event overrides of the preset (`[monitor.events]`).
    pub events: events::EventOverrides,
    /// At most one status event per monitor per this period (the final state is always sent).
    #[serde(with = "humantime_serde")]
    pub throttle: Duration,
    /// Log entries kept per monitor.
    pub log_keep: usize,
    /// Log entries older than this are removed.
    #[serde(with = "humantime_serde")]
    pub log_max_age: Duration,
    /// Least time between two client-requested checks of one monitor.
    #[serde(with = "humantime_serde")]
    pub refresh_interval: Duration,
    /// Serve the status page (`/status`) and badges (`/badge/{id}.svg`) without an API key.
    pub status_page: bool,
    /// Monitors declared here (each needs an `id`); they replace stored monitors of the same id at start-up.
    pub monitors: Vec<spec::MonitorSpec>,
}

impl Default for MonitorConfig {
    fn default() -> Self {
        Self {
            channel: "monitors".into(),
            preset: events::Preset::default(),
            events: events::EventOverrides::default(),
            throttle: Duration::from_secs(1),
            log_keep: 1000,
            log_max_age: Duration::from_secs(30 * 86_400),
            refresh_interval: Duration::from_secs(1),
            status_page: true,
            monitors: Vec::new(),
        }
    }
}
