//! The core: channels, durable history, fan-out, state, presence. It knows nothing of HTTP or sockets.
//!
//! [`engine::Engine`] is the one interface every producer (HTTP, CLI, built-in sources) publishes through and every
//! binding subscribes through; [`engine::sqlite`] and [`engine::memory`] implement it.

pub mod channel;
pub(crate) mod dispatcher;
pub mod engine;
pub mod event;
pub mod gap;
pub(crate) mod hub;
pub mod presence;
pub mod retention;
pub mod state;
pub mod stats;

pub use engine::Engine;

use std::time::Duration;

/// Options of a SQLite engine in `data_dir` with test-friendly defaults.
pub fn sqlite_options(data_dir: std::path::PathBuf) -> engine::EngineOptions {
    engine::EngineOptions {
        kind: engine::EngineKind::Sqlite {
            data_dir,
            durability: engine::sqlite::Durability::Full,
        },
        retention: retention::Retention::default(),
        session_ttl: Duration::from_secs(24 * 3600),
    }
}
