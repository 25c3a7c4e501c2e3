//! The dashboard's JSON (admin scope, under `/api/admin`): what the API has no route for. `overview` (version,
//! engine, its health, uptime) and `channels` (every channel's position with its subscribers now, searched by name
//! and bounded per request, or one by name).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Extension, Path, Query, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use futures_util::StreamExt as _;
use serde_json::{Value, json};

use crate::api::{ApiError, Caller};
use crate::core::Engine;
use crate::core::channel::ChannelName;
use crate::core::engine::{ChannelInfo, Health};

/// Channels per answer unless `limit` says otherwise.
const DEFAULT_LIMIT: u64 = 200;
/// Most channels per answer (each costs one presence read): a larger `limit` gives this many, `truncated` set.
pub const MAX_LIMIT: u64 = 1000;
/// Presence reads in flight at once for one answer (a Redis engine makes each a round trip).
const PRESENCE_READS: usize = 16;

/// What the handlers share.
#[derive(Clone)]
pub struct AdminState {
    /// The engine.
    pub core: Arc<dyn Engine>,
    /// Its name.
    pub engine: &'static str,
    /// When this process started serving, ms since the UNIX epoch.
    pub started_ms: i64,
}

/// `/admin/overview` and `/admin/channels`, to be nested under `/api`.
pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/admin/overview", get(overview))
        .route("/admin/channels", get(channels))
        .route("/admin/channels/{channel}", get(channel))
        .with_state(state)
}

/// `GET /api/admin/overview`: `{version, engine, health, since?, started_at}`.
async fn overview(
    State(state): State<AdminState>,
    Extension(caller): Extension<Caller>,
) -> Result<Json<Value>, ApiError> {
    caller.require_admin()?;
    let health = state.core.health().borrow().clone();
    let mut body = json!({
        "version": env!("CARGO_PKG_VERSION"),
        "engine": state.engine,
        "health": "ok",
        "started_at": state.started_ms,
    });
    if let Health::Unavailable { since } = health {
        body["health"] = "unavailable".into();
        body["since"] = crate::core::event::format_time(since).into();
    }
    Ok(Json(body))
}

/// `GET /api/admin/channels?q&limit`: channels whose name contains `q` (any case), by name, at most `limit`, each
/// with its subscribers now (connections and distinct users, as the engine's presence reports them).
async fn channels(
    State(state): State<AdminState>,
    Extension(caller): Extension<Caller>,
    query: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    caller.require_admin()?;
    let Query(query) = query.map_err(|e| ApiError::invalid(e.body_text()))?;
    let limit = crate::api::page_limit(&query, DEFAULT_LIMIT, MAX_LIMIT, "channels")? as usize;
    let needle = query.get("q").map(|q| q.to_lowercase()).unwrap_or_default();
    let mut all = state.core.channels().await?;
    all.retain(|c| !c.channel.is_internal() && c.channel.as_str().to_lowercase().contains(&needle));
    let total = all.len();
    all.truncate(limit);
    let core = &state.core;
    let rows: Vec<Result<Value, ApiError>> = futures_util::stream::iter(all)
        .map(|info| async move { row(core, info).await })
        .buffered(PRESENCE_READS)
        .collect()
        .await;
    let rows = rows.into_iter().collect::<Result<Vec<_>, _>>()?;
    Ok(Json(json!({
        "channels": rows,
        "total": total,
        "truncated": total > rows.len(),
    })))
}

/// `GET /api/admin/channels/{channel}`: one channel as in the list; 404 `channel_not_found` when it has no events.
async fn channel(
    State(state): State<AdminState>,
    Extension(caller): Extension<Caller>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<Value>, ApiError> {
    caller.require_admin()?;
    let Path(name) = path.map_err(|e| ApiError::invalid(e.body_text()))?;
    // Herald's own channels are refused here (`reserved_channel`), as everywhere in the API.
    let channel = ChannelName::new(&name)?;
    match state.core.channel(&channel).await? {
        Some(info) => Ok(Json(row(&state.core, info).await?)),
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "channel_not_found",
            format!("channel {name:?} has no events"),
        )),
    }
}

/// One channel's position and subscribers.
async fn row(core: &Arc<dyn Engine>, info: ChannelInfo) -> Result<Value, ApiError> {
    let members = core.presence(&info.channel).await?;
    let users: HashSet<&str> = members.iter().filter_map(|m| m.user.as_deref()).collect();
    let mut v = crate::json::value(&info);
    v["subscribers"] = members.len().into();
    v["users"] = users.len().into();
    v["state"] = core.is_state_channel(&info.channel).into();
    Ok(v)
}
