//! One Engine.IO connection seen from Socket.IO: decodes packets (reassembling binary
//! ones), routes them to the namespace sockets, and runs CONNECT/EVENT/DISCONNECT handling
//! in packet order on the session's lane.

use std::sync::Arc;

use bytes::Bytes;
use parking_lot::Mutex;
use serde_json::Value;

use super::packet::{self, Packet, PacketKind};
use super::socket::{AckResponder, Handshake, Payload, Socket};
use super::{DisconnectReason, Inner};
use crate::transport::engineio::{CloseReason, Frame, Message, Session, SessionHandler, Work};

/// A binary packet waiting for its attachments.
struct Partial {
    packet: Packet,
    attachments: Vec<Bytes>,
}

#[derive(Default)]
struct Sockets {
    /// (namespace, socket); a connection rarely joins more than a couple of namespaces.
    list: Vec<Arc<Socket>>,
    closed: bool,
}

/// Socket.IO state of one Engine.IO session.
pub(crate) struct Client {
    io: Arc<Inner>,
    session: std::sync::Weak<Session>,
    sockets: Mutex<Sockets>,
    partial: Mutex<Option<Partial>>,
}

impl Client {
    pub(crate) fn new(io: Arc<Inner>, session: &Arc<Session>) -> Client {
        Client {
            io,
            session: Arc::downgrade(session),
            sockets: Mutex::new(Sockets::default()),
            partial: Mutex::new(None),
        }
    }

    fn close(&self, reason: CloseReason) {
        if let Some(session) = self.session.upgrade() {
            session.close(reason);
        }
    }

    fn send(&self, frame: Frame) {
        if let Some(session) = self.session.upgrade() {
            let _ = session.send(frame);
        }
    }

    fn socket(&self, namespace: &str) -> Option<Arc<Socket>> {
        let sockets = self.sockets.lock();
        sockets
            .list
            .iter()
            .find(|s| s.namespace() == namespace)
            .cloned()
    }

    /// Removes `socket` from this client and the registry; false if it was already gone.
    pub(crate) fn remove_socket(&self, socket: &Arc<Socket>) -> bool {
        let mut sockets = self.sockets.lock();
        let Some(pos) = sockets.list.iter().position(|s| Arc::ptr_eq(s, socket)) else {
            return false;
        };
        sockets.list.swap_remove(pos);
        drop(sockets);
        self.io.unregister(socket);
        true
    }

    fn protocol_error(&self, error: &dyn std::fmt::Display) -> Option<Work> {
        tracing::debug!(%error, "invalid socket.io packet");
        self.close(CloseReason::ParseError);
        None
    }

    fn dispatch(self: Arc<Self>, packet: Packet, attachments: Vec<Bytes>) -> Option<Work> {
        match packet.kind {
            PacketKind::Connect => Some(Box::pin(async move {
                let auth = packet.data;
                self.connect(packet.namespace, auth).await;
            })),
            PacketKind::Disconnect => Some(Box::pin(async move {
                if let Some(socket) = self.socket(&packet.namespace)
                    && self.remove_socket(&socket)
                {
                    socket.finish(DisconnectReason::ClientNamespaceDisconnect);
                }
            })),
            PacketKind::Event | PacketKind::BinaryEvent => {
                Some(Box::pin(self.event(packet, attachments)))
            }
            PacketKind::Ack | PacketKind::BinaryAck => {
                // Acks resolve at once, so a handler awaiting one is not blocked by its own lane.
                if let (Some(id), Some(socket)) = (packet.ack_id, self.socket(&packet.namespace)) {
                    let args = match packet.data {
                        Some(Value::Array(args)) => args,
                        _ => Vec::new(),
                    };
                    socket.resolve_ack(id, Payload { args, attachments });
                }
                None
            }
            PacketKind::ConnectError => self.protocol_error(&"CONNECT_ERROR from client"),
        }
    }

    async fn event(self: Arc<Self>, packet: Packet, attachments: Vec<Bytes>) {
        let Some(socket) = self.socket(&packet.namespace) else {
            // The reference closes the connection here; we drop the event instead, since it
            // can legitimately race a server-side `disconnect()` of that namespace.
            tracing::debug!(
                namespace = packet.namespace,
                "event for a namespace not joined"
            );
            return;
        };
        let Some(Value::Array(mut args)) = packet.data else {
            return;
        };
        // Validated by the decoder: a non-empty array starting with a string or number.
        let event = match args.remove(0) {
            Value::String(s) => s,
            other => other.to_string(),
        };
        let ack = packet
            .ack_id
            .map(|id| AckResponder::new(socket.clone(), id));
        let handler = socket.handler.clone();
        handler
            .on_event(socket, event, Payload { args, attachments }, ack)
            .await;
    }

    async fn connect(self: Arc<Self>, namespace: String, auth: Option<Value>) {
        let Some(session) = self.session.upgrade() else {
            return;
        };
        let Some((namespace, handler)) = self.io.namespace(&namespace) else {
            self.send(Frame::Text(packet::connect_error_text(
                &namespace,
                "Invalid namespace",
                None,
            )));
            return;
        };
        if self.socket(&namespace).is_some() {
            self.protocol_error(&"CONNECT for a namespace already joined");
            return;
        }
        let handshake = Handshake {
            request: session.request().clone(),
            auth: auth.clone(),
        };
        let socket = Arc::new(Socket::new(
            namespace.clone(),
            session.clone(),
            handshake,
            handler.clone(),
            Arc::downgrade(&self),
        ));
        match handler.on_connect(socket.clone(), auth).await {
            Ok(accept) => {
                if let Some(sid) = &accept.sid {
                    socket.set_id(sid);
                }
                {
                    let mut sockets = self.sockets.lock();
                    if sockets.closed {
                        drop(sockets);
                        socket.finish(DisconnectReason::TransportClose);
                        return;
                    }
                    sockets.list.push(socket.clone());
                }
                self.io.register(&socket);
                session.mark_ready();
                let reply = packet::connect_text(&namespace, &socket.id(), &accept.extra);
                self.send(Frame::Text(reply));
                handler.on_connected(socket);
            }
            Err(e) => {
                let text = packet::connect_error_text(&namespace, &e.message, e.data.as_ref());
                self.send(Frame::Text(text));
            }
        }
    }
}

impl SessionHandler for Client {
    fn on_message(self: Arc<Self>, message: Message) -> Option<Work> {
        match message {
            Message::Text(text) => {
                if self.partial.lock().is_some() {
                    return self.protocol_error(&"text packet while awaiting attachments");
                }
                let packet = match packet::decode(&text) {
                    Ok(packet) => packet,
                    Err(e) => return self.protocol_error(&e),
                };
                if packet.attachments > 0 {
                    let attachments = Vec::with_capacity(packet.attachments);
                    *self.partial.lock() = Some(Partial {
                        packet,
                        attachments,
                    });
                    return None;
                }
                self.dispatch(packet, Vec::new())
            }
            Message::Binary(data) => {
                let complete = {
                    let mut partial = self.partial.lock();
                    let Some(p) = partial.as_mut() else {
                        drop(partial);
                        return self.protocol_error(&"unexpected binary message");
                    };
                    p.attachments.push(data);
                    if p.attachments.len() < p.packet.attachments {
                        return None;
                    }
                    partial.take()
                };
                let p = complete?;
                self.dispatch(p.packet, p.attachments)
            }
        }
    }

    fn on_close(&self, reason: CloseReason) {
        let sockets = {
            let mut sockets = self.sockets.lock();
            sockets.closed = true;
            std::mem::take(&mut sockets.list)
        };
        let reason = DisconnectReason::from(reason);
        for socket in sockets {
            self.io.unregister(&socket);
            socket.finish(reason);
        }
    }
}
