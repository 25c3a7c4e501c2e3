//! Presence shown to clients and to the API: who is connected (on every connection's presence channel,
//! `herald:online` unless `[presence] online_channel` says otherwise), who is on a channel, join/leave events for a
//! channel's subscribers (`announce`) and declared aggregates published as state values (`values`, with the
//! expressions of `aggregate`).
//!
//! Everything here reads presence through the engine (`Engine::presence`, `Engine::presence_events`) and
//! publishes through `Engine::publish`, so it works unchanged when an engine's presence is cluster-wide; the
//! publishing tasks run under an engine lease, one node at a time.

pub mod aggregate;
mod announce;
mod routes;
mod values;

use std::collections::BTreeMap;
use std::sync::Arc;

use futures_util::future::BoxFuture;
use parking_lot::Mutex;
use serde::Deserialize;

use super::{Setup, Source, SourceError};
use crate::api::Mounts;
use crate::config_error::InvalidConfig;
use crate::core::Engine;
use crate::core::channel::{ChannelName, Pattern};
use crate::core::event::RESERVED_PREFIX;
use crate::core::state::Snapshot;

/// The default channel every connection is present on.
pub const ONLINE_CHANNEL: &str = "herald:online";
/// Largest `max_listed_users`.
pub const MAX_LISTED_USERS: usize = 10_000;

/// The `[presence]` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PresenceConfig {
    /// The channel every connection is present on from connect to disconnect, without subscribing.
    pub online_channel: String,
    /// Most users one `users` value, or one presence answer's `users`, lists (counts stay exact).
    pub max_listed_users: usize,
    /// Join/leave events for the subscribers of matching channels (`[[presence.channels]]`).
    pub channels: Vec<AnnounceConfig>,
    /// Aggregates published as state values (`[[presence.values]]`).
    pub values: Vec<ValueConfig>,
}

impl Default for PresenceConfig {
    fn default() -> Self {
        Self {
            online_channel: ONLINE_CHANNEL.to_owned(),
            max_listed_users: 1000,
            channels: Vec::new(),
            values: Vec::new(),
        }
    }
}

/// Join/leave events for one channel pattern.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AnnounceConfig {
    /// Channels (`*` wildcards) whose subscribers hear who joins and leaves.
    pub pattern: String,
    /// Event name of a join.
    #[serde(default = "default_join")]
    pub join_event: String,
    /// Event name of a leave.
    #[serde(default = "default_leave")]
    pub leave_event: String,
    /// The events' shape and grain.
    #[serde(default)]
    pub payload: Payload,
}

fn default_join() -> String {
    "presence:join".into()
}

fn default_leave() -> String {
    "presence:leave".into()
}

/// What a join/leave event is about.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Payload {
    /// A user: joins with their first connection, leaves with their last; `{"user", "roles"}`.
    #[default]
    User,
    /// A connection: every connection joins and leaves; the member `{"id", "user", "roles", "transport",
    /// "connected_at"}`.
    Member,
}

/// One aggregate published as a state value.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ValueConfig {
    /// The state channel it is published on (clients subscribe to it; channel rules apply).
    pub channel: String,
    /// The event name (and the state key) of the value.
    pub event: String,
    /// Whose presence it sums up; default the online channel (every connection).
    pub of: Option<String>,
    /// Field name → expression (see `aggregate`).
    pub value: BTreeMap<String, String>,
}

/// A value ready to run.
struct ValueDecl {
    channel: ChannelName,
    event: String,
    of: ChannelName,
    aggregate: aggregate::Aggregate,
}

impl PresenceConfig {
    /// Checks every name and expression.
    pub fn validate(&self) -> Result<(), InvalidConfig> {
        self.compile().map(|_| ())
    }

    /// The online channel, validated.
    pub fn online(&self) -> Result<ChannelName, InvalidConfig> {
        ChannelName::any(&self.online_channel)
            .map_err(|e| InvalidConfig(format!("presence.online_channel: {e}")))
    }

    fn compile(&self) -> Result<Vec<ValueDecl>, InvalidConfig> {
        let bad = |m: String| Err(InvalidConfig(format!("presence: {m}")));
        let online = self.online()?;
        if !(1..=MAX_LISTED_USERS).contains(&self.max_listed_users) {
            return bad(format!("max_listed_users must be 1 to {MAX_LISTED_USERS}"));
        }
        for a in &self.channels {
            if a.pattern.is_empty() {
                return bad("channels: `pattern` must not be empty".into());
            }
            for name in [&a.join_event, &a.leave_event] {
                event_name(&format!("channels {:?}", a.pattern), name)?;
            }
        }
        self.values
            .iter()
            .map(|v| {
                let what = format!("values {:?}", v.channel);
                let channel = ChannelName::new(&v.channel)
                    .map_err(|e| InvalidConfig(format!("presence: {what}: {e}")))?;
                event_name(&what, &v.event)?;
                let of = match &v.of {
                    None => online.clone(),
                    Some(of) => ChannelName::any(of)
                        .map_err(|e| InvalidConfig(format!("presence: {what} of: {e}")))?,
                };
                if v.value.is_empty() {
                    return Err(InvalidConfig(format!(
                        "presence: {what}: `value` needs at least one field"
                    )));
                }
                let aggregate = aggregate::Aggregate::parse(
                    v.value.iter().map(|(k, e)| (k.as_str(), e.as_str())),
                )
                .map_err(|e| InvalidConfig(format!("presence: {what}: {e}")))?;
                Ok(ValueDecl {
                    channel,
                    event: v.event.clone(),
                    of,
                    aggregate,
                })
            })
            .collect()
    }
}

/// A member as the API and `payload = "member"` events show it.
fn render_member(m: &crate::core::presence::Member) -> serde_json::Value {
    serde_json::json!({
        "id": m.conn,
        "user": m.user,
        "roles": m.roles,
        "transport": m.transport,
        "connected_at": m.connected_at,
    })
}

fn event_name(what: &str, name: &str) -> Result<(), InvalidConfig> {
    if name.is_empty() || name.starts_with(RESERVED_PREFIX) {
        return Err(InvalidConfig(format!(
            "presence: {what}: event {name:?} must be non-empty and not start with {RESERVED_PREFIX:?}"
        )));
    }
    Ok(())
}

/// The history bounds of the announcers' own channels (only their state is read).
pub fn retention() -> Vec<(Pattern, crate::core::retention::Limits)> {
    vec![(
        Pattern::new(&format!("{RESERVED_PREFIX}{}*", announce::ANNOUNCED)),
        crate::core::retention::Limits {
            max_events: 1,
            max_age: crate::core::retention::Limits::default().max_age,
        },
    )]
}

/// Starts the announcers and values of `[presence]`.
pub fn start<'a>(setup: &'a Setup<'a>) -> BoxFuture<'a, Result<Arc<dyn Source>, SourceError>> {
    Box::pin(async move {
        let config = setup.sections.presence;
        let engine = setup.engine.clone();
        let values = config.compile()?;
        let max_users = config.max_listed_users;
        let mut tasks = Vec::new();
        for a in &config.channels {
            tasks.push(tokio::spawn(announce::run(engine.clone(), a.clone())));
        }
        for v in values {
            // A new subscriber gets the current value at once, then each change.
            engine.declare_state(Pattern::new(v.channel.as_str()), Snapshot::Each);
            tasks.push(tokio::spawn(values::run(engine.clone(), v, max_users)));
        }
        let source: Arc<dyn Source> = Arc::new(PresenceSource {
            engine,
            online: config.online()?,
            max_users,
            tasks: Mutex::new(tasks),
        });
        Ok(source)
    })
}

/// Presence as a source: its routes and publishing tasks.
struct PresenceSource {
    engine: Arc<dyn Engine>,
    online: ChannelName,
    max_users: usize,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

impl Source for PresenceSource {
    fn routes(self: Arc<Self>) -> Mounts {
        routes::mounts(routes::Routes {
            engine: self.engine.clone(),
            online: self.online.clone(),
            max_users: self.max_users,
        })
    }

    fn shutdown(&self) -> BoxFuture<'_, ()> {
        for task in self.tasks.lock().drain(..) {
            task.abort();
        }
        Box::pin(async {})
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<(), InvalidConfig> {
        toml::from_str::<PresenceConfig>(text).unwrap().validate()
    }

    #[test]
    fn the_documented_example_is_valid_and_mistakes_are_named() {
        parse(
            r#"
            [[channels]]
            pattern = "room:*"
            join_event = "userJoined"
            leave_event = "userLeft"
            payload = "member"

            [[values]]
            channel = "dashboard"
            event = "dashboardStats"
            value = { onlineUsers = "users", connectedOwners = "count(role = owner)" }
            "#,
        )
        .unwrap();
        let e = parse("[[values]]\nchannel = \"d\"\nevent = \"e\"\nvalue = { n = \"owners\" }\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("values \"d\"") && e.contains("expected users"),
            "{e}"
        );
        let e =
            parse("[[values]]\nchannel = \"herald:x\"\nevent = \"e\"\nvalue = { n = \"count\" }\n")
                .unwrap_err()
                .to_string();
        assert!(e.contains("reserved"), "{e}");
        let e = parse("[[channels]]\npattern = \"r\"\njoin_event = \"herald:join\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("herald:join"), "{e}");
        assert!(parse("max_listed_users = 0").is_err());
        assert!(parse("online_channel = \"\"").is_err());
    }
}
