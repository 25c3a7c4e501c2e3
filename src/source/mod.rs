//! Built-in sources: producers inside Herald that publish through the engine like the HTTP API does.
//!
//! `monitor` checks services and publishes their status; `presence` announces who joins and leaves and keeps
//! presence aggregates as state values; `sql` polls database queries per subscribed channel and
//! pushes what changed; `collection` stores documents of `[[collections]]` and serves them as REST. Each is a [`Kind`] listed in [`KINDS`], the one place a source is registered: the server
//! starts them all with [`start_all`], mounts their [`Mounts`], routes the client-event actions they name to them
//! and shuts them down; config validation accepts exactly the actions they name. [`keyed`] turns a state channel's
//! new values into the set/remove changes every source publishes.

pub mod collection;
pub mod keyed;
pub mod monitor;
pub mod presence;
pub mod sql;

use std::path::Path;
use std::sync::Arc;

use futures_util::future::BoxFuture;
use serde::Deserialize;
use serde_json::Value;

use crate::api::Mounts;
use crate::api::ready::Readiness;
use crate::config_error::InvalidConfig;
use crate::core::Engine;
use crate::core::channel::{ChannelName, Pattern};
use crate::core::retention::Limits;

/// The `[sources]` section: the built-in sources' definitions.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SourcesConfig {
    /// Live SQL queries (`[[sources.sql]]`).
    pub sql: Vec<sql::SqlSourceConfig>,
}

impl SourcesConfig {
    /// Checks every source without contacting a database; `socketio_path` is the Socket.IO route, which a SQL
    /// source's `history_path` must not take.
    pub fn validate(&self, socketio_path: &str) -> Result<(), InvalidConfig> {
        sql::config::validate(&self.sql, socketio_path)
    }
}

/// The sources' config sections.
#[derive(Clone, Copy)]
pub struct Sections<'a> {
    /// `[sources]`.
    pub sources: &'a SourcesConfig,
    /// `[monitor]`.
    pub monitor: &'a monitor::MonitorConfig,
    /// `[presence]`.
    pub presence: &'a presence::PresenceConfig,
    /// `[[collections]]`.
    pub collections: &'a [collection::CollectionConfig],
}

/// What the sources start from: their config sections and what they share with the server.
pub struct Setup<'a> {
    /// The engine they publish through.
    pub engine: &'a Arc<dyn Engine>,
    /// Their sections.
    pub sections: Sections<'a>,
    /// A durable engine's data directory, where an earlier version may have left files of its own to import
    /// (`monitors.db`); none for the memory engine.
    pub legacy_dir: Option<&'a Path>,
    /// Largest HTTP request body.
    pub max_body_bytes: usize,
    /// The accepted API keys (routes outside `/api` that check them themselves).
    pub api_keys: &'a [crate::api::ApiKey],
    /// Identifies the caller of such a route from its headers and query (a token, or the handshake fields).
    pub identify: Arc<collection::Identify>,
    /// The query parameters `identify` reads (the token's, the handshake fields): not filters of a listing.
    pub identity_params: Vec<String>,
}

/// Whether the client that triggered an action may read a channel (its identity under the access rules).
pub type MaySubscribe<'a> = dyn Fn(&ChannelName) -> bool + Send + Sync + 'a;

/// An action refused: `(code, message)`, told to the client as its error.
pub type Refused = (&'static str, String);

/// A running source.
pub trait Source: Send + Sync {
    /// Its HTTP routes, each router with its state applied.
    fn routes(self: Arc<Self>) -> Mounts {
        Mounts::default()
    }

    /// Appends its Prometheus text to `out` (served at `/metrics`).
    fn metrics(&self, _out: &mut String) {}

    /// Runs `action` (one of its kind's [`Kind::actions`]) with a client event's arguments.
    fn act<'a>(
        &'a self,
        action: &'a str,
        _args: &'a [Value],
        _may_subscribe: &'a MaySubscribe<'a>,
    ) -> BoxFuture<'a, Result<Value, Refused>> {
        Box::pin(async move { Err(unknown_action(action)) })
    }

    /// Whether each of its parts is ready (listed by `/readyz`); each answer is bounded by the caller's timeout.
    fn readiness(&self) -> BoxFuture<'_, Vec<Readiness>> {
        Box::pin(async { Vec::new() })
    }

    /// Stops its work and stores what must survive a restart.
    fn shutdown(&self) -> BoxFuture<'_, ()>;
}

/// Starts a source from its setup.
type Start = for<'a> fn(&'a Setup<'a>) -> BoxFuture<'a, Result<Arc<dyn Source>, SourceError>>;

/// One kind of source, as registered.
pub struct Kind {
    /// Its name, as logs show it.
    pub name: &'static str,
    /// The client-event actions it serves (`[socketio.client_events]` `{ action = "…" }`), known before it starts.
    pub actions: &'static [&'static str],
    /// History bounds its own channels need, ahead of the configured rules (asked before the engine opens).
    retention: fn(Sections<'_>) -> Vec<(Pattern, Limits)>,
    start: Start,
}

/// Every source kind, in start order. The engine takes the first state declaration matching a channel and a SQL
/// template like `{unit}` is broad, so SQL sources start last: `[[state]]` and the monitor's channels keep theirs.
pub const KINDS: &[Kind] = &[
    Kind {
        name: "monitor",
        actions: monitor::ACTIONS,
        retention: |s| monitor::store::retention(s.monitor),
        start: monitor::start,
    },
    Kind {
        name: "presence",
        actions: &[],
        retention: |_| presence::retention(),
        start: presence::start,
    },
    Kind {
        name: "collections",
        actions: &[],
        retention: |_| Vec::new(),
        start: collection::start,
    },
    Kind {
        name: "sql",
        actions: &[],
        retention: |_| Vec::new(),
        start: sql::start,
    },
];

/// The retention rules every source needs for its own channels, to go ahead of the configured ones.
pub fn retention_rules(sections: Sections<'_>) -> Vec<(Pattern, Limits)> {
    KINDS.iter().flat_map(|k| (k.retention)(sections)).collect()
}

/// Every action name some source serves.
pub fn action_names() -> impl Iterator<Item = &'static str> {
    KINDS.iter().flat_map(|k| k.actions.iter().copied())
}

/// Why a source could not start.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The monitor could not start (its storage or import, or a monitor declared in the config).
    #[error("monitor: {0}")]
    Monitor(#[from] monitor::MonitorError),
    /// `[presence]` is invalid.
    #[error(transparent)]
    Presence(#[from] InvalidConfig),
    /// A collection could not start.
    #[error("{0}")]
    Collection(String),
    /// A `[[sources.sql]]` source is invalid (e.g. its SQL does not prepare).
    #[error(transparent)]
    Sql(#[from] sql::SourceError),
}

/// The running sources of the server.
pub struct Sources {
    running: Vec<(&'static Kind, Arc<dyn Source>)>,
}

/// Starts every registered source, in [`KINDS`] order.
pub async fn start_all(setup: &Setup<'_>) -> Result<Sources, SourceError> {
    let mut running = Vec::with_capacity(KINDS.len());
    for kind in KINDS {
        running.push((kind, (kind.start)(setup).await?));
        tracing::debug!(source = kind.name, "source started");
    }
    Ok(Sources { running })
}

impl Sources {
    /// Every source's routes, merged.
    pub fn routes(&self) -> Mounts {
        self.running.iter().fold(Mounts::default(), |all, (_, s)| {
            all.merge(s.clone().routes())
        })
    }

    /// Every source's Prometheus text.
    pub fn metrics(&self, out: &mut String) {
        for (_, s) in &self.running {
            s.metrics(out);
        }
    }

    /// Every source's readiness, asked concurrently; a source that does not answer within
    /// [`PART_TIMEOUT`](crate::api::ready::PART_TIMEOUT) is listed as not ready (and required).
    pub async fn readiness(&self) -> Vec<Readiness> {
        let timeout = crate::api::ready::PART_TIMEOUT;
        let asks = self.running.iter().map(|(kind, s)| async move {
            match tokio::time::timeout(timeout, s.readiness()).await {
                Ok(parts) => parts,
                Err(_) => vec![Readiness::not_ready(
                    kind.name,
                    kind.name,
                    true,
                    format!("did not answer within {timeout:?}"),
                )],
            }
        });
        futures_util::future::join_all(asks)
            .await
            .into_iter()
            .flatten()
            .collect()
    }

    /// Runs the client-event action `action` on the source serving it.
    pub async fn act(
        &self,
        action: &str,
        args: &[Value],
        may_subscribe: &MaySubscribe<'_>,
    ) -> Result<Value, Refused> {
        match self
            .running
            .iter()
            .find(|(k, _)| k.actions.contains(&action))
        {
            Some((_, s)) => s.act(action, args, may_subscribe).await,
            None => Err(unknown_action(action)),
        }
    }

    /// Shuts every source down, the last started first.
    pub async fn shutdown(&self) {
        for (_, s) in self.running.iter().rev() {
            s.shutdown().await;
        }
    }
}

fn unknown_action(action: &str) -> Refused {
    ("unknown_action", format!("no action {action:?}"))
}
