//! A Socket.IO socket (one client in one namespace): emitting, acks in both directions,
//! shared pre-encoded packets, and server-side disconnects.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use axum::extract::ws::Utf8Bytes;
use bytes::Bytes;
use parking_lot::{Mutex, RwLock};
use serde_json::Value;
use serde_json::value::RawValue;
use tokio::sync::oneshot;

use super::client::Client;
use super::packet::{self, JsonArg};
use super::{DisconnectReason, NamespaceHandler};
use crate::transport::engineio::{CloseReason, Frame, RequestInfo, SendError, Session};

/// Event arguments plus binary attachments. Placeholders (`{"_placeholder":true,"num":i}`)
/// stay in `args` as received; to send binary, put placeholders in `args` yourself.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Payload {
    /// JSON arguments (for events, without the event name).
    pub args: Vec<Value>,
    /// Binary attachments, indexed by the placeholders' `num`.
    pub attachments: Vec<Bytes>,
}

impl Payload {
    /// The JSON placeholder standing for attachment `num` inside `args`.
    pub fn placeholder(num: usize) -> Value {
        serde_json::json!({ "_placeholder": true, "num": num })
    }

    /// A payload of JSON arguments only.
    pub fn new(args: Vec<Value>) -> Payload {
        Payload {
            args,
            attachments: Vec::new(),
        }
    }
}

/// A complete Engine.IO text frame holding one Socket.IO packet (e.g. `42["ev",{…}]`),
/// encoded once and shared by refcount across any number of sockets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodedPacket {
    frame: Utf8Bytes,
}

/// Encodes an EVENT once for sharing via [`Socket::send_encoded`]. Arguments are raw JSON
/// (`&RawValue`, `Box<RawValue>`) or `serde_json::Value`.
pub fn encode_event<A: JsonArg>(namespace: &str, event: &str, args: &[A]) -> EncodedPacket {
    EncodedPacket {
        frame: packet::event_text(namespace, event, args, 0, None),
    }
}

/// Convenience alias of [`encode_event`] for raw JSON arguments.
pub fn encode_event_raw(namespace: &str, event: &str, args: &[&RawValue]) -> EncodedPacket {
    encode_event(namespace, event, args)
}

/// The handshake of a socket: the HTTP request that opened the connection plus the
/// CONNECT packet's `auth` object.
#[derive(Debug, Clone)]
pub struct Handshake {
    /// Query, headers and peer address of the opening request.
    pub request: Arc<RequestInfo>,
    /// The CONNECT payload, if any.
    pub auth: Option<Value>,
}

impl Handshake {
    /// The first query parameter named `key`.
    pub fn query(&self, key: &str) -> Option<&str> {
        self.request.query_param(key)
    }

    /// A request header as text (Origin, Cookie, Authorization, …).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.request.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The peer address, when the server runs with connect info.
    pub fn remote_addr(&self) -> Option<std::net::SocketAddr> {
        self.request.remote_addr
    }
}

/// Why an `emit_with_ack` produced no answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AckError {
    /// No ack within the timeout.
    #[error("ack timed out")]
    Timeout,
    /// The socket disconnected before the ack arrived.
    #[error("socket disconnected")]
    Disconnected,
    /// The event could not be queued.
    #[error(transparent)]
    Send(#[from] SendError),
}

#[derive(Default)]
struct Acks {
    next: u64,
    pending: HashMap<u64, oneshot::Sender<Payload>>,
}

/// One client connected to one namespace.
pub struct Socket {
    id: RwLock<Arc<str>>,
    namespace: Arc<str>,
    session: Arc<Session>,
    handshake: Handshake,
    pub(crate) handler: Arc<dyn NamespaceHandler>,
    client: Weak<Client>,
    acks: Mutex<Acks>,
    /// Set once the socket left its namespace; sends fail from then on.
    gone: AtomicBool,
}

impl std::fmt::Debug for Socket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Socket")
            .field("id", &self.id())
            .field("namespace", &self.namespace)
            .field("sid", &self.session.sid())
            .finish()
    }
}

impl Socket {
    pub(crate) fn new(
        namespace: Arc<str>,
        session: Arc<Session>,
        handshake: Handshake,
        handler: Arc<dyn NamespaceHandler>,
        client: Weak<Client>,
    ) -> Socket {
        Socket {
            id: RwLock::new(crate::transport::engineio::generate_id().into()),
            namespace,
            session,
            handshake,
            handler,
            client,
            acks: Mutex::new(Acks::default()),
            gone: AtomicBool::new(false),
        }
    }

    /// The socket id (`sid` of the CONNECT reply; not the Engine.IO session id).
    pub fn id(&self) -> Arc<str> {
        self.id.read().clone()
    }

    pub(crate) fn set_id(&self, id: &str) {
        *self.id.write() = id.into();
    }

    /// The namespace, e.g. `/`.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The handshake (request info and auth).
    pub fn handshake(&self) -> &Handshake {
        &self.handshake
    }

    /// The underlying Engine.IO session.
    pub fn session(&self) -> &Arc<Session> {
        &self.session
    }

    /// Whether the socket is still in its namespace (or still connecting).
    pub fn connected(&self) -> bool {
        !self.gone.load(Ordering::Acquire)
    }

    /// Queues frames unless the socket already left its namespace.
    fn send_frames(&self, frames: impl IntoIterator<Item = Frame>) -> Result<(), SendError> {
        if !self.connected() {
            return Err(SendError::Closed);
        }
        self.session.send_all(frames)
    }

    /// Sends an event (BINARY_EVENT if the payload has attachments).
    pub fn emit(&self, event: &str, payload: Payload) -> Result<(), SendError> {
        let text = packet::event_text(
            &self.namespace,
            event,
            &payload.args,
            payload.attachments.len(),
            None,
        );
        self.send_frames(packet::frames(text, &payload.attachments))
    }

    /// Sends an event with an ack id; the future resolves with the client's ack arguments.
    /// The packet is queued before this returns, so emits keep their call order.
    pub fn emit_with_ack(
        self: &Arc<Self>,
        event: &str,
        payload: Payload,
        timeout: Duration,
    ) -> impl Future<Output = Result<Payload, AckError>> + Send + 'static {
        let (tx, rx) = oneshot::channel();
        let id = {
            let mut acks = self.acks.lock();
            let id = acks.next;
            acks.next += 1;
            acks.pending.insert(id, tx);
            id
        };
        let text = packet::event_text(
            &self.namespace,
            event,
            &payload.args,
            payload.attachments.len(),
            Some(id),
        );
        let sent = self.send_frames(packet::frames(text, &payload.attachments));
        if sent.is_err() {
            self.acks.lock().pending.remove(&id);
        }
        let socket = self.clone();
        async move {
            sent?;
            match tokio::time::timeout(timeout, rx).await {
                Ok(Ok(payload)) => Ok(payload),
                Ok(Err(_)) => Err(AckError::Disconnected),
                Err(_) => {
                    socket.acks.lock().pending.remove(&id);
                    Err(AckError::Timeout)
                }
            }
        }
    }

    /// Queues a packet encoded once for many sockets: no serialisation, no copy (refcount only).
    /// The packet's namespace must be this socket's.
    pub fn send_encoded(&self, packet: &EncodedPacket) -> Result<(), SendError> {
        self.send_frames(std::iter::once(Frame::Text(packet.frame.clone())))
    }

    /// [`Socket::send_encoded`] stamped `stamp` (see `engineio::Session::send_stamped`).
    pub fn send_encoded_stamped(
        &self,
        packet: &EncodedPacket,
        stamp: i64,
    ) -> Result<(), SendError> {
        if !self.connected() {
            return Err(SendError::Closed);
        }
        self.session
            .send_stamped(Frame::Text(packet.frame.clone()), stamp)
    }

    /// [`Socket::send_encoded`] for a bulk sender pacing itself with the session's `wait_for_room`.
    pub fn send_encoded_bulk(&self, packet: &EncodedPacket) -> Result<(), SendError> {
        if !self.connected() {
            return Err(SendError::Closed);
        }
        self.session
            .send_bulk(std::iter::once(Frame::Text(packet.frame.clone())))
    }

    /// Closes the whole Engine.IO connection (close packet `1`); the client reconnects by itself.
    pub fn close_transport(&self, reason: &str) {
        tracing::debug!(socket = %self.id(), reason, "closing transport");
        self.session.close(CloseReason::Forced);
    }

    /// Server-side namespace disconnect: sends `41`; `on_disconnect` follows on another task.
    pub fn disconnect(self: &Arc<Self>) {
        let Some(client) = self.client.upgrade() else {
            return;
        };
        if !client.remove_socket(self) {
            return;
        }
        self.gone.store(true, Ordering::Release);
        let _ = self
            .session
            .send(Frame::Text(packet::disconnect_text(&self.namespace)));
        let socket = self.clone();
        tokio::spawn(async move {
            socket.finish(DisconnectReason::ServerDisconnect);
        });
    }

    /// Resolves a pending server→client ack.
    pub(crate) fn resolve_ack(&self, id: u64, payload: Payload) {
        if let Some(tx) = self.acks.lock().pending.remove(&id) {
            let _ = tx.send(payload);
        }
    }

    /// Final bookkeeping after the socket left its client: fail acks, tell the handler.
    pub(crate) fn finish(self: &Arc<Self>, reason: DisconnectReason) {
        self.gone.store(true, Ordering::Release);
        self.acks.lock().pending.clear();
        self.handler.on_disconnect(self.clone(), reason);
    }
}

/// Answers one client→server ack; dropping it sends nothing.
#[derive(Debug)]
pub struct AckResponder {
    socket: Arc<Socket>,
    id: u64,
}

impl AckResponder {
    pub(crate) fn new(socket: Arc<Socket>, id: u64) -> AckResponder {
        AckResponder { socket, id }
    }

    /// The ack id.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Sends the ack (BINARY_ACK if the payload has attachments).
    pub fn send(self, payload: Payload) -> Result<(), SendError> {
        let text = packet::ack_text(
            &self.socket.namespace,
            self.id,
            &payload.args,
            payload.attachments.len(),
        );
        self.socket
            .send_frames(packet::frames(text, &payload.attachments))
    }
}
