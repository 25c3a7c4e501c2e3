//! `GET /readyz`: whether this node can serve. The engine and every source report whether they are ready, each
//! within [`PART_TIMEOUT`]; the answer lists them all, and is 503 when a required one is not.

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use futures_util::future::BoxFuture;
use serde::Serialize;
use serde_json::json;

use super::ApiState;
use crate::core::engine::Health;

/// Longest any one part may take to answer before it counts as not ready (a load balancer's check must not hang
/// behind an unreachable database).
pub const PART_TIMEOUT: Duration = Duration::from_secs(2);

/// One part of the server, as `/readyz` lists it.
#[derive(Debug, Clone, Serialize)]
pub struct Readiness {
    /// What it is: `engine`, `monitor`, `sql:ID`.
    pub name: String,
    /// Its kind: `engine`, `monitor`, `sql`.
    pub kind: &'static str,
    /// Whether it is ready now.
    pub ready: bool,
    /// Whether the node is not ready while this part is not.
    pub required: bool,
    /// Why it is not ready (or a short note when it is).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

impl Readiness {
    /// A ready part.
    pub fn ready(name: impl Into<String>, kind: &'static str, required: bool) -> Self {
        Self {
            name: name.into(),
            kind,
            ready: true,
            required,
            message: None,
        }
    }

    /// A part that is not ready, and why.
    pub fn not_ready(
        name: impl Into<String>,
        kind: &'static str,
        required: bool,
        message: impl Into<String>,
    ) -> Self {
        Self {
            ready: false,
            message: Some(message.into()),
            ..Self::ready(name, kind, required)
        }
    }
}

/// The rest of the server's parts (the sources'), asked on every `/readyz`.
pub type ReadinessProbe =
    std::sync::Arc<dyn Fn() -> BoxFuture<'static, Vec<Readiness>> + Send + Sync>;

/// The engine's readiness: healthy (the health its clients are told) and answering now.
async fn engine(state: &ApiState) -> Readiness {
    let health = state.core.health().borrow().clone();
    if let Health::Unavailable { since } = health {
        return Readiness::not_ready(
            "engine",
            "engine",
            true,
            format!(
                "the engine is unreachable since {}",
                crate::core::event::format_time(since)
            ),
        );
    }
    match tokio::time::timeout(PART_TIMEOUT, state.core.ping()).await {
        Ok(Ok(())) => Readiness::ready("engine", "engine", true),
        Ok(Err(e)) => Readiness::not_ready("engine", "engine", true, e.to_string()),
        Err(_) => Readiness::not_ready(
            "engine",
            "engine",
            true,
            format!("the engine did not answer within {PART_TIMEOUT:?}"),
        ),
    }
}

/// Every part's readiness, the engine first.
pub async fn parts(state: &ApiState) -> Vec<Readiness> {
    let (engine, sources) = tokio::join!(engine(state), (state.readiness)());
    std::iter::once(engine).chain(sources).collect()
}

/// `GET /readyz`: 200 `{"status":"ready","parts":[…]}`, or 503 with `"status":"not_ready"`, the same list and an
/// `error` naming the first required part that is not ready (`engine_unavailable` for the engine, `not_ready`
/// otherwise).
pub async fn readyz(State(state): State<ApiState>) -> Response {
    let parts = parts(&state).await;
    match parts.iter().find(|p| p.required && !p.ready) {
        None => Json(json!({"status": "ready", "parts": parts})).into_response(),
        Some(failing) => {
            let code = if failing.kind == "engine" {
                "engine_unavailable"
            } else {
                "not_ready"
            };
            let message = format!(
                "{} is not ready: {}",
                failing.name,
                failing.message.as_deref().unwrap_or("no reason given")
            );
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(json!({
                    "status": "not_ready",
                    "parts": parts,
                    "error": {"code": code, "message": message},
                })),
            )
                .into_response()
        }
    }
}
