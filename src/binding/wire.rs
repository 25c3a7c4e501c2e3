//! JSON shapes shared by the plain WebSocket and SSE bindings (the event envelope, gap and status notices), and
//! the mapping from URL paths to channel names.

use serde_json::{Value, json};

use crate::core::channel::{ChannelName, ChannelNameError};
use crate::core::engine::Health;
use crate::core::event::Event;
use crate::core::gap::Gap;

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
    let mut v = crate::json::value(gap);
    if let Value::Object(map) = &mut v {
        map.insert("type".into(), Value::String("gap".into()));
    }
    v.to_string()
}

/// Event name of engine status notices (Socket.IO and SSE): `{"engine":"unavailable","since":…}`, then
/// `{"engine":"ok"}`.
pub const STATUS_EVENT: &str = "herald:status";

/// `{"type":"status","engine":…}`: an engine status notice on the plain WebSocket.
pub fn status_message(health: &Health) -> String {
    let mut v = crate::json::value(health);
    if let Value::Object(map) = &mut v {
        map.insert("type".into(), Value::String("status".into()));
    }
    v.to_string()
}

/// The channel a URL path names — the one mapping every direct URL (`/ws/…`, `/sse/…`) uses: `raw` (the part
/// after the prefix, still percent-encoded) is split at its literal `/`s, each segment is percent-decoded, empty
/// segments are skipped, and the rest are joined with `:` (`hourly/Final%201A` → `hourly:Final 1A`). An encoded
/// slash (`%2F`) stays inside its segment and decodes to `/`, which no channel name contains, so it is refused —
/// as by the HTTP API, whose `{channel}` segment is decoded the same way.
pub fn channel_from_path(raw: &str) -> Result<ChannelName, ChannelNameError> {
    let segments: Vec<String> = raw
        .split('/')
        .filter(|s| !s.is_empty())
        .map(percent_decode)
        .collect();
    ChannelName::new(&segments.join(":"))
}

/// Decodes `%XX` escapes; an escape that is not two hex digits stays as typed (and its `%` then fails channel
/// validation), and bytes that do not form UTF-8 become U+FFFD (which fails it too).
fn percent_decode(segment: &str) -> String {
    percent_encoding::percent_decode_str(segment)
        .decode_utf8_lossy()
        .into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_notices_have_one_shape() {
        let down = Health::Unavailable {
            since: 1_795_000_000_000,
        };
        assert_eq!(
            crate::json::value(&down),
            json!({"engine": "unavailable", "since": "2026-11-18T11:06:40.000Z"})
        );
        assert_eq!(crate::json::value(&Health::Ok), json!({"engine": "ok"}));
        let v: Value = serde_json::from_str(&status_message(&down)).unwrap();
        assert_eq!(
            v,
            json!({"type": "status", "engine": "unavailable", "since": "2026-11-18T11:06:40.000Z"})
        );
    }

    #[test]
    fn paths_map_to_channels() {
        let ok = |raw: &str| channel_from_path(raw).map(|c| c.as_str().to_owned());
        assert_eq!(ok("Final%201A").unwrap(), "Final 1A");
        assert_eq!(ok("hourly/Final%201A").unwrap(), "hourly:Final 1A");
        assert_eq!(ok("a%3Ab").unwrap(), "a:b");
        assert_eq!(ok("a/b/").unwrap(), "a:b");
        assert_eq!(ok("%E6%9D%B1%E4%BA%AC").unwrap(), "東京");
        // An encoded slash is part of its segment: `/` is not a channel character.
        assert_eq!(
            channel_from_path("a%2Fb"),
            Err(ChannelNameError::BadChar('/'))
        );
        assert_eq!(
            channel_from_path("a%2fb"),
            Err(ChannelNameError::BadChar('/'))
        );
        assert_eq!(
            channel_from_path("a%zz"),
            Err(ChannelNameError::BadChar('%'))
        );
        assert_eq!(channel_from_path("a%"), Err(ChannelNameError::BadChar('%')));
        assert!(channel_from_path("%FF").is_err());
        assert!(channel_from_path("").is_err());
        assert!(channel_from_path("a*b").is_err());
    }
}
