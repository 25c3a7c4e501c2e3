//! The service monitor: periodic HTTP/TCP/UDP/DNS checks whose results become live channel events.
//!
//! `check` probes a target; `spec` is a monitor's definition; `runtime` its status machine and uptime; `store` its
//! persistence through the engine (`migrate` imports the side database earlier versions kept); `events` the names
//! and shapes subscribers see; `target` seed 000's flat targets; `service` runs it all and publishes through the
//! engine like any producer, as state channels (a new subscriber gets every monitor first, then changes); `routes`
//! its HTTP API and status page. [`start`] runs it as a [`Source`] with the `monitor.refresh` action.

pub mod check;
pub mod events;
pub mod metrics;
pub mod migrate;
mod routes;
pub mod runtime;
pub mod service;
pub mod spec;
pub mod store;
pub mod target;

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use serde::Deserialize;
use serde_json::{Value, json};

pub use service::{MonitorError, Monitors};

use super::{MaySubscribe, Refused, Setup, Source, SourceError};
use crate::api::Mounts;
use crate::api::ready::Readiness;

/// Client events mapped to `monitor.refresh` with a monitor id check it now.
const REFRESH: &str = "monitor.refresh";
/// The client-event actions of the monitor.
pub const ACTIONS: &[&str] = &[REFRESH];

/// Starts the monitor from `[monitor]` and its data in the engine (importing a `monitors.db` in `legacy_dir`).
pub fn start<'a>(setup: &'a Setup<'a>) -> BoxFuture<'a, Result<Arc<dyn Source>, SourceError>> {
    Box::pin(async move {
        let monitors = Monitors::start(
            setup.engine.clone(),
            setup.legacy_dir,
            setup.sections.monitor,
        )
        .await?;
        let source: Arc<dyn Source> = Arc::new(MonitorSource {
            monitors,
            max_body_bytes: setup.max_body_bytes,
            status_page: setup.sections.monitor.status_page,
        });
        Ok(source)
    })
}

/// The monitor as a source.
struct MonitorSource {
    monitors: Arc<Monitors>,
    max_body_bytes: usize,
    status_page: bool,
}

impl Source for MonitorSource {
    fn routes(self: Arc<Self>) -> Mounts {
        routes::mounts(self.monitors.clone(), self.max_body_bytes, self.status_page)
    }

    fn metrics(&self, out: &mut String) {
        out.push_str(&metrics::render(&self.monitors));
    }

    fn act<'a>(
        &'a self,
        action: &'a str,
        args: &'a [Value],
        may_subscribe: &'a MaySubscribe<'a>,
    ) -> BoxFuture<'a, Result<Value, Refused>> {
        Box::pin(async move {
            if action != REFRESH {
                return Err(super::unknown_action(action));
            }
            self.refresh(args, may_subscribe)
        })
    }

    /// Ready while its writes to the engine succeed (its definitions and check logs live there); required.
    fn readiness(&self) -> BoxFuture<'_, Vec<Readiness>> {
        let part = match self.monitors.store_failing() {
            None => Readiness::ready("monitor", "monitor", true),
            Some(e) => Readiness::not_ready(
                "monitor",
                "monitor",
                true,
                format!("cannot store its data: {e}"),
            ),
        };
        Box::pin(async move { vec![part] })
    }

    fn shutdown(&self) -> BoxFuture<'_, ()> {
        Box::pin(self.monitors.flush())
    }
}

impl MonitorSource {
    /// `monitor.refresh`: checks the monitor now, unless it was checked a moment ago.
    fn refresh(&self, args: &[Value], may_subscribe: &MaySubscribe<'_>) -> Result<Value, Refused> {
        // Seed 002 sends the id as a string; an object `{id}` or `{serviceId}` is accepted too.
        let id = args.first().and_then(|a| {
            a.as_str()
                .or_else(|| a.get("id").and_then(|v| v.as_str()))
                .or_else(|| a.get("serviceId").and_then(|v| v.as_str()))
        });
        let Some(id) = id else {
            return Err(("invalid_request", "expected a monitor id".into()));
        };
        let not_found = || ("monitor_not_found", format!("no monitor {id:?}"));
        let channel = self.monitors.channel_of(id).map_err(|_| not_found())?;
        // A client that may not see a monitor learns nothing about it, not even that it exists.
        if !may_subscribe(&channel) {
            return Err(not_found());
        }
        match self.monitors.refresh(id) {
            Ok(()) => Ok(json!({"id": id})),
            Err(MonitorError::TooSoon(..)) => Err((
                "rate_limited",
                "this monitor was checked a moment ago; try again shortly".into(),
            )),
            Err(_) => Err(not_found()),
        }
    }
}

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
