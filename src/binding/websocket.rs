//! Channels over a plain WebSocket, for clients with no library: a small JSON protocol on `/ws`
//! (`subscribe`/`unsubscribe`/`ping` with correlated ids, and `emit` for the client events mapped in
//! `[socketio.client_events]`, answered as Socket.IO answers them) and direct channel URLs `/ws/{channel}` that stream at
//! once. Ping frames detect dead peers; optional `heartbeat` messages serve browser code that cannot see them.
//!
//! Each connection runs one task that reads, writes (everything queued goes out in one write) and keeps time;
//! client requests are handled on a second task so a long replay never stops the writer. An event's message —
//! and, for connections that negotiated permessage-deflate, its compressed form — is encoded once and shared.

pub mod config;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::{mpsc, watch};
use tokio::time::{Instant, sleep_until};

use super::access::{Access, query_pairs};
use super::client_events::{Allowance, Call, ClientEvents, Outcome};
use super::feed::{Feed, Gone, Outlet, REPLAY_WINDOW, Registered, Want};
use super::outbox::{Closed, Outbox, Weight};
use super::refusal::Refusal;
use super::stats;
use super::subscribe::{self as path, Subscribing};
use super::wire::{channel_from_path, envelope, gap_message, status_message};
use crate::api::ApiError;
use crate::auth::Identity;
use crate::core::Engine;
use crate::core::channel::ChannelName;
use crate::core::engine::Health;
use crate::core::event::{
    EncodingSlot, Event, SOURCE_STATUS_EVENT, SharedEvent, SlotError, format_time,
};
use crate::core::gap::Gap;
use crate::policy::rate::Slot;
use crate::registry::{CloseReason, Info, Live, Registry, Transport, new_id};
use crate::transport::websocket::{self as ws, Incoming, Reader, Writer, deflate};
pub use config::{PayloadShape, WebSocketConfig};

/// Slots of the shared message of a live event: envelope, bare data, and their compressed forms.
static ENVELOPE: EncodingSlot<Bytes> = EncodingSlot::new();
static DATA: EncodingSlot<Bytes> = EncodingSlot::new();
static ENVELOPE_DEFLATED: EncodingSlot<Bytes> = EncodingSlot::new();
static DATA_DEFLATED: EncodingSlot<Bytes> = EncodingSlot::new();
/// Messages shorter than this are sent uncompressed: deflate would not pay for itself.
const COMPRESS_FROM: usize = 128;
/// Largest data message a data-shape connection keeps for a source's recovery (see [`DataView`]): a live event's
/// message is shared with every connection, but a replayed one is this connection's own copy.
const RESEND_MAX_BYTES: usize = 64 * 1024;
/// Close code for an expired token (4000–4999 are the application's; 4401 mirrors HTTP 401).
const TOKEN_EXPIRED: u16 = 4401;
/// Close code for a connection an administrator closed (`POST /api/connections/{id}/disconnect`): the client may
/// reconnect at once and resume from its offsets.
const DISCONNECTED: u16 = 4000;
/// Client requests waiting for the request task before reading pauses.
const PENDING_REQUESTS: usize = 64;

/// Registers the binding's event encodings (at start-up, so a full event cache is an error there).
pub fn register_encodings() -> Result<(), SlotError> {
    [&ENVELOPE, &DATA, &ENVELOPE_DEFLATED, &DATA_DEFLATED]
        .into_iter()
        .try_for_each(EncodingSlot::register)
}

/// The plain WebSocket binding.
pub struct WebSocketBinding {
    core: Arc<dyn Engine>,
    access: Arc<Access>,
    config: WebSocketConfig,
    shutdown: watch::Receiver<bool>,
    registry: Registry,
    /// What `emit` messages map to.
    client_events: Arc<ClientEvents>,
}

impl WebSocketBinding {
    /// Routes `/ws` and `/ws/{channel}`; connections close with 1001 when `shutdown` turns true, and are listed in
    /// `registry` while open; `emit` messages are mapped by `client_events`.
    pub fn router(
        core: Arc<dyn Engine>,
        access: Arc<Access>,
        config: WebSocketConfig,
        shutdown: watch::Receiver<bool>,
        registry: Registry,
        client_events: Arc<ClientEvents>,
    ) -> Router {
        let binding = Arc::new(Self {
            core,
            access,
            config,
            shutdown,
            registry,
            client_events,
        });
        Router::new()
            .route("/ws", get(multiplexed))
            .route("/ws/{*path}", get(direct))
            .with_state(binding)
    }
}

/// One outgoing text message, possibly already deflated.
struct Message {
    payload: Bytes,
    deflated: bool,
    /// A live event's commit time (ms since the UNIX epoch), for the delivery lag; 0 for anything else.
    committed: i64,
}

impl Message {
    fn plain(text: String) -> Self {
        Self {
            payload: Bytes::from(text),
            deflated: false,
            committed: 0,
        }
    }
}

impl Weight for Message {
    fn weight(&self) -> usize {
        self.payload.len()
    }
}

/// Puts events on one connection's outbox.
struct WsOutlet {
    outbox: Arc<Outbox<Message>>,
    shape: PayloadShape,
    deflate: bool,
    /// On a data-shape connection: what its frontend holds, for a source's recovery.
    view: parking_lot::Mutex<DataView>,
}

/// What a data-shape connection last sent, so a source status or an engine outage never reaches the frontend as
/// data: an error goes out typed (`{"type":"error","code":"source_error"|"engine_unavailable",…}`, which a
/// data-only frontend ignores like any error), and a recovery re-sends the last data if an error notice followed
/// it and nothing else is still failing (a changed result needs no re-send: it is published before the recovery,
/// and is itself the news).
#[derive(Default)]
struct DataView {
    /// The last data message sent, uncompressed, if at most `RESEND_MAX_BYTES`.
    last: Option<Bytes>,
    /// A source error notice went out after `last`.
    failing: bool,
    /// An engine outage notice went out after `last`.
    engine_down: bool,
}

fn text_of(e: &Event, shape: PayloadShape) -> Bytes {
    match shape {
        PayloadShape::Envelope => Bytes::from(envelope(e)),
        PayloadShape::Data => Bytes::copy_from_slice(e.data.get().as_bytes()),
    }
}

impl WsOutlet {
    /// Sends data `text` (a data-shape connection remembers it); `deflated` gives its compressed form; `bulk` for
    /// a replay (which paces itself with `room`).
    fn data(
        &self,
        text: Bytes,
        deflated: impl FnOnce(&Bytes) -> Bytes,
        bulk: bool,
        committed: i64,
    ) -> Result<(), Gone> {
        // Held across the push: the view and the queue stay in the same order.
        let _view = (self.shape == PayloadShape::Data).then(|| {
            let mut view = self.view.lock();
            *view = DataView {
                last: (text.len() <= RESEND_MAX_BYTES).then(|| text.clone()),
                failing: false,
                engine_down: false,
            };
            view
        });
        let mut message = self.message(text, deflated);
        message.committed = committed;
        if bulk {
            self.outbox.push_bulk(message)
        } else {
            self.outbox.push(message)
        }
    }

    /// A `source:status` event on a data-shape connection, translated (see [`DataView`]); `None` if it is not a
    /// status notice Herald wrote (then it is sent as data like any event).
    fn source_status(&self, e: &Event) -> Option<Result<(), Gone>> {
        if self.shape != PayloadShape::Data || e.name != SOURCE_STATUS_EVENT {
            return None;
        }
        let mut notice: serde_json::Map<String, Value> = serde_json::from_str(e.data.get()).ok()?;
        let mut view = self.view.lock();
        if notice.get("status")?.as_str()? == "ok" {
            let was = std::mem::take(&mut view.failing);
            return Some(self.recovered(&view, was));
        }
        view.failing = true;
        notice.insert("type".into(), Value::from("error"));
        notice.insert("code".into(), Value::from("source_error"));
        Some(
            self.outbox
                .push(Message::plain(Value::Object(notice).to_string())),
        )
    }

    /// A recovery on a data-shape connection: re-sends the last data if an error notice of this cause (`was`)
    /// followed it and no other cause is still failing. Nothing kept (no data yet, or too large to keep): the
    /// recovery sends nothing.
    fn recovered(&self, view: &DataView, was: bool) -> Result<(), Gone> {
        if !was || view.failing || view.engine_down {
            return Ok(());
        }
        match view.last.clone() {
            Some(last) => self
                .outbox
                .push(self.message(last, |t| deflate::compress(t))),
            None => Ok(()),
        }
    }

    fn message(&self, text: Bytes, deflated: impl FnOnce(&Bytes) -> Bytes) -> Message {
        if self.deflate && text.len() >= COMPRESS_FROM {
            Message {
                payload: deflated(&text),
                deflated: true,
                committed: 0,
            }
        } else {
            Message {
                payload: text,
                deflated: false,
                committed: 0,
            }
        }
    }
}

impl Live for Feed<WsOutlet> {
    fn subscriptions(&self) -> Vec<ChannelName> {
        self.channels()
    }

    fn queued_bytes(&self) -> usize {
        self.outlet.outbox.queued_bytes()
    }

    /// Closes with [`DISCONNECTED`] once what is queued went out.
    fn close(&self) {
        self.outlet.outbox.close(Closed::Disconnected);
    }

    fn tell_status(&self) {
        Feed::tell_status(self);
    }
}

impl Outlet for WsOutlet {
    const TRANSPORT: Transport = Transport::WebSocket;
    fn live(&self, event: &Arc<SharedEvent>) -> Result<(), Gone> {
        let (slot, zslot) = match self.shape {
            PayloadShape::Envelope => (&ENVELOPE, &ENVELOPE_DEFLATED),
            PayloadShape::Data => (&DATA, &DATA_DEFLATED),
        };
        if let Some(sent) = self.source_status(&event.event) {
            return sent;
        }
        let text = event.encoded(slot, |e| text_of(e, self.shape));
        self.data(
            text,
            |t| event.encoded(zslot, |_| deflate::compress(t)),
            false,
            event.event.time,
        )
    }

    fn replayed(&self, event: &Event, _: &Registered) -> Result<(), Gone> {
        if let Some(sent) = self.source_status(event) {
            return sent;
        }
        self.data(
            text_of(event, self.shape),
            |t| deflate::compress(t),
            true,
            0,
        )
    }

    fn gap(&self, gap: &Gap) -> Result<(), Gone> {
        self.outbox.push(Message::plain(gap_message(gap)))
    }

    /// `{"type":"status",…}`; on a data-shape connection an outage is an error and a recovery is told as for a
    /// source (see [`DataView`]).
    fn status(&self, health: &Health) -> Result<(), Gone> {
        if self.shape == PayloadShape::Envelope {
            return self.outbox.push(Message::plain(status_message(health)));
        }
        let mut view = self.view.lock();
        match health {
            Health::Ok => {
                let was = std::mem::take(&mut view.engine_down);
                self.recovered(&view, was)
            }
            Health::Unavailable { since } => {
                view.engine_down = true;
                let error = json!({
                    "type": "error",
                    "code": "engine_unavailable",
                    "message": "the engine is unreachable: live events resume, caught up, when it is back",
                    "since": format_time(*since),
                });
                self.outbox.push(Message::plain(error.to_string()))
            }
        }
    }

    fn overflow(&self) {
        self.outbox.close(Closed::SlowConsumer);
    }

    async fn room(&self) {
        self.outbox.room(REPLAY_WINDOW).await;
    }

    fn fail(&self) {
        self.outbox.close(Closed::Failed);
    }
}

fn bad_request(code: &'static str, message: impl Into<String>) -> Response {
    ApiError::new(StatusCode::BAD_REQUEST, code, message).into_response()
}

async fn multiplexed(
    State(b): State<Arc<WebSocketBinding>>,
    req: axum::extract::Request,
) -> Response {
    let (identity, slot) = match enter(&b, &req).await {
        Ok(admitted) => admitted,
        Err(refused) => return refused.response(),
    };
    upgrade(b, req, identity, slot, PayloadShape::Envelope, None).await
}

/// The client's address, when the server records peers.
fn peer(req: &axum::extract::Request) -> Option<std::net::SocketAddr> {
    req.extensions()
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|c| c.0)
}

/// The connection's identity and connection slot, or the HTTP refusal to answer instead of upgrading.
fn enter<'a>(
    b: &'a WebSocketBinding,
    req: &axum::extract::Request,
) -> impl std::future::Future<Output = Result<(Identity, Option<Slot>), Refusal>> + Send + 'a {
    // Copied out: a borrowed request (not `Sync`) must not live across the await.
    let headers = req.headers().clone();
    let query = query_pairs(req.uri().query());
    let ip = peer(req).map(|a| a.ip());
    async move { b.access.enter(&headers, &query, ip).await }
}

#[derive(Deserialize)]
struct DirectQuery {
    since: Option<u64>,
    epoch: Option<String>,
}

async fn direct(
    State(b): State<Arc<WebSocketBinding>>,
    query: Result<Query<DirectQuery>, QueryRejection>,
    req: axum::extract::Request,
) -> Response {
    // The raw path, not the router's decoded capture: `%2F` must stay inside its segment.
    let raw = req.uri().path().strip_prefix("/ws/").unwrap_or_default();
    let channel = match channel_from_path(raw) {
        Ok(c) => c,
        Err(e) => return Refusal::from(e).response(),
    };
    let Query(q) = match query {
        Ok(q) => q,
        Err(e) => {
            let message = format!("`since` must be an offset: {}", e.body_text());
            return Refusal::InvalidRequest(message).response();
        }
    };
    let (identity, slot) = match enter(&b, &req).await {
        Ok(admitted) => admitted,
        Err(refused) => return refused.response(),
    };
    // Checked before the upgrade, so a refusal is an HTTP answer; registered once the handshake is known good.
    if let Err(refused) = b
        .access
        .permit(&identity, &[], std::slice::from_ref(&channel))
    {
        return refused.response();
    }
    let shape = b.config.direct_payload(channel.as_str());
    let want = Want {
        channel,
        after: q.since,
        epoch: q.epoch,
        gap: None,
    };
    upgrade(b, req, identity, slot, shape, Some(want)).await
}

async fn upgrade(
    b: Arc<WebSocketBinding>,
    mut req: axum::extract::Request,
    identity: Identity,
    slot: Option<Slot>,
    shape: PayloadShape,
    initial: Option<Want>,
) -> Response {
    let (response, upgrade) = match ws::accept(&mut req, b.config.compression) {
        Ok(accepted) => accepted,
        Err(e @ ws::HandshakeError::UnsupportedVersion) => {
            let mut r = ApiError::new(
                StatusCode::UPGRADE_REQUIRED,
                "unsupported_version",
                e.to_string(),
            )
            .into_response();
            r.headers_mut().insert(
                "sec-websocket-version",
                axum::http::HeaderValue::from_static("13"),
            );
            return r;
        }
        Err(e) => return bad_request("websocket_required", e.to_string()),
    };
    let outbox = Arc::new(Outbox::new(b.config.max_queue_bytes));
    let outlet = WsOutlet {
        outbox,
        shape,
        deflate: upgrade.deflate(),
        view: parking_lot::Mutex::new(DataView::default()),
    };
    let info = Info::new(
        new_id(Transport::WebSocket),
        Transport::WebSocket,
        &identity,
        peer(&req),
    );
    let connection =
        crate::binding::forward::connection(&info.member.conn, "websocket", info.address);
    // The connect hook may refuse the connection (an HTTP answer: nothing is upgraded yet), or add channels (held
    // to the rules like any subscription).
    let hooked = match b
        .client_events
        .forwarder()
        .connect(&identity, &connection)
        .await
    {
        Ok(channels) => channels,
        Err(refused) => return refused.response(),
    };
    let mut wants: Vec<Want> = initial.into_iter().collect();
    for channel in hooked {
        if wants.iter().any(|w| w.channel == channel) {
            continue;
        }
        match b.access.subscribe(&identity, &channel) {
            Ok(()) => wants.push(Want::new_events(channel)),
            Err(r) => {
                tracing::debug!(code = r.code(), reason = %r, "a channel the connect hook added is refused")
            }
        }
    }
    let feed = Feed::new(
        b.core.clone(),
        outlet,
        b.config.max_queue_bytes,
        info.member.clone(),
    );
    let registration = b.registry.register(info, feed.clone());
    // Queued now, sent first once the connection is up.
    feed.open_status();
    // Names the connection in log lines.
    let who = match peer(&req) {
        Some(addr) => format!("websocket from {}", addr.ip()),
        None => "websocket".to_owned(),
    };
    // A direct URL's channel (permitted already) is registered before the 101 goes out: an event published
    // the moment the client sees the upgrade is already this connection's (held until the connection is up).
    let initial = if wants.is_empty() {
        None
    } else {
        match path::register(&feed, wants).await {
            Ok(subscribing) => Some(subscribing),
            Err(refused) => {
                feed.detach();
                return refused.response();
            }
        }
    };
    tokio::spawn(async move {
        match upgrade.connect(b.config.max_message_bytes).await {
            Ok((reader, writer)) => {
                let ending = run(b, identity, connection, feed, reader, writer, initial, who).await;
                let reason = close_reason(ending.as_ref());
                if reason == CloseReason::SlowConsumer {
                    stats::SLOW_CONSUMERS[Transport::WebSocket as usize].inc();
                }
                registration.closing(reason);
                drop(registration);
                drop(slot);
            }
            Err(e) => {
                tracing::debug!(error = %e, "websocket upgrade failed");
                feed.detach();
            }
        }
    });
    response
}

/// Serves one connection until it closes.
#[allow(clippy::too_many_arguments)]
async fn run(
    b: Arc<WebSocketBinding>,
    identity: Identity,
    connection: Value,
    feed: Arc<Feed<WsOutlet>>,
    reader: Reader,
    writer: Writer,
    initial: Option<Subscribing<WsOutlet>>,
    who: String,
) -> Option<Ending> {
    let outbox = feed.outlet.outbox.clone();
    let (requests, pending) = mpsc::channel(PENDING_REQUESTS);
    let expires = b
        .access
        .expires_in(&identity)
        .map(|left| Instant::now() + left);
    let client = Arc::new(Client {
        access: b.access.clone(),
        identity,
        publishes: b.client_events.allowance(connection),
        events: b.client_events.clone(),
    });
    let worker = tokio::spawn(serve_requests(client.clone(), feed.clone(), pending));
    if let Some(subscribing) = initial {
        let _ = requests.send(Work::Complete(subscribing)).await;
    }
    let ending = pump(&b, reader, writer, &outbox, &requests, expires, &who).await;
    tracing::debug!(?ending, "websocket closed");
    drop(requests);
    worker.abort();
    outbox.close(Closed::Gone);
    feed.detach();
    let reason = match &ending {
        Some(Ending(_, reason)) if !reason.is_empty() => reason,
        Some(_) => "closed",
        None => "transport close",
    };
    client.events.forwarder().disconnected(
        &client.identity,
        &client.publishes.forwards.connection,
        reason,
    );
    ending
}

/// Why a connection ended, from the close frame we sent.
fn close_reason(ending: Option<&Ending>) -> CloseReason {
    match ending {
        None | Some(Ending(1000, _)) => CloseReason::Client,
        Some(Ending(1008, _)) => CloseReason::SlowConsumer,
        Some(Ending(1001, _)) => CloseReason::Shutdown,
        Some(Ending(DISCONNECTED, _)) => CloseReason::Admin,
        Some(Ending(TOKEN_EXPIRED, _)) => CloseReason::Expired,
        Some(Ending(1011, "ping timeout")) => CloseReason::Timeout,
        Some(_) => CloseReason::Error,
    }
}

/// How a connection ended: the close frame we sent, if any.
#[derive(Debug)]
struct Ending(u16, &'static str);

async fn pump(
    b: &WebSocketBinding,
    mut reader: Reader,
    mut writer: Writer,
    outbox: &Outbox<Message>,
    requests: &mpsc::Sender<Work>,
    expires: Option<Instant>,
    who: &str,
) -> Option<Ending> {
    let config = &b.config;
    let mut shutdown = b.shutdown.clone();
    let mut next_ping = Instant::now() + config.ping_interval;
    let mut pong_due: Option<Instant> = None;
    let heartbeat = (!config.heartbeat_interval.is_zero()).then_some(config.heartbeat_interval);
    let far = Duration::from_secs(86_400);
    let mut next_heartbeat = Instant::now() + heartbeat.unwrap_or(far);
    let mut batch = Vec::new();
    let mut allowance = b.access.message_limit();
    let ending = loop {
        tokio::select! {
            incoming = reader.next() => match incoming {
                Ok(Some(message @ (Incoming::Text(_) | Incoming::Binary(_)))) => {
                    if !allowance.take(&who) {
                        // Echo the request id so a client matching replies by id is not left waiting; a message
                        // without one gets at most one error per interval, or the errors would be a flood too.
                        let id = match &message {
                            Incoming::Text(text) => request_id(text),
                            _ => None,
                        };
                        if id.is_some() || allowance.notice() {
                            let text = match id {
                                Some(_) => "too many messages; slow down".to_owned(),
                                None => format!(
                                    "too many messages; slow down (refusals of messages without an id are reported at most every {} s)",
                                    crate::policy::rate::REPORT_INTERVAL.as_secs()
                                ),
                            };
                            let error = Refusal::RateLimited(text).frame(id);
                            let _ = outbox.push(Message::plain(error));
                        }
                        continue;
                    }
                    // Never wait for the request task here: it may itself be waiting for this loop to drain the
                    // outbox (a replay), so a full queue is answered with an error instead. Binary messages go
                    // through the task too, so replies keep the order of the requests.
                    let (work, id) = match message {
                        Incoming::Text(text) => {
                            let id = request_id(&text);
                            (Work::Text(text), id)
                        }
                        _ => (Work::Binary, None),
                    };
                    match requests.try_send(work) {
                        Ok(()) => {}
                        Err(mpsc::error::TrySendError::Full(_)) => {
                            let _ = outbox.push(Message::plain(Refusal::Busy.frame(id)));
                        }
                        Err(mpsc::error::TrySendError::Closed(_)) => break None,
                    }
                }
                Ok(Some(Incoming::Ping(payload))) => {
                    writer.pong(&payload);
                    if !flushed(&mut writer, config.ping_timeout).await {
                        return None;
                    }
                }
                Ok(Some(Incoming::Pong)) => pong_due = None,
                Ok(Some(Incoming::Close(_))) => break Some(Ending(1000, "")),
                Ok(None) => return None,
                Err(e) => {
                    tracing::debug!(error = %e, "websocket read failed");
                    let (code, reason) = e.close_code();
                    if code == 1006 {
                        return None;
                    }
                    break Some(Ending(code, reason));
                }
            },
            closed = outbox.next_batch(&mut batch) => {
                if let Some(reason) = closed {
                    break Some(match reason {
                        Closed::SlowConsumer => Ending(1008, "slow consumer"),
                        Closed::Shutdown => Ending(1001, "server shutting down"),
                        Closed::Gone => Ending(1000, ""),
                        Closed::Failed => Ending(1011, "internal error; reconnect to resume"),
                        Closed::Disconnected => Ending(DISCONNECTED, "closed by an administrator"),
                        Closed::Backend => Ending(DISCONNECTED, "closed by the backend"),
                        Closed::Expired => Ending(TOKEN_EXPIRED, "token_expired"),
                    });
                }
                let mut bytes = 0;
                let mut oldest = i64::MAX;
                for m in batch.drain(..) {
                    bytes += m.payload.len() as u64;
                    if m.committed > 0 {
                        oldest = oldest.min(m.committed);
                    }
                    writer.text(&m.payload, m.deflated);
                }
                if !flushed(&mut writer, config.ping_timeout).await {
                    return None;
                }
                stats::WRITTEN_BYTES[Transport::WebSocket as usize].add(bytes);
                if oldest != i64::MAX {
                    stats::written_live(oldest);
                }
            }
            () = sleep_until(next_ping) => {
                next_ping += config.ping_interval;
                pong_due.get_or_insert(Instant::now() + config.ping_timeout);
                writer.ping();
                if !flushed(&mut writer, config.ping_timeout).await {
                    return None;
                }
            }
            () = sleep_until(pong_due.unwrap_or(next_ping + far)), if pong_due.is_some() => {
                break Some(Ending(1011, "ping timeout"));
            }
            () = sleep_until(next_heartbeat), if heartbeat.is_some() => {
                next_heartbeat += heartbeat.unwrap_or(far);
                let now = crate::core::event::format_time(crate::core::event::now_ms());
                let _ = outbox.push(Message::plain(json!({"type": "heartbeat", "time": now}).to_string()));
            }
            _ = shutdown.changed() => break Some(Ending(1001, "server shutting down")),
            () = sleep_until(expires.unwrap_or(next_ping + far)), if expires.is_some() => {
                break Some(Ending(TOKEN_EXPIRED, "token_expired"));
            }
        }
    };
    if let Some(Ending(code, reason)) = &ending {
        writer.close(*code, reason);
        let _ = tokio::time::timeout(Duration::from_secs(1), writer.shutdown()).await;
    }
    ending
}

/// Work for the request task, in arrival order.
enum Work {
    /// Finish a direct URL's registration (replay, then live events).
    Complete(Subscribing<WsOutlet>),
    /// A client message.
    Text(String),
    /// A binary message, which the protocol does not use.
    Binary,
}

/// A client message of the multiplexed protocol.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ClientMessage {
    op: String,
    /// Read separately (it is echoed even when the rest is invalid); declared so it is not an unknown field.
    #[serde(rename = "id")]
    _id: Option<Value>,
    channel: Option<String>,
    since: Option<u64>,
    epoch: Option<String>,
    /// `emit`: the client event's name.
    event: Option<String>,
    /// `emit`: its arguments.
    args: Option<Vec<Value>>,
}

/// Who is on the other end, for permission checks, and what its `emit`s map to.
struct Client {
    access: Arc<Access>,
    identity: Identity,
    events: Arc<ClientEvents>,
    /// Events it may still publish through mapped client events.
    publishes: Allowance,
}

async fn serve_requests(
    client: Arc<Client>,
    feed: Arc<Feed<WsOutlet>>,
    mut pending: mpsc::Receiver<Work>,
) {
    while let Some(request) = pending.recv().await {
        match request {
            // A failed replay closes the connection; the client resumes on reconnecting.
            Work::Complete(subscribing) => {
                let _ = subscribing.complete().await;
            }
            Work::Text(text) => handle(&client, &feed, &text).await,
            Work::Binary => {
                let error = Refusal::UnsupportedBinary.frame(None);
                let _ = feed.outlet.outbox.push(Message::plain(error));
            }
        }
    }
}

async fn handle(client: &Arc<Client>, feed: &Arc<Feed<WsOutlet>>, text: &str) {
    let outbox = &feed.outlet.outbox;
    let refuse = |id: Option<Value>, refusal: Refusal| {
        let _ = outbox.push(Message::plain(refusal.frame(id)));
    };
    let value: Value = match serde_json::from_str(text) {
        Ok(v) => v,
        Err(e) => return refuse(None, Refusal::InvalidJson(e.to_string())),
    };
    // The id is echoed even when the rest of the request is wrong, so the client can match the error.
    let id = value
        .get("id")
        .filter(|v| v.is_number() || v.is_string())
        .cloned();
    let msg: ClientMessage = match serde_json::from_value(value) {
        Ok(m) => m,
        Err(e) => return refuse(id, Refusal::InvalidRequest(e.to_string())),
    };
    let channel = || -> Result<ChannelName, Refusal> {
        let name = msg
            .channel
            .as_deref()
            .ok_or_else(|| Refusal::InvalidRequest("missing field `channel`".to_owned()))?;
        Ok(ChannelName::new(name)?)
    };
    let reply = match msg.op.as_str() {
        "subscribe" => match channel() {
            Ok(channel) => {
                let want = Want {
                    channel,
                    after: msg.since,
                    epoch: msg.epoch,
                    gap: None,
                };
                // Answered either way.
                let _ = subscribe(client, feed, want, id, None).await;
                return;
            }
            Err(r) => r.frame(id),
        },
        "emit" => match msg.event {
            Some(event) => {
                return emit(client, feed, &event, msg.args.unwrap_or_default(), id).await;
            }
            None => Refusal::InvalidRequest("missing field `event`".to_owned()).frame(id),
        },
        "unsubscribe" => match channel() {
            Ok(channel) => {
                let _op = feed.serialize().await;
                feed.unsubscribe(&channel);
                json!({"type": "unsubscribed", "id": id, "channel": channel}).to_string()
            }
            Err(r) => r.frame(id),
        },
        "ping" => json!({"type": "pong", "id": id}).to_string(),
        other => Refusal::UnknownOp(other.to_owned()).frame(id),
    };
    let _ = outbox.push(Message::plain(reply));
}

/// An `emit` of client event `event`: mapped as Socket.IO maps it, answered `{"type":"ack","id","event","data"}`
/// with what a Socket.IO ack carries, or an error naming the event.
async fn emit(
    client: &Arc<Client>,
    feed: &Arc<Feed<WsOutlet>>,
    event: &str,
    args: Vec<Value>,
    id: Option<Value>,
) {
    let outbox = &feed.outlet.outbox;
    let outcome = client
        .events
        .handle(event, &args, &client.identity, &client.publishes)
        .await;
    let data = match outcome {
        Ok(Outcome::Subscribe(channel)) => {
            let subscribed = subscribe(client, feed, Want::new_events(channel), id, Some(event));
            if let Err(r) = subscribed.await {
                client.events.refused(&r);
            }
            return;
        }
        Ok(Outcome::Unsubscribe(channel)) => {
            let _op = feed.serialize().await;
            feed.unsubscribe(&channel);
            json!({"ok": true, "channel": channel})
        }
        Ok(Outcome::Done(value)) => value,
        Ok(Outcome::Reply { event: sent, data }) => {
            let reply = json!({"type": "event", "event": sent, "data": data});
            let _ = outbox.push(Message::plain(reply.to_string()));
            json!({"ok": true})
        }
        Ok(Outcome::Forward(call)) => {
            // On a task of its own: later requests are not held behind a slow backend (the forward's permit bounds
            // how many run).
            let (client, feed, event) = (client.clone(), feed.clone(), event.to_owned());
            tokio::spawn(async move { forwarded(&client, &feed, &event, call, id).await });
            return;
        }
        Err(refused) => {
            let _ = outbox.push(Message::plain(refused.emit_frame(id, event)));
            return;
        }
    };
    let _ = outbox.push(Message::plain(ack(id, event, data)));
}

/// Runs a forward of client event `event` and applies the backend's answer: unsubscriptions, subscriptions
/// (each refusal an error message naming the event, without the request's id), then the ack, then a close if asked.
async fn forwarded(
    client: &Client,
    feed: &Arc<Feed<WsOutlet>>,
    event: &str,
    call: Call,
    id: Option<Value>,
) {
    let outbox = &feed.outlet.outbox;
    let answer = match call.run().await {
        Ok(answer) => answer,
        Err(refused) => {
            client.events.refused(&refused);
            let _ = outbox.push(Message::plain(refused.emit_frame(id, event)));
            return;
        }
    };
    for channel in answer.unsubscribe {
        let _op = feed.serialize().await;
        feed.unsubscribe(&channel);
    }
    for channel in answer.subscribe {
        let want = Want::new_events(channel);
        match path::subscribe(feed, &client.access, &client.identity, vec![want]).await {
            Ok(subscribing) => {
                if let Err(refused) = subscribing.complete().await {
                    let _ = outbox.push(Message::plain(refused.frame(None)));
                }
            }
            Err(refused) => {
                client.events.refused(&refused);
                let _ = outbox.push(Message::plain(refused.emit_frame(None, event)));
            }
        }
    }
    let data = answer.ack.unwrap_or_else(|| json!({"ok": true}));
    let _ = outbox.push(Message::plain(ack(id, event, data)));
    if answer.disconnect {
        outbox.close(Closed::Backend);
    }
}

/// The answer to an `emit` that succeeded.
fn ack(id: Option<Value>, event: &str, data: Value) -> String {
    json!({"type": "ack", "id": id, "event": event, "data": data}).to_string()
}

/// Registers `want` if permitted, confirms (`subscribed`, or for an `emit` of `event` its ack), then queues the
/// replay and live events. A refusal of the registration is answered, then returned.
async fn subscribe(
    client: &Client,
    feed: &Arc<Feed<WsOutlet>>,
    want: Want,
    id: Option<Value>,
    event: Option<&str>,
) -> Result<(), Refusal> {
    let outbox = &feed.outlet.outbox;
    let subscribing =
        match path::subscribe(feed, &client.access, &client.identity, vec![want]).await {
            Ok(subscribing) => subscribing,
            Err(refused) => {
                let frame = match event {
                    Some(event) => refused.emit_frame(id, event),
                    None => refused.frame(id),
                };
                let _ = outbox.push(Message::plain(frame));
                return Err(refused);
            }
        };
    if let Some(r) = subscribing.registrations().first() {
        let p = &r.position;
        let reply = match event {
            Some(event) => ack(
                id,
                event,
                json!({"ok": true, "channel": r.channel, "offset": p.last_offset, "epoch": p.epoch}),
            ),
            None => json!({"type": "subscribed", "id": id, "channel": r.channel, "offset": p.last_offset, "epoch": p.epoch}).to_string(),
        };
        let _ = outbox.push(Message::plain(reply));
    }
    if let Err(refused) = subscribing.complete().await {
        let _ = outbox.push(Message::plain(refused.frame(None)));
    }
    Ok(())
}

/// Writes what is queued; false if the peer is gone or has not taken the bytes within `limit` (it stopped reading).
async fn flushed(writer: &mut Writer, limit: Duration) -> bool {
    matches!(
        tokio::time::timeout(limit, writer.flush()).await,
        Ok(Ok(()))
    )
}

/// The `id` of a client message, if it has a usable one.
fn request_id(text: &str) -> Option<Value> {
    let value: Value = serde_json::from_str(text).ok()?;
    value
        .get("id")
        .filter(|v| v.is_number() || v.is_string())
        .cloned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::value::RawValue;

    fn event(name: &str, data: &str) -> Arc<SharedEvent> {
        SharedEvent::new(Event {
            channel: ChannelName::new("Final 1A").unwrap(),
            offset: 1,
            epoch: Arc::from("e"),
            id: "i".into(),
            name: name.into(),
            data: RawValue::from_string(data.into()).unwrap(),
            time: 0,
            seq: 1,
            channel_id: 1,
            state: None,
        })
    }

    fn outlet(shape: PayloadShape) -> WsOutlet {
        WsOutlet {
            outbox: Arc::new(Outbox::new(1 << 20)),
            shape,
            deflate: false,
            view: parking_lot::Mutex::new(DataView::default()),
        }
    }

    async fn sent(o: &WsOutlet) -> Vec<Value> {
        let mut batch = Vec::new();
        o.outbox.next_batch(&mut batch).await;
        batch
            .iter()
            .map(|m| serde_json::from_slice(&m.payload).unwrap())
            .collect()
    }

    const ERROR: &str = r#"{"source":"s","channel":"Final 1A","status":"error","message":"down"}"#;
    const OK: &str = r#"{"source":"s","channel":"Final 1A","status":"ok","message":null}"#;

    #[tokio::test]
    async fn data_urls_never_send_a_status_as_data() {
        let o = outlet(PayloadShape::Data);
        o.live(&event("result", r#"{"models":[1]}"#)).unwrap();
        o.live(&event(SOURCE_STATUS_EVENT, ERROR)).unwrap();
        o.live(&event(SOURCE_STATUS_EVENT, OK)).unwrap();
        // A second recovery notice with no error before it re-sends nothing.
        o.live(&event(SOURCE_STATUS_EVENT, OK)).unwrap();
        let got = sent(&o).await;
        assert_eq!(got.len(), 3, "{got:?}");
        assert_eq!(got[0], json!({"models": [1]}));
        assert_eq!(got[1]["type"], "error");
        assert_eq!(got[1]["code"], "source_error");
        assert_eq!(got[1]["message"], "down");
        assert_eq!(
            got[2],
            json!({"models": [1]}),
            "the recovery re-sends the data"
        );

        // A changed result before the recovery is the only data message.
        o.live(&event(SOURCE_STATUS_EVENT, ERROR)).unwrap();
        o.live(&event("result", r#"{"models":[2]}"#)).unwrap();
        o.live(&event(SOURCE_STATUS_EVENT, OK)).unwrap();
        let got = sent(&o).await;
        assert_eq!(got.len(), 2, "{got:?}");
        assert_eq!(got[1], json!({"models": [2]}));

        // Data too large to keep, or none yet: the recovery sends nothing at all.
        let big = format!(r#"{{"x":"{}"}}"#, "a".repeat(RESEND_MAX_BYTES));
        o.live(&event("result", &big)).unwrap();
        o.live(&event(SOURCE_STATUS_EVENT, ERROR)).unwrap();
        o.live(&event(SOURCE_STATUS_EVENT, OK)).unwrap();
        assert_eq!(sent(&o).await.len(), 2);
        let fresh = outlet(PayloadShape::Data);
        fresh.live(&event(SOURCE_STATUS_EVENT, ERROR)).unwrap();
        fresh.live(&event(SOURCE_STATUS_EVENT, OK)).unwrap();
        assert_eq!(sent(&fresh).await.len(), 1);
    }

    #[tokio::test]
    async fn an_engine_outage_is_typed_and_never_data() {
        let down = Health::Unavailable { since: 0 };
        let e = outlet(PayloadShape::Envelope);
        e.status(&down).unwrap();
        e.status(&Health::Ok).unwrap();
        let got = sent(&e).await;
        assert_eq!(got[0]["type"], "status");
        assert_eq!(got[0]["engine"], "unavailable");
        assert_eq!(got[0]["since"], "1970-01-01T00:00:00.000Z");
        assert_eq!(got[1], json!({"type": "status", "engine": "ok"}));

        // Data shape: an error, then the last data again on recovery.
        let d = outlet(PayloadShape::Data);
        d.live(&event("result", r#"{"models":[1]}"#)).unwrap();
        d.status(&down).unwrap();
        d.status(&Health::Ok).unwrap();
        let got = sent(&d).await;
        assert_eq!(got.len(), 3, "{got:?}");
        assert_eq!(got[1]["type"], "error");
        assert_eq!(got[1]["code"], "engine_unavailable");
        assert_eq!(got[2], json!({"models": [1]}));
        // A source still failing when the engine recovers: no data re-sent until the source recovers too.
        d.live(&event(SOURCE_STATUS_EVENT, ERROR)).unwrap();
        d.status(&down).unwrap();
        d.status(&Health::Ok).unwrap();
        assert_eq!(sent(&d).await.len(), 2);
        d.live(&event(SOURCE_STATUS_EVENT, OK)).unwrap();
        assert_eq!(sent(&d).await, vec![json!({"models": [1]})]);
    }

    #[tokio::test]
    async fn envelopes_and_foreign_status_events_pass_unchanged() {
        let o = outlet(PayloadShape::Envelope);
        o.live(&event(SOURCE_STATUS_EVENT, OK)).unwrap();
        let got = sent(&o).await;
        assert_eq!(got[0]["type"], "event");
        assert_eq!(got[0]["event"], SOURCE_STATUS_EVENT);
        // Not a status notice Herald wrote (no `status`): data like any event.
        let d = outlet(PayloadShape::Data);
        d.live(&event(SOURCE_STATUS_EVENT, r#"{"note":1}"#))
            .unwrap();
        assert_eq!(sent(&d).await, vec![json!({"note": 1})]);
    }
}
