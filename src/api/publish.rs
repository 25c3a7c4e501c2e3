//! `POST /api/publish`: one event, one event to many channels, or a batch — validated whole, then committed whole.

use axum::Json;
use axum::body::Body;
use axum::extract::{Extension, State};
use axum::http::{HeaderMap, StatusCode};
use serde::Deserialize;
use serde_json::Value;
use serde_json::value::RawValue;

use super::error::ApiError;
use super::{ApiState, Caller};
use crate::core::channel::ChannelName;
use crate::core::event::{NewEvent, RESERVED_PREFIX};
use crate::core::state::StateChange;
use crate::core::stats::{self, Origin, Outcome};
use crate::transport::socketio::packet::RESERVED_EVENTS;

/// Most events in one request.
pub const MAX_BATCH: usize = 1000;
/// Longest event name or id.
const MAX_NAME: usize = 200;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Body1 {
    channel: Option<String>,
    channels: Option<Vec<String>>,
    event: Option<String>,
    data: Option<Box<RawValue>>,
    id: Option<String>,
    /// Makes the event a state change: `data` becomes this key's value (a new subscriber's snapshot).
    key: Option<String>,
    /// With `key`: removes the key instead.
    #[serde(default)]
    remove: bool,
    events: Option<Vec<Body1>>,
}

/// The handler: counts the request's events under `api` (a request refused before its events are known counts as
/// one), and its latency from here to the commit.
pub async fn publish(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    let started = std::time::Instant::now();
    let mut events = 1;
    let result = publish_counted(&state, &caller, headers, body, &mut events, started).await;
    if result.as_ref().is_err_and(|e| e.status.is_client_error()) {
        stats::PUBLISHES.record(Origin::Api, Outcome::Rejected, events);
    }
    result
}

/// The publish itself; sets `events` once the request's events are known, and counts what reaches the engine.
async fn publish_counted(
    state: &ApiState,
    caller: &Caller,
    headers: HeaderMap,
    body: Body,
    count: &mut usize,
    started: std::time::Instant,
) -> Result<Json<Value>, ApiError> {
    if !state.policy.publish(caller.rate_key()) {
        return Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            "publish rate limit exceeded; retry shortly",
        ));
    }
    let bytes = super::read_json_body(&headers, body, state.max_body_bytes).await?;
    let parsed: Body1 = serde_json::from_slice(&bytes).map_err(|e| match e.classify() {
        serde_json::error::Category::Data => ApiError::invalid(e.to_string()),
        _ => ApiError::new(StatusCode::BAD_REQUEST, "invalid_json", e.to_string()),
    })?;
    let engine = &state.core;
    let events = to_events(parsed, state.max_event_bytes, &|c| {
        engine.is_state_channel(c)
    })?;
    *count = events.len();
    if let Some(e) = events
        .iter()
        .find(|e| !caller.may_publish(e.channel.as_str()))
    {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!("this API key may not publish to {:?}", e.channel.as_str()),
        ));
    }
    let result = state.core.publish(events).await;
    stats::record_publish(Origin::Api, *count, started, &result);
    let results = result?;
    Ok(Json(serde_json::json!({ "results": results })))
}

/// Whether a channel is a declared state channel (the only channels a `key` may address).
type IsState<'a> = &'a dyn Fn(&ChannelName) -> bool;

fn to_events(
    body: Body1,
    max_event_bytes: usize,
    is_state: IsState<'_>,
) -> Result<Vec<NewEvent>, ApiError> {
    let mut out = Vec::new();
    match body.events {
        Some(batch) => {
            if body.channel.is_some() || body.channels.is_some() || body.event.is_some() {
                return Err(ApiError::invalid(
                    "give either `events` or a single event, not both",
                ));
            }
            if batch.is_empty() {
                return Err(ApiError::invalid("`events` is empty"));
            }
            for (i, item) in batch.into_iter().enumerate() {
                if item.events.is_some() {
                    return Err(ApiError::invalid(format!(
                        "events[{i}]: batches do not nest"
                    )));
                }
                expand(item, max_event_bytes, is_state, &mut out).map_err(|e| ApiError {
                    message: format!("events[{i}]: {}", e.message),
                    field: e.field.map(|f| format!("events[{i}].{f}")),
                    ..e
                })?;
            }
        }
        None => expand(body, max_event_bytes, is_state, &mut out)?,
    }
    if out.len() > MAX_BATCH {
        return Err(ApiError::invalid(format!(
            "at most {MAX_BATCH} events per request"
        )));
    }
    Ok(out)
}

/// One event body → one `NewEvent` per target channel.
fn expand(
    b: Body1,
    max_event_bytes: usize,
    is_state: IsState<'_>,
    out: &mut Vec<NewEvent>,
) -> Result<(), ApiError> {
    let names = match (b.channel, b.channels) {
        (Some(c), None) => vec![c],
        (None, Some(cs)) if !cs.is_empty() => cs,
        (None, Some(_)) => return Err(ApiError::invalid("`channels` is empty")),
        (Some(_), Some(_)) => {
            return Err(ApiError::invalid("give `channel` or `channels`, not both"));
        }
        (None, None) => return Err(ApiError::invalid("missing field `channel`")),
    };
    let event = b
        .event
        .ok_or_else(|| ApiError::invalid("missing field `event`"))?;
    if event.is_empty() || event.len() > MAX_NAME {
        return Err(ApiError::invalid(format!(
            "`event` must be 1 to {MAX_NAME} characters"
        )));
    }
    if RESERVED_EVENTS.contains(&event.as_str()) {
        return Err(ApiError::field(
            "event",
            format!("{event:?} is reserved by Socket.IO clients"),
        ));
    }
    if event.starts_with(RESERVED_PREFIX) {
        return Err(ApiError::field(
            "event",
            format!(
                "{event:?} is reserved: names starting with {RESERVED_PREFIX:?} are Herald's own notices"
            ),
        ));
    }
    if let Some(id) = &b.id
        && (id.is_empty() || id.len() > MAX_NAME)
    {
        return Err(ApiError::invalid(format!(
            "`id` must be 1 to {MAX_NAME} characters"
        )));
    }
    let data = match b.data {
        Some(d) => d,
        None => {
            RawValue::from_string("null".into()).map_err(|e| ApiError::invalid(e.to_string()))?
        }
    };
    if data.get().len() > max_event_bytes {
        return Err(ApiError::too_large(format!(
            "event data is {} bytes; the limit is {max_event_bytes}",
            data.get().len()
        )));
    }
    let state = match (b.key, b.remove) {
        (Some(key), _) if key.is_empty() || key.len() > MAX_NAME => {
            return Err(ApiError::invalid(format!(
                "`key` must be 1 to {MAX_NAME} characters"
            )));
        }
        (Some(key), false) => Some(StateChange::Set {
            key,
            value: data.clone(),
        }),
        (Some(key), true) => Some(StateChange::Remove { key }),
        (None, true) => return Err(ApiError::invalid("`remove` needs a `key`")),
        (None, false) => None,
    };
    for name in names {
        let channel = ChannelName::new(&name)?;
        // A key on any other channel would silently make it one (later subscribers would get a snapshot
        // instead of its history), which nobody declared.
        if state.is_some() && !is_state(&channel) {
            return Err(ApiError::field(
                "key",
                format!(
                    "channel {name:?} is not a state channel; declare it in [[state]] to publish with a key"
                ),
            ));
        }
        out.push(NewEvent {
            channel,
            name: event.clone(),
            data: data.clone(),
            id: b.id.clone(),
            state: state.clone(),
        });
    }
    Ok(())
}
