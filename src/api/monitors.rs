//! Monitor endpoints: CRUD, pause/resume, check now and the log under `/api/monitors` (admin scope), plus the
//! public status page, badges and `/metrics`.

use axum::Json;
use axum::body::Body;
use axum::extract::{Extension, Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{ApiError, ApiState, Caller};
use crate::source::monitor::spec::MonitorSpec;
use crate::source::monitor::{MonitorError, metrics};

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
    state: &ApiState,
    headers: &HeaderMap,
    body: Body,
) -> Result<MonitorSpec, ApiError> {
    let value = super::read_json_value(headers, body, state.max_body_bytes).await?;
    MonitorSpec::from_json(value).map_err(|f| ApiError::field(f.field, f.message))
}

/// `GET /api/monitors` (and `GET /status/monitors`, the status page's copy that needs no key).
pub async fn list(State(state): State<ApiState>) -> Json<Value> {
    Json(json!({ "monitors": state.monitors.list() }))
}

/// `POST /api/monitors`.
pub async fn create(
    State(state): State<ApiState>,
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
pub async fn get(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let mut v = state.monitors.get(&id)?;
    v["definition"] = crate::json::value(&state.monitors.spec(&id)?);
    Ok(Json(v))
}

/// `PUT /api/monitors/{id}`.
pub async fn update(
    State(state): State<ApiState>,
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
pub async fn delete(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    caller.require_admin()?;
    state.monitors.delete(&id).await?;
    Ok(Json(json!({"ok": true})))
}

/// `POST /api/monitors/{id}/pause`.
pub async fn pause(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    caller.require_admin()?;
    Ok(Json(state.monitors.set_paused(&id, true).await?))
}

/// `POST /api/monitors/{id}/resume`.
pub async fn resume(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    caller.require_admin()?;
    Ok(Json(state.monitors.set_paused(&id, false).await?))
}

/// `POST /api/monitors/{id}/check`: runs the check now and answers with its outcome.
pub async fn check(
    State(state): State<ApiState>,
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
pub struct LogQuery {
    limit: Option<usize>,
}

/// `GET /api/monitors/{id}/log` (and the status page's public copy).
pub async fn log(
    State(state): State<ApiState>,
    Path(id): Path<String>,
    Query(q): Query<LogQuery>,
) -> Result<Json<Value>, ApiError> {
    let limit = q.limit.unwrap_or(50).clamp(1, 1000);
    Ok(Json(json!({"log": state.monitors.log(&id, limit).await?})))
}

/// `GET /metrics`: the monitors' metrics, then the server's own counters.
pub async fn prometheus(State(state): State<ApiState>) -> Response {
    let mut text = metrics::render(&state.monitors);
    let refused = crate::policy::rate::MESSAGES_REFUSED.load(std::sync::atomic::Ordering::Relaxed);
    text.push_str(&format!(
        "# HELP herald_client_messages_refused_total Client messages refused by messages_per_second, all transports.\n\
         # TYPE herald_client_messages_refused_total counter\n\
         herald_client_messages_refused_total {refused}\n"
    ));
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

/// `GET /status`: the status page.
pub async fn status_page() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        include_str!("../source/monitor/status.html"),
    )
        .into_response()
}

/// `GET /status/config`: what the page listens to (the preset decides names and shapes).
pub async fn status_config(State(state): State<ApiState>) -> Json<Value> {
    Json(state.monitors.page_config())
}

/// `GET /badge/{id}` (`.svg` optional): a shields-style status badge.
pub async fn badge(State(state): State<ApiState>, Path(id): Path<String>) -> Response {
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
