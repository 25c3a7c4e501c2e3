//! The HTTP API: thin axum handlers over the core. Every error is a 4xx/5xx with a JSON body. Sources add their
//! own routes as [`Mounts`], with the same key check ([`Caller`]), errors and body reader.

mod channels;
mod config;
mod connections;
mod error;
pub mod openapi;
pub mod paths;
mod publish;
pub mod ready;

use std::sync::Arc;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::json;

pub use config::ApiKey;
pub use error::ApiError;

use crate::core::Engine;
use crate::policy::Policy;
use crate::registry::Registry;

/// Shared state of the API handlers.
#[derive(Clone)]
pub struct ApiState {
    /// The core.
    pub core: Arc<dyn Engine>,
    /// Accepted API keys; empty means no authentication (loopback-only deployments).
    pub api_keys: Arc<Vec<ApiKey>>,
    /// Publish rate limits.
    pub policy: Arc<Policy>,
    /// Largest request body.
    pub max_body_bytes: usize,
    /// Largest event payload.
    pub max_event_bytes: usize,
    /// This node's live connections, of every transport.
    pub connections: Registry,
    /// Appends the Prometheus text of `/metrics` (the server's `crate::metrics`, then the sources').
    pub metrics: Arc<dyn Fn(&mut String) + Send + Sync>,
    /// The sources' readiness, listed by `/readyz` after the engine's.
    pub readiness: ready::ReadinessProbe,
}

/// Routes from outside the API (a source's), each router with its state applied.
#[derive(Default)]
pub struct Mounts {
    /// Under `/api`, behind the API-key check (handlers may take the [`Caller`] extension).
    pub api: Router,
    /// At the root, behind the API-key check.
    pub keyed: Router,
    /// At the root, open to anyone.
    pub public: Router,
    /// At the root, open to anyone, taking any method: the origin policy answers their preflights for PUT, PATCH
    /// and DELETE too (a frontend's own REST paths).
    pub any_method: Router,
}

impl Mounts {
    /// Both sets of routes.
    pub fn merge(self, other: Mounts) -> Mounts {
        Mounts {
            api: self.api.merge(other.api),
            keyed: self.keyed.merge(other.keyed),
            public: self.public.merge(other.public),
            any_method: self.any_method.merge(other.any_method),
        }
    }
}

/// The API routes, `/api/*` behind the key check (but `/api/openapi.json`), plus `/healthz`, `/readyz`, `/metrics`
/// and `mounts`.
pub fn router(state: ApiState, mounts: Mounts) -> Router {
    let api = Router::new()
        .route("/publish", post(publish::publish))
        .route("/channels", get(channels::list))
        .route("/channels/{channel}/history", get(channels::history))
        .route("/connections", get(connections::list))
        .route("/connections/{id}", get(connections::get))
        .route(
            "/connections/{id}/disconnect",
            post(connections::disconnect),
        )
        .with_state(state.clone())
        .merge(mounts.api)
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(state.clone(), require_key));
    // Metrics name every monitor's target: they need a key like the API (Prometheus sends it as a bearer token).
    let keyed = Router::new()
        .route("/metrics", get(metrics))
        .with_state(state.clone())
        .merge(mounts.keyed)
        .layer(middleware::from_fn_with_state(state.clone(), require_key));
    Router::new()
        .nest("/api", api)
        .route(
            "/healthz",
            get(|| async { axum::Json(json!({"ok": true})) }),
        )
        .route("/readyz", get(ready::readyz).with_state(state))
        .route("/api/openapi.json", get(openapi::spec))
        .merge(keyed)
        .merge(mounts.public)
        .layer(middleware::map_response(json_errors))
}

/// Largest plain-text error body rewrapped by [`json_errors`]; an extractor's rejection is one short line.
const REJECTION_LIMIT: usize = 4096;

/// Every client error of these routes is JSON: a plain-text 4xx (an axum extractor's rejection, such as a query
/// string that does not deserialise) becomes `{"error":{"code","message"}}` with the same status and its text as
/// the message, so no handler can leak a non-JSON error by forgetting to map one.
async fn json_errors(response: Response) -> Response {
    let plain = response
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| t.starts_with("text/plain"));
    if !response.status().is_client_error() || !plain {
        return response;
    }
    let status = response.status();
    let text = axum::body::to_bytes(response.into_body(), REJECTION_LIMIT)
        .await
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_else(|_| "invalid request".to_owned());
    let code = match status {
        StatusCode::PAYLOAD_TOO_LARGE => "payload_too_large",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
        _ => "invalid_request",
    };
    ApiError::new(status, code, text).into_response()
}

/// `GET /metrics`: what the server assembled (its core figures, then the sources'), as Prometheus text.
async fn metrics(State(state): State<ApiState>) -> Response {
    let mut text = String::with_capacity(16 << 10);
    (state.metrics)(&mut text);
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such API endpoint")
}

/// Who is calling the API: the matching key, or `None` when no keys are configured (full access).
#[derive(Clone)]
pub struct Caller(Option<ApiKey>);

impl Caller {
    /// Whether the caller may publish to `channel`.
    pub fn may_publish(&self, channel: &str) -> bool {
        self.0.as_ref().is_none_or(|k| k.may_publish(channel))
    }

    /// Whether the caller may use admin endpoints.
    pub fn is_admin(&self) -> bool {
        self.0.as_ref().is_none_or(ApiKey::is_admin)
    }

    /// Refuses (403) a caller without admin scope.
    pub fn require_admin(&self) -> Result<(), ApiError> {
        if self.is_admin() {
            Ok(())
        } else {
            Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                "this API key has no admin scope",
            ))
        }
    }

    /// The rate-limit key: the API key itself (empty without keys).
    pub fn rate_key(&self) -> &str {
        self.0.as_ref().map_or("", ApiKey::key)
    }
}

async fn require_key(
    State(state): State<ApiState>,
    mut req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let caller = if state.api_keys.is_empty() {
        Caller(None)
    } else {
        let presented = presented_key(req.headers());
        match presented.and_then(|p| state.api_keys.iter().find(|k| k.key() == p)) {
            Some(key) => Caller(Some(key.clone())),
            None => {
                return Err(ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "unauthorized",
                    "missing or unknown API key: send `Authorization: Bearer <key>`",
                ));
            }
        }
    };
    req.extensions_mut().insert(caller);
    Ok(next.run(req).await)
}

fn presented_key(headers: &HeaderMap) -> Option<&str> {
    crate::auth::bearer_token(headers)
        .or_else(|| headers.get("x-api-key").and_then(|v| v.to_str().ok()))
}

/// Oversized bodies are still read and discarded up to this size, so the client gets to read the 413 instead of
/// having its connection reset mid-upload.
const DRAIN_LIMIT: usize = 32 << 20;

/// Whether `headers` declare a JSON body: `application/json` or an `application/…+json` type, any parameters
/// (`; charset=utf-8`). None of these is a CORS "simple" content type, so a cross-origin page can only send such
/// a request after a preflight the origin policy answers; `text/plain` or no type at all would need none.
fn declares_json(headers: &HeaderMap) -> bool {
    let Some(value) = headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let essence = value
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
}

/// Reads the JSON body of an API request: 415 `unsupported_media_type` unless the request declares JSON
/// (checked before a byte is read), 413 beyond `limit` bytes. Every API route taking a body reads it here.
async fn read_json_body(
    headers: &HeaderMap,
    mut body: Body,
    limit: usize,
) -> Result<Bytes, ApiError> {
    use http_body_util::BodyExt as _;
    if !declares_json(headers) {
        let got = headers
            .get(axum::http::header::CONTENT_TYPE)
            .map_or_else(|| "none".to_owned(), |v| format!("{v:?}"));
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            format!(
                "the request body must be JSON sent with `Content-Type: application/json` (got {got})"
            ),
        ));
    }
    let too_large = || ApiError::too_large(format!("request body is larger than {limit} bytes"));
    let mut buf = bytes::BytesMut::new();
    let mut total = 0usize;
    while let Some(frame) = body.frame().await {
        let frame =
            frame.map_err(|e| ApiError::invalid(format!("cannot read the request body: {e}")))?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        total += data.len();
        if total <= limit {
            buf.extend_from_slice(&data);
        } else if total > DRAIN_LIMIT {
            break;
        }
    }
    if total > limit {
        return Err(too_large());
    }
    Ok(buf.freeze())
}

/// The `limit` query parameter of a paged admin route: `default` when absent, at most `max` (a larger one gives a
/// full page), 400 `invalid_request` naming the field when it is not a positive number; `what` names the items.
pub fn page_limit(
    query: &std::collections::HashMap<String, String>,
    default: u64,
    max: u64,
    what: &str,
) -> Result<u64, ApiError> {
    match query.get("limit") {
        None => Ok(default),
        Some(v) => match v.parse::<u64>() {
            Ok(n) if n > 0 => Ok(n.min(max)),
            _ => Err(ApiError::field(
                "limit",
                format!("must be 1 to {max} ({what} per page), got {v:?}"),
            )),
        },
    }
}

/// [`read_json_body`] parsed into a JSON value: 400 `invalid_json` when it is not JSON.
pub async fn read_json_value(
    headers: &HeaderMap,
    body: Body,
    limit: usize,
) -> Result<serde_json::Value, ApiError> {
    let bytes = read_json_body(headers, body, limit).await?;
    serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_json", e.to_string()))
}
