//! Channels over Socket.IO: `subscribe`/`unsubscribe` events, server-side channels, shared encoded deliveries,
//! and connection state recovery as the stock client speaks it, covering every channel and surviving restarts.
//!
//! Every live event reaches a socket as `42["name",data,"L<seq>.<channel>.<offset>"]`, encoded once per event and
//! shared by all sockets. Replayed events carry `R<seq>.<k>.<offset>` instead: the position of their
//! subscription in the session record. The stock client echoes the last such string back as `offset` when it
//! reconnects with its `pid`; [`session::resume_points`] turns that into a position per channel.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value, json};

use crate::core::Core;
use crate::core::channel::ChannelName;
use crate::core::event::{EncodingSlot, Event, SharedEvent};
use crate::core::hub::{Subscriber, SubscriberId};
use crate::core::session::{self, Cursor, Entry, Gap, GapReason, Resume, SessionRecord};
use crate::core::store::StoreError;
use crate::transport::socketio::{
    Accept, AckResponder, BoxFuture, ConnectError, DisconnectReason, EncodedPacket,
    NamespaceHandler, Payload, Socket, encode_event_raw,
};

/// The event slot holding the shared Socket.IO packet of a live event.
const SLOT: EncodingSlot = EncodingSlot(0);
/// Event name of gap notices.
pub const GAP_EVENT: &str = "herald:gap";

/// The `/` namespace of Herald: channels for Socket.IO clients.
pub struct ChannelsNamespace {
    core: Arc<Core>,
    server_side: Vec<ChannelName>,
    max_pending_bytes: usize,
    /// Connected sockets by socket id.
    conns: Mutex<HashMap<String, Arc<Conn>>>,
}

/// One connected socket's channel state.
struct Conn {
    socket: Arc<Socket>,
    pid: String,
    sub_id: SubscriberId,
    /// Serialises this socket's subscription changes.
    op: tokio::sync::Mutex<()>,
    state: Mutex<ConnState>,
    max_pending_bytes: usize,
}

#[derive(Default)]
struct ConnState {
    record: SessionRecord,
    /// While a replay is being queued, live events wait here so they follow it.
    replaying: bool,
    pending: Vec<Arc<SharedEvent>>,
    pending_bytes: usize,
    closed: bool,
}

impl Subscriber for Conn {
    fn deliver(&self, event: &Arc<SharedEvent>) {
        let mut st = self.state.lock();
        if st.closed {
            return;
        }
        if st.replaying {
            st.pending_bytes += event.event.data.get().len();
            if st.pending_bytes > self.max_pending_bytes {
                st.closed = true;
                tracing::warn!(socket = %self.socket.id(), "slow consumer during replay; closing its transport");
                self.socket.close_transport("slow consumer");
                return;
            }
            st.pending.push(event.clone());
            return;
        }
        if self.send_live(event).is_err() {
            st.closed = true;
        }
    }
}

impl Conn {
    fn send_live(&self, event: &Arc<SharedEvent>) -> Result<(), ()> {
        let packet = event.encoded(SLOT, |e| encode_event(e, &Cursor::live(e).to_string()));
        self.socket.send_encoded(&packet).map_err(|_| ())
    }

    /// Ends a replay: queued live events follow it, then delivery goes direct again.
    fn finish_replay(&self) {
        let mut st = self.state.lock();
        let pending = std::mem::take(&mut st.pending);
        st.pending_bytes = 0;
        st.replaying = false;
        for ev in &pending {
            if st.closed || self.send_live(ev).is_err() {
                st.closed = true;
                return;
            }
        }
    }

    fn channels(&self) -> Vec<ChannelName> {
        let st = self.state.lock();
        st.record
            .channels
            .iter()
            .filter_map(|e| ChannelName::new(&e.channel).ok())
            .collect()
    }
}

/// `2["name",data,"cursor"]`: one Socket.IO EVENT packet of the `/` namespace.
fn encode_event(e: &Event, cursor: &str) -> EncodedPacket {
    // Cursors are `[LR][0-9.]+`: quoting needs no escaping.
    let cursor = RawValue::from_string(format!("\"{cursor}\"")).ok();
    match cursor {
        Some(c) => encode_event_raw("/", &e.name, &[&e.data, &c]),
        None => encode_event_raw("/", &e.name, &[&e.data]),
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

/// An error acknowledged to the client as `{ok:false, error:{code, message}}`.
struct Refusal {
    code: &'static str,
    message: String,
}

impl Refusal {
    fn new(code: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    fn to_json(&self) -> Value {
        json!({"ok": false, "error": {"code": self.code, "message": self.message}})
    }
}

impl From<StoreError> for Refusal {
    fn from(e: StoreError) -> Self {
        tracing::error!(error = %e, "storage failure during a subscription");
        Refusal::new("unavailable", "storage is unavailable; try again")
    }
}

/// One channel to (re)register for a socket, with where the client stands.
struct Want {
    channel: ChannelName,
    /// Last offset the client has; `None` means "from now on".
    after: Option<u64>,
    /// Epoch the client's offset belongs to, if it said.
    epoch: Option<String>,
    /// A gap already known (from recovery).
    gap: Option<Gap>,
}

impl ChannelsNamespace {
    /// A namespace handler over `core`.
    pub fn new(
        core: Arc<Core>,
        server_side: Vec<ChannelName>,
        max_pending_bytes: usize,
    ) -> Arc<Self> {
        Arc::new(Self {
            core,
            server_side,
            max_pending_bytes,
            conns: Mutex::new(HashMap::new()),
        })
    }

    /// Closes the transport of socket `id`; false if there is no such socket.
    pub fn close_transport(&self, id: &str) -> bool {
        let conn = self.conns.lock().get(id).cloned();
        match conn {
            Some(c) => {
                c.socket.close_transport("closed by an administrator");
                true
            }
            None => false,
        }
    }

    async fn connect(
        &self,
        socket: Arc<Socket>,
        auth: Option<Value>,
    ) -> Result<Accept, ConnectError> {
        let auth = auth.unwrap_or(Value::Null);
        let pid = auth.get("pid").and_then(Value::as_str);
        let cursor = auth
            .get("offset")
            .and_then(Value::as_str)
            .and_then(Cursor::parse);
        let stored = match pid {
            Some(pid) => self.core.store.session(pid).await.map_err(internal)?,
            None => None,
        };
        let record: Option<SessionRecord> =
            stored.and_then(|text| match serde_json::from_str(&text) {
                Ok(r) => Some(r),
                Err(e) => {
                    tracing::warn!(error = %e, "unreadable session record; starting a new session");
                    None
                }
            });
        let (pid, wants, sid, recovered) = match (pid, record) {
            (Some(pid), Some(record)) => {
                // A socket still attached to this session is a stale transport: retire it first.
                if let Some(old) = self.conns.lock().remove(&record.sid) {
                    self.detach(&old);
                    old.socket.close_transport("session resumed elsewhere");
                }
                let resumes = session::resume_points(&self.core.store, &record, cursor)
                    .await
                    .map_err(internal)?;
                let lossless = resumes.iter().all(|r| r.gap.is_none());
                let wants = resumes.into_iter().map(Resume::into_want).collect();
                // A new pid tells the stock client `recovered === false`.
                let pid = if lossless {
                    pid.to_owned()
                } else {
                    self.core.store.delete_session(pid);
                    new_id()
                };
                (pid, wants, record.sid, lossless)
            }
            (asked, _) => {
                let wants = self
                    .server_side
                    .iter()
                    .map(|c| Want {
                        channel: c.clone(),
                        after: None,
                        epoch: None,
                        gap: None,
                    })
                    .collect();
                if asked.is_some() {
                    let notice = json!({"reason": GapReason::SessionUnknown});
                    let _ = socket.emit(GAP_EVENT, Payload::new(vec![notice]));
                }
                (new_id(), wants, socket.id().to_string(), false)
            }
        };
        let conn = Arc::new(Conn {
            socket: socket.clone(),
            pid: pid.clone(),
            sub_id: SubscriberId::next(),
            op: tokio::sync::Mutex::new(()),
            state: Mutex::new(ConnState {
                record: SessionRecord {
                    sid: sid.clone(),
                    ..Default::default()
                },
                ..Default::default()
            }),
            max_pending_bytes: self.max_pending_bytes,
        });
        {
            let _op = conn.op.lock().await;
            if let Err(r) = self.register(&conn, wants, None).await {
                self.detach(&conn);
                return Err(ConnectError {
                    message: r.message,
                    data: Some(json!({"code": r.code})),
                });
            }
        }
        tracing::debug!(%sid, %pid, recovered, "socket connected");
        self.conns.lock().insert(sid.clone(), conn);
        let mut extra = Map::new();
        extra.insert("pid".into(), Value::String(pid));
        Ok(Accept {
            sid: Some(sid),
            extra,
        })
    }

    /// Registers `wants` at one hub position, stores the session, then queues (in order) the optional ack,
    /// gap notices, replays and the live events that arrived meanwhile. Returns the positions acknowledged.
    async fn register(
        &self,
        conn: &Arc<Conn>,
        wants: Vec<Want>,
        ack: Option<(AckResponder, ChannelName)>,
    ) -> Result<(), Refusal> {
        let channels: Vec<ChannelName> = wants.iter().map(|w| w.channel.clone()).collect();
        conn.state.lock().replaying = true;
        let sub: Arc<dyn Subscriber> = conn.clone();
        let positions = self.core.hub.subscribe(&channels, conn.sub_id, &sub);
        let mut plan = Vec::with_capacity(wants.len());
        let record = {
            let mut st = conn.state.lock();
            for (want, pos) in wants.into_iter().zip(&positions) {
                let mut after = want.after.unwrap_or(pos.last_offset).min(pos.last_offset);
                let mut gap = want.gap;
                if want
                    .epoch
                    .as_deref()
                    .is_some_and(|e| !e.is_empty() && !pos.epoch.is_empty() && *e != *pos.epoch)
                    && gap.is_none()
                {
                    gap = Some(Gap {
                        channel: want.channel.clone(),
                        reason: GapReason::EpochChanged,
                        epoch: pos.epoch.clone(),
                        from: None,
                        to: None,
                    });
                    after = 0;
                }
                let k = st.record.next_k;
                st.record.next_k += 1;
                st.record
                    .channels
                    .retain(|e| e.channel != want.channel.as_str());
                st.record.channels.push(Entry {
                    channel: want.channel.to_string(),
                    epoch: pos.epoch.to_string(),
                    since: after,
                    seq: pos.seq,
                    k,
                });
                plan.push((want.channel, after, pos.clone(), k, gap));
            }
            st.record.clone()
        };
        let text =
            serde_json::to_string(&record).map_err(|e| Refusal::new("internal", e.to_string()))?;
        if let Err(e) = self.core.store.put_session(&conn.pid, text).await {
            for c in &channels {
                self.core.hub.unsubscribe(c, conn.sub_id);
            }
            conn.finish_replay();
            let refusal = Refusal::from(e);
            if let Some((ack, _)) = ack {
                let _ = ack.send(Payload::new(vec![refusal.to_json()]));
            }
            return Err(refusal);
        }
        if let Some((ack, channel)) = ack {
            let pos = plan.iter().find(|p| p.0 == channel).map(|p| &p.2);
            let (offset, epoch) = pos.map_or((0, "".into()), |p| (p.last_offset, p.epoch.clone()));
            let reply = json!({"ok": true, "channel": channel, "offset": offset, "epoch": epoch});
            let _ = ack.send(Payload::new(vec![reply]));
        }
        for (channel, after, pos, k, gap) in plan {
            let events = self.core.replay(&channel, after, pos.last_offset).await?;
            let mut gap = gap;
            if gap.is_none()
                && let Some(first) = events.first()
                && first.offset > after + 1
            {
                gap = Some(Gap {
                    channel: channel.clone(),
                    reason: GapReason::HistoryTrimmed,
                    epoch: pos.epoch.clone(),
                    from: Some(after + 1),
                    to: Some(first.offset - 1),
                });
            }
            if let Some(gap) = gap {
                let notice = serde_json::to_value(&gap).unwrap_or(Value::Null);
                let _ = conn.socket.emit(GAP_EVENT, Payload::new(vec![notice]));
            }
            for e in &events {
                let cursor = Cursor::Replay {
                    seq: pos.seq,
                    k,
                    offset: e.offset,
                }
                .to_string();
                if conn.socket.send_encoded(&encode_event(e, &cursor)).is_err() {
                    conn.state.lock().closed = true;
                    break;
                }
            }
        }
        conn.finish_replay();
        Ok(())
    }

    async fn subscribe(&self, conn: &Arc<Conn>, args: &Payload, ack: Option<AckResponder>) {
        let parsed = parse_subscribe(args);
        let (want, ack) = match (parsed, ack) {
            (Ok(w), Some(ack)) => (w, ack),
            (Ok(w), None) => {
                let _op = conn.op.lock().await;
                let _ = self.register(conn, vec![w], None).await;
                return;
            }
            (Err(r), Some(ack)) => {
                let _ = ack.send(Payload::new(vec![r.to_json()]));
                return;
            }
            (Err(_), None) => return,
        };
        let channel = want.channel.clone();
        let _op = conn.op.lock().await;
        // Refusals are acknowledged inside `register`.
        let _ = self.register(conn, vec![want], Some((ack, channel))).await;
    }

    async fn unsubscribe(&self, conn: &Arc<Conn>, args: &Payload, ack: Option<AckResponder>) {
        let reply = match args
            .args
            .first()
            .and_then(|a| a.get("channel"))
            .and_then(Value::as_str)
        {
            None => Refusal::new("invalid_request", "expected {channel}").to_json(),
            Some(name) => match ChannelName::new(name) {
                Err(e) => Refusal::new("invalid_channel", e.to_string()).to_json(),
                Ok(channel) => {
                    let _op = conn.op.lock().await;
                    self.core.hub.unsubscribe(&channel, conn.sub_id);
                    let record = {
                        let mut st = conn.state.lock();
                        st.record.channels.retain(|e| e.channel != channel.as_str());
                        st.record.clone()
                    };
                    match serde_json::to_string(&record) {
                        Ok(text) => match self.core.store.put_session(&conn.pid, text).await {
                            Ok(()) => json!({"ok": true, "channel": channel}),
                            Err(e) => Refusal::from(e).to_json(),
                        },
                        Err(e) => Refusal::new("internal", e.to_string()).to_json(),
                    }
                }
            },
        };
        if let Some(ack) = ack {
            let _ = ack.send(Payload::new(vec![reply]));
        }
    }

    /// Stops live delivery to `conn`.
    fn detach(&self, conn: &Arc<Conn>) {
        conn.state.lock().closed = true;
        for c in conn.channels() {
            self.core.hub.unsubscribe(&c, conn.sub_id);
        }
    }
}

impl Resume {
    fn into_want(self) -> Want {
        Want {
            channel: self.channel,
            after: Some(self.after),
            epoch: None,
            gap: self.gap,
        }
    }
}

fn parse_subscribe(args: &Payload) -> Result<Want, Refusal> {
    let invalid = || Refusal::new("invalid_request", "expected {channel, since?, epoch?}");
    if !args.attachments.is_empty() {
        return Err(invalid());
    }
    let first = args.args.first().ok_or_else(invalid)?;
    let parsed: SubscribeArgs = serde_json::from_value(first.clone()).map_err(|e| {
        Refusal::new(
            "invalid_request",
            format!("expected {{channel, since?, epoch?}}: {e}"),
        )
    })?;
    let channel = ChannelName::new(&parsed.channel)
        .map_err(|e| Refusal::new("invalid_channel", e.to_string()))?;
    Ok(Want {
        channel,
        after: parsed.since,
        epoch: parsed.epoch,
        gap: None,
    })
}

fn internal(e: StoreError) -> ConnectError {
    tracing::error!(error = %e, "storage failure during connect");
    ConnectError {
        message: "storage unavailable".into(),
        data: Some(json!({"code": "unavailable"})),
    }
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
            match event.as_str() {
                "subscribe" => ns.subscribe(&conn, &args, ack).await,
                "unsubscribe" => ns.unsubscribe(&conn, &args, ack).await,
                other => {
                    if let Some(ack) = ack {
                        let r = Refusal::new(
                            "unknown_event",
                            format!("Herald does not handle {other:?}"),
                        );
                        let _ = ack.send(Payload::new(vec![r.to_json()]));
                    }
                }
            }
        })
    }

    fn on_disconnect(&self, socket: Arc<Socket>, reason: DisconnectReason) {
        self.0.disconnected(socket, reason);
    }
}

impl ChannelsNamespace {
    /// The Socket.IO handler serving this namespace.
    pub fn handler(self: &Arc<Self>) -> Arc<dyn NamespaceHandler> {
        Arc::new(Handler(self.clone()))
    }

    fn disconnected(&self, socket: Arc<Socket>, reason: DisconnectReason) {
        let id = socket.id().to_string();
        let conn = {
            let mut conns = self.conns.lock();
            match conns.get(&id) {
                Some(c) if Arc::ptr_eq(&c.socket, &socket) => conns.remove(&id),
                _ => None,
            }
        };
        let Some(conn) = conn else { return };
        self.detach(&conn);
        if !reason.allows_recovery() {
            self.core.store.delete_session(&conn.pid);
        } else {
            self.core.store.session_detached(&conn.pid);
        }
    }
}
