//! The presence routes: `GET /api/presence` (every connection, from the online channel) and
//! `GET /api/channels/{channel}/presence` (one channel), both `?limit&after` pages of connections by id with the
//! whole channel's users and counts. Admin scope, like `/api/connections`: they name users.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Extension, Path, Query, State};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{Value, json};

use super::{aggregate, render_member};
use crate::api::{ApiError, Caller, Mounts};
use crate::core::Engine;
use crate::core::channel::ChannelName;

/// Connections per page unless `limit` says otherwise.
const DEFAULT_LIMIT: u64 = 100;
/// Most connections per page: a larger `limit` gives a full page (and `next`).
const MAX_LIMIT: u64 = 1000;

/// What the handlers share.
#[derive(Clone)]
pub struct Routes {
    /// Whose presence is read.
    pub engine: Arc<dyn Engine>,
    /// The channel every connection is present on.
    pub online: ChannelName,
    /// Most users an answer lists.
    pub max_users: usize,
}

/// The routes, under `/api`.
pub fn mounts(routes: Routes) -> Mounts {
    Mounts {
        api: Router::new()
            .route("/presence", get(online))
            .route("/channels/{channel}/presence", get(channel))
            .with_state(routes),
        ..Mounts::default()
    }
}

async fn online(
    State(r): State<Routes>,
    Extension(caller): Extension<Caller>,
    query: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let channel = r.online.clone();
    answer(&r, &caller, &channel, query).await
}

async fn channel(
    State(r): State<Routes>,
    Extension(caller): Extension<Caller>,
    path: Result<Path<String>, PathRejection>,
    query: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Path(name) = path.map_err(|e| ApiError::invalid(e.body_text()))?;
    let channel = ChannelName::new(&name)?;
    answer(&r, &caller, &channel, query).await
}

async fn answer(
    r: &Routes,
    caller: &Caller,
    channel: &ChannelName,
    query: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    caller.require_admin()?;
    let Query(query) = query.map_err(|e| ApiError::invalid(e.body_text()))?;
    let limit = crate::api::page_limit(&query, DEFAULT_LIMIT, MAX_LIMIT, "connections")? as usize;
    let after = query.get("after").map(String::as_str);
    let mut members = r.engine.presence(channel).await?;
    members.sort_by(|a, b| a.conn.cmp(&b.conn));
    let page: Vec<Value> = members
        .iter()
        .filter(|m| after.is_none_or(|a| &*m.conn > a))
        .take(limit + 1)
        .map(render_member)
        .collect();
    let next = (page.len() > limit)
        .then(|| page.get(limit - 1).and_then(|m| m.get("id")).cloned())
        .flatten();
    let mut body = aggregate::summary(&members, r.max_users);
    if let Value::Object(o) = &mut body {
        o.insert("channel".into(), json!(channel));
        o.insert(
            "connections".into(),
            Value::Array(page.into_iter().take(limit).collect()),
        );
        o.insert("next".into(), next.unwrap_or(Value::Null));
    }
    Ok(Json(body))
}
