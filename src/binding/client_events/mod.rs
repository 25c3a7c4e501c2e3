//! Application events clients emit, mapped by the config to what Herald does with them — shared by the
//! Socket.IO binding (events) and `/ws` (the `emit` op), so both transports map the same names the same way.

pub mod config;

use serde_json::Value;

use crate::core::channel::ChannelName;
pub use config::ClientEvent;

/// Runs the named actions that client events can be mapped to (the sources', e.g. `monitor.refresh`).
pub trait Actions: Send + Sync {
    /// Runs `action` with the event's arguments; `may_subscribe` tells whether the client may read a channel.
    /// `Err((code, message))` refuses.
    fn run<'a>(
        &'a self,
        action: &'a str,
        args: &'a [Value],
        may_subscribe: &'a (dyn Fn(&ChannelName) -> bool + Send + Sync),
    ) -> futures_util::future::BoxFuture<'a, Result<Value, (&'static str, String)>>;
}
