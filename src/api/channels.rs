//! Channel reads: the list of channels and one channel's history (optionally waiting for new events).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use serde_json::{Value, json};
use tokio::sync::Notify;

use super::ApiState;
use super::error::ApiError;
use crate::core::channel::ChannelName;
use crate::core::engine::{HistoryPage, MAX_PAGE, Subscriber, SubscriberId, Subscription};
use crate::core::event::SharedEvent;

/// Longest `wait` accepted, in seconds: a longer hold is refused rather than silently shortened, so a client never
/// mistakes an early empty answer for "nothing happened in the time I asked for".
const MAX_WAIT_SECS: u64 = 60;

/// `GET /api/channels`: every channel but Herald's own.
pub async fn list(State(state): State<ApiState>) -> Result<Json<Value>, ApiError> {
    let mut channels = state.core.channels().await?;
    channels.retain(|c| !c.channel.is_internal());
    Ok(Json(json!({ "channels": channels })))
}

/// `GET /api/channels/{channel}/history?since&limit&wait`.
pub async fn history(
    State(state): State<ApiState>,
    path: Result<Path<String>, PathRejection>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Json<HistoryResponse>, ApiError> {
    let Path(name) = path.map_err(|e| ApiError::invalid(e.body_text()))?;
    let channel = ChannelName::new(&name)?;
    let since = number(&query, "since", 0)?;
    // 0 would be a page that can never hold an event; above the page size the page is simply full.
    let limit = match number(&query, "limit", 100)? {
        0 => {
            return Err(ApiError::field(
                "limit",
                format!("must be 1 to {} (events per page)", MAX_PAGE),
            ));
        }
        n => n.min(MAX_PAGE as u64) as usize,
    };
    let wait = match number(&query, "wait", 0)? {
        n if n > MAX_WAIT_SECS => {
            return Err(ApiError::field(
                "wait",
                format!("must be 0 to {MAX_WAIT_SECS} seconds, got {n}"),
            ));
        }
        n => Duration::from_secs(n),
    };

    // Register interest before reading so an event committed in between still wakes us. The guard unregisters
    // however the request ends, including a client that goes away mid-wait.
    let waker = Arc::new(Wake(Notify::new()));
    let _watch: Vec<Subscription> = if wait.is_zero() {
        Vec::new()
    } else {
        let sub: Arc<dyn Subscriber> = waker.clone();
        let regs = state
            .core
            .subscribe(std::slice::from_ref(&channel), SubscriberId::next(), sub);
        regs.await?.into_iter().map(|(_, s)| s).collect()
    };
    let deadline = tokio::time::Instant::now() + wait;
    let result = loop {
        let notified = waker.0.notified();
        let page = state.core.history(&channel, since, limit).await;
        match page {
            Ok(Some(page)) if !page.events.is_empty() || wait.is_zero() => break Ok(page),
            Ok(None) if wait.is_zero() => break Err(not_found(&channel)),
            Err(e) => break Err(e.into()),
            Ok(page) => {
                if tokio::time::timeout_at(deadline, notified).await.is_err() {
                    break page.ok_or_else(|| not_found(&channel));
                }
            }
        }
    };
    let page = result?;
    let gap = (since.saturating_add(1) < page.info.first_offset).then(|| Range {
        from: since + 1,
        to: page.info.first_offset - 1,
    });
    // Serialised straight from the stored JSON text: no re-parse, so any payload that was accepted reads back.
    Ok(Json(HistoryResponse { page, gap }))
}

/// A history page, with the range the caller asked for but history no longer holds.
#[derive(serde::Serialize)]
pub struct HistoryResponse {
    #[serde(flatten)]
    page: HistoryPage,
    #[serde(skip_serializing_if = "Option::is_none")]
    gap: Option<Range>,
}

/// An inclusive range of offsets.
#[derive(serde::Serialize)]
struct Range {
    from: u64,
    to: u64,
}

fn not_found(channel: &ChannelName) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "channel_not_found",
        format!("channel {channel:?} has no events"),
    )
}

fn number(query: &HashMap<String, String>, key: &str, default: u64) -> Result<u64, ApiError> {
    query.get(key).map_or(Ok(default), |v| {
        v.parse()
            .map_err(|_| ApiError::field(key, format!("must be a non-negative integer, got {v:?}")))
    })
}

/// Wakes a waiting history request when its channel gets an event.
struct Wake(Notify);

impl Subscriber for Wake {
    fn deliver(&self, _: &Arc<SharedEvent>) {
        self.0.notify_waiters();
    }
}
