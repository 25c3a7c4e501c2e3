//! Join/leave events for the subscribers of the channels one `[[presence.channels]]` pattern matches, published
//! through the engine (so they reach each subscriber through its feed and outbox bounds, like any event).
//!
//! The grain is the user (`payload = "user"`: a user joins with their first connection on the channel and leaves
//! with their last, so several tabs are one join) or the connection (`payload = "member"`). The tally that decides
//! mirrors the channel's presence, so it is bounded like presence; a burst of changes waits in the engine's
//! watcher queue ([`crate::core::engine::PRESENCE_EVENTS_QUEUE`]), and a watcher that falls behind is dropped and
//! re-reads the presence of the channels it knows, announcing the difference.
//!
//! What has been announced is kept as engine state (`herald:presence-announced:<pattern>`, `*` written `+`: key
//! `<channel>\n<user or connection>`, value the member), set or removed in the same publish as each announcement. A
//! node that takes the announcing over (its lease holder died, or it restarted) starts from that set and re-reads
//! those channels, so a leave that happened meanwhile — the dead node's own connections, say — is still announced.

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::json;
use serde_json::value::RawValue;

use super::{AnnounceConfig, Payload, render_member};
use crate::core::Engine;
use crate::core::channel::{ChannelName, Pattern};
use crate::core::engine::lease::{LEASE_TTL, while_held};
use crate::core::event::NewEvent;
use crate::core::presence::{Member, PresenceEvent};
use crate::core::stats::Origin;
use crate::core::state::StateChange;

/// Prefix of the state channels of what each pattern's announcer has announced (after the internal prefix).
pub const ANNOUNCED: &str = "presence-announced:";

/// The state channel of what `config`'s announcer has announced.
fn announced_channel(config: &AnnounceConfig) -> Option<ChannelName> {
    ChannelName::internal(&format!("{ANNOUNCED}{}", config.pattern.replace('*', "+"))).ok()
}

/// The state key of `key` on `channel`.
fn state_key(channel: &ChannelName, key: &Key) -> String {
    match key {
        Key::User(u) => format!("{channel}\nu:{u}"),
        Key::Conn(c) => format!("{channel}\nc:{c}"),
    }
}

/// A member as the announced set stores it (what [`render_member`] writes).
fn stored_member(json: &str) -> Option<Member> {
    let v: serde_json::Value = serde_json::from_str(json).ok()?;
    let transport = ["socketio", "websocket", "sse"]
        .into_iter()
        .find(|t| v.get("transport").and_then(|t| t.as_str()) == Some(*t))
        .unwrap_or("other");
    Some(Member {
        conn: v.get("id")?.as_str()?.into(),
        user: v.get("user").and_then(|u| u.as_str()).map(str::to_owned),
        roles: v
            .get("roles")
            .and_then(|r| r.as_array())
            .map(|r| {
                r.iter()
                    .filter_map(|x| x.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default(),
        transport,
        connected_at: v.get("connected_at").and_then(|t| t.as_i64()).unwrap_or(0),
    })
}

/// Announces joins and leaves on `config.pattern` until the task is aborted (one node of a cluster at a time).
pub async fn run(engine: Arc<dyn Engine>, config: AnnounceConfig) {
    let lease = format!("presence-announce:{}", config.pattern);
    while_held(&*engine, &lease, LEASE_TTL, || announce(&engine, &config)).await;
}

async fn announce(engine: &Arc<dyn Engine>, config: &AnnounceConfig) {
    let mut tally = Tally::new(config.payload);
    tally.load(&**engine, config).await;
    loop {
        let mut events = engine.presence_events(Pattern::new(&config.pattern));
        for (channel, change) in tally.resync(&**engine).await {
            publish(engine, config, &channel, change).await;
        }
        while let Some(event) = events.recv().await {
            let (channel, member, joined) = match event {
                PresenceEvent::Join(c, m) => (c, m, true),
                PresenceEvent::Leave(c, m) => (c, m, false),
            };
            // Herald's own channels (the online channel) have no subscribers to tell.
            if channel.is_internal() {
                continue;
            }
            if let Some(change) = tally.apply(&channel, member, joined) {
                publish(engine, config, &channel, change).await;
            }
        }
    }
}

/// A join or a leave to announce.
#[derive(Debug, PartialEq)]
enum Change {
    Joined(Member),
    Left(Member),
}

/// What the announcements count: a user, or one connection (its own, or an anonymous one's under `user`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Key {
    User(String),
    Conn(Arc<str>),
}

/// Per channel, each key's connection count and a member to describe it with.
struct Tally {
    payload: Payload,
    channels: HashMap<ChannelName, HashMap<Key, (usize, Member)>>,
}

impl Tally {
    fn new(payload: Payload) -> Self {
        Self {
            payload,
            channels: HashMap::new(),
        }
    }

    /// Starts from what was announced before (by this node or another); the next [`Tally::resync`] re-reads
    /// those channels and announces what changed since.
    async fn load(&mut self, engine: &dyn Engine, config: &AnnounceConfig) {
        let Some(channel) = announced_channel(config) else {
            return;
        };
        let values = match engine.state_of(&channel).await {
            Ok(Some(v)) => v,
            Ok(None) => return,
            Err(e) => {
                tracing::warn!(pattern = %config.pattern, error = %e, "cannot read what was announced; starting afresh");
                return;
            }
        };
        for entry in values.iter() {
            let Some((name, _)) = entry.key.split_once('\n') else {
                continue;
            };
            let (Ok(c), Some(m)) = (ChannelName::new(name), stored_member(entry.value.get()))
            else {
                continue;
            };
            let key = self.key(&m);
            self.channels.entry(c).or_default().insert(key, (1, m));
        }
    }

    fn key(&self, m: &Member) -> Key {
        match (&m.user, self.payload) {
            (Some(user), Payload::User) => Key::User(user.clone()),
            _ => Key::Conn(m.conn.clone()),
        }
    }

    /// Counts one join or leave; returns the change to announce, if the key's count left or reached zero.
    fn apply(&mut self, channel: &ChannelName, member: Member, joined: bool) -> Option<Change> {
        let key = self.key(&member);
        if joined {
            let counts = self.channels.entry(channel.clone()).or_default();
            let entry = counts.entry(key).or_insert((0, member.clone()));
            entry.0 += 1;
            return (entry.0 == 1).then_some(Change::Joined(member));
        }
        let counts = self.channels.get_mut(channel)?;
        let entry = counts.get_mut(&key)?;
        entry.0 -= 1;
        let change = (entry.0 == 0).then(|| counts.remove(&key).map(|(_, m)| Change::Left(m)));
        if counts.is_empty() {
            self.channels.remove(channel);
        }
        change.flatten()
    }

    /// Re-reads the presence of every channel it knows; returns the joins and leaves it missed.
    async fn resync(&mut self, engine: &dyn Engine) -> Vec<(ChannelName, Change)> {
        let mut changes = Vec::new();
        let known: Vec<ChannelName> = self.channels.keys().cloned().collect();
        for channel in known {
            let members = match engine.presence(&channel).await {
                Ok(m) => m,
                Err(e) => {
                    tracing::warn!(%channel, error = %e, "cannot re-read presence; keeping the old tally");
                    continue;
                }
            };
            let mut now: HashMap<Key, (usize, Member)> = HashMap::new();
            for m in members {
                now.entry(self.key(&m)).or_insert((0, m)).0 += 1;
            }
            let before = self.channels.remove(&channel).unwrap_or_default();
            for (key, (_, m)) in &before {
                if !now.contains_key(key) {
                    changes.push((channel.clone(), Change::Left(m.clone())));
                }
            }
            for (key, (_, m)) in &now {
                if !before.contains_key(key) {
                    changes.push((channel.clone(), Change::Joined(m.clone())));
                }
            }
            if !now.is_empty() {
                self.channels.insert(channel, now);
            }
        }
        changes
    }
}

async fn publish(
    engine: &Arc<dyn Engine>,
    config: &AnnounceConfig,
    channel: &ChannelName,
    change: Change,
) {
    let (name, m) = match &change {
        Change::Joined(m) => (&config.join_event, m),
        Change::Left(m) => (&config.leave_event, m),
    };
    let data = match config.payload {
        Payload::User => json!({"user": m.user, "roles": m.roles}),
        Payload::Member => render_member(m),
    };
    let Ok(data) = RawValue::from_string(data.to_string()) else {
        return;
    };
    let event = NewEvent {
        channel: channel.clone(),
        name: name.clone(),
        data,
        id: None,
        state: None,
    };
    let mut batch = vec![event];
    // What was announced, in the same commit (see the module docs).
    if let Some(announced) = announced_channel(config) {
        let key = match (&m.user, config.payload) {
            (Some(user), Payload::User) => Key::User(user.clone()),
            _ => Key::Conn(m.conn.clone()),
        };
        let key = state_key(channel, &key);
        let state = match &change {
            Change::Joined(m) => StateChange::Set {
                key,
                value: crate::json::raw(&render_member(m)),
            },
            Change::Left(_) => StateChange::Remove { key },
        };
        batch.push(NewEvent {
            channel: announced,
            name: "announced".into(),
            data: crate::json::raw(&serde_json::json!({})),
            id: None,
            state: Some(state),
        });
    }
    // Presence is "now": an announcement the engine cannot take is logged, not retried later out of order.
    if let Err(e) = engine.publish_from(Origin::Presence, batch).await {
        tracing::warn!(%channel, event = name, error = %e, "presence announcement not published");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(conn: &str, user: Option<&str>) -> Member {
        Member {
            conn: conn.into(),
            user: user.map(str::to_owned),
            roles: vec![],
            transport: "socketio",
            connected_at: 0,
        }
    }

    fn kinds(changes: &[Option<Change>]) -> Vec<&str> {
        changes
            .iter()
            .map(|c| match c {
                Some(Change::Joined(_)) => "join",
                Some(Change::Left(_)) => "leave",
                None => "-",
            })
            .collect()
    }

    #[test]
    fn a_user_joins_with_the_first_tab_and_leaves_with_the_last() {
        let room = ChannelName::new("room:1").unwrap();
        let mut t = Tally::new(Payload::User);
        let steps = [
            t.apply(&room, member("a", Some("alice")), true),
            t.apply(&room, member("b", Some("alice")), true),
            t.apply(&room, member("a", Some("alice")), false),
            t.apply(&room, member("x", None), true),
            t.apply(&room, member("b", Some("alice")), false),
            t.apply(&room, member("x", None), false),
            t.apply(&room, member("x", None), false),
        ];
        assert_eq!(
            kinds(&steps),
            ["join", "-", "-", "join", "leave", "leave", "-"]
        );
        assert!(
            t.channels.is_empty(),
            "nothing is kept for an empty channel"
        );
    }

    #[test]
    fn member_payload_announces_every_connection() {
        let room = ChannelName::new("room:1").unwrap();
        let mut t = Tally::new(Payload::Member);
        let steps = [
            t.apply(&room, member("a", Some("alice")), true),
            t.apply(&room, member("b", Some("alice")), true),
            t.apply(&room, member("a", Some("alice")), false),
        ];
        assert_eq!(kinds(&steps), ["join", "join", "leave"]);
    }
}
