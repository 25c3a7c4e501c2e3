//! WebSocket transport: WS-only sessions and upgrades from polling (`2probe`/`3probe`/`5`).
//!
//! The framing is Herald's own ([`crate::transport::websocket::frame`]), not tungstenite's, so an idle
//! connection holds no heap read or write buffer: the reader waits with a small buffer inside its task and
//! releases any heap buffer once parsed, and the writer builds each batch in a fresh buffer written with one
//! syscall. One task per
//! connection runs the reader and the coalescing writer side by side.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::Request;
use axum::extract::ws::Utf8Bytes;
use axum::response::Response;
use bytes::{Bytes, BytesMut};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use parking_lot::Mutex;
use tokio::io::{AsyncReadExt, AsyncWriteExt, ReadHalf, WriteHalf};

use super::RequestError;
use super::packet::{Frame, Message, Packet, decode_text};
use super::session::{CloseReason, Session, TransportKind, WsBatch};
use crate::transport::websocket::frame::{self, OpCode};
use crate::transport::websocket::{self as ws, Upgrade};

/// Bytes read while waiting with nothing buffered, into a buffer inside the connection's task.
const IDLE_READ: usize = 64;
/// Read buffer growth while a message is arriving; buffers are released whenever fully parsed.
const READ_CHUNK: usize = 4 * 1024;
/// Time the writer gets to send its close frame after the reader ended.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// Checks the upgrade request: the 101 response and the pending upgrade, or the reference's bare 400.
pub(crate) fn handshake(req: &mut Request) -> Result<(Response, Upgrade), RequestError> {
    ws::accept(req, false).map_err(|e| {
        tracing::debug!(error = %e, "websocket upgrade refused");
        RequestError::BadRequest
    })
}

/// Serves a WS-only session, whose open packet is already queued, on an accepted upgrade (see [`handshake`]).
pub(crate) fn accept(session: Arc<Session>, upgrade: Upgrade, response: Response) -> Response {
    tokio::spawn(async move {
        match upgrade.into_upgraded().await {
            Ok(io) => connection(session, io, false).await,
            Err(_) => session.close(CloseReason::TransportError),
        }
    });
    response
}

/// Handles `transport=websocket&sid=…`: a probe-and-upgrade of a polling session.
pub(crate) async fn upgrade(session: Arc<Session>, mut req: Request) -> Response {
    let (response, upgrade) = match handshake(&mut req) {
        Ok(accepted) => accepted,
        Err(e) => return e.upgrade_response(),
    };
    if !session.try_attach_ws() {
        // The reference accepts the socket and closes it at once.
        tokio::spawn(async move {
            if let Ok(io) = upgrade.into_upgraded().await {
                let mut io = TokioIo::new(io);
                let mut close = BytesMut::new();
                frame::write(&mut close, OpCode::Close, false, &[]);
                let _ = io.write_all(&close).await;
            }
        });
        return response;
    }
    tokio::spawn(async move {
        match upgrade.into_upgraded().await {
            Ok(io) => connection(session, io, true).await,
            Err(_) => session.abort_upgrade(),
        }
    });
    response
}

/// Splits the upgraded stream (reader and writer run side by side in one task) and serves it.
///
/// Taking the `TcpStream` back with `Upgraded::downcast` would avoid the split's lock, but axum's server wraps
/// the stream in hyper-util's private `Rewind` type, so the downcast cannot name it.
async fn connection(session: Arc<Session>, upgraded: Upgraded, probe: bool) {
    let (read, write) = tokio::io::split(TokioIo::new(upgraded));
    run(session, read, write, probe).await;
}

/// Reads more bytes into `buf`; `Ok(0)` at end of stream. With nothing buffered (an idle connection) it
/// waits with a small buffer inside the task, so idle connections hold no heap read buffer; a client's pong
/// (7 bytes) fits in it whole. Bigger messages continue into a growing heap buffer, released once parsed.
async fn read_more(io: &mut ReadSide, buf: &mut BytesMut) -> io::Result<usize> {
    if buf.is_empty() {
        let mut first = [0u8; IDLE_READ];
        let n = io.read(&mut first).await?;
        buf.extend_from_slice(&first[..n]);
        return Ok(n);
    }
    if buf.capacity() - buf.len() < 512 {
        buf.reserve(READ_CHUNK);
    }
    io.read_buf(buf).await
}

type ReadSide = ReadHalf<TokioIo<Upgraded>>;
type WriteSide = WriteHalf<TokioIo<Upgraded>>;

/// Client WebSocket messages, reassembled from fragments.
struct Reader {
    io: ReadSide,
    buf: BytesMut,
    max: usize,
    /// A fragmented message being assembled: its opcode and the bytes so far.
    partial: Option<(OpCode, BytesMut)>,
}

/// A client message the Engine.IO layer cares about.
enum Incoming {
    Text(Utf8Bytes),
    Binary(Bytes),
    Ping(Bytes),
    Close,
}

/// Why reading ended.
enum ReadEnd {
    /// The peer closed the TCP connection or sent a close frame.
    Closed,
    /// I/O or framing error, or a text message that is not UTF-8.
    Error(String),
}

impl Reader {
    /// The next message. Cancel-safe: bytes read stay in the buffer.
    async fn next(&mut self) -> Result<Incoming, ReadEnd> {
        loop {
            while let Some(f) = frame::parse(&mut self.buf, self.max, false)
                .map_err(|e| ReadEnd::Error(e.to_string()))?
            {
                if self.buf.is_empty() {
                    // Parsed payloads keep their own slice; an idle connection holds no read buffer.
                    self.buf = BytesMut::new();
                }
                if let Some(msg) = self.take(f)? {
                    return Ok(msg);
                }
            }
            match read_more(&mut self.io, &mut self.buf).await {
                Ok(0) => return Err(ReadEnd::Closed),
                Ok(_) => {}
                Err(e) => return Err(ReadEnd::Error(e.to_string())),
            }
        }
    }

    fn take(&mut self, f: frame::Frame) -> Result<Option<Incoming>, ReadEnd> {
        let (opcode, payload) = match f.opcode {
            OpCode::Ping => return Ok(Some(Incoming::Ping(f.payload))),
            OpCode::Pong => return Ok(None),
            OpCode::Close => return Ok(Some(Incoming::Close)),
            OpCode::Continuation => {
                let Some((op, mut data)) = self.partial.take() else {
                    return Err(ReadEnd::Error("continuation without a message".into()));
                };
                if data.len() + f.payload.len() > self.max {
                    return Err(ReadEnd::Error("message too big".into()));
                }
                data.extend_from_slice(&f.payload);
                if !f.fin {
                    self.partial = Some((op, data));
                    return Ok(None);
                }
                (op, data.freeze())
            }
            op @ (OpCode::Text | OpCode::Binary) => {
                if self.partial.is_some() {
                    return Err(ReadEnd::Error("new message inside a fragmented one".into()));
                }
                if !f.fin {
                    self.partial = Some((op, BytesMut::from(&f.payload[..])));
                    return Ok(None);
                }
                (op, f.payload)
            }
        };
        Ok(Some(if opcode == OpCode::Text {
            Incoming::Text(
                Utf8Bytes::try_from(payload)
                    .map_err(|_| ReadEnd::Error("text message is not UTF-8".into()))?,
            )
        } else {
            Incoming::Binary(payload)
        }))
    }
}

/// Appends `frames` as WebSocket frames to `out`.
fn encode(out: &mut BytesMut, frames: &[Frame]) {
    for frame in frames {
        match frame {
            Frame::Text(text) => frame::write(out, OpCode::Text, false, text.as_bytes()),
            Frame::Binary(data) => frame::write(out, OpCode::Binary, false, data),
        }
    }
}

/// Bytes `frames` take on the wire (an upper bound).
fn wire_len(frames: &[Frame]) -> usize {
    frames.iter().map(|f| f.weight() + 10).sum()
}

async fn run(session: Arc<Session>, read: ReadSide, mut write: WriteSide, probe: bool) {
    let mut reader = Reader {
        io: read,
        buf: BytesMut::new(),
        max: session.max_payload(),
        partial: None,
    };
    // Boxed: the probe's state (timers included) is only allocated during an upgrade, not kept in every
    // connection's task.
    if probe && !Box::pin(probe_upgrade(&session, &mut reader, &mut write)).await {
        return;
    }
    // A client ping's payload, for the writer to answer (the reader never writes).
    let pong: Mutex<Option<Bytes>> = Mutex::new(None);
    let reader = read_loop(&session, &mut reader, &pong);
    let writer = write_loop(&session, &mut write, &pong);
    tokio::pin!(reader, writer);
    // The writer ends the connection after its close frame. If the reader ends first, or the
    // writer is stuck on a peer that stopped reading, it gets a grace period, then is dropped.
    let finished = tokio::select! {
        _ = &mut writer => true,
        _ = &mut reader => false,
        _ = session.closed() => false,
    };
    if !finished {
        // Boxed so the timer is allocated only while closing.
        let _ = Box::pin(tokio::time::timeout(CLOSE_GRACE, writer)).await;
    }
}

/// Runs the probe phase within the upgrade timeout; false (after a close frame) if the upgrade failed.
async fn probe_upgrade(session: &Arc<Session>, reader: &mut Reader, write: &mut WriteSide) -> bool {
    let probe = tokio::time::timeout(
        session.upgrade_timeout(),
        probe_phase(session, reader, &mut *write),
    );
    let upgraded = tokio::select! {
        result = probe => result == Ok(true),
        _ = session.closed() => false,
    };
    if !upgraded {
        tracing::debug!(sid = session.sid(), "upgrade failed");
        session.abort_upgrade();
        let mut close = BytesMut::new();
        frame::write(&mut close, OpCode::Close, false, &[]);
        let _ = write.write_all(&close).await;
    }
    upgraded
}

/// Answers `2probe` with `3probe` and waits for `5`. Returns whether the upgrade completed.
async fn probe_phase(session: &Arc<Session>, reader: &mut Reader, write: &mut WriteSide) -> bool {
    loop {
        let text = match reader.next().await {
            Ok(Incoming::Text(text)) => text,
            Ok(Incoming::Ping(payload)) => {
                let mut out = BytesMut::new();
                frame::write(&mut out, OpCode::Pong, false, &payload);
                if write.write_all(&out).await.is_err() {
                    return false;
                }
                continue;
            }
            _ => return false,
        };
        match decode_text(text) {
            Ok(Packet::Ping(data)) if data.as_str() == "probe" => {
                let mut out = BytesMut::new();
                frame::write(&mut out, OpCode::Text, false, b"3probe");
                if write.write_all(&out).await.is_err() {
                    return false;
                }
                session.begin_upgrade();
            }
            Ok(Packet::Upgrade) => return session.complete_upgrade(),
            Ok(Packet::Noop) => {}
            _ => return false,
        }
    }
}

async fn read_loop(session: &Arc<Session>, reader: &mut Reader, pong: &Mutex<Option<Bytes>>) {
    let reason = loop {
        let packet = match reader.next().await {
            Ok(Incoming::Text(text)) => match decode_text(text) {
                Ok(packet) => packet,
                Err(e) => {
                    tracing::debug!(sid = session.sid(), error = %e, "invalid packet");
                    break CloseReason::ParseError;
                }
            },
            Ok(Incoming::Binary(data)) => Packet::Message(Message::Binary(data)),
            Ok(Incoming::Ping(payload)) => {
                *pong.lock() = Some(payload);
                session.ws_wake.notify_one();
                continue;
            }
            Ok(Incoming::Close) | Err(ReadEnd::Closed) => break CloseReason::TransportClose,
            Err(ReadEnd::Error(e)) => {
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

async fn write_loop(session: &Arc<Session>, write: &mut WriteSide, pong: &Mutex<Option<Bytes>>) {
    loop {
        let wake = session.ws_wake.notified();
        let answer = pong.lock().take();
        let batch = session.take_ws_batch();
        if matches!(batch, WsBatch::Wait) && answer.is_none() {
            wake.await;
            continue;
        }
        // A fresh buffer per batch: nothing stays allocated while the connection idles.
        let (frames, close) = match &batch {
            WsBatch::Wait => (&[][..], None),
            WsBatch::Frames(frames) => (&frames[..], None),
            WsBatch::Close(frames, close) => (&frames[..], Some(close)),
        };
        let mut out = BytesMut::with_capacity(wire_len(frames) + 2 * 127);
        if let Some(payload) = &answer {
            frame::write(&mut out, OpCode::Pong, false, payload);
        }
        encode(&mut out, frames);
        if let Some(close) = close {
            let payload = close.map(|(code, reason)| {
                let mut p = code.to_be_bytes().to_vec();
                p.extend_from_slice(reason.as_bytes());
                p
            });
            frame::write(
                &mut out,
                OpCode::Close,
                false,
                payload.as_deref().unwrap_or(&[]),
            );
            let _ = write.write_all(&out).await;
            let _ = write.flush().await;
            return;
        }
        if write.write_all(&out).await.is_err() || write.flush().await.is_err() {
            session.close(CloseReason::TransportError);
            return;
        }
        session.batch_written();
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

#[cfg(test)]
mod tests {
    use std::sync::Weak;

    use tokio::sync::mpsc;

    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message as Ws;
    use tokio_tungstenite::tungstenite::protocol::frame::Frame as RawFrame;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode as RawOp};

    use super::*;
    use crate::transport::engineio::{
        EngineHandler, EngineIo, EngineIoConfig, SessionHandler, Work, message_frame,
    };

    /// Echoes every message back, like the protocol suites' reference server, and reports each close.
    struct Echo(mpsc::UnboundedSender<CloseReason>);
    /// Holds its session weakly, as the Socket.IO layer does: only the engine keeps a session alive.
    struct EchoSession(Weak<Session>, mpsc::UnboundedSender<CloseReason>);

    impl EngineHandler for Echo {
        fn on_open(&self, session: &Arc<Session>) -> Arc<dyn SessionHandler> {
            Arc::new(EchoSession(Arc::downgrade(session), self.0.clone()))
        }
    }

    impl SessionHandler for EchoSession {
        fn on_message(self: Arc<Self>, message: Message) -> Option<Work> {
            let session = self.0.upgrade()?;
            let _ = session.send(match message {
                Message::Text(text) => message_frame(&text),
                Message::Binary(data) => Frame::Binary(data),
            });
            None
        }
        fn on_close(&self, reason: CloseReason) {
            let _ = self.1.send(reason);
        }
    }

    type Client = tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >;

    async fn connect() -> Client {
        connect_with(EngineIoConfig::default()).await.0
    }

    /// A client of a fresh echo server with `config` (`max_payload` 64), and the server's close reports.
    async fn connect_with(
        config: EngineIoConfig,
    ) -> (Client, mpsc::UnboundedReceiver<CloseReason>) {
        let (closes, closed) = mpsc::unbounded_channel();
        let engine = EngineIo::new(
            EngineIoConfig {
                max_payload: 64,
                ..config
            },
            Arc::new(Echo(closes)),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, engine.router()).await });
        let url = format!("ws://{addr}/engine.io/?EIO=4&transport=websocket");
        let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
        let open = ws.next().await.unwrap().unwrap();
        assert!(open.to_text().unwrap().starts_with("0{"), "{open:?}");
        (ws, closed)
    }

    /// The next close the server reports; a server that never reports one fails the test.
    async fn next_close(closed: &mut mpsc::UnboundedReceiver<CloseReason>) -> CloseReason {
        tokio::time::timeout(Duration::from_secs(5), closed.recv())
            .await
            .expect("no close reported within 5 s")
            .expect("server gone")
    }

    fn fast_heartbeat() -> EngineIoConfig {
        EngineIoConfig {
            ping_interval: Duration::from_millis(40),
            ping_timeout: Duration::from_millis(60),
            ..EngineIoConfig::default()
        }
    }

    /// Heartbeats run on the engine's shared timer: a client answering pings stays open over many intervals,
    /// a silent one is closed for ping timeout, and each close reaches the handler exactly once, although only
    /// the engine held the session.
    #[tokio::test]
    async fn heartbeat_on_the_shared_timer() {
        let (mut ws, mut closed) = connect_with(fast_heartbeat()).await;
        for _ in 0..5 {
            assert_eq!(next(&mut ws).await, Some(Ws::text("2")));
            ws.send(Ws::text("3")).await.unwrap();
        }
        assert!(closed.try_recv().is_err(), "closed while answering pings");

        let (mut silent, mut closed) = connect_with(fast_heartbeat()).await;
        assert_eq!(next(&mut silent).await, Some(Ws::text("2")));
        assert_eq!(next_close(&mut closed).await, CloseReason::PingTimeout);

        let (gone, mut closed) = connect_with(EngineIoConfig::default()).await;
        drop(gone);
        assert_eq!(next_close(&mut closed).await, CloseReason::TransportClose);
        assert!(closed.try_recv().is_err(), "one report per close");
    }

    /// The next message; `None` once the stream ended. A server that never answers fails the test.
    async fn next(ws: &mut Client) -> Option<Ws> {
        tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .expect("no answer from the server within 5 s")
            .and_then(Result::ok)
    }

    #[tokio::test]
    async fn fragments_pings_and_binary_over_own_framing() {
        let mut ws = connect().await;
        // A text message in two fragments is reassembled before decoding.
        let first = RawFrame::message(&b"4hel"[..], RawOp::Data(Data::Text), false);
        let rest = RawFrame::message(&b"lo"[..], RawOp::Data(Data::Continue), true);
        ws.send(Ws::Frame(first)).await.unwrap();
        ws.send(Ws::Frame(rest)).await.unwrap();
        assert_eq!(next(&mut ws).await, Some(Ws::text("4hello")));
        // A WebSocket ping is answered by the writer with the same payload.
        ws.send(Ws::Ping(Bytes::from_static(b"hi"))).await.unwrap();
        assert_eq!(
            next(&mut ws).await,
            Some(Ws::Pong(Bytes::from_static(b"hi")))
        );
        ws.send(Ws::binary(vec![1u8, 2, 3])).await.unwrap();
        assert_eq!(next(&mut ws).await, Some(Ws::binary(vec![1u8, 2, 3])));
    }

    #[tokio::test]
    async fn invalid_utf8_and_oversized_messages_close_the_connection() {
        for payload in [vec![b'4', 0xff, 0xfe], vec![b'4'; 65]] {
            let mut ws = connect().await;
            let bad = RawFrame::message(payload, RawOp::Data(Data::Text), true);
            ws.send(Ws::Frame(bad)).await.unwrap();
            // The server sends a close frame (or just ends the stream); never an echo.
            match next(&mut ws).await {
                None | Some(Ws::Close(_)) => {}
                other => panic!("expected the connection to close, got {other:?}"),
            }
        }
    }
}

#[cfg(test)]
mod task_size {
    use std::future::Future;

    use super::*;

    /// Size of the future `f` returns, without calling it.
    fn future_size<A, B, C, F: Future>(_: fn(A, B, C) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    /// Every idle connection holds this future in its task: rarely used states (the upgrade probe, the
    /// close grace timer) are boxed so they do not widen it. 1,240 bytes before they were.
    #[test]
    fn connection_task_stays_small() {
        let size = future_size(connection as fn(_, _, _) -> _);
        assert!(size <= 1024, "connection future is {size} bytes");
    }
}
