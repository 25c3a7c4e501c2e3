//! The backend's answer to a forward, parsed and checked before Herald acts on any of it: the client's ack (or
//! the backend's refusal, with its own code), events to publish, channels to subscribe or unsubscribe the
//! connection to, and whether to disconnect it. A body that is not this shape is `backend_error`: nothing of it
//! is done.
//! ```json
//! {"ack": {"ok": true, "scan": 123},
//!  "publish": [{"channel": "scan_123", "event": "scan_started", "data": {"scan_id": 123}}],
//!  "subscribe": ["scan_123"], "unsubscribe": [], "disconnect": false}
//! {"error": {"code": "scan_not_found", "message": "no scan 123"}}
//! ```

use serde::Deserialize;
use serde_json::Value;
use serde_json::value::RawValue;

use crate::core::channel::ChannelName;

/// Most entries of each list in one answer (`publish`, `subscribe`, `unsubscribe`).
pub const MAX_ITEMS: usize = 32;

/// Longest event name the backend may publish (as `POST /api/publish` allows).
const MAX_EVENT_NAME: usize = 200;

/// What the backend asked for, checked.
#[derive(Debug, Default)]
pub struct Answer {
    /// The client's ack (absent from the answer: `{ok: true}`).
    pub ack: Option<Value>,
    /// The backend refused the client event, with its code and message.
    pub error: Option<(String, String)>,
    /// Events to publish, as `POST /api/publish` would.
    pub publish: Vec<Publish>,
    /// Channels to subscribe the connection to (checked by the channel rules).
    pub subscribe: Vec<ChannelName>,
    /// Channels to unsubscribe it from.
    pub unsubscribe: Vec<ChannelName>,
    /// Close the connection once the ack is sent.
    pub disconnect: bool,
}

/// One event the backend publishes.
#[derive(Debug)]
pub struct Publish {
    /// Its channel.
    pub channel: ChannelName,
    /// Its name.
    pub event: String,
    /// Its data, as sent.
    pub data: Box<RawValue>,
    /// The publisher's idempotency id, if any.
    pub id: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    ack: Option<Value>,
    error: Option<RawError>,
    /// One entry or a list of them, read by [`list`].
    publish: Option<Value>,
    subscribe: Option<Value>,
    unsubscribe: Option<Value>,
    #[serde(default)]
    disconnect: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawError {
    code: String,
    #[serde(default)]
    message: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPublish {
    channel: String,
    event: String,
    data: Box<RawValue>,
    id: Option<String>,
}

/// Field `what`: one entry written alone, or a list of at most [`MAX_ITEMS`].
fn list<T: serde::de::DeserializeOwned>(v: Option<Value>, what: &str) -> Result<Vec<T>, String> {
    let items = match v {
        None => Vec::new(),
        Some(Value::Array(items)) => items,
        Some(one) => vec![one],
    };
    if items.len() > MAX_ITEMS {
        return Err(format!(
            "`{what}` lists {} entries; at most {MAX_ITEMS}",
            items.len()
        ));
    }
    items
        .into_iter()
        .map(|item| {
            // Through text: raw data keeps its bytes (a `Value` cannot lend them to `RawValue`).
            serde_json::from_str(&item.to_string()).map_err(|e| format!("`{what}`: {e}"))
        })
        .collect()
}

/// Whether `code` is a code Herald passes on: 1–64 of `a-z`, `0-9`, `_`, `.`, starting with a letter.
pub fn is_code(code: &str) -> bool {
    code.len() <= 64
        && code.starts_with(|c: char| c.is_ascii_lowercase())
        && code
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '.')
}

/// Parses an answer body; empty (or only whitespace): `{ok: true}` and nothing else. The error says what is wrong.
pub fn parse(body: &[u8]) -> Result<Answer, String> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Answer::default());
    }
    let raw: Raw =
        serde_json::from_slice(body).map_err(|e| format!("not an answer object: {e}"))?;
    if raw.ack.is_some() && raw.error.is_some() {
        return Err("`ack` and `error` exclude each other".into());
    }
    let error = match raw.error {
        Some(e) if !is_code(&e.code) => {
            return Err(format!(
                "error code {:?}: 1-64 of a-z, 0-9, _ and ., starting with a letter",
                e.code
            ));
        }
        Some(e) => Some((e.code, e.message)),
        None => None,
    };
    let channel = |what: &str, name: &str| {
        ChannelName::new(name).map_err(|e| format!("`{what}` channel {name:?}: {e}"))
    };
    let publish = list::<RawPublish>(raw.publish, "publish")?
        .into_iter()
        .map(|p| {
            if p.event.is_empty()
                || p.event.len() > MAX_EVENT_NAME
                || p.event.starts_with(crate::core::event::RESERVED_PREFIX)
                || crate::transport::socketio::packet::RESERVED_EVENTS.contains(&p.event.as_str())
            {
                return Err(format!("`publish` event name {:?} is not allowed", p.event));
            }
            Ok(Publish {
                channel: channel("publish", &p.channel)?,
                event: p.event,
                data: p.data,
                id: p.id,
            })
        })
        .collect::<Result<_, _>>()?;
    let names = |what: &str, v: Option<Value>| -> Result<Vec<ChannelName>, String> {
        list::<String>(v, what)?
            .iter()
            .map(|n| channel(what, n))
            .collect()
    };
    Ok(Answer {
        ack: raw.ack,
        error,
        publish,
        subscribe: names("subscribe", raw.subscribe)?,
        unsubscribe: names("unsubscribe", raw.unsubscribe)?,
        disconnect: raw.disconnect,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn reads_a_full_answer() {
        let a = parse(
            br#"{"ack":{"ok":true,"scan":1},"publish":{"channel":"scan_1","event":"scan_started","data":{"scan_id":1}},
                 "subscribe":"scan_1","unsubscribe":["scan_0"],"disconnect":true}"#,
        )
        .unwrap();
        assert_eq!(a.ack, Some(json!({"ok": true, "scan": 1})));
        assert_eq!(a.publish.len(), 1);
        assert_eq!(a.publish[0].channel.as_str(), "scan_1");
        assert_eq!(a.publish[0].data.get(), r#"{"scan_id":1}"#);
        assert_eq!(a.subscribe[0].as_str(), "scan_1");
        assert_eq!(a.unsubscribe[0].as_str(), "scan_0");
        assert!(a.disconnect);
    }

    #[test]
    fn empty_is_a_plain_ok_and_an_error_keeps_its_code() {
        let a = parse(b"  ").unwrap();
        assert!(a.ack.is_none() && a.error.is_none() && !a.disconnect);
        let a = parse(br#"{"error":{"code":"scan_not_found","message":"no scan 9"}}"#).unwrap();
        assert_eq!(a.error, Some(("scan_not_found".into(), "no scan 9".into())));
    }

    #[test]
    fn refuses_garbage_and_what_herald_must_not_do() {
        for (body, expected) in [
            (&b"<html>oops</html>"[..], "not an answer object"),
            (b"[1,2]", "not an answer object"),
            (br#"{"ack":1,"error":{"code":"x"}}"#, "exclude"),
            (br#"{"acks":1}"#, "unknown field"),
            (br#"{"error":{"code":"Bad Code"}}"#, "error code"),
            (br#"{"subscribe":"herald:monitors"}"#, "`subscribe` channel"),
            (br#"{"subscribe":""}"#, "`subscribe` channel"),
            (
                br#"{"publish":{"channel":"c","event":"herald:gap","data":1}}"#,
                "not allowed",
            ),
            (
                br#"{"publish":{"channel":"c","event":"connect","data":1}}"#,
                "not allowed",
            ),
            (
                br#"{"publish":{"channel":"c","data":1}}"#,
                "`publish`: missing field `event`",
            ),
            (br#"{"subscribe":[1]}"#, "`subscribe`: invalid type"),
        ] {
            let e = parse(body).unwrap_err();
            assert!(
                e.contains(expected),
                "{}: {e}",
                String::from_utf8_lossy(body)
            );
        }
        let many: Vec<String> = (0..=MAX_ITEMS).map(|i| format!("c{i}")).collect();
        let e = parse(json!({"subscribe": many}).to_string().as_bytes()).unwrap_err();
        assert!(e.contains("at most"), "{e}");
    }

    #[test]
    fn codes() {
        assert!(is_code("scan_not_found") && is_code("a.b_2"));
        assert!(!is_code("") && !is_code("_x") && !is_code("Upper") && !is_code(&"a".repeat(65)));
    }
}
