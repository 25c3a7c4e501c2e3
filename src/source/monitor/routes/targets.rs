//! Seed 000's REST routes, served with the `targets` preset: `/api/targets` takes flat targets
//! (`{name, type, url | host + port, interval, keyword}`) and answers with the target objects its frontend keeps
//! (the same objects `target:updated` carries), bare, not wrapped. Same key check and admin scope as
//! `/api/monitors`.

use axum::body::Body;
use axum::extract::{Extension, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::Value;

use super::RouteState;
use crate::api::{ApiError, Caller, read_json_value};
use crate::source::monitor::MonitorError;
use crate::source::monitor::target::{flat_fields, spec_from_flat};

/// `api` with the `/targets` routes added.
pub(super) fn routes(api: Router<RouteState>) -> Router<RouteState> {
    api.route("/targets", get(list).post(create))
        .route(
            "/targets/{id}",
            get(get_one).put(update).patch(update).delete(delete),
        )
        .route("/targets/{id}/pause", post(pause).put(pause).patch(pause))
        .route(
            "/targets/{id}/resume",
            post(resume).put(resume).patch(resume),
        )
}

/// Errors name the flat field (`url`, not `check.url`).
fn flat_error(e: MonitorError) -> ApiError {
    match e {
        MonitorError::Invalid(f) => {
            let field = f
                .field
                .strip_prefix("check.")
                .unwrap_or(&f.field)
                .to_owned();
            ApiError::field(field, f.message)
        }
        other => other.into(),
    }
}

/// A target object as the key-holding API shows it: the URL whole (events carry it without credentials or query).
fn object(state: &RouteState, id: &str) -> Result<Value, ApiError> {
    let mut v = state.monitors.get(id)?;
    if let Some(url) = flat_fields(&state.monitors.spec(id)?, false).get("url")
        && let Value::Object(m) = &mut v
    {
        m.insert("url".into(), url.clone());
    }
    Ok(v)
}

/// `GET /api/targets`: every target, as an array.
async fn list(State(state): State<RouteState>) -> Result<Json<Value>, ApiError> {
    let mut out = Vec::new();
    for m in state.monitors.list() {
        if let Some(id) = m["id"].as_str() {
            // A target deleted meanwhile is simply not listed.
            if let Ok(v) = object(&state, id) {
                out.push(v);
            }
        }
    }
    Ok(Json(Value::Array(out)))
}

/// `POST /api/targets` (201): creates a target and checks it at once.
async fn create(
    State(state): State<RouteState>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    caller.require_admin()?;
    let body = read_json_value(&headers, body, state.max_body_bytes).await?;
    let spec = spec_from_flat(None, &body).map_err(|f| ApiError::field(f.field, f.message))?;
    let created = state.monitors.create(spec).await.map_err(flat_error)?;
    let id = created["id"].as_str().unwrap_or_default().to_owned();
    Ok((StatusCode::CREATED, Json(object(&state, &id)?)))
}

/// `GET /api/targets/{id}`.
async fn get_one(
    State(state): State<RouteState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(object(&state, &id)?))
}

/// `PUT`/`PATCH /api/targets/{id}`: the fields given replace the current ones (`paused` pauses or resumes).
async fn update(
    State(state): State<RouteState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    caller.require_admin()?;
    let current = state.monitors.spec(&id)?;
    let body = read_json_value(&headers, body, state.max_body_bytes).await?;
    let spec =
        spec_from_flat(Some(&current), &body).map_err(|f| ApiError::field(f.field, f.message))?;
    state.monitors.update(&id, spec).await.map_err(flat_error)?;
    Ok(Json(object(&state, &id)?))
}

/// `DELETE /api/targets/{id}`: answers with the target as it was.
async fn delete(
    State(state): State<RouteState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    caller.require_admin()?;
    let last = object(&state, &id)?;
    state.monitors.delete(&id).await?;
    Ok(Json(last))
}

/// `POST`/`PUT`/`PATCH /api/targets/{id}/pause`.
async fn pause(
    State(state): State<RouteState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    set_paused(&state, &caller, &id, true).await
}

/// `POST`/`PUT`/`PATCH /api/targets/{id}/resume`.
async fn resume(
    State(state): State<RouteState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    set_paused(&state, &caller, &id, false).await
}

/// Pauses or resumes a target; answers with the target as it is then.
async fn set_paused(
    state: &RouteState,
    caller: &Caller,
    id: &str,
    paused: bool,
) -> Result<Json<Value>, ApiError> {
    caller.require_admin()?;
    state.monitors.set_paused(id, paused).await?;
    Ok(Json(object(state, id)?))
}
