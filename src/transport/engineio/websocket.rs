//! WebSocket transport: WS-only sessions and upgrades from polling (`2probe`/`3probe`/`5`).
//! One task per connection runs a reader and a coalescing writer side by side: the writer
//! drains what is queued, `feed`s each frame and flushes once per batch.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message as WsMessage, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{FromRequestParts, Request};
use axum::response::Response;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};

use super::RequestError;
use super::packet::{Frame, Message, Packet, decode_text};
use super::session::{CloseReason, Session, TransportKind, WsBatch};

/// Small read buffer: tungstenite allocates it eagerly per connection, and the default
/// 128 KiB would dominate idle memory.
const READ_BUFFER: usize = 4 * 1024;
/// Frames are buffered up to this size before tungstenite writes; we flush per batch anyway.
/// Kept small because tungstenite keeps the buffer's capacity after a burst.
const WRITE_BUFFER: usize = 16 * 1024;
/// Time the writer gets to send its close frame after the reader ended.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

fn configure(upgrade: WebSocketUpgrade, session: &Session) -> WebSocketUpgrade {
    upgrade
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(WRITE_BUFFER)
        .max_message_size(session.max_payload())
        .max_frame_size(session.max_payload())
}

/// Accepts a WS-only session whose open packet is already queued.
pub(crate) fn accept(session: Arc<Session>, upgrade: WebSocketUpgrade) -> Response {
    let failed = session.clone();
    configure(upgrade, &session)
        .on_failed_upgrade(move |_| failed.close(CloseReason::TransportError))
        .on_upgrade(move |ws| run(session, ws, false))
}

/// Handles `transport=websocket&sid=…`: a probe-and-upgrade of a polling session.
pub(crate) async fn upgrade(session: Arc<Session>, req: Request) -> Response {
    let (mut parts, _) = req.into_parts();
    let Ok(upgrade) = WebSocketUpgrade::from_request_parts(&mut parts, &()).await else {
        return RequestError::BadRequest.upgrade_response();
    };
    let upgrade = configure(upgrade, &session);
    if !session.try_attach_ws() {
        // The reference accepts the socket and closes it at once.
        return upgrade.on_upgrade(|mut ws| async move {
            let _ = ws.send(WsMessage::Close(None)).await;
        });
    }
    let failed = session.clone();
    upgrade
        .on_failed_upgrade(move |_| failed.abort_upgrade())
        .on_upgrade(move |ws| run(session, ws, true))
}

async fn run(session: Arc<Session>, ws: WebSocket, probe: bool) {
    let (mut sink, mut stream) = ws.split();
    if probe {
        let probe = tokio::time::timeout(
            session.upgrade_timeout(),
            probe_phase(&session, &mut sink, &mut stream),
        );
        let upgraded = tokio::select! {
            result = probe => result == Ok(true),
            _ = session.closed() => false,
        };
        if !upgraded {
            tracing::debug!(sid = session.sid(), "upgrade failed");
            session.abort_upgrade();
            let _ = sink.send(WsMessage::Close(None)).await;
            return;
        }
    }
    let reader = read_loop(&session, &mut stream);
    let writer = write_loop(&session, &mut sink);
    tokio::pin!(reader, writer);
    // The writer ends the connection after its close frame. If the reader ends first, or the
    // writer is stuck on a peer that stopped reading, it gets a grace period, then is dropped.
    tokio::select! {
        _ = &mut writer => {}
        _ = &mut reader => {
            let _ = tokio::time::timeout(CLOSE_GRACE, writer).await;
        }
        _ = session.closed() => {
            let _ = tokio::time::timeout(CLOSE_GRACE, writer).await;
        }
    }
}

/// Answers `2probe` with `3probe` and waits for `5`. Returns whether the upgrade completed.
async fn probe_phase(
    session: &Arc<Session>,
    sink: &mut SplitSink<WebSocket, WsMessage>,
    stream: &mut SplitStream<WebSocket>,
) -> bool {
    while let Some(Ok(msg)) = stream.next().await {
        let WsMessage::Text(text) = msg else {
            if matches!(msg, WsMessage::Ping(_) | WsMessage::Pong(_)) {
                continue;
            }
            return false;
        };
        match decode_text(text) {
            Ok(Packet::Ping(data)) if data.as_str() == "probe" => {
                if sink
                    .send(WsMessage::Text(Utf8Bytes::from_static("3probe")))
                    .await
                    .is_err()
                {
                    return false;
                }
                session.begin_upgrade();
            }
            Ok(Packet::Upgrade) => return session.complete_upgrade(),
            Ok(Packet::Noop) => {}
            _ => return false,
        }
    }
    false
}

async fn read_loop(session: &Arc<Session>, stream: &mut SplitStream<WebSocket>) {
    let reason = loop {
        let Some(msg) = stream.next().await else {
            break CloseReason::TransportClose;
        };
        let packet = match msg {
            Ok(WsMessage::Text(text)) => match decode_text(text) {
                Ok(packet) => packet,
                Err(e) => {
                    tracing::debug!(sid = session.sid(), error = %e, "invalid packet");
                    break CloseReason::ParseError;
                }
            },
            Ok(WsMessage::Binary(data)) => Packet::Message(Message::Binary(data)),
            Ok(WsMessage::Ping(_) | WsMessage::Pong(_)) => continue,
            Ok(WsMessage::Close(_)) => break CloseReason::TransportClose,
            Err(e) => {
                tracing::debug!(sid = session.sid(), error = %e, "websocket read error");
                break CloseReason::TransportError;
            }
        };
        session.receive(packet).await;
        if session.is_closed() {
            return;
        }
    };
    session.close(reason);
}

fn to_ws(frame: Frame) -> WsMessage {
    match frame {
        Frame::Text(text) => WsMessage::Text(text),
        Frame::Binary(data) => WsMessage::Binary(data),
    }
}

async fn write_loop(session: &Arc<Session>, sink: &mut SplitSink<WebSocket, WsMessage>) {
    loop {
        let wake = session.ws_wake.notified();
        match session.take_ws_batch() {
            WsBatch::Wait => wake.await,
            WsBatch::Frames(frames) => {
                for frame in frames {
                    if sink.feed(to_ws(frame)).await.is_err() {
                        session.close(CloseReason::TransportError);
                        return;
                    }
                }
                if sink.flush().await.is_err() {
                    session.close(CloseReason::TransportError);
                    return;
                }
            }
            WsBatch::Close(frames, close) => {
                for frame in frames {
                    if sink.feed(to_ws(frame)).await.is_err() {
                        return;
                    }
                }
                let close = close.map(|(code, reason)| CloseFrame {
                    code,
                    reason: Utf8Bytes::from_static(reason),
                });
                let _ = sink.send(WsMessage::Close(close)).await;
                return;
            }
        }
    }
}

impl Session {
    /// Claims the session for a WebSocket; false if one is attached or it is not polling.
    pub(crate) fn try_attach_ws(&self) -> bool {
        let mut st = self.state.lock();
        if st.ws_attached || st.transport != TransportKind::Polling || st.is_closed() {
            return false;
        }
        st.ws_attached = true;
        true
    }

    /// The probe succeeded: pending and later GETs are answered with noop.
    pub(crate) fn begin_upgrade(&self) {
        let mut st = self.state.lock();
        if st.transport == TransportKind::Polling {
            st.transport = TransportKind::Upgrading;
        }
        drop(st);
        self.poll_wake.notify_one();
    }

    /// `5` received: WebSocket takes over the queue. False if the session closed meanwhile.
    pub(crate) fn complete_upgrade(&self) -> bool {
        let mut st = self.state.lock();
        if st.is_closed() {
            return false;
        }
        st.transport = TransportKind::WebSocket;
        drop(st);
        self.poll_wake.notify_one();
        self.ws_wake.notify_one();
        true
    }

    /// The upgrade failed: polling carries on.
    pub(crate) fn abort_upgrade(&self) {
        let mut st = self.state.lock();
        if st.transport == TransportKind::Upgrading {
            st.transport = TransportKind::Polling;
        }
        if st.transport == TransportKind::Polling {
            st.ws_attached = false;
        }
        drop(st);
        self.poll_wake.notify_one();
    }
}
