//! Seed 000's REST routes, served with the `targets` preset: `/api/targets` takes flat targets
//! (`{name, type, url | host + port, interval, keyword}`) and answers with the target objects its frontend keeps
//! (the same objects `target:updated` carries), bare, not wrapped. Same key check and admin scope as
//! `/api/monitors`.

use axum::Json;
use axum::body::Body;
use axum::extract::{Extension, Path, State};
use axum::http::{HeaderMap, StatusCode};
use serde_json::Value;

use super::{ApiError, ApiState, Caller};
use crate::source::monitor::MonitorError;
use crate::source::monitor::target::spec_from_flat;

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
fn object(state: &ApiState, id: &str) -> Result<Value, ApiError> {
    let mut v = state.monitors.get(id)?;
    if let Some(url) =
        crate::source::monitor::target::flat_fields(&state.monitors.spec(id)?, false).get("url")
        && let Value::Object(m) = &mut v
    {
        m.insert("url".into(), url.clone());
    }
    Ok(v)
}

/// `GET /api/targets`: every target, as an array.
pub async fn list(State(state): State<ApiState>) -> Result<Json<Value>, ApiError> {
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
pub async fn create(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    caller.require_admin()?;
    let body = super::read_json_value(&headers, body, state.max_body_bytes).await?;
    let spec = spec_from_flat(None, &body).map_err(|f| ApiError::field(f.field, f.message))?;
    let created = state.monitors.create(spec).await.map_err(flat_error)?;
    let id = created["id"].as_str().unwrap_or_default().to_owned();
    Ok((StatusCode::CREATED, Json(object(&state, &id)?)))
}

/// `GET /api/targets/{id}`.
pub async fn get(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(object(&state, &id)?))
}

/// `PUT`/`PATCH /api/targets/{id}`: the fields given replace the current ones (`paused` pauses or resumes).
pub async fn update(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    caller.require_admin()?;
    let current = state.monitors.spec(&id)?;
    let body = super::read_json_value(&headers, body, state.max_body_bytes).await?;
    let spec =
        spec_from_flat(Some(&current), &body).map_err(|f| ApiError::field(f.field, f.message))?;
    state.monitors.update(&id, spec).await.map_err(flat_error)?;
    Ok(Json(object(&state, &id)?))
}

/// `DELETE /api/targets/{id}`: answers with the target as it was.
pub async fn delete(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    caller.require_admin()?;
    let last = object(&state, &id)?;
    state.monitors.delete(&id).await?;
    Ok(Json(last))
}

/// `POST`/`PUT`/`PATCH /api/targets/{id}/pause`.
pub async fn pause(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    set_paused(&state, &caller, &id, true).await
}

/// `POST`/`PUT`/`PATCH /api/targets/{id}/resume`.
pub async fn resume(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    set_paused(&state, &caller, &id, false).await
}

/// Pauses or resumes a target; answers with the target as it is then.
async fn set_paused(
    state: &ApiState,
    caller: &Caller,
    id: &str,
    paused: bool,
) -> Result<Json<Value>, ApiError> {
    caller.require_admin()?;
    state.monitors.set_paused(id, paused).await?;
    Ok(Json(object(state, id)?))
}
