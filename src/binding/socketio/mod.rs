//! Channels over Socket.IO: `subscribe`/`unsubscribe` events, server-side channels, shared encoded deliveries,
//! and connection state recovery as the stock client speaks it, covering every channel and surviving restarts.
//!
//! Every live event reaches a socket as `42["name",data,"L<seq>.<channel id>.<offset>"]`, encoded once per event and
//! shared by all sockets. Replayed events carry `R<seq>.<k>.<offset>` instead: the position of their
//! subscription in the session record. The stock client echoes the last such string back as `offset` when it
//! reconnects with its `pid`; [`session::resume_points`] turns that into a position per channel.

pub mod config;
pub mod session;

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use parking_lot::Mutex;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value, json};

use super::access::Access;
use super::client_events::{Allowance, Call, ClientEvents, Outcome};
use super::feed::{Feed, Gone, Outlet, REPLAY_WINDOW, Registered, Want};
use super::refusal::Refusal;
use super::subscribe::{self as path, Subscribing};
use super::wire::STATUS_EVENT;
use crate::auth::Identity;
use crate::core::Engine;
use crate::core::channel::ChannelName;
use crate::core::engine::{EngineError, Health};
use crate::core::event::{EncodingSlot, Event, SharedEvent, SlotError};
use crate::core::gap::{Gap, GapReason};
use crate::policy::Policy;
use crate::policy::rate::{MessageLimit, REPORT_INTERVAL, Slot};
use crate::registry::{CloseReason, Info, Live, Registration, Registry, Transport};
use crate::transport::engineio::TransportKind;
use crate::transport::socketio::{
    Accept, AckResponder, BoxFuture, ConnectError, DisconnectReason, EncodedPacket,
    NamespaceHandler, Payload, Socket, encode_event_raw,
};
use session::{Cursor, Entry, SessionRecord};

/// The event slot holding the shared Socket.IO packet of a live event.
static PACKET: EncodingSlot<EncodedPacket> = EncodingSlot::new();

/// Registers the binding's event encodings (at start-up, so a full event cache is an error there).
pub fn register_encodings() -> Result<(), SlotError> {
    PACKET.register()
}
/// Event name of gap notices.
pub const GAP_EVENT: &str = "herald:gap";
/// Event name telling a client why the server is about to close its connection.
pub const DISCONNECT_EVENT: &str = "herald:disconnect";

/// The `/` namespace of Herald: channels for Socket.IO clients.
pub struct ChannelsNamespace {
    core: Arc<dyn Engine>,
    access: Arc<Access>,
    max_held_bytes: usize,
    /// Application events mapped by the config (`[socketio.client_events]`).
    client_events: Arc<ClientEvents>,
    /// Connected sockets by socket id.
    conns: Mutex<HashMap<String, Arc<Conn>>>,
    /// This node's connections of every transport.
    registry: Registry,
}

/// One connected socket: its feed and its durable session.
struct Conn {
    feed: Arc<Feed<SocketOutlet>>,
    identity: Identity,
    /// This connection's share of its address's connection limit.
    _slot: Option<Slot>,
    /// Its entry in the connection registry, under its socket id: made as it joins `conns`, so the registry and
    /// `conns` agree on which connection a socket id reaches.
    registration: OnceLock<Registration>,
    /// Messages the client may still send.
    messages: Mutex<MessageLimit>,
    /// Events the client may still publish through mapped client events.
    publishes: Allowance,
    /// Ends the connection when its token expires.
    expiry: Mutex<Option<tokio::task::JoinHandle<()>>>,
    pid: String,
    record: Mutex<SessionRecord>,
    /// Set by CONNECT, taken once its reply is queued.
    pending: Mutex<Option<Pending>>,
}

/// What a CONNECT leaves for after its reply, so that the reply is the first packet of the connection: the
/// registrations' replays (and a notice that an asked-for session was unknown), under the feed's op guard taken
/// before registering.
struct Pending {
    subscribing: Subscribing<SocketOutlet>,
    session_unknown: bool,
}

/// Puts channel events on a Socket.IO socket; the policy's refusal log hears of slow consumers. The third part is
/// why the binding closed the transport itself, if it did (what the transport reports only as a forced close).
struct SocketOutlet(Arc<Socket>, Arc<Policy>, OnceLock<CloseReason>);

impl Live for Feed<SocketOutlet> {
    fn subscriptions(&self) -> Vec<ChannelName> {
        self.channels()
    }

    fn carrier(&self) -> Option<&'static str> {
        Some(match self.outlet.0.session().transport() {
            TransportKind::WebSocket => "websocket",
            // Until the upgrade completes, polling carries the packets.
            TransportKind::Polling | TransportKind::Upgrading => "polling",
        })
    }

    fn queued_bytes(&self) -> usize {
        self.outlet.0.session().queued_bytes()
    }

    /// Closes the transport, not the namespace: the stock client reconnects by itself and recovers its session.
    fn close(&self) {
        let _ = self.outlet.2.set(CloseReason::Admin);
        self.outlet.0.close_transport("closed by an administrator");
    }

    fn tell_status(&self) {
        Feed::tell_status(self);
    }
}

impl Outlet for SocketOutlet {
    const TRANSPORT: crate::registry::Transport = crate::registry::Transport::SocketIo;
    fn live(&self, event: &Arc<SharedEvent>) -> Result<(), Gone> {
        let packet = event.encoded(&PACKET, |e| encode_event(e, &Cursor::live(e).to_string()));
        self.0
            .send_encoded_stamped(&packet, event.event.time)
            .map_err(|_| Gone)
    }

    fn replayed(&self, event: &Event, reg: &Registered) -> Result<(), Gone> {
        let cursor = Cursor::Replay {
            seq: reg.position.seq,
            k: reg.k,
            offset: event.offset,
        };
        self.0
            .send_encoded_bulk(&encode_event(event, &cursor.to_string()))
            .map_err(|_| Gone)
    }

    fn gap(&self, gap: &Gap) -> Result<(), Gone> {
        let notice = crate::json::value(gap);
        self.0
            .emit(GAP_EVENT, Payload::new(vec![notice]))
            .map_err(|_| Gone)
    }

    /// `herald:status` with `{"engine",…}` and no cursor argument (the client's recovery offset stays).
    fn status(&self, health: &Health) -> Result<(), Gone> {
        let notice = crate::json::value(health);
        self.0
            .emit(STATUS_EVENT, Payload::new(vec![notice]))
            .map_err(|_| Gone)
    }

    fn overflow(&self) {
        // Aggregated: a client reconnecting slow on purpose must not write a warning each time.
        tracing::debug!(socket = %self.0.id(), "slow consumer during replay; closing its transport");
        let ip = self.0.handshake().request.remote_addr.map(|a| a.ip());
        self.1
            .refusals
            .record("slow consumer during replay: transport closed", ip);
        let _ = self.2.set(CloseReason::SlowConsumer);
        self.0.close_transport("slow consumer");
    }

    async fn room(&self) {
        self.0.session().wait_for_room(REPLAY_WINDOW).await;
    }

    fn fail(&self) {
        let _ = self.2.set(CloseReason::Error);
        self.0.close_transport("replay failed");
    }
}

/// `2["name",data,"cursor"]`: one Socket.IO EVENT packet of the `/` namespace.
fn encode_event(e: &Event, cursor: &str) -> EncodedPacket {
    // Cursors are `[LR][0-9.]+`: quoting needs no escaping.
    match RawValue::from_string(format!("\"{cursor}\"")) {
        Ok(c) => encode_event_raw("/", &e.name, &[&e.data, &c]),
        Err(_) => encode_event_raw("/", &e.name, &[&e.data]),
    }
}

/// What a `subscribe` event carries.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SubscribeArgs {
    channel: String,
    since: Option<u64>,
    epoch: Option<String>,
}

/// Tells the client of a refusal: as the ack when it asked for one, else as an `error` event naming the client
/// event refused — without an ack a refusal would go unheard.
fn refuse(socket: &Socket, event: &str, ack: Option<AckResponder>, refusal: &Refusal) {
    match ack {
        Some(ack) => reply(Some(ack), refusal.ack()),
        None => {
            let _ = socket.emit("error", Payload::new(vec![refusal.error_event(event)]));
        }
    }
}

fn reply(ack: Option<AckResponder>, value: Value) {
    if let Some(ack) = ack {
        let _ = ack.send(Payload::new(vec![value]));
    }
}

impl ChannelsNamespace {
    /// A namespace handler over `core`.
    pub fn new(
        core: Arc<dyn Engine>,
        access: Arc<Access>,
        max_held_bytes: usize,
        client_events: Arc<ClientEvents>,
        registry: Registry,
    ) -> Arc<Self> {
        Arc::new(Self {
            core,
            access,
            max_held_bytes,
            client_events,
            conns: Mutex::new(HashMap::new()),
            registry,
        })
    }

    /// The Socket.IO handler serving this namespace.
    pub fn handler(self: &Arc<Self>) -> Arc<dyn NamespaceHandler> {
        Arc::new(Handler(self.clone()))
    }

    async fn connect(
        &self,
        socket: Arc<Socket>,
        auth: Option<Value>,
    ) -> Result<Accept, ConnectError> {
        let auth = auth.unwrap_or(Value::Null);
        let request = &socket.handshake().request;
        // The CONNECT takes the connection slot (and counts against the connection rate), where a refusal can
        // carry a code the stock client shows; the handshake only took a session slot.
        let slot = self
            .access
            .admit(request.remote_addr.map(|a| a.ip()))
            .map_err(|r| r.connect_error())?;
        let identity = self
            .access
            .identify(&request.headers, &request.query, Some(&auth))
            .await
            .map_err(|e| Refusal::from(e).connect_error())?;
        let asked = auth.get("pid").and_then(Value::as_str);
        let cursor = auth
            .get("offset")
            .and_then(Value::as_str)
            .and_then(Cursor::parse);
        let record = match asked {
            Some(pid) => self.load_session(pid).await.map_err(internal)?,
            None => None,
        };
        // Another user's session id is as good as unknown.
        let record = record.filter(|r| r.user == identity.user);
        let (pid, sid, mut wants, next_k, session_unknown) = match (asked, record) {
            (Some(pid), Some(record)) => {
                // A socket still attached to this session is a stale transport: retire it first.
                let stale = self.conns.lock().remove(&record.sid);
                if let Some(old) = stale {
                    retire(&old, "session resumed elsewhere");
                }
                let resumes = session::resume_points(&*self.core, &record, cursor)
                    .await
                    .map_err(internal)?;
                let resumed = resumes.len();
                let wants: Vec<Want> = resumes
                    .into_iter()
                    // Permissions may have changed since (a new token, new rules): re-check every channel.
                    .filter(|r| self.access.keeps(&identity, &r.channel))
                    .map(|r| Want {
                        channel: r.channel,
                        after: Some(r.after),
                        epoch: None,
                        gap: r.gap,
                    })
                    .collect();
                // A channel dropped for lack of permission is a loss the client must hear about too.
                let lossless = wants.len() == resumed && wants.iter().all(|w| w.gap.is_none());
                // A new pid is how the stock client learns `recovered === false`.
                let pid = if lossless {
                    pid.to_owned()
                } else {
                    self.core.delete_session(pid);
                    new_id()
                };
                (pid, record.sid, wants, record.next_k, false)
            }
            (asked, _) => {
                let wants = self
                    .access
                    .initial_channels(&identity)
                    .into_iter()
                    .map(Want::new_events)
                    .collect();
                (new_id(), socket.id().to_string(), wants, 0, asked.is_some())
            }
        };
        let connection = crate::binding::forward::connection(&sid, "socketio", request.remote_addr);
        // The connect hook may refuse the connection, or add channels (held to the rules like any subscription).
        let hooked = self
            .client_events
            .forwarder()
            .connect(&identity, &connection)
            .await
            .map_err(|r| r.connect_error())?;
        for channel in hooked {
            if wants.iter().any(|w| w.channel == channel) {
                continue;
            }
            match self.access.subscribe(&identity, &channel) {
                Ok(()) => wants.push(Want::new_events(channel)),
                Err(r) => {
                    tracing::debug!(code = r.code(), reason = %r, "a channel the connect hook added is refused")
                }
            }
        }
        let expires_in = self.access.expires_in(&identity);
        let info = Info::new(
            sid.as_str().into(),
            Transport::SocketIo,
            &identity,
            socket.handshake().request.remote_addr,
        );
        let feed = Feed::new(
            self.core.clone(),
            SocketOutlet(socket, self.access.policy.clone(), OnceLock::new()),
            self.max_held_bytes,
            info.member.clone(),
        );
        // Registration numbers only grow within a session: cursors from earlier connections must compare
        // below every registration made now.
        feed.number_from(next_k);
        let conn = Arc::new(Conn {
            feed,
            pid: pid.clone(),
            record: Mutex::new(SessionRecord {
                sid: sid.clone(),
                user: identity.user.clone(),
                next_k,
                ..Default::default()
            }),
            identity,
            _slot: slot,
            registration: OnceLock::new(),
            messages: Mutex::new(self.access.message_limit()),
            publishes: self.client_events.allowance(connection),
            expiry: Mutex::new(None),
            pending: Mutex::new(None),
        });
        let subscribing = match self
            .register(&conn, path::register(&conn.feed, wants))
            .await
        {
            Ok(subscribing) => subscribing,
            Err(r) => {
                conn.feed.detach();
                return Err(r.connect_error());
            }
        };
        *conn.pending.lock() = Some(Pending {
            subscribing,
            session_unknown,
        });
        if let Some(left) = expires_in {
            *conn.expiry.lock() = Some(tokio::spawn(expire(conn.feed.clone(), left)));
        }
        let replaced = {
            let mut conns = self.conns.lock();
            let registration = self.registry.register(info, conn.feed.clone());
            // Set here only, once.
            let _ = conn.registration.set(registration);
            conns.insert(sid.clone(), conn)
        };
        if let Some(old) = replaced {
            // Two resumes of one session raced: the later one wins, the earlier is retired.
            retire(&old, "session resumed elsewhere");
        }
        let mut extra = Map::new();
        extra.insert("pid".into(), Value::String(pid));
        Ok(Accept {
            sid: Some(sid),
            extra,
        })
    }

    async fn load_session(&self, pid: &str) -> Result<Option<SessionRecord>, EngineError> {
        let text = self.core.session(pid).await?;
        Ok(text.and_then(|t| match serde_json::from_str(&t) {
            Ok(r) => Some(r),
            Err(e) => {
                tracing::warn!(error = %e, "unreadable session record; starting a new session");
                None
            }
        }))
    }

    /// Registers `wants` if permitted, stores the session record, acknowledges, then queues replays and held live
    /// events. A refusal has been acknowledged when it is returned.
    async fn subscribe_all(
        &self,
        conn: &Arc<Conn>,
        wants: Vec<Want>,
        ack: Option<AckResponder>,
    ) -> Result<(), Refusal> {
        let registered = path::subscribe(&conn.feed, &self.access, &conn.identity, wants);
        let subscribing = match self.register(conn, registered).await {
            Ok(subscribing) => subscribing,
            Err(refusal) => {
                reply(ack, refusal.ack());
                return Err(refusal);
            }
        };
        if let Some(r) = subscribing.registrations().first() {
            let p = &r.position;
            reply(
                ack,
                json!({"ok": true, "channel": r.channel, "offset": p.last_offset, "epoch": p.epoch}),
            );
        }
        subscribing.complete().await
    }

    /// Awaits `registered` (the shared subscribe path, which registers in the feed and holds live delivery) and
    /// stores the session record naming its registrations; the caller completes them.
    async fn register(
        &self,
        conn: &Arc<Conn>,
        registered: impl Future<Output = Result<Subscribing<SocketOutlet>, Refusal>>,
    ) -> Result<Subscribing<SocketOutlet>, Refusal> {
        let subscribing = registered.await?;
        let regs = subscribing.registrations();
        let (record, before) = {
            let mut record = conn.record.lock();
            let before = record.clone();
            for r in regs {
                record.channels.retain(|e| e.channel != r.channel.as_str());
                record.channels.push(Entry {
                    channel: r.channel.to_string(),
                    epoch: r.position.epoch.to_string(),
                    since: r.after,
                    seq: r.position.seq,
                    k: r.k,
                });
            }
            record.next_k = regs.last().map_or(record.next_k, |r| r.k + 1);
            (record.clone(), before)
        };
        // Stored before any cursor naming this registration can reach the client.
        if let Err(e) = self.store_record(&conn.pid, &record).await {
            // The registrations are undone, so the record must not name them either (a later store would resume
            // the client onto a channel it was refused). The feed's op guard keeps other changes out meanwhile.
            *conn.record.lock() = before;
            subscribing.abort();
            return Err(Refusal::from(e));
        }
        Ok(subscribing)
    }

    /// The CONNECT reply is queued: now status notices may go out, and the replays (and the unknown-session
    /// notice) follow it, on a task of their own so the connection's later packets are read meanwhile.
    fn connected(&self, socket: &Arc<Socket>) {
        let conn = self.conns.lock().get(&*socket.id()).cloned();
        let Some(conn) = conn.filter(|c| Arc::ptr_eq(&c.feed.outlet.0, socket)) else {
            return;
        };
        // After the CONNECT reply, before the replays: a client connecting during an outage hears of it first.
        conn.feed.open_status();
        let Some(Pending {
            subscribing,
            session_unknown,
        }) = conn.pending.lock().take()
        else {
            return;
        };
        tokio::spawn(async move {
            if session_unknown {
                let notice = json!({"reason": GapReason::SessionUnknown});
                let _ = conn
                    .feed
                    .outlet
                    .0
                    .emit(GAP_EVENT, Payload::new(vec![notice]));
            }
            // A failed replay closes the transport; the client resumes on reconnecting. The op guard is held to
            // here: the client's next subscription change waits for these replays.
            let _ = subscribing.complete().await;
        });
    }

    async fn store_record(&self, pid: &str, record: &SessionRecord) -> Result<(), EngineError> {
        // A record of strings and integers always serialises.
        let text =
            serde_json::to_string(record).map_err(|e| EngineError::Invalid(e.to_string()))?;
        self.core.put_session(pid, text).await
    }

    /// The built-in `subscribe` event.
    async fn subscribe(
        &self,
        conn: &Arc<Conn>,
        event: &str,
        args: &Payload,
        ack: Option<AckResponder>,
    ) {
        match parse_subscribe(args) {
            Ok(want) => {
                // Answered either way.
                let _ = self.subscribe_want(conn, event, want, ack).await;
            }
            Err(r) => refuse(&conn.feed.outlet.0, event, ack, &r),
        }
    }

    /// Subscribes to `want` if permitted, answering the client event `event`; the refusal, if any, is returned
    /// too, answered already.
    async fn subscribe_want(
        &self,
        conn: &Arc<Conn>,
        event: &str,
        want: Want,
        ack: Option<AckResponder>,
    ) -> Result<(), Refusal> {
        let unacked = ack.is_none();
        let result = self.subscribe_all(conn, vec![want], ack).await;
        // With an ack, `subscribe_all` has answered already.
        if let Err(r) = &result
            && unacked
        {
            refuse(&conn.feed.outlet.0, event, None, r);
        }
        result
    }

    /// A client event mapped in the config ([`ClientEvents`]); an unmapped one is refused as `unknown_event`.
    async fn mapped(
        self: &Arc<Self>,
        conn: &Arc<Conn>,
        event: &str,
        args: &Payload,
        ack: Option<AckResponder>,
    ) {
        let socket = &conn.feed.outlet.0;
        let outcome = self
            .client_events
            .handle(event, &args.args, &conn.identity, &conn.publishes)
            .await;
        match outcome {
            Ok(Outcome::Subscribe(channel)) => {
                let want = Want::new_events(channel);
                if let Err(r) = self.subscribe_want(conn, event, want, ack).await {
                    self.client_events.refused(&r);
                }
            }
            Ok(Outcome::Unsubscribe(channel)) => {
                if let Err(r) = self.unsubscribe_channel(conn, event, channel, ack).await {
                    self.client_events.refused(&r);
                }
            }
            Ok(Outcome::Done(value)) => reply(ack, value),
            Ok(Outcome::Reply { event: sent, data }) => {
                // A connection gone meanwhile hears nothing either way.
                let _ = socket.emit(&sent, Payload::new(vec![data]));
                reply(ack, json!({"ok": true}));
            }
            Ok(Outcome::Forward(call)) => {
                // On a task of its own: the connection's next events are not held behind a slow backend (the
                // forward's permit bounds how many run).
                let (ns, conn, event) = (self.clone(), conn.clone(), event.to_owned());
                tokio::spawn(async move { ns.forwarded(&conn, &event, call, ack).await });
            }
            Err(r) => refuse(socket, event, ack, &r),
        }
    }

    /// Runs a forward of client event `event` and applies the backend's answer: unsubscriptions, subscriptions
    /// (each refusal an `error` event), then the ack, then a disconnect if asked.
    async fn forwarded(
        &self,
        conn: &Arc<Conn>,
        event: &str,
        call: Call,
        ack: Option<AckResponder>,
    ) {
        let socket = &conn.feed.outlet.0;
        let answer = match call.run().await {
            Ok(answer) => answer,
            Err(r) => {
                self.client_events.refused(&r);
                return refuse(socket, event, ack, &r);
            }
        };
        for channel in answer.unsubscribe {
            if let Err(r) = self.unsubscribe_channel(conn, event, channel, None).await {
                self.client_events.refused(&r);
            }
        }
        for channel in answer.subscribe {
            let want = Want::new_events(channel);
            if let Err(r) = self.subscribe_want(conn, event, want, None).await {
                self.client_events.refused(&r);
            }
        }
        reply(ack, answer.ack.unwrap_or_else(|| json!({"ok": true})));
        if answer.disconnect {
            socket.disconnect();
        }
    }

    /// The built-in `unsubscribe` event.
    async fn unsubscribe(
        &self,
        conn: &Arc<Conn>,
        event: &str,
        args: &Payload,
        ack: Option<AckResponder>,
    ) {
        let name = args
            .args
            .first()
            .and_then(|a| a.get("channel"))
            .and_then(Value::as_str);
        let refusal = match name.map(ChannelName::new) {
            Some(Ok(channel)) => {
                // Answered either way.
                let _ = self.unsubscribe_channel(conn, event, channel, ack).await;
                return;
            }
            None => Refusal::InvalidRequest("expected {channel}".into()),
            Some(Err(e)) => Refusal::from(e),
        };
        refuse(&conn.feed.outlet.0, event, ack, &refusal);
    }

    /// Unsubscribes from `channel`, answering the client event `event` (a refusal is answered, then returned).
    async fn unsubscribe_channel(
        &self,
        conn: &Arc<Conn>,
        event: &str,
        channel: ChannelName,
        ack: Option<AckResponder>,
    ) -> Result<(), Refusal> {
        let stored = {
            let _op = conn.feed.serialize().await;
            conn.feed.unsubscribe(&channel);
            let record = {
                let mut record = conn.record.lock();
                record.channels.retain(|e| e.channel != channel.as_str());
                record.clone()
            };
            self.store_record(&conn.pid, &record).await
        };
        match stored {
            Ok(()) => {
                reply(ack, json!({"ok": true, "channel": channel}));
                Ok(())
            }
            Err(e) => {
                let refusal = Refusal::from(e);
                refuse(&conn.feed.outlet.0, event, ack, &refusal);
                Err(refusal)
            }
        }
    }

    fn disconnected(&self, socket: Arc<Socket>, reason: DisconnectReason) {
        let id = socket.id().to_string();
        let conn = {
            let mut conns = self.conns.lock();
            match conns.get(&id) {
                Some(c) if Arc::ptr_eq(&c.feed.outlet.0, &socket) => conns.remove(&id),
                _ => None,
            }
        };
        let Some(conn) = conn else { return };
        if let Some(timer) = conn.expiry.lock().take() {
            timer.abort();
        }
        conn.feed.detach();
        let closing = match reason {
            DisconnectReason::PingTimeout => CloseReason::Timeout,
            DisconnectReason::ServerShutdown => CloseReason::Shutdown,
            DisconnectReason::SlowConsumer => CloseReason::SlowConsumer,
            DisconnectReason::TransportError | DisconnectReason::ParseError => CloseReason::Error,
            // The binding closed the transport itself, and said why (else another part of the server did).
            DisconnectReason::ForcedClose => conn
                .feed
                .outlet
                .2
                .get()
                .copied()
                .unwrap_or(CloseReason::Admin),
            DisconnectReason::ClientNamespaceDisconnect
            | DisconnectReason::ServerDisconnect
            | DisconnectReason::TransportClose => CloseReason::Client,
        };
        if closing == CloseReason::SlowConsumer {
            super::stats::SLOW_CONSUMERS[Transport::SocketIo as usize].inc();
        }
        if let Some(registration) = conn.registration.get() {
            registration.closing(closing);
        }
        self.client_events.forwarder().disconnected(
            &conn.identity,
            &conn.publishes.forwards.connection,
            reason_text(reason),
        );
        if reason.allows_recovery() {
            self.core.session_detached(&conn.pid);
        } else {
            self.core.delete_session(&conn.pid);
        }
    }
}

/// A disconnect's reason as the Socket.IO client names it, for the disconnect hook.
fn reason_text(reason: DisconnectReason) -> &'static str {
    match reason {
        DisconnectReason::ClientNamespaceDisconnect => "client namespace disconnect",
        DisconnectReason::ServerDisconnect => "server namespace disconnect",
        DisconnectReason::TransportClose => "transport close",
        DisconnectReason::TransportError => "transport error",
        DisconnectReason::ParseError => "parse error",
        DisconnectReason::PingTimeout => "ping timeout",
        DisconnectReason::ServerShutdown => "server shutting down",
        DisconnectReason::SlowConsumer => "slow consumer",
        DisconnectReason::ForcedClose => "forced close",
    }
}

fn parse_subscribe(args: &Payload) -> Result<Want, Refusal> {
    let shape = "expected {channel, since?, epoch?}";
    if !args.attachments.is_empty() {
        return Err(Refusal::InvalidRequest(shape.into()));
    }
    let first = args
        .args
        .first()
        .ok_or_else(|| Refusal::InvalidRequest(shape.into()))?;
    let parsed: SubscribeArgs = serde_json::from_value(first.clone())
        .map_err(|e| Refusal::InvalidRequest(format!("{shape}: {e}")))?;
    let channel = ChannelName::new(&parsed.channel)?;
    Ok(Want {
        channel,
        after: parsed.since,
        epoch: parsed.epoch,
        gap: None,
    })
}

/// Stops a connection's deliveries and timers and closes its transport.
fn retire(conn: &Conn, reason: &str) {
    if let Some(timer) = conn.expiry.lock().take() {
        timer.abort();
    }
    conn.feed.detach();
    conn.feed.outlet.0.close_transport(reason);
}

/// Ends a connection whose token expired: the client is told why, then its transport closes, so the stock
/// client reconnects by itself — calling its `auth` callback for a fresh token — and resumes.
async fn expire(feed: Arc<Feed<SocketOutlet>>, left: std::time::Duration) {
    tokio::time::sleep(left).await;
    let notice = json!({"reason": "token_expired", "message": "the access token expired; reconnect with a fresh one"});
    let socket = &feed.outlet.0;
    let _ = socket.emit(DISCONNECT_EVENT, Payload::new(vec![notice]));
    let _ = feed.outlet.2.set(CloseReason::Expired);
    socket.close_transport("token expired");
}

/// A storage failure during CONNECT, as the CONNECT error.
fn internal(e: EngineError) -> ConnectError {
    Refusal::from(e).connect_error()
}

fn new_id() -> String {
    format!(
        "{:016x}{:016x}",
        rand::random::<u64>(),
        rand::random::<u64>()
    )
}

/// The [`NamespaceHandler`] of a [`ChannelsNamespace`].
struct Handler(Arc<ChannelsNamespace>);

impl NamespaceHandler for Handler {
    fn on_connect(
        &self,
        socket: Arc<Socket>,
        auth: Option<Value>,
    ) -> BoxFuture<Result<Accept, ConnectError>> {
        let ns = self.0.clone();
        Box::pin(async move { ns.connect(socket, auth).await })
    }

    fn on_event(
        &self,
        socket: Arc<Socket>,
        event: String,
        args: Payload,
        ack: Option<AckResponder>,
    ) -> BoxFuture<()> {
        let ns = self.0.clone();
        Box::pin(async move {
            let Some(conn) = ns.conns.lock().get(&*socket.id()).cloned() else {
                return;
            };
            let granted = conn.messages.lock().take(&socket.id());
            if !granted {
                // Without an ack, one notice per interval: one per refused message would itself be a flood.
                if ack.is_some() || conn.messages.lock().notice() {
                    let message = match ack {
                        Some(_) => "too many messages; slow down".to_owned(),
                        None => format!(
                            "too many messages; slow down (refusals without an ack are reported at most every {} s)",
                            REPORT_INTERVAL.as_secs()
                        ),
                    };
                    refuse(&socket, &event, ack, &Refusal::RateLimited(message));
                }
                return;
            }
            match event.as_str() {
                "subscribe" => ns.subscribe(&conn, &event, &args, ack).await,
                "unsubscribe" => ns.unsubscribe(&conn, &event, &args, ack).await,
                other => ns.mapped(&conn, other, &args, ack).await,
            }
        })
    }

    fn on_connected(&self, socket: Arc<Socket>) {
        self.0.connected(&socket);
    }

    fn on_disconnect(&self, socket: Arc<Socket>, reason: DisconnectReason) {
        self.0.disconnected(socket, reason);
    }
}
