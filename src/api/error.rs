//! The HTTP API's error type: a status, a stable machine-readable code and a human message, as JSON.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::core::channel::ChannelNameError;
use crate::core::engine::EngineError;

/// An error answered as `{"error":{"code","message"}}`.
#[derive(Debug)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Stable code, e.g. `invalid_json`.
    pub code: &'static str,
    /// What is wrong, for a human.
    pub message: String,
    /// The request field at fault, when one is (e.g. `check.url`).
    pub field: Option<String>,
}

impl ApiError {
    /// An error with the given parts.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            field: None,
        }
    }

    /// 400 `invalid_request` about one field.
    pub fn field(field: impl Into<String>, message: impl Into<String>) -> Self {
        let field = field.into();
        let message = message.into();
        Self {
            message: if field.is_empty() {
                message
            } else {
                format!("{field}: {message}")
            },
            field: (!field.is_empty()).then_some(field),
            ..Self::invalid("")
        }
    }

    /// 400 `invalid_request`.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request", message)
    }

    /// 413 `payload_too_large`.
    pub fn too_large(message: impl Into<String>) -> Self {
        Self::new(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", message)
    }
}

impl From<ChannelNameError> for ApiError {
    fn from(e: ChannelNameError) -> Self {
        Self::new(StatusCode::BAD_REQUEST, e.code(), e.to_string())
    }
}

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> Self {
        tracing::error!(error = %e, "storage failure while serving the API");
        // An unreachable engine is temporary and says so (503, retry); nothing it failed was acknowledged.
        let (status, code) = match e {
            EngineError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "engine_unavailable"),
            EngineError::Closed => (StatusCode::SERVICE_UNAVAILABLE, "storage_error"),
            EngineError::Invalid(_) => (StatusCode::INTERNAL_SERVER_ERROR, "storage_error"),
        };
        Self::new(status, code, e.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status.is_client_error() {
            crate::policy::refusals::REFUSALS.count(self.code);
        }
        let mut body = json!({"error": {"code": self.code, "message": self.message}});
        if let Some(field) = self.field {
            body["error"]["field"] = field.into();
        }
        (self.status, Json(body)).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unreachable_engine_is_503_engine_unavailable() {
        let e = ApiError::from(EngineError::unavailable("redis is down"));
        assert_eq!(
            (e.status, e.code),
            (StatusCode::SERVICE_UNAVAILABLE, "engine_unavailable")
        );
        let e = ApiError::from(EngineError::Closed);
        assert_eq!(
            (e.status, e.code),
            (StatusCode::SERVICE_UNAVAILABLE, "storage_error")
        );
    }
}
