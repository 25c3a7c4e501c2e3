//! This node's live connections (`/api/connections`): list them by page, read one, close one. Admin scope only:
//! they name users and addresses.

use std::collections::HashMap;

use axum::Json;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Extension, Path, Query, State};
use axum::http::StatusCode;
use serde_json::{Value, json};

use super::error::ApiError;
use super::{ApiState, Caller};
use crate::registry::{Connection, Page, Transport};

/// Connections per page unless `limit` says otherwise.
const DEFAULT_LIMIT: u64 = 100;
/// Most connections per page: a larger `limit` gives a full page (and `next`).
const MAX_LIMIT: u64 = 1000;

/// `GET /api/connections?limit&after&transport`: connections by id, `next` naming the `after` of the next page.
pub async fn list(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
    query: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Result<Json<Page>, ApiError> {
    caller.require_admin()?;
    let Query(query) = query.map_err(|e| ApiError::invalid(e.body_text()))?;
    let limit = super::page_limit(&query, DEFAULT_LIMIT, MAX_LIMIT, "connections")?;
    let transport = match query.get("transport") {
        None => None,
        Some(name) => Some(Transport::from_name(name).ok_or_else(|| {
            let names: Vec<&str> = Transport::ALL.iter().map(|t| t.name()).collect();
            ApiError::field(
                "transport",
                format!("must be one of {}, got {name:?}", names.join(", ")),
            )
        })?),
    };
    let after = query.get("after").map(String::as_str);
    Ok(Json(state.connections.page(
        after,
        transport,
        limit as usize,
    )))
}

/// `GET /api/connections/{id}`.
pub async fn get(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<Connection>, ApiError> {
    caller.require_admin()?;
    let Path(id) = path.map_err(|e| ApiError::invalid(e.body_text()))?;
    state
        .connections
        .get(&id)
        .map(Json)
        .ok_or_else(|| not_found(&id))
}

/// `POST /api/connections/{id}/disconnect`: closes the connection the way its client reconnects and resumes from
/// (Socket.IO: its transport; `/ws`: close code 4000; SSE: the end of the stream).
pub async fn disconnect(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<Value>, ApiError> {
    caller.require_admin()?;
    let Path(id) = path.map_err(|e| ApiError::invalid(e.body_text()))?;
    if state.connections.close(&id) {
        Ok(Json(json!({"ok": true})))
    } else {
        Err(not_found(&id))
    }
}

fn not_found(id: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "connection_not_found",
        format!("no connection {id:?}"),
    )
}
