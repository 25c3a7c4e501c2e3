//! Channels over Server-Sent Events: `GET /sse?channel=a&channel=b` or `/sse/{channel}`.
//!
//! Every event's `id:` is a compound cursor — `<epoch>:<offset>` for each channel of the stream, in URL order —
//! so the browser's automatic reconnection (`Last-Event-ID`) resumes every channel exactly. The stream opens
//! with an `id:` alone, which sets the browser's last event id without dispatching anything, so even a stream
//! that received no event yet resumes from where it started. Losses arrive in-band as `herald:gap` events; an
//! engine outage and its end as `herald:status` events, without an `id:` (they move no cursor).

pub mod config;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use parking_lot::Mutex;
use tokio::sync::watch;

use super::access::Access;
use super::feed::{Feed, Gone, Outlet, REPLAY_WINDOW, Registered, Want};
use super::outbox::{Closed, Outbox, Weight};
use super::refusal::Refusal;
use super::stats;
use super::subscribe as path;
use super::wire::{STATUS_EVENT, channel_from_path, envelope};
use crate::core::Engine;
use crate::core::channel::ChannelName;
use crate::core::engine::Health;
use crate::core::event::{EncodingSlot, Event, SharedEvent, SlotError};
use crate::core::gap::Gap;
use crate::policy::rate::Slot;
use crate::registry::{CloseReason, Info, Live, Registration, Registry, Transport, new_id};
use axum::extract::ConnectInfo;
pub use config::SseConfig;
use std::net::SocketAddr;

/// Slot of the shared `event:`/`data:` lines of a live event.
static BODY: EncodingSlot<Bytes> = EncodingSlot::new();
/// Slot of the same with the full envelope as data.
static ENVELOPE_BODY: EncodingSlot<Bytes> = EncodingSlot::new();
/// Slots of whole records (`id:` included) for single-channel streams, whose cursor is the event's own position.
static SINGLE: EncodingSlot<Bytes> = EncodingSlot::new();
static SINGLE_ENVELOPE: EncodingSlot<Bytes> = EncodingSlot::new();
/// Most channels in one stream.
const MAX_CHANNELS: usize = 64;

/// Registers the binding's event encodings (at start-up, so a full event cache is an error there).
pub fn register_encodings() -> Result<(), SlotError> {
    [&BODY, &ENVELOPE_BODY, &SINGLE, &SINGLE_ENVELOPE]
        .into_iter()
        .try_for_each(EncodingSlot::register)
}

/// The SSE binding.
pub struct SseBinding {
    core: Arc<dyn Engine>,
    access: Arc<Access>,
    config: SseConfig,
    shutdown: watch::Receiver<bool>,
    registry: Registry,
}

impl SseBinding {
    /// Routes `/sse` and `/sse/{channel}`; streams end when `shutdown` turns true, and are listed in `registry`
    /// while open.
    pub fn router(
        core: Arc<dyn Engine>,
        access: Arc<Access>,
        config: SseConfig,
        shutdown: watch::Receiver<bool>,
        registry: Registry,
    ) -> Router {
        let binding = Arc::new(Self {
            core,
            access,
            config,
            shutdown,
            registry,
        });
        Router::new()
            .route("/sse", get(by_query))
            .route("/sse/{*path}", get(by_path))
            .with_state(binding)
    }
}

impl Weight for Bytes {
    fn weight(&self) -> usize {
        self.len()
    }
}

/// Puts events on one stream, keeping its compound cursor.
struct SseOutlet {
    outbox: Arc<Outbox<Bytes>>,
    channels: Vec<ChannelName>,
    /// `(epoch, offset)` delivered so far, per channel.
    cursor: Mutex<Vec<(Arc<str>, u64)>>,
    envelope: bool,
}

impl SseOutlet {
    /// Advances the cursor past `e` and renders the `id:` line.
    fn id_line(&self, e: &Event) -> Bytes {
        let mut cursor = self.cursor.lock();
        if let Some(i) = self.channels.iter().position(|c| *c == e.channel) {
            cursor[i] = (e.epoch.clone(), e.offset);
        }
        Bytes::from(format!("id: {}\n", render_cursor(&cursor)))
    }

    /// Queues one event record; `bulk` for a replay (which paces itself with `room`).
    fn push_event(&self, e: &Event, body: Bytes, bulk: bool) -> Result<(), Gone> {
        // Both parts go in one push so the cursor and the event cannot be split by a close.
        let mut record = Vec::with_capacity(body.len() + 64);
        record.extend_from_slice(&self.id_line(e));
        record.extend_from_slice(&body);
        let record = Bytes::from(record);
        if bulk {
            self.outbox.push_bulk(record)
        } else {
            self.outbox.push_stamped(record, e.time)
        }
    }
}

fn body_of(e: &Event, envelope_data: bool) -> Bytes {
    let data = if envelope_data {
        envelope(e)
    } else {
        e.data.get().to_owned()
    };
    // JSON text has no raw newlines, so one `data:` line carries it; the name is sanitised the same way.
    let name = e.name.replace(['\n', '\r'], " ");
    Bytes::from(format!("event: {name}\ndata: {data}\n\n"))
}

impl Live for Feed<SseOutlet> {
    fn queued_bytes(&self) -> usize {
        self.outlet.outbox.queued_bytes()
    }

    fn subscriptions(&self) -> Vec<ChannelName> {
        self.channels()
    }

    /// Ends the stream once what is queued went out: the browser's EventSource reconnects by itself, sending the
    /// last cursor it got as `Last-Event-ID`.
    fn close(&self) {
        self.outlet.outbox.close(Closed::Disconnected);
    }

    fn tell_status(&self) {
        Feed::tell_status(self);
    }
}

impl Outlet for SseOutlet {
    const TRANSPORT: Transport = Transport::Sse;
    fn live(&self, event: &Arc<SharedEvent>) -> Result<(), Gone> {
        if self.channels.len() == 1 {
            // Every single-channel stream has the same cursor after this event: share the whole record.
            let slot = if self.envelope {
                &SINGLE_ENVELOPE
            } else {
                &SINGLE
            };
            let record = event.encoded(slot, |e| {
                let body = body_of(e, self.envelope);
                let mut record = format!("id: {}:{}\n", e.epoch, e.offset).into_bytes();
                record.extend_from_slice(&body);
                Bytes::from(record)
            });
            return self.outbox.push_stamped(record, event.event.time);
        }
        let body = if self.envelope {
            event.encoded(&ENVELOPE_BODY, |e| body_of(e, true))
        } else {
            event.encoded(&BODY, |e| body_of(e, false))
        };
        self.push_event(&event.event, body, false)
    }

    fn replayed(&self, event: &Event, _: &Registered) -> Result<(), Gone> {
        self.push_event(event, body_of(event, self.envelope), true)
    }

    fn gap(&self, gap: &Gap) -> Result<(), Gone> {
        let data = crate::json::text(gap);
        self.outbox
            .push(Bytes::from(format!("event: herald:gap\ndata: {data}\n\n")))
    }

    fn status(&self, health: &Health) -> Result<(), Gone> {
        let data = crate::json::text(health);
        self.outbox.push(Bytes::from(format!(
            "event: {STATUS_EVENT}\ndata: {data}\n\n"
        )))
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

#[doc(hidden)]
pub fn render_cursor(cursor: &[(Arc<str>, u64)]) -> String {
    let parts: Vec<String> = cursor
        .iter()
        .map(|(epoch, offset)| format!("{epoch}:{offset}"))
        .collect();
    parts.join(",")
}

/// Parses a compound cursor for `n` channels: `<epoch>:<offset>` per channel, joined by `,`.
#[doc(hidden)]
pub fn parse_cursor(text: &str, n: usize) -> Result<Vec<(String, u64)>, String> {
    let parts: Vec<&str> = text.split(',').collect();
    if parts.len() != n {
        return Err(format!(
            "cursor has {} positions for {n} channels",
            parts.len()
        ));
    }
    parts
        .iter()
        .map(|p| {
            let (epoch, offset) = p
                .rsplit_once(':')
                .ok_or_else(|| format!("{p:?} is not <epoch>:<offset>"))?;
            if !epoch.chars().all(|c| c.is_ascii_alphanumeric()) {
                return Err(format!("epoch {epoch:?} is not alphanumeric"));
            }
            let offset = offset
                .parse()
                .map_err(|_| format!("offset {offset:?} is not a number"))?;
            Ok((epoch.to_owned(), offset))
        })
        .collect()
}

async fn by_query(
    State(b): State<Arc<SseBinding>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
    headers: HeaderMap,
) -> Response {
    let Ok(Query(pairs)) = query else {
        return bad("malformed query string");
    };
    let names: Vec<&str> = pairs
        .iter()
        .filter(|(k, _)| k == "channel")
        .map(|(_, v)| v.as_str())
        .collect();
    if names.is_empty() {
        return bad("give at least one `channel` parameter");
    }
    let channels: Result<Vec<ChannelName>, _> = names.iter().map(|n| ChannelName::new(n)).collect();
    // A channel named twice is one subscription; the cursor lists each channel once, in first-mention order.
    let channels = channels.map(|mut cs| {
        let mut seen = std::collections::HashSet::new();
        cs.retain(|c| seen.insert(c.clone()));
        cs
    });
    match channels {
        Ok(channels) => open(b, peer, channels, &pairs, &headers).await,
        Err(e) => Refusal::from(e).response(),
    }
}

async fn by_path(
    State(b): State<Arc<SseBinding>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    uri: axum::http::Uri,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
    headers: HeaderMap,
) -> Response {
    // The raw path, not the router's decoded capture: `%2F` must stay inside its segment.
    let raw = uri.path().strip_prefix("/sse/").unwrap_or_default();
    let channel = match channel_from_path(raw) {
        Ok(c) => c,
        Err(e) => return Refusal::from(e).response(),
    };
    let Ok(Query(pairs)) = query else {
        return bad("malformed query string");
    };
    open(b, peer, vec![channel], &pairs, &headers).await
}

fn bad(message: impl Into<String>) -> Response {
    Refusal::InvalidRequest(message.into()).response()
}

async fn open(
    b: Arc<SseBinding>,
    peer: SocketAddr,
    channels: Vec<ChannelName>,
    query: &[(String, String)],
    headers: &HeaderMap,
) -> Response {
    if channels.len() > MAX_CHANNELS {
        return bad(format!("at most {MAX_CHANNELS} channels per stream"));
    }
    // EventSource cannot set headers: the token comes from the query string or a cookie.
    let (identity, slot) = match b.access.enter(headers, query, Some(peer.ip())).await {
        Ok(admitted) => admitted,
        Err(refused) => return refused.response(),
    };
    // Checked before the cursor is read, so a refusal outranks a malformed cursor.
    if let Err(refused) = b.access.permit(&identity, &[], &channels) {
        return refused.response();
    }

    let param = |k: &str| {
        query
            .iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.as_str())
    };
    // The browser's Last-Event-ID wins over the URL's `since`, which only seeds the first connection.
    let given = headers
        .get("last-event-id")
        .map(|v| v.to_str().unwrap_or("\u{0}"))
        .or(param("since"))
        .filter(|s| !s.is_empty());
    let positions = match given.map(|c| parse_cursor(c, channels.len())).transpose() {
        Ok(p) => p,
        Err(m) => return Refusal::InvalidCursor(m).response(),
    };
    let envelope = matches!(param("envelope"), Some("1" | "true"));
    let outbox = Arc::new(Outbox::new(b.config.max_queue_bytes));
    let outlet = SseOutlet {
        outbox: outbox.clone(),
        channels: channels.clone(),
        cursor: Mutex::new(Vec::new()),
        envelope,
    };
    let info = Info::new(
        new_id(Transport::Sse),
        Transport::Sse,
        &identity,
        Some(peer),
    );
    let feed = Feed::new(
        b.core.clone(),
        outlet,
        b.config.max_queue_bytes,
        info.member.clone(),
    );
    let registration = b.registry.register(info, feed.clone());
    let wants = channels
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let p = positions.as_ref().map(|p| &p[i]);
            Want {
                channel: c.clone(),
                after: p.map(|p| p.1),
                epoch: p.map(|p| p.0.clone()),
                gap: None,
            }
        })
        .collect();
    let subscribing = match path::register(&feed, wants).await {
        Ok(subscribing) => subscribing,
        Err(refused) => {
            feed.detach();
            return refused.response();
        }
    };
    // The stream starts at the registered positions: a reconnect before any event still resumes from here.
    *feed.outlet.cursor.lock() = subscribing
        .registrations()
        .iter()
        .map(|r| (r.position.epoch.clone(), r.after))
        .collect();
    let start = format!(
        "retry: {}\nid: {}\n\n",
        b.config.retry.as_millis(),
        render_cursor(&feed.outlet.cursor.lock())
    );
    let _ = outbox.push(Bytes::from(start));
    feed.open_status();
    // A failed replay ends the stream; the browser resumes on reconnecting.
    tokio::spawn(async move {
        let _ = subscribing.complete().await;
    });
    let expiry = b
        .access
        .expires_in(&identity)
        .map(|left| tokio::spawn(expire(outbox.clone(), left)));
    let attached = Attached {
        feed,
        expiry,
        _slot: slot,
        _registration: registration,
    };
    let body = Body::from_stream(stream(
        attached,
        b.config.heartbeat_interval,
        b.shutdown.clone(),
    ));
    let mut response = body.into_response();
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    response
}

/// The stream's hold on its feed: dropped with the response body (the client went away), it detaches.
struct Attached {
    feed: Arc<Feed<SseOutlet>>,
    expiry: Option<tokio::task::JoinHandle<()>>,
    _slot: Option<Slot>,
    _registration: Registration,
}

impl Drop for Attached {
    fn drop(&mut self) {
        if let Some(timer) = self.expiry.take() {
            timer.abort();
        }
        // Closing the outbox also ends a replay that is waiting for room nobody will make.
        self.feed.outlet.outbox.close(Closed::Gone);
        self.feed.detach();
    }
}

/// Ends a stream whose token expired, saying why first.
async fn expire(outbox: Arc<Outbox<Bytes>>, left: Duration) {
    tokio::time::sleep(left).await;
    let _ = outbox.push(Bytes::from_static(
        b"event: herald:disconnect\ndata: {\"reason\":\"token_expired\"}\n\n",
    ));
    outbox.close(Closed::Expired);
}

/// The response body: queued records (coalesced per poll), heartbeat comments, and the end on shutdown.
fn stream(
    attached: Attached,
    heartbeat: Duration,
    shutdown: watch::Receiver<bool>,
) -> impl futures_util::Stream<Item = Result<Bytes, std::convert::Infallible>> + Send {
    let state = (attached, shutdown, Vec::new());
    futures_util::stream::unfold(
        state,
        move |(attached, mut shutdown, mut batch)| async move {
            let outbox = attached.feed.outlet.outbox.clone();
            let chunk = tokio::select! {
                closed = outbox.next_batch(&mut batch) => {
                    if let Some(closed) = closed {
                        let reason = match closed {
                            Closed::SlowConsumer => CloseReason::SlowConsumer,
                            Closed::Shutdown => CloseReason::Shutdown,
                            Closed::Gone => CloseReason::Client,
                            Closed::Failed => CloseReason::Error,
                            Closed::Disconnected | Closed::Backend => CloseReason::Admin,
                            Closed::Expired => CloseReason::Expired,
                        };
                        if reason == CloseReason::SlowConsumer {
                            stats::SLOW_CONSUMERS[Transport::Sse as usize].inc();
                        }
                        attached._registration.closing(reason);
                        return None;
                    }
                    let mut out = Vec::with_capacity(batch.iter().map(Bytes::len).sum());
                    for b in batch.drain(..) {
                        out.extend_from_slice(&b);
                    }
                    // Counted as handed to the response body, which hyper writes next.
                    stats::WRITTEN_BYTES[Transport::Sse as usize].add(out.len() as u64);
                    if let Some(committed) = outbox.take_stamp() {
                        stats::written_live(committed);
                    }
                    Bytes::from(out)
                }
                () = tokio::time::sleep(heartbeat) => Bytes::from_static(b": heartbeat\n\n"),
                _ = shutdown.changed() => {
                    attached._registration.closing(CloseReason::Shutdown);
                    return None;
                }
            };
            Some((Ok(chunk), (attached, shutdown, batch)))
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_parse_and_render() {
        let parsed = parse_cursor("a1b2:41,:0", 2).unwrap();
        assert_eq!(parsed, vec![("a1b2".to_owned(), 41), (String::new(), 0)]);
        assert!(parse_cursor("a1:41", 2).is_err());
        assert!(parse_cursor("a1:x", 1).is_err());
        assert!(parse_cursor("a-1:4", 1).is_err());
        assert_eq!(render_cursor(&[("e".into(), 3), ("".into(), 0)]), "e:3,:0");
    }
}
