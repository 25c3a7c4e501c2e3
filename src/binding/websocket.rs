//! Channels over a plain WebSocket, for clients with no library: a small JSON protocol on `/ws`
//! (`subscribe`/`unsubscribe`/`ping` with correlated ids) and direct channel URLs `/ws/{channel}` that stream at
//! once. Ping frames detect dead peers; optional `heartbeat` messages serve browser code that cannot see them.
//!
//! Each connection runs one task that reads, writes (coalescing everything queued into one flush) and keeps
//! time; client requests are handled on a second task so a long replay never stops the writer.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::{mpsc, watch};
use tokio::time::{Instant, sleep_until};

use super::feed::{Feed, Gone, Outlet, Registered, Want};
use super::outbox::{Closed, Outbox, Weight};
use super::wire::{channel_from_path, envelope, gap_message};
use crate::api::ApiError;
use crate::config::{PayloadShape, WebSocketConfig};
use crate::core::Core;
use crate::core::channel::ChannelName;
use crate::core::event::{EncodingSlot, Event, SharedEvent};
use crate::core::session::Gap;

/// Slot of the shared envelope text of a live event.
const ENVELOPE: EncodingSlot = EncodingSlot(1);
/// Slot of the shared bare-data text of a live event.
const DATA: EncodingSlot = EncodingSlot(2);
/// Client requests waiting for the request task before reading pauses.
const PENDING_REQUESTS: usize = 64;

/// The plain WebSocket binding.
pub struct WebSocketBinding {
    core: Arc<Core>,
    config: WebSocketConfig,
    shutdown: watch::Receiver<bool>,
}

impl WebSocketBinding {
    /// Routes `/ws` and `/ws/{channel}`; connections close with 1001 when `shutdown` turns true.
    pub fn router(
        core: Arc<Core>,
        config: WebSocketConfig,
        shutdown: watch::Receiver<bool>,
    ) -> Router {
        let binding = Arc::new(Self {
            core,
            config,
            shutdown,
        });
        Router::new()
            .route("/ws", get(multiplexed))
            .route("/ws/{*path}", get(direct))
            .with_state(binding)
    }
}

impl Weight for Utf8Bytes {
    fn weight(&self) -> usize {
        self.len()
    }
}

/// Puts events on one connection's outbox.
struct WsOutlet {
    outbox: Arc<Outbox<Utf8Bytes>>,
    shape: PayloadShape,
}

impl WsOutlet {
    fn encode(&self, e: &Event) -> Utf8Bytes {
        match self.shape {
            PayloadShape::Envelope => envelope(e).into(),
            PayloadShape::Data => e.data.get().into(),
        }
    }
}

impl Outlet for WsOutlet {
    fn live(&self, event: &Arc<SharedEvent>) -> Result<(), Gone> {
        let text = match self.shape {
            PayloadShape::Envelope => event.encoded(ENVELOPE, |e| Utf8Bytes::from(envelope(e))),
            PayloadShape::Data => event.encoded(DATA, |e| Utf8Bytes::from(e.data.get())),
        };
        self.outbox.push(text)
    }

    fn replayed(&self, event: &Event, _: &Registered) -> Result<(), Gone> {
        self.outbox.push(self.encode(event))
    }

    fn gap(&self, gap: &Gap) -> Result<(), Gone> {
        self.outbox.push(gap_message(gap).into())
    }

    fn overflow(&self) {
        self.outbox.close(Closed::SlowConsumer);
    }

    async fn room(&self) {
        self.outbox.room().await;
    }
}

fn bad_request(code: &'static str, message: impl Into<String>) -> Response {
    ApiError::new(StatusCode::BAD_REQUEST, code, message).into_response()
}

async fn multiplexed(
    State(b): State<Arc<WebSocketBinding>>,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    match upgrade {
        Ok(upgrade) => configure(upgrade, &b.config)
            .on_upgrade(move |ws| run(b, ws, PayloadShape::Envelope, None)),
        Err(e) => bad_request("websocket_required", e.body_text()),
    }
}

#[derive(Deserialize)]
struct DirectQuery {
    since: Option<u64>,
    epoch: Option<String>,
}

async fn direct(
    State(b): State<Arc<WebSocketBinding>>,
    path: Result<Path<String>, PathRejection>,
    query: Result<Query<DirectQuery>, QueryRejection>,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let channel = match path.map(|Path(p)| channel_from_path(&p)) {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => return bad_request("invalid_channel", e.to_string()),
        Err(e) => return bad_request("invalid_channel", e.body_text()),
    };
    let Query(q) = match query {
        Ok(q) => q,
        Err(e) => {
            return bad_request(
                "invalid_request",
                format!("`since` must be an offset: {}", e.body_text()),
            );
        }
    };
    let upgrade = match upgrade {
        Ok(u) => u,
        Err(e) => return bad_request("websocket_required", e.body_text()),
    };
    let shape = b.config.direct_payload(channel.as_str());
    let want = Want {
        channel,
        after: q.since,
        epoch: q.epoch,
        gap: None,
    };
    configure(upgrade, &b.config).on_upgrade(move |ws| run(b, ws, shape, Some(want)))
}

fn configure(upgrade: WebSocketUpgrade, config: &WebSocketConfig) -> WebSocketUpgrade {
    upgrade
        .read_buffer_size(4 << 10)
        .write_buffer_size(16 << 10)
        .max_message_size(config.max_message_bytes)
        .max_frame_size(config.max_message_bytes)
}

/// Serves one connection until it closes.
async fn run(b: Arc<WebSocketBinding>, ws: WebSocket, shape: PayloadShape, initial: Option<Want>) {
    let outbox = Arc::new(Outbox::new(b.config.max_queue_bytes));
    let outlet = WsOutlet {
        outbox: outbox.clone(),
        shape,
    };
    let feed = Feed::new(b.core.clone(), outlet, b.config.max_queue_bytes);
    let (requests, pending) = mpsc::channel(PENDING_REQUESTS);
    let worker = tokio::spawn(serve_requests(feed.clone(), pending));
    if let Some(want) = initial {
        let _ = requests.send(Request::Direct(want)).await;
    }
    let close = pump(&b, ws, &outbox, &requests).await;
    tracing::debug!(?close, "websocket closed");
    drop(requests);
    worker.abort();
    feed.detach();
}

/// Why a connection ended, as the close frame says it.
#[derive(Debug)]
struct Ending(u16, &'static str);

async fn pump(
    b: &WebSocketBinding,
    ws: WebSocket,
    outbox: &Outbox<Utf8Bytes>,
    requests: &mpsc::Sender<Request>,
) -> Option<Ending> {
    let (mut sink, mut stream) = ws.split();
    let config = &b.config;
    let mut shutdown = b.shutdown.clone();
    let mut next_ping = Instant::now() + config.ping_interval;
    let mut pong_due: Option<Instant> = None;
    let heartbeat = (!config.heartbeat_interval.is_zero()).then_some(config.heartbeat_interval);
    let mut next_heartbeat = Instant::now() + heartbeat.unwrap_or(Duration::from_secs(3600));
    let mut batch = Vec::new();
    let ending = loop {
        tokio::select! {
            msg = stream.next() => match msg {
                Some(Ok(Message::Text(text))) => {
                    if requests.send(Request::Text(text)).await.is_err() {
                        break None;
                    }
                }
                Some(Ok(Message::Binary(_))) => {
                    let _ = outbox.push(error_message(None, "unsupported_binary", "send JSON text messages").into());
                }
                Some(Ok(Message::Pong(_))) => pong_due = None,
                Some(Ok(Message::Ping(_))) => {}
                Some(Ok(Message::Close(_))) | None => break None,
                Some(Err(e)) => break Some(read_error(e)),
            },
            closed = outbox.next_batch(&mut batch) => {
                if let Some(reason) = closed {
                    break Some(match reason {
                        Closed::SlowConsumer => Ending(1008, "slow consumer"),
                        Closed::Shutdown => Ending(1001, "server shutting down"),
                        Closed::Gone => Ending(1000, "closed"),
                    });
                }
                for text in batch.drain(..) {
                    if sink.feed(Message::Text(text)).await.is_err() {
                        return None;
                    }
                }
                if sink.flush().await.is_err() {
                    return None;
                }
            }
            () = sleep_until(next_ping) => {
                next_ping += config.ping_interval;
                if pong_due.is_none() {
                    pong_due = Some(Instant::now() + config.ping_timeout);
                }
                if sink.send(Message::Ping(Default::default())).await.is_err() {
                    return None;
                }
            }
            () = sleep_until(pong_due.unwrap_or(next_ping + Duration::from_secs(3600))), if pong_due.is_some() => {
                break Some(Ending(1011, "ping timeout"));
            }
            () = sleep_until(next_heartbeat), if heartbeat.is_some() => {
                next_heartbeat += heartbeat.unwrap_or_default();
                let now = crate::core::event::format_time(crate::core::store::now_ms());
                let _ = outbox.push(json!({"type": "heartbeat", "time": now}).to_string().into());
            }
            _ = shutdown.changed() => break Some(Ending(1001, "server shutting down")),
        }
    };
    if let Some(Ending(code, reason)) = &ending {
        let frame = CloseFrame {
            code: *code,
            reason: Utf8Bytes::from_static(reason),
        };
        let _ = tokio::time::timeout(
            Duration::from_secs(1),
            sink.send(Message::Close(Some(frame))),
        )
        .await;
    }
    ending
}

fn read_error(e: axum::Error) -> Ending {
    let too_big = e
        .into_inner()
        .downcast_ref::<tungstenite::Error>()
        .is_some_and(|e| matches!(e, tungstenite::Error::Capacity(_)));
    if too_big {
        Ending(1009, "message too big")
    } else {
        Ending(1002, "protocol error")
    }
}

/// Work for the request task, in arrival order.
enum Request {
    /// Subscribe a direct URL's channel.
    Direct(Want),
    /// A client message.
    Text(Utf8Bytes),
}

/// A client message of the multiplexed protocol.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ClientMessage {
    op: String,
    id: Option<Value>,
    channel: Option<String>,
    since: Option<u64>,
    epoch: Option<String>,
}

async fn serve_requests(feed: Arc<Feed<WsOutlet>>, mut pending: mpsc::Receiver<Request>) {
    while let Some(request) = pending.recv().await {
        match request {
            Request::Direct(want) => {
                subscribe(&feed, want, None).await;
            }
            Request::Text(text) => handle(&feed, &text).await,
        }
    }
}

async fn handle(feed: &Arc<Feed<WsOutlet>>, text: &str) {
    let outbox = &feed.outlet.outbox;
    let msg: ClientMessage = match serde_json::from_str(text) {
        Ok(m) => m,
        Err(e) => {
            let code = if e.is_data() {
                "invalid_request"
            } else {
                "invalid_json"
            };
            let _ = outbox.push(error_message(None, code, &e.to_string()).into());
            return;
        }
    };
    let id = msg.id.filter(|v| v.is_number() || v.is_string());
    let channel = || -> Result<ChannelName, String> {
        let name = msg.channel.as_deref().ok_or("missing field `channel`")?;
        ChannelName::new(name).map_err(|e| e.to_string())
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
                return subscribe(feed, want, Some(id)).await;
            }
            Err(m) => error_message(id, "invalid_channel", &m),
        },
        "unsubscribe" => match channel() {
            Ok(channel) => {
                let _op = feed.serialize().await;
                feed.unsubscribe(&channel);
                json!({"type": "unsubscribed", "id": id, "channel": channel}).to_string()
            }
            Err(m) => error_message(id, "invalid_channel", &m),
        },
        "ping" => json!({"type": "pong", "id": id}).to_string(),
        other => error_message(
            id,
            "unknown_op",
            &format!("unknown op {other:?}; use subscribe, unsubscribe or ping"),
        ),
    };
    let _ = outbox.push(reply.into());
}

/// Registers `want`, confirms (for the multiplexed protocol), then queues the replay and live events.
async fn subscribe(feed: &Arc<Feed<WsOutlet>>, want: Want, confirm: Option<Option<Value>>) {
    let _op = feed.serialize().await;
    let regs = feed.begin(vec![want]);
    if let (Some(id), Some(r)) = (confirm, regs.first()) {
        let p = &r.position;
        let reply = json!({"type": "subscribed", "id": id, "channel": r.channel, "offset": p.last_offset, "epoch": p.epoch});
        let _ = feed.outlet.outbox.push(reply.to_string().into());
    }
    if let Err(e) = feed.complete(&regs).await {
        tracing::error!(error = %e, "replay failed");
        let _ = feed
            .outlet
            .outbox
            .push(error_message(None, "unavailable", "storage is unavailable").into());
    }
}

fn error_message(id: Option<Value>, code: &str, message: &str) -> String {
    let mut v = json!({"type": "error", "code": code, "message": message});
    if let Some(id) = id {
        v["id"] = id;
    }
    v.to_string()
}
