//! The live connections of this node, whatever their transport: what `/api/connections` lists and closes.
//!
//! Every binding registers a connection when it accepts it and holds the [`Registration`] for as long as it serves
//! it; dropping the registration — however the connection ends — removes the entry. The registry therefore holds
//! one entry per open connection: its size is bounded by the connection limits (`[limits] connections_per_ip` per
//! address, and the sockets the process can open), and an entry keeps no data of its own that grows: its
//! subscriptions are read from the connection when asked for, and those are bounded by
//! `subscriptions_per_connection` (and 64 channels per SSE stream).
//!
//! With an online channel ([`Registry::with_online`]), each entry also holds its connection's presence on that
//! channel (joined through the engine as it registers, left with the entry): connection-wide presence, "everyone
//! connected", without subscribing to anything.
//!
//! It is also how a node-wide notice reaches every connection: [`Registry::relay_health`] watches the engine's
//! health (one watch for the node) and, at each change, asks every connection to tell its client.
//!
//! Registering and dropping a registration log `connection opened` / `connection closed` at `debug` (id, transport,
//! address, user): the one place every transport's connections pass.
//!
//! Entries are ordered by id, so paging with `after` stays exact while connections come and go: a connection open
//! through the whole walk is listed exactly once.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::ops::Bound;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};

use parking_lot::Mutex;
use serde::Serialize;
use tokio::sync::watch;

use crate::auth::Identity;
use crate::core::Engine;
use crate::core::channel::ChannelName;
use crate::core::engine::Health;
use crate::core::engine::PresenceGuard;
use crate::core::event::now_ms;
use crate::core::presence::Member;
use crate::core::stats::{Counter, Gauge};

/// The transport a connection arrived on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Transport {
    /// Socket.IO (over Engine.IO polling or WebSocket).
    #[serde(rename = "socketio")]
    SocketIo,
    /// The plain WebSocket protocol on `/ws`.
    #[serde(rename = "websocket")]
    WebSocket,
    /// Server-Sent Events on `/sse`.
    #[serde(rename = "sse")]
    Sse,
}

impl Transport {
    /// Every transport.
    pub const ALL: [Transport; 3] = [Transport::SocketIo, Transport::WebSocket, Transport::Sse];

    /// The name the API and presence show.
    pub fn name(self) -> &'static str {
        match self {
            Transport::SocketIo => "socketio",
            Transport::WebSocket => "websocket",
            Transport::Sse => "sse",
        }
    }

    /// The transport called `name`, if any.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.name() == name)
    }
}

/// Why a connection ended: the `reason` label of `herald_disconnects_total`. A binding says so on its
/// [`Registration`] before dropping it; unsaid, the client went away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum CloseReason {
    /// The client closed it or the network dropped it.
    Client = 0,
    /// Its heartbeat timed out (Socket.IO ping timeout, WebSocket idle).
    Timeout,
    /// It fell behind by more than its queue bound.
    SlowConsumer,
    /// The server is shutting down.
    Shutdown,
    /// An administrator closed it (`/api/connections/{id}/disconnect`).
    Admin,
    /// Its token expired.
    Expired,
    /// The server failed to serve it (a storage error mid-replay) or the client broke the protocol.
    Error,
}

impl CloseReason {
    /// Every reason, in label order.
    pub const ALL: [CloseReason; 7] = [
        CloseReason::Client,
        CloseReason::Timeout,
        CloseReason::SlowConsumer,
        CloseReason::Shutdown,
        CloseReason::Admin,
        CloseReason::Expired,
        CloseReason::Error,
    ];

    /// The label value.
    pub fn name(self) -> &'static str {
        match self {
            CloseReason::Client => "client",
            CloseReason::Timeout => "timeout",
            CloseReason::SlowConsumer => "slow_consumer",
            CloseReason::Shutdown => "shutdown",
            CloseReason::Admin => "admin",
            CloseReason::Expired => "expired",
            CloseReason::Error => "error",
        }
    }
}

/// Connections counted by transport, for `/metrics`: open now, ever opened, and ended by reason.
pub struct ConnectionCounts {
    open: [Gauge; 3],
    opened: [Counter; 3],
    closed: [[Counter; 7]; 3],
}

impl ConnectionCounts {
    const fn new() -> Self {
        Self {
            open: [const { Gauge::new() }; 3],
            opened: [const { Counter::new() }; 3],
            closed: [const { [const { Counter::new() }; 7] }; 3],
        }
    }

    /// Connections of `transport` open now.
    pub fn open(&self, transport: Transport) -> i64 {
        self.open[transport as usize].get()
    }

    /// Connections of `transport` ever accepted.
    pub fn opened(&self, transport: Transport) -> u64 {
        self.opened[transport as usize].get()
    }

    /// Connections of `transport` ended for `reason`.
    pub fn closed(&self, transport: Transport, reason: CloseReason) -> u64 {
        self.closed[transport as usize][reason as usize].get()
    }
}

/// Every registry's connections (one registry per process outside tests).
pub static CONNECTIONS: ConnectionCounts = ConnectionCounts::new();

/// What the registry asks of a live connection; each binding implements it for its connection's feed.
pub trait Live: Send + Sync + 'static {
    /// The channels it is subscribed to now, in subscription order.
    fn subscriptions(&self) -> Vec<ChannelName>;
    /// What carries it now, for a transport that can change it (Socket.IO: `polling` or `websocket`).
    fn carrier(&self) -> Option<&'static str> {
        None
    }
    /// Ends it at an administrator's request, the way its client reconnects and resumes from.
    fn close(&self);
    /// Tells its client the engine's health now, if that changed since it was last told.
    fn tell_status(&self);
    /// Bytes queued for its client and not yet written (for `/metrics` and `/api/connections`).
    fn queued_bytes(&self) -> usize {
        0
    }
}

/// What a connection is, fixed when it registers.
#[derive(Debug, Clone)]
pub struct Info {
    /// The transport.
    pub transport: Transport,
    /// The peer's address, when known.
    pub address: Option<SocketAddr>,
    /// Who it is (id, user, roles, connect time): one copy, shared with presence on every channel it joins.
    pub member: Arc<Member>,
}

impl Info {
    /// A connection accepted now.
    pub fn new(
        id: Arc<str>,
        transport: Transport,
        identity: &Identity,
        address: Option<SocketAddr>,
    ) -> Self {
        Self {
            transport,
            address,
            member: Arc::new(Member {
                conn: id,
                user: identity.user.clone(),
                roles: identity.roles.clone(),
                transport: transport.name(),
                connected_at: now_ms(),
            }),
        }
    }

    /// Unique among this node's live connections (Socket.IO: its socket id).
    pub fn id(&self) -> &Arc<str> {
        &self.member.conn
    }
}

/// A fresh id for a connection whose transport names none (`/ws`, SSE): the transport's name and a number unique in
/// this process (`websocket-7`, `sse-8`), counted from a random start below 2^40 so that the nodes of a cluster,
/// whose presence lists each other's connections, practically never hand out the same one. Socket.IO socket ids
/// are 20 random characters: a clash would need one to spell such a name exactly.
pub fn new_id(transport: Transport) -> Arc<str> {
    static START: std::sync::LazyLock<u64> =
        std::sync::LazyLock::new(|| rand::random::<u64>() >> 24);
    static NEXT: AtomicU64 = AtomicU64::new(1);
    format!(
        "{}-{}",
        transport.name(),
        *START + NEXT.fetch_add(1, Ordering::Relaxed)
    )
    .into()
}

/// One connection as the API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct Connection {
    /// Its id.
    pub id: Arc<str>,
    /// Its transport.
    pub transport: Transport,
    /// What carries it now (Socket.IO only: `polling` or `websocket`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub carrier: Option<&'static str>,
    /// The authenticated user, if any.
    pub user: Option<String>,
    /// The user's roles.
    pub roles: Vec<String>,
    /// The peer's address (`ip:port`), when known.
    pub address: Option<String>,
    /// When it was accepted, ms since the UNIX epoch.
    pub connected_at: i64,
    /// Its channels now.
    pub subscriptions: Vec<ChannelName>,
    /// Bytes queued for it and not yet written (its transport's outbound queue).
    pub queued_bytes: usize,
}

/// One page of the list.
#[derive(Debug, Serialize)]
pub struct Page {
    /// The connections, by id.
    pub connections: Vec<Connection>,
    /// Where the next page starts (`after`), or `None` when this is the last.
    pub next: Option<Arc<str>>,
}

struct Entry {
    info: Info,
    live: Arc<dyn Live>,
    /// Tells this registration from a later one under the same id (a resumed Socket.IO session keeps its id).
    serial: u64,
    /// Its presence on the online channel, once the engine has it.
    online: Option<PresenceGuard>,
}

#[derive(Default)]
struct Table {
    entries: BTreeMap<Arc<str>, Entry>,
    next_serial: u64,
}

/// The live connections of this node; cheap to clone (clones share one table).
#[derive(Clone, Default)]
pub struct Registry {
    table: Arc<Mutex<Table>>,
    emptied: Arc<tokio::sync::Notify>,
    /// The engine and channel every connection is present on, if any.
    online: Option<(Arc<dyn Engine>, ChannelName)>,
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Makes every connection present on `channel` while it is registered.
    pub fn with_online(mut self, engine: Arc<dyn Engine>, channel: ChannelName) -> Self {
        self.online = Some((engine, channel));
        self
    }

    /// Adds a connection until the returned registration is dropped. A live entry under the same id is replaced:
    /// the newer connection is the one the id reaches (Socket.IO retires the older one itself).
    pub fn register(&self, info: Info, live: Arc<dyn Live>) -> Registration {
        log_connection(&info, "connection opened");
        CONNECTIONS.open[info.transport as usize].add(1);
        CONNECTIONS.opened[info.transport as usize].inc();
        let mut t = self.table.lock();
        t.next_serial += 1;
        let serial = t.next_serial;
        let id = info.id().clone();
        if let Some((engine, channel)) = &self.online {
            // Joining may wait on the engine and this may run under a binding's lock: join in the background.
            tokio::spawn(join_online(
                self.table.clone(),
                engine.clone(),
                channel.clone(),
                info.member.clone(),
                serial,
            ));
        }
        let entry = Entry {
            info: info.clone(),
            live,
            serial,
            online: None,
        };
        let replaced = t.entries.insert(id, entry);
        drop(t);
        // Its presence leaves outside the lock.
        drop(replaced);
        Registration {
            table: self.table.clone(),
            emptied: self.emptied.clone(),
            info,
            serial,
            reason: AtomicU8::new(CloseReason::Client as u8),
        }
    }

    /// Resolves once no connection is registered (shutdown waits for upgraded connections, which hyper's graceful
    /// shutdown no longer tracks, to finish their goodbyes).
    pub async fn until_empty(&self) {
        loop {
            let emptied = self.emptied.notified();
            tokio::pin!(emptied);
            // Registered as a waiter before the check, so an entry leaving in between still wakes it.
            emptied.as_mut().enable();
            if self.table.lock().entries.is_empty() {
                return;
            }
            emptied.await;
        }
    }

    /// Connection `id`, if it is live.
    pub fn get(&self, id: &str) -> Option<Connection> {
        let found = self
            .table
            .lock()
            .entries
            .get(id)
            .map(|e| (e.info.clone(), e.live.clone()));
        found.map(|(info, live)| render(&info, &*live))
    }

    /// Up to `limit` connections with an id after `after`, of `transport` if given, by id.
    pub fn page(&self, after: Option<&str>, transport: Option<Transport>, limit: usize) -> Page {
        let start = after.map_or(Bound::Unbounded, Bound::Excluded);
        // Copied out under the lock, rendered outside it: reading subscriptions takes each connection's own lock.
        let mut picked: Vec<(Info, Arc<dyn Live>)> = {
            let t = self.table.lock();
            t.entries
                .range::<str, _>((start, Bound::Unbounded))
                .filter(|(_, e)| transport.is_none_or(|t| e.info.transport == t))
                .take(limit.saturating_add(1))
                .map(|(_, e)| (e.info.clone(), e.live.clone()))
                .collect()
        };
        let more = picked.len() > limit;
        picked.truncate(limit);
        let next = more
            .then(|| picked.last().map(|(info, _)| info.id().clone()))
            .flatten();
        Page {
            connections: picked
                .iter()
                .map(|(info, live)| render(info, &**live))
                .collect(),
            next,
        }
    }

    /// At each change of `health`, asks every connection to tell its client (each tells a change once, reading
    /// the health itself, so a connection registered meanwhile misses nothing); returns when `health` can no
    /// longer change.
    pub async fn relay_health(&self, mut health: watch::Receiver<Health>) {
        while health.changed().await.is_ok() {
            // Copied out under the lock, told outside it: telling takes each connection's own lock.
            let lives: Vec<Arc<dyn Live>> = {
                let t = self.table.lock();
                t.entries.values().map(|e| e.live.clone()).collect()
            };
            for live in lives {
                live.tell_status();
            }
        }
    }

    /// Bytes waiting in the outbound queues of every connection, by transport (indexed by [`Transport`]): read
    /// when `/metrics` is scraped, so the delivery path counts nothing for it.
    pub fn queued_bytes(&self) -> [u64; 3] {
        // Copied out under the lock, read outside it: each queue has its own lock.
        let lives: Vec<(Transport, Arc<dyn Live>)> = {
            let t = self.table.lock();
            t.entries
                .values()
                .map(|e| (e.info.transport, e.live.clone()))
                .collect()
        };
        let mut out = [0; 3];
        for (transport, live) in lives {
            out[transport as usize] += live.queued_bytes() as u64;
        }
        out
    }

    /// Closes connection `id` (it reconnects and resumes); false if it is not live.
    pub fn close(&self, id: &str) -> bool {
        let live = self.table.lock().entries.get(id).map(|e| e.live.clone());
        // Outside the lock: closing may end the connection, whose registration then takes the lock to leave.
        live.map(|l| l.close()).is_some()
    }
}

/// Puts connection `member` (registration `serial`) on the online channel, unless it left meanwhile.
async fn join_online(
    table: Arc<Mutex<Table>>,
    engine: Arc<dyn Engine>,
    channel: ChannelName,
    member: Arc<Member>,
    serial: u64,
) {
    let guard = match engine.join(&channel, member.clone()).await {
        Ok(guard) => guard,
        Err(e) => {
            tracing::warn!(conn = %member.conn, error = %e, "connection not counted as online");
            return;
        }
    };
    let mut t = table.lock();
    match t.entries.get_mut(&*member.conn) {
        Some(e) if e.serial == serial => e.online = Some(guard),
        // Gone already: the guard leaves as it drops (after the lock, below).
        _ => {
            drop(t);
            drop(guard);
        }
    }
}

fn render(info: &Info, live: &dyn Live) -> Connection {
    Connection {
        id: info.id().clone(),
        transport: info.transport,
        carrier: live.carrier(),
        user: info.member.user.clone(),
        roles: info.member.roles.clone(),
        address: info.address.map(|a| a.to_string()),
        connected_at: info.member.connected_at,
        subscriptions: live.subscriptions(),
        queued_bytes: live.queued_bytes(),
    }
}

/// One `debug` line about a connection: its id, transport, address and user (for operators following one client).
fn log_connection(info: &Info, what: &'static str) {
    let address = info.address.map(|a| a.to_string());
    tracing::debug!(
        conn = &*info.member.conn,
        transport = info.transport.name(),
        address = address.as_deref(),
        user = info.member.user.as_deref(),
        "{what}"
    );
}

/// A connection's place in the registry: dropping it removes the entry.
pub struct Registration {
    table: Arc<Mutex<Table>>,
    emptied: Arc<tokio::sync::Notify>,
    info: Info,
    serial: u64,
    /// Why it ends, as [`CloseReason`]: the first reason said is kept.
    reason: AtomicU8,
}

impl Registration {
    /// Says why the connection is ending (the first reason said counts; unsaid, the client went away).
    pub fn closing(&self, reason: CloseReason) {
        let _ = self.reason.compare_exchange(
            CloseReason::Client as u8,
            reason as u8,
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        log_connection(&self.info, "connection closed");
        let transport = self.info.transport as usize;
        CONNECTIONS.open[transport].add(-1);
        let reason = CloseReason::ALL
            .get(usize::from(self.reason.load(Ordering::Relaxed)))
            .copied()
            .unwrap_or(CloseReason::Client);
        CONNECTIONS.closed[transport][reason as usize].inc();
        let id = self.info.id();
        let mut t = self.table.lock();
        // A later registration under this id stays.
        if t.entries
            .get(&**id)
            .is_some_and(|e| e.serial == self.serial)
        {
            let gone = t.entries.remove(&**id);
            if t.entries.is_empty() {
                self.emptied.notify_waiters();
            }
            // Its presence leaves outside the lock.
            drop(t);
            drop(gone);
        }
    }
}

impl std::fmt::Debug for Registration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registration")
            .field("id", self.info.id())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::presence::PresenceEvent;
    use std::sync::atomic::AtomicBool;

    struct Fake {
        channels: Vec<ChannelName>,
        closed: AtomicBool,
        told: AtomicU64,
    }

    impl Live for Fake {
        fn subscriptions(&self) -> Vec<ChannelName> {
            self.channels.clone()
        }
        fn close(&self) {
            self.closed.store(true, Ordering::Relaxed);
        }
        fn tell_status(&self) {
            self.told.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn fake(channels: &[&str]) -> Arc<Fake> {
        Arc::new(Fake {
            channels: channels
                .iter()
                .map(|c| ChannelName::new(c).unwrap())
                .collect(),
            closed: AtomicBool::new(false),
            told: AtomicU64::new(0),
        })
    }

    fn info(id: &str, transport: Transport) -> Info {
        Info::new(id.into(), transport, &Identity::anonymous(), None)
    }

    fn ids(page: &Page) -> Vec<&str> {
        page.connections.iter().map(|c| &*c.id).collect()
    }

    #[test]
    fn entries_leave_with_their_registration_and_pages_stay_exact_under_churn() {
        let r = Registry::new();
        let a = r.register(info("a", Transport::SocketIo), fake(&["x"]));
        let b = r.register(info("b", Transport::WebSocket), fake(&[]));
        let c = r.register(info("c", Transport::Sse), fake(&["y", "z"]));
        let first = r.page(None, None, 2);
        assert_eq!(ids(&first), ["a", "b"]);
        assert_eq!(first.next.as_deref(), Some("b"));
        // `b` leaves and `bb` arrives between pages: the walk goes on after `b` and sees the newcomer.
        drop(b);
        let _bb = r.register(info("bb", Transport::WebSocket), fake(&[]));
        let second = r.page(first.next.as_deref(), None, 2);
        assert_eq!(ids(&second), ["bb", "c"]);
        assert_eq!(second.next, None);
        assert_eq!(
            r.get("c").unwrap().subscriptions,
            [
                ChannelName::new("y").unwrap(),
                ChannelName::new("z").unwrap()
            ]
        );
        assert_eq!(ids(&r.page(None, Some(Transport::WebSocket), 10)), ["bb"]);
        drop(a);
        drop(c);
        assert!(r.get("a").is_none());
        assert_eq!(ids(&r.page(None, None, 10)), ["bb"]);
    }

    #[test]
    fn a_replaced_registration_does_not_remove_its_successor() {
        let r = Registry::new();
        let old_live = fake(&[]);
        let old = r.register(info("s", Transport::SocketIo), old_live.clone());
        let new_live = fake(&["x"]);
        let _new = r.register(info("s", Transport::SocketIo), new_live.clone());
        drop(old);
        assert!(r.close("s"), "the successor is still reachable");
        assert!(new_live.closed.load(Ordering::Relaxed));
        assert!(!old_live.closed.load(Ordering::Relaxed));
        assert!(!r.close("nobody"));
    }

    #[tokio::test]
    async fn with_an_online_channel_every_registered_connection_is_present_until_it_leaves() {
        use crate::core::retention::{Limits, Retention};
        let engine = crate::core::engine::memory::MemoryEngine::open(
            Retention {
                defaults: Limits::default(),
                rules: vec![],
            },
            std::time::Duration::from_secs(60),
        )
        .unwrap();
        let online = ChannelName::internal("online").unwrap();
        let r = Registry::new().with_online(engine.clone(), online.clone());
        let mut changes =
            engine.presence_events(crate::core::channel::Pattern::new("herald:online"));
        let a = r.register(info("a", Transport::Sse), fake(&[]));
        assert!(matches!(changes.recv().await, Some(PresenceEvent::Join(_, m)) if &*m.conn == "a"));
        let conns = |ms: Vec<Member>| {
            ms.into_iter()
                .map(|m| m.conn.to_string())
                .collect::<Vec<_>>()
        };
        assert_eq!(conns(engine.presence(&online).await.unwrap()), ["a"]);
        // A registration gone before its join landed leaves at once: nothing stays behind.
        let b = r.register(info("b", Transport::WebSocket), fake(&[]));
        drop(b);
        drop(a);
        let mut seen = Vec::new();
        while seen.last().map(String::as_str) != Some("leave b") {
            seen.push(match changes.recv().await.unwrap() {
                PresenceEvent::Join(_, m) => format!("join {}", m.conn),
                PresenceEvent::Leave(_, m) => format!("leave {}", m.conn),
            });
        }
        assert_eq!(seen, ["leave a", "join b", "leave b"]);
        assert!(engine.presence(&online).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn each_health_change_reaches_every_connection() {
        let r = Registry::new();
        let (a, b) = (fake(&[]), fake(&["x"]));
        let _ra = r.register(info("a", Transport::SocketIo), a.clone());
        let _rb = r.register(info("b", Transport::Sse), b.clone());
        let (tx, rx) = watch::channel(Health::Ok);
        let relay = tokio::spawn({
            let r = r.clone();
            async move { r.relay_health(rx).await }
        });
        tx.send_replace(Health::Unavailable { since: 1 });
        let told = |f: &Fake| f.told.load(Ordering::Relaxed);
        while told(&a) < 1 || told(&b) < 1 {
            tokio::task::yield_now().await;
        }
        // The sender gone, health can no longer change: the relay ends.
        drop(tx);
        relay.await.unwrap();
        assert_eq!((told(&a), told(&b)), (1, 1));
    }

    #[test]
    fn ids_are_unique_and_transports_named() {
        assert_ne!(new_id(Transport::Sse), new_id(Transport::Sse));
        assert!(new_id(Transport::WebSocket).starts_with("websocket-"));
        for t in Transport::ALL {
            assert_eq!(Transport::from_name(t.name()), Some(t));
        }
        assert_eq!(Transport::from_name("polling"), None);
    }
}
