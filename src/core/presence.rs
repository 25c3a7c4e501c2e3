//! Presence kept in this process: who is on each channel now, and join/leave notifications.
//!
//! The local engines (SQLite, memory) hold presence here; a distributed engine keeps its own cluster-wide table
//! behind the same [`crate::core::engine::Engine`] methods. Entries exist only while a connection is subscribed, so
//! they are bounded by the connections and their per-connection subscription limit.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use parking_lot::Mutex;
use serde::Serialize;
use tokio::sync::mpsc;

use super::channel::{ChannelName, Pattern};
use super::engine::{Leave, PRESENCE_EVENTS_QUEUE, PresenceGuard};

/// One connection present on a channel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Member {
    /// Connection id (as the connection registry shows it).
    pub conn: Arc<str>,
    /// The authenticated user, if any.
    pub user: Option<String>,
    /// The user's roles.
    pub roles: Vec<String>,
    /// Transport name (`socketio`, `websocket`, `sse`).
    pub transport: &'static str,
    /// When the connection was opened, ms since the UNIX epoch.
    pub connected_at: i64,
}

/// A connection joined or left a channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PresenceEvent {
    /// It joined.
    Join(ChannelName, Member),
    /// It left.
    Leave(ChannelName, Member),
}

/// One channel's members by connection id, each with how many of that connection's registrations hold it.
type Members = BTreeMap<Arc<str>, (Arc<Member>, usize)>;

#[derive(Default)]
struct Table {
    /// Channel → connection id → (member, registrations holding it).
    channels: HashMap<ChannelName, Members>,
    watchers: Vec<(Pattern, mpsc::Sender<PresenceEvent>)>,
}

impl Table {
    fn notify(&mut self, channel: &ChannelName, event: impl Fn() -> PresenceEvent) {
        self.watchers.retain(|(pattern, tx)| {
            !pattern.matches(channel.as_str()) || tx.try_send(event()).is_ok()
        });
    }
}

/// Presence of this process's connections.
#[derive(Default)]
pub struct Presence {
    table: Mutex<Table>,
}

impl Presence {
    /// Adds `member` to `channel` until the returned guard is dropped; joining twice keeps one entry.
    pub fn join(self: &Arc<Self>, channel: &ChannelName, member: Arc<Member>) -> PresenceGuard {
        let conn = member.conn.clone();
        self.add(channel, member);
        let owner: Arc<dyn Leave> = self.clone();
        PresenceGuard::new(channel.clone(), conn, owner)
    }

    /// Counts one more registration of `member` on `channel`; true (and watchers told) if it was not there.
    pub fn add(&self, channel: &ChannelName, member: Arc<Member>) -> bool {
        let fresh = self.add_quietly(channel, member.clone());
        if fresh {
            self.tell(PresenceEvent::Join(channel.clone(), (*member).clone()));
        }
        fresh
    }

    /// [`Presence::add`] without telling the watchers (the caller tells them once the join is recorded elsewhere).
    pub fn add_quietly(&self, channel: &ChannelName, member: Arc<Member>) -> bool {
        let conn = member.conn.clone();
        let mut t = self.table.lock();
        let entries = t.channels.entry(channel.clone()).or_default();
        match entries.get_mut(&conn) {
            Some((_, n)) => {
                *n += 1;
                false
            }
            None => {
                entries.insert(conn, (member, 1));
                true
            }
        }
    }

    /// Counts one registration of `conn` on `channel` less; the member (and watchers told) if that was its last.
    pub fn remove(&self, channel: &ChannelName, conn: &str) -> Option<Arc<Member>> {
        let mut t = self.table.lock();
        let entries = t.channels.get_mut(channel)?;
        let gone = match entries.get_mut(conn) {
            Some((_, n)) if *n > 1 => {
                *n -= 1;
                None
            }
            Some(_) => entries.remove(conn).map(|(m, _)| m),
            None => None,
        };
        if entries.is_empty() {
            t.channels.remove(channel);
        }
        if let Some(member) = &gone {
            t.notify(channel, || {
                PresenceEvent::Leave(channel.clone(), (**member).clone())
            });
        }
        gone
    }

    /// Tells the watchers of `event`'s channel about a change elsewhere (another node of a cluster).
    pub fn tell(&self, event: PresenceEvent) {
        let channel = match &event {
            PresenceEvent::Join(c, _) | PresenceEvent::Leave(c, _) => c.clone(),
        };
        self.table.lock().notify(&channel, || event.clone());
    }

    /// Lets every watcher go (their receivers end, so they re-read presence): what a cluster node does when it
    /// may have missed other nodes' changes.
    pub fn drop_watchers(&self) {
        self.table.lock().watchers.clear();
    }

    /// Every entry of this process: `(channel, member)`.
    pub fn entries(&self) -> Vec<(ChannelName, Arc<Member>)> {
        let t = self.table.lock();
        t.channels
            .iter()
            .flat_map(|(c, m)| {
                m.values()
                    .map(move |(member, _)| (c.clone(), member.clone()))
            })
            .collect()
    }

    /// Who is on `channel`, by connection id.
    pub fn members(&self, channel: &ChannelName) -> Vec<Member> {
        self.table
            .lock()
            .channels
            .get(channel)
            .map(|m| m.values().map(|(member, _)| (**member).clone()).collect())
            .unwrap_or_default()
    }

    /// Join and leave notifications of channels matching `pattern`, from now on (see
    /// [`crate::core::engine::PRESENCE_EVENTS_QUEUE`] for a watcher that falls behind).
    pub fn events(&self, pattern: Pattern) -> mpsc::Receiver<PresenceEvent> {
        let (tx, rx) = mpsc::channel(PRESENCE_EVENTS_QUEUE);
        self.table.lock().watchers.push((pattern, tx));
        rx
    }
}

impl Leave for Presence {
    fn leave(&self, channel: &ChannelName, conn: &str) {
        self.remove(channel, conn);
    }
}
