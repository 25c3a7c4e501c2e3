//! What a mapped client event does (`[socketio.client_events]`, also used by `/ws`'s `emit` op), with the
//! start-up checks of each mapping.

use serde::Deserialize;

/// What a mapped client event does. In a channel, `{arg}` is the event's first argument and `{arg.FIELD}` a field
/// of it (see [`crate::binding::template`]).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
pub enum ClientEvent {
    /// Subscribes to the channel.
    Subscribe(String),
    /// Unsubscribes from the channel.
    Unsubscribe(String),
    /// Runs a named action (`monitor.refresh`).
    Action(String),
}

/// Event names no mapping may take: the protocol's own and the built-in `subscribe`/`unsubscribe`.
fn reserved(event: &str) -> bool {
    crate::transport::socketio::packet::RESERVED_EVENTS.contains(&event)
        || ["subscribe", "unsubscribe"].contains(&event)
        || event.is_empty()
}

impl ClientEvent {
    /// Checks the mapping of `event` at start-up: a free event name, templates that parse, and an action in
    /// `actions` (the names something serves). The error names what is wrong, without the event.
    pub fn validate(&self, event: &str, actions: &[&str]) -> Result<(), String> {
        if reserved(event) {
            return Err("this event name is reserved".into());
        }
        match self {
            ClientEvent::Subscribe(t) | ClientEvent::Unsubscribe(t) => {
                // Placeholders are filled in per event; the rest must already be a valid channel name.
                crate::binding::template::check(t).map_err(|e| format!("channel {t:?}: {e}"))
            }
            ClientEvent::Action(a) if !actions.contains(&a.as_str()) => {
                Err(format!("unknown action; known: {}", actions.join(", ")))
            }
            ClientEvent::Action(_) => Ok(()),
        }
    }
}
