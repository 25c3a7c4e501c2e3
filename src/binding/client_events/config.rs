//! What a mapped client event does (`[socketio.client_events]`, also used by `/ws`'s `emit` op), with the
//! start-up checks of each mapping. One table per event, naming one action:
//! ```toml
//! [socketio.client_events]
//! "subscribe:status" = { subscribe = "status:{claims.team}" }
//! "unsubscribe:status" = { unsubscribe = "status:{claims.team}" }
//! "join_room" = { subscribe = "{arg.room|arg}" }
//! "request:refresh" = { action = "monitor.refresh" }
//! "connection:status" = { reply = "connection:status", data = { connected = true } }
//! "chat:send" = { publish = "chat:{arg.room}", event = "chat:message", data = { from = "{sub}", text = "{arg.text}" } }
//! "start_scan" = { forward = "http://127.0.0.1:4001/hooks/start_scan" }
//! ```

use serde::Deserialize;
use serde_json::Value;

use crate::binding::template;
use crate::core::event::RESERVED_PREFIX;
use crate::transport::socketio::packet::RESERVED_EVENTS;

/// Longest event name a `reply` or `publish` may give (as `POST /api/publish` allows).
const MAX_EVENT_NAME: usize = 200;

/// What a mapped client event does. Channels and data are templates ([`crate::binding::template`]): `{arg}`,
/// `{arg.FIELD}`, `{sub}`, `{claims.NAME}`, alternatives `{A|B}`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(try_from = "Raw")]
pub enum ClientEvent {
    /// Subscribes to the channel.
    Subscribe(String),
    /// Unsubscribes from the channel.
    Unsubscribe(String),
    /// Runs a named action (`monitor.refresh`).
    Action(String),
    /// Sends `event` back to this connection alone, with `data` filled in (absent: the event's first argument).
    Reply {
        /// The event sent back.
        event: String,
        /// Its data template.
        data: Option<Value>,
    },
    /// Publishes to the channel, as `POST /api/publish` does, when the channel rules let the client publish there.
    Publish {
        /// The channel template.
        channel: String,
        /// The published event's name; absent: the client event's own name.
        event: Option<String>,
        /// The data template; absent: the event's first argument.
        data: Option<Value>,
    },
    /// POSTs the event to the backend at this URL ([`crate::binding::forward`]); its answer is the ack.
    Forward(String),
}

/// The table as written, before it is known which action it names.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    subscribe: Option<String>,
    unsubscribe: Option<String>,
    action: Option<String>,
    reply: Option<String>,
    publish: Option<String>,
    forward: Option<String>,
    event: Option<String>,
    data: Option<Value>,
}

impl TryFrom<Raw> for ClientEvent {
    type Error = String;

    fn try_from(r: Raw) -> Result<Self, String> {
        let kinds = [
            r.subscribe.is_some(),
            r.unsubscribe.is_some(),
            r.action.is_some(),
            r.reply.is_some(),
            r.publish.is_some(),
            r.forward.is_some(),
        ];
        if kinds.iter().filter(|k| **k).count() != 1 {
            return Err(
                "name exactly one of subscribe, unsubscribe, action, reply, publish, forward"
                    .into(),
            );
        }
        let extra = |what: &str| -> Result<(), String> {
            match (&r.event, &r.data) {
                (None, None) => Ok(()),
                _ => Err(format!(
                    "`event` and `data` go with publish (data also with reply), not {what}"
                )),
            }
        };
        Ok(if let Some(t) = r.subscribe {
            extra("subscribe")?;
            ClientEvent::Subscribe(t)
        } else if let Some(t) = r.unsubscribe {
            extra("unsubscribe")?;
            ClientEvent::Unsubscribe(t)
        } else if let Some(url) = r.forward {
            extra("forward")?;
            ClientEvent::Forward(url)
        } else if let Some(a) = r.action {
            extra("action")?;
            ClientEvent::Action(a)
        } else if let Some(event) = r.reply {
            if r.event.is_some() {
                return Err("reply names the event sent back; `event` goes with publish".into());
            }
            ClientEvent::Reply {
                event,
                data: r.data,
            }
        } else {
            ClientEvent::Publish {
                channel: r.publish.unwrap_or_default(),
                event: r.event,
                data: r.data,
            }
        })
    }
}

/// Event names no mapping may take: the protocol's own and the built-in `subscribe`/`unsubscribe`.
fn reserved(event: &str) -> bool {
    RESERVED_EVENTS.contains(&event)
        || ["subscribe", "unsubscribe"].contains(&event)
        || event.is_empty()
}

/// An event name Herald may send: what `POST /api/publish` accepts.
fn check_event_name(event: &str) -> Result<(), String> {
    if event.is_empty() || event.len() > MAX_EVENT_NAME {
        return Err(format!("event names are 1 to {MAX_EVENT_NAME} characters"));
    }
    if RESERVED_EVENTS.contains(&event) || event.starts_with(RESERVED_PREFIX) {
        return Err(format!("{event:?} is reserved"));
    }
    Ok(())
}

impl ClientEvent {
    /// Checks the mapping of `event` at start-up: a free event name, templates that parse, and an action in
    /// `actions` (the names something serves). The error names what is wrong, without the event.
    pub fn validate(&self, event: &str, actions: &[&str]) -> Result<(), String> {
        if reserved(event) {
            return Err("this event name is reserved".into());
        }
        let data = |d: &Option<Value>| match d {
            Some(d) => template::check_value(d).map_err(|e| format!("data: {e}")),
            None => Ok(()),
        };
        match self {
            ClientEvent::Subscribe(t) | ClientEvent::Unsubscribe(t) => {
                // Placeholders are filled in per event; the rest must already be a valid channel name.
                template::check(t).map_err(|e| format!("channel {t:?}: {e}"))
            }
            ClientEvent::Action(a) if !actions.contains(&a.as_str()) => {
                Err(format!("unknown action; known: {}", actions.join(", ")))
            }
            ClientEvent::Action(_) => Ok(()),
            ClientEvent::Forward(url) => crate::binding::forward::config::check_url(url),
            ClientEvent::Reply {
                event: sent,
                data: d,
            } => {
                check_event_name(sent).map_err(|e| format!("reply: {e}"))?;
                data(d)
            }
            ClientEvent::Publish {
                channel,
                event: sent,
                data: d,
            } => {
                template::check(channel).map_err(|e| format!("channel {channel:?}: {e}"))?;
                check_event_name(sent.as_deref().unwrap_or(event))
                    .map_err(|e| format!("event: {e}"))?;
                data(d)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(table: &str) -> Result<ClientEvent, String> {
        #[derive(Deserialize)]
        struct One {
            e: ClientEvent,
        }
        toml::from_str::<One>(&format!("e = {table}"))
            .map(|o| o.e)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn reads_each_action() {
        assert_eq!(
            parse(r#"{ subscribe = "status:{claims.team}" }"#).unwrap(),
            ClientEvent::Subscribe("status:{claims.team}".into())
        );
        assert_eq!(
            parse(r#"{ action = "monitor.refresh" }"#).unwrap(),
            ClientEvent::Action("monitor.refresh".into())
        );
        assert_eq!(
            parse(r#"{ reply = "connection:status", data = { connected = true } }"#).unwrap(),
            ClientEvent::Reply {
                event: "connection:status".into(),
                data: Some(json!({"connected": true}))
            }
        );
        assert_eq!(
            parse(r#"{ publish = "chat:{arg.room}", event = "msg", data = "{arg}" }"#).unwrap(),
            ClientEvent::Publish {
                channel: "chat:{arg.room}".into(),
                event: Some("msg".into()),
                data: Some(json!("{arg}"))
            }
        );
    }

    #[test]
    fn refuses_ambiguous_or_misplaced_keys() {
        for (table, expected) in [
            (r#"{ subscribe = "a", publish = "b" }"#, "exactly one"),
            ("{}", "exactly one"),
            (r#"{ subscribe = "a", data = 1 }"#, "not subscribe"),
            (
                r#"{ reply = "x", event = "y" }"#,
                "`event` goes with publish",
            ),
            (r#"{ forward = "http://x", data = 1 }"#, "not forward"),
            (r#"{ forwards = "http://x" }"#, "unknown field"),
        ] {
            let e = parse(table).unwrap_err();
            assert!(e.contains(expected), "{table}: {e}");
        }
    }

    #[test]
    fn validates_names_and_templates() {
        let ok = |t: &str| parse(t).unwrap().validate("e", &[]);
        assert!(ok(r#"{ publish = "chat:{arg.room}" }"#).is_ok());
        assert!(ok(r#"{ reply = "connection:status" }"#).is_ok());
        assert!(ok(r#"{ forward = "http://127.0.0.1:4001/hooks/start_scan" }"#).is_ok());
        let e = ok(r#"{ forward = "file:///etc/passwd" }"#).unwrap_err();
        assert!(e.contains("http:// or https://"), "{e}");
        let e = ok(r#"{ publish = "chat:{room}" }"#).unwrap_err();
        assert!(e.contains("unknown placeholder {room}"), "{e}");
        let e = ok(r#"{ reply = "connect" }"#).unwrap_err();
        assert!(e.contains("reserved"), "{e}");
        let e = ok(r#"{ publish = "c", event = "herald:gap" }"#).unwrap_err();
        assert!(e.contains("reserved"), "{e}");
        let e = ok(r#"{ reply = "r", data = { a = "{team}" } }"#).unwrap_err();
        assert!(e.contains("data: unknown placeholder {team}"), "{e}");
        let m = parse(r#"{ subscribe = "x" }"#).unwrap();
        assert!(
            m.validate("disconnect", &[])
                .unwrap_err()
                .contains("reserved")
        );
        assert!(m.validate("subscribe", &[]).is_err());
    }
}
