//! Built-in sources: producers inside Herald that publish through the engine like the HTTP API does.
//!
//! `monitor` checks services and publishes their status; `sql` polls database queries per subscribed channel and
//! pushes what changed.

pub mod monitor;
pub mod sql;

use serde::Deserialize;

use crate::config_error::InvalidConfig;

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
