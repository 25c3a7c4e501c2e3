//! JSON shapes shared by the plain WebSocket and SSE bindings (the event envelope and gap notices), and the
//! mapping from URL paths to channel names.

use serde_json::{Value, json};

use crate::core::channel::{ChannelName, ChannelNameError};
use crate::core::event::Event;
use crate::core::session::Gap;

/// `{"type":"event","channel",…,"data",…,"time"}`: an event as plain WebSocket and SSE (`envelope=1`) send it.
pub fn envelope(e: &Event) -> String {
    // Event serialises as `{"channel":…}`; splice the type tag in front without re-parsing the payload.
    match serde_json::to_string(e) {
        Ok(body) => format!("{{\"type\":\"event\",{}", &body[1..]),
        Err(err) => {
            tracing::error!(error = %err, "cannot encode an event");
            json!({"type": "error", "code": "internal", "message": "event could not be encoded"})
                .to_string()
        }
    }
}

/// `{"type":"gap",…}`.
pub fn gap_message(gap: &Gap) -> String {
    let mut v = serde_json::to_value(gap).unwrap_or(Value::Null);
    if let Value::Object(map) = &mut v {
        map.insert("type".into(), Value::String("gap".into()));
    }
    v.to_string()
}

/// The channel a URL path names: segments (already percent-decoded by the router) joined with `:`,
/// so `/ws/hourly/Final 1A` is channel `hourly:Final 1A`.
pub fn channel_from_path(path: &str) -> Result<ChannelName, ChannelNameError> {
    let joined: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    ChannelName::new(&joined.join(":"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_map_to_channels() {
        assert_eq!(channel_from_path("Final 1A").unwrap().as_str(), "Final 1A");
        assert_eq!(
            channel_from_path("hourly/Final 1A").unwrap().as_str(),
            "hourly:Final 1A"
        );
        assert!(channel_from_path("").is_err());
        assert!(channel_from_path("a*b").is_err());
    }
}
