//! The monitor's HTTP routes: CRUD, pause/resume, check now and the log under `/api/monitors` (admin scope), seed
//! 000's `/api/targets` with its preset ([`targets`]), and the public status page and badges.

mod targets;

use std::sync::Arc;

use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Extension, Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};

use super::spec::MonitorSpec;
use super::{MonitorError, Monitors};
use crate::api::{ApiError, Caller, Mounts, read_json_value};

/// What the handlers share.
#[derive(Clone)]
struct RouteState {
    monitors: Arc<Monitors>,
    /// Largest request body.
    max_body_bytes: usize,
}

/// The monitor's routes; the status page, badges and the public monitor list only with `status_page`.
pub fn mounts(monitors: Arc<Monitors>, max_body_bytes: usize, status_page: bool) -> Mounts {
    let state = RouteState {
        monitors,
        max_body_bytes,
    };
    let api = Router::new()
        .route("/monitors", get(list).post(create))
        .route("/monitors/{id}", get(get_one).put(update).delete(delete))
        .route("/monitors/{id}/pause", post(pause))
        .route("/monitors/{id}/resume", post(resume))
        .route("/monitors/{id}/check", post(check))
        .route("/monitors/{id}/log", get(log));
    // Seed 000's routes exist with its preset only: elsewhere `/api/targets` stays an unknown endpoint.
    let api = if state.monitors.serves_targets() {
        targets::routes(api)
    } else {
        api
    };
    let public = if status_page {
        Router::new()
            .route("/status", get(status_page_html))
            .route("/status/monitors", get(list))
            .route("/status/monitors/{id}/log", get(log))
            .route("/status/config", get(status_config))
            .route("/badge/{id}", get(badge))
    } else {
        Router::new()
    };
    Mounts {
        api: api.with_state(state.clone()),
        public: public.with_state(state),
        ..Mounts::default()
    }
}

impl From<MonitorError> for ApiError {
    fn from(e: MonitorError) -> Self {
        match e {
            MonitorError::Invalid(f) => ApiError::field(f.field, f.message),
            MonitorError::NotFound(_) => {
                ApiError::new(StatusCode::NOT_FOUND, "monitor_not_found", e.to_string())
            }
            MonitorError::Conflict(_) => {
                ApiError::new(StatusCode::CONFLICT, "monitor_exists", e.to_string())
            }
            MonitorError::TooSoon(..) => {
                ApiError::new(StatusCode::TOO_MANY_REQUESTS, "rate_limited", e.to_string())
            }
            MonitorError::Unavailable(_) => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "monitor_unavailable",
                e.to_string(),
            ),
            MonitorError::Storage(_) | MonitorError::Migration(_) => {
                tracing::error!(error = %e, "monitor storage failure");
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "storage_error",
                    e.to_string(),
                )
            }
        }
    }
}

async fn spec_from(
    state: &RouteState,
    headers: &HeaderMap,
    body: Body,
) -> Result<MonitorSpec, ApiError> {
    let value = read_json_value(headers, body, state.max_body_bytes).await?;
    MonitorSpec::from_json(value).map_err(|f| ApiError::field(f.field, f.message))
}

/// `GET /api/monitors` (and `GET /status/monitors`, the status page's copy that needs no key).
async fn list(State(state): State<RouteState>) -> Json<Value> {
    Json(json!({ "monitors": state.monitors.list() }))
}

/// `POST /api/monitors`.
async fn create(
    State(state): State<RouteState>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    caller.require_admin()?;
    let spec = spec_from(&state, &headers, body).await?;
    Ok((
        StatusCode::CREATED,
        Json(state.monitors.create(spec).await?),
    ))
}

/// `GET /api/monitors/{id}`.
async fn get_one(
    State(state): State<RouteState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let mut v = state.monitors.get(&id)?;
    v["definition"] = crate::json::value(&state.monitors.spec(&id)?);
    Ok(Json(v))
}

/// `PUT /api/monitors/{id}`.
async fn update(
    State(state): State<RouteState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    caller.require_admin()?;
    let spec = spec_from(&state, &headers, body).await?;
    Ok(Json(state.monitors.update(&id, spec).await?))
}

/// `DELETE /api/monitors/{id}`.
async fn delete(
    State(state): State<RouteState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    caller.require_admin()?;
    state.monitors.delete(&id).await?;
    Ok(Json(json!({"ok": true})))
}

/// `POST /api/monitors/{id}/pause`.
async fn pause(
    State(state): State<RouteState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    caller.require_admin()?;
    Ok(Json(state.monitors.set_paused(&id, true).await?))
}

/// `POST /api/monitors/{id}/resume`.
async fn resume(
    State(state): State<RouteState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    caller.require_admin()?;
    Ok(Json(state.monitors.set_paused(&id, false).await?))
}

/// `POST /api/monitors/{id}/check`: runs the check now and answers with its outcome.
async fn check(
    State(state): State<RouteState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    caller.require_admin()?;
    let outcome = state.monitors.check_now(&id).await?;
    Ok(Json(
        json!({"outcome": outcome, "monitor": state.monitors.get(&id)?}),
    ))
}

/// Query of the log endpoints.
#[derive(Deserialize)]
struct LogQuery {
    limit: Option<usize>,
}

/// `GET /api/monitors/{id}/log` (and the status page's public copy).
async fn log(
    State(state): State<RouteState>,
    Path(id): Path<String>,
    query: Result<Query<LogQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(q) = query.map_err(|_| {
        ApiError::field(
            "limit",
            "must be a non-negative integer (entries, 1 to 1000)",
        )
    })?;
    let limit = q.limit.unwrap_or(50).clamp(1, 1000);
    Ok(Json(json!({"log": state.monitors.log(&id, limit).await?})))
}

/// `GET /status`: the status page.
async fn status_page_html() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        include_str!("../status.html"),
    )
        .into_response()
}

/// `GET /status/config`: what the page listens to (the preset decides names and shapes).
async fn status_config(State(state): State<RouteState>) -> Json<Value> {
    Json(state.monitors.page_config())
}

/// `GET /badge/{id}` (`.svg` optional): a shields-style status badge.
async fn badge(State(state): State<RouteState>, Path(id): Path<String>) -> Response {
    let id = id.strip_suffix(".svg").unwrap_or(&id);
    let (label, status) = match state.monitors.get(id) {
        Ok(v) => (
            v["name"].as_str().unwrap_or(id).to_owned(),
            v["status"].as_str().unwrap_or("pending").to_owned(),
        ),
        Err(_) => ("monitor".to_owned(), "unknown".to_owned()),
    };
    let colour = match status.as_str() {
        "up" => "#2ea44f",
        "degraded" => "#dbab09",
        "down" => "#d73a49",
        _ => "#6a737d",
    };
    (
        [
            (header::CONTENT_TYPE, "image/svg+xml"),
            (header::CACHE_CONTROL, "no-cache, max-age=0"),
        ],
        badge_svg(&label, &status, colour),
    )
        .into_response()
}

fn badge_svg(label: &str, value: &str, colour: &str) -> String {
    let esc = |s: &str| {
        s.replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;")
            .replace('"', "&quot;")
    };
    // Verdana 11px averages ~6.5 px per character: good enough for a badge.
    let lw = 10 + label.chars().count() as u32 * 7;
    let vw = 10 + value.chars().count() as u32 * 7;
    let (label, value) = (esc(label), esc(value));
    format!(
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="20" role="img" aria-label="{label}: {value}"><title>{label}: {value}</title><rect width="{lw}" height="20" fill="#555"/><rect x="{lw}" width="{vw}" height="20" fill="{colour}"/><g fill="#fff" text-anchor="middle" font-family="Verdana,DejaVu Sans,sans-serif" font-size="11"><text x="{lx}" y="14">{label}</text><text x="{vx}" y="14">{value}</text></g></svg>"##,
        w = lw + vw,
        lx = lw / 2,
        vx = lw + vw / 2,
    )
}
