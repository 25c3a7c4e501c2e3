//! Why a binding refuses a client: one type for every refusal of every binding, each with its stable wire code,
//! and one mapping per wire — Socket.IO (an ack `{ok:false,error}`, an `error` event, a CONNECT error), the `/ws`
//! JSON error message, and the HTTP answer (status and `{"error":{code,message}}`) of `/sse` and of `/ws` before
//! the upgrade. Each mapping logs the refusal at `debug` (code, reason, wire), so following a client's refusals
//! needs no per-binding logging; warnings about floods are aggregated elsewhere (`policy::refusals`).

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::api::ApiError;
use crate::auth::AuthError;
use crate::core::channel::{ChannelName, ChannelNameError};
use crate::core::engine::EngineError;
use crate::policy::Refused;
use crate::transport::socketio::ConnectError;

/// A refusal told to the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// No acceptable token (`unauthorized`, or `token_expired`).
    #[error("{0}")]
    Unauthorized(AuthError),
    /// The identity may not subscribe to the channel (`forbidden`).
    #[error("not allowed to subscribe to {0}")]
    Forbidden(ChannelName),
    /// The subscription would take the connection past `max` subscriptions (`too_many_subscriptions`).
    #[error("this connection holds the most subscriptions allowed")]
    TooManySubscriptions {
        /// Most subscriptions per connection.
        max: usize,
    },
    /// Too many connections or messages from this client (`rate_limited`).
    #[error("{0}")]
    RateLimited(String),
    /// The request is malformed (`invalid_request`).
    #[error("{0}")]
    InvalidRequest(String),
    /// A channel name is not valid (`invalid_channel`), or is one of Herald's own (`reserved_channel`).
    #[error("{message}")]
    InvalidChannel {
        /// What is wrong with the name (it decides the code).
        reason: ChannelNameError,
        /// What the client is told: the reason, maybe with where the name came from.
        message: String,
    },
    /// A resume cursor is not valid (`invalid_cursor`).
    #[error("{0}")]
    InvalidCursor(String),
    /// A message is not JSON (`invalid_json`).
    #[error("{0}")]
    InvalidJson(String),
    /// A Socket.IO event Herald does not handle (`unknown_event`).
    #[error("{0}")]
    UnknownEvent(String),
    /// A `/ws` op Herald does not know (`unknown_op`).
    #[error("unknown op {0:?}; use subscribe, unsubscribe, emit or ping")]
    UnknownOp(String),
    /// A binary `/ws` message (`unsupported_binary`).
    #[error("send JSON text messages")]
    UnsupportedBinary,
    /// The identity may not publish to the channel (`forbidden`).
    #[error("not allowed to publish to {0}")]
    PublishForbidden(ChannelName),
    /// A client event's template needs a claim the connection's identity lacks (`missing_claim`).
    #[error("{0}")]
    MissingClaim(String),
    /// A client publish carries more data than allowed (`payload_too_large`).
    #[error("{0}")]
    TooLarge(String),
    /// Too many requests wait to be handled (`busy`).
    #[error("too many requests pending; retry shortly")]
    Busy,
    /// The engine failed (`unavailable`); the cause is logged, not told.
    #[error("storage is unavailable; try again")]
    Unavailable,
    /// An action mapped to a client event refused, with its own code.
    #[error("{message}")]
    Action {
        /// The action's stable code.
        code: &'static str,
        /// What went wrong.
        message: String,
    },
}

impl From<EngineError> for Refusal {
    fn from(e: EngineError) -> Self {
        tracing::error!(error = %e, "storage failure answering a client");
        Refusal::Unavailable
    }
}

impl From<Refused> for Refusal {
    fn from(e: Refused) -> Self {
        Refusal::RateLimited(e.to_string())
    }
}

impl From<ChannelNameError> for Refusal {
    fn from(reason: ChannelNameError) -> Self {
        Refusal::InvalidChannel {
            message: reason.to_string(),
            reason,
        }
    }
}

impl From<AuthError> for Refusal {
    fn from(e: AuthError) -> Self {
        Refusal::Unauthorized(e)
    }
}

impl Refusal {
    /// The stable wire code.
    pub fn code(&self) -> &'static str {
        match self {
            Refusal::Unauthorized(e) => e.code(),
            Refusal::Forbidden(_) => "forbidden",
            Refusal::TooManySubscriptions { .. } => "too_many_subscriptions",
            Refusal::RateLimited(_) => "rate_limited",
            Refusal::InvalidRequest(_) => "invalid_request",
            Refusal::InvalidChannel { reason, .. } => reason.code(),
            Refusal::InvalidCursor(_) => "invalid_cursor",
            Refusal::InvalidJson(_) => "invalid_json",
            Refusal::UnknownEvent(_) => "unknown_event",
            Refusal::UnknownOp(_) => "unknown_op",
            Refusal::UnsupportedBinary => "unsupported_binary",
            Refusal::PublishForbidden(_) => "forbidden",
            Refusal::MissingClaim(_) => "missing_claim",
            Refusal::TooLarge(_) => "payload_too_large",
            Refusal::Busy => "busy",
            Refusal::Unavailable => "unavailable",
            Refusal::Action { code, .. } => code,
        }
    }

    /// One `debug` line: the refusal (its code and what the client is told, as `reason`) sent over `wire`.
    fn log(&self, wire: &'static str) {
        tracing::debug!(code = self.code(), reason = %self, wire, "refused");
        // The HTTP answer is an `ApiError`, which counts itself.
        if wire != "http" {
            crate::policy::refusals::REFUSALS.count(self.code());
        }
    }

    /// Socket.IO: the ack `{ok:false, error:{code, message}}`.
    pub fn ack(&self) -> Value {
        self.log("socketio ack");
        json!({"ok": false, "error": {"code": self.code(), "message": self.to_string()}})
    }

    /// Socket.IO: the `error` event `{code, message, event}` telling a client that asked for no ack which of its
    /// events was refused.
    pub fn error_event(&self, event: &str) -> Value {
        self.log("socketio error event");
        json!({"code": self.code(), "message": self.to_string(), "event": event})
    }

    /// Socket.IO: the CONNECT error (`err.message`, and `err.data.code` for programs).
    pub fn connect_error(&self) -> ConnectError {
        self.log("socketio connect");
        ConnectError {
            message: self.to_string(),
            data: Some(json!({"code": self.code()})),
        }
    }

    /// `/ws`: the error message `{"type":"error","code","message"}`, with the request's `id` when it had one.
    pub fn frame(&self, id: Option<Value>) -> String {
        self.frame_value(id).to_string()
    }

    /// `/ws`: the error message answering an `emit` of client event `event`, which it names as Socket.IO's
    /// `error` event does.
    pub fn emit_frame(&self, id: Option<Value>, event: &str) -> String {
        let mut v = self.frame_value(id);
        v["event"] = Value::from(event);
        v.to_string()
    }

    fn frame_value(&self, id: Option<Value>) -> Value {
        self.log("websocket message");
        let message = match self {
            // What `/ws` has always said.
            Refusal::Unavailable => "storage is unavailable".to_owned(),
            other => other.to_string(),
        };
        let mut v = json!({"type": "error", "code": self.code(), "message": message});
        if let Some(id) = id {
            v["id"] = id;
        }
        v
    }

    /// HTTP (`/sse`, `/ws` before the upgrade): the status and `{"error":{"code","message"}}`.
    pub fn response(&self) -> Response {
        self.log("http");
        let (status, message) = match self {
            Refusal::Unauthorized(_) => (StatusCode::UNAUTHORIZED, self.to_string()),
            // What HTTP refusals have always said: the status tells the rest.
            Refusal::Forbidden(_) | Refusal::PublishForbidden(_) => {
                (StatusCode::FORBIDDEN, "forbidden".to_owned())
            }
            Refusal::TooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, self.to_string()),
            // Only a stream asks for several channels at once over HTTP.
            Refusal::TooManySubscriptions { max } => (
                StatusCode::BAD_REQUEST,
                format!("a stream may name at most {max} channels"),
            ),
            Refusal::RateLimited(_) => (StatusCode::TOO_MANY_REQUESTS, self.to_string()),
            Refusal::Unavailable | Refusal::Busy => {
                (StatusCode::SERVICE_UNAVAILABLE, self.to_string())
            }
            // A connect hook whose backend failed, or with no room for the forward: not the client's mistake.
            Refusal::Action { code, .. } if crate::binding::forward::is_backend_failure(code) => {
                (StatusCode::SERVICE_UNAVAILABLE, self.to_string())
            }
            Refusal::InvalidRequest(_)
            | Refusal::InvalidChannel { .. }
            | Refusal::InvalidCursor(_)
            | Refusal::InvalidJson(_)
            | Refusal::UnknownEvent(_)
            | Refusal::UnknownOp(_)
            | Refusal::UnsupportedBinary
            | Refusal::MissingClaim(_)
            | Refusal::Action { .. } => (StatusCode::BAD_REQUEST, self.to_string()),
        };
        ApiError::new(status, self.code(), message).into_response()
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        self.response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// JSON string literal of `s`.
    fn q(s: &str) -> String {
        serde_json::to_string(s).unwrap()
    }

    /// Each refusal's code, its message on Socket.IO and `/ws`, and its HTTP status and message.
    fn cases() -> Vec<(
        Refusal,
        &'static str,
        &'static str,
        &'static str,
        u16,
        &'static str,
    )> {
        let ch = ChannelName::new("secret").unwrap();
        vec![
            (
                Refusal::Unauthorized(AuthError::Signature),
                "unauthorized",
                "invalid token signature",
                "invalid token signature",
                401,
                "invalid token signature",
            ),
            (
                Refusal::Unauthorized(AuthError::Expired),
                "token_expired",
                "token expired",
                "token expired",
                401,
                "token expired",
            ),
            (
                Refusal::Forbidden(ch),
                "forbidden",
                "not allowed to subscribe to secret",
                "not allowed to subscribe to secret",
                403,
                "forbidden",
            ),
            (
                Refusal::TooManySubscriptions { max: 3 },
                "too_many_subscriptions",
                "this connection holds the most subscriptions allowed",
                "this connection holds the most subscriptions allowed",
                400,
                "a stream may name at most 3 channels",
            ),
            (
                Refusal::RateLimited("slow down".into()),
                "rate_limited",
                "slow down",
                "slow down",
                429,
                "slow down",
            ),
            (
                Refusal::InvalidRequest("expected {channel}".into()),
                "invalid_request",
                "expected {channel}",
                "expected {channel}",
                400,
                "expected {channel}",
            ),
            (
                ChannelNameError::Empty.into(),
                "invalid_channel",
                "channel name is empty",
                "channel name is empty",
                400,
                "channel name is empty",
            ),
            (
                Refusal::InvalidChannel {
                    reason: ChannelNameError::Reserved,
                    message: "join: \"herald:x\": reserved".into(),
                },
                "reserved_channel",
                "join: \"herald:x\": reserved",
                "join: \"herald:x\": reserved",
                400,
                "join: \"herald:x\": reserved",
            ),
            (
                Refusal::InvalidCursor("bad cursor".into()),
                "invalid_cursor",
                "bad cursor",
                "bad cursor",
                400,
                "bad cursor",
            ),
            (
                Refusal::InvalidJson("eof".into()),
                "invalid_json",
                "eof",
                "eof",
                400,
                "eof",
            ),
            (
                Refusal::UnknownEvent("Herald does not handle \"x\"".into()),
                "unknown_event",
                "Herald does not handle \"x\"",
                "Herald does not handle \"x\"",
                400,
                "Herald does not handle \"x\"",
            ),
            (
                Refusal::UnknownOp("dance".into()),
                "unknown_op",
                "unknown op \"dance\"; use subscribe, unsubscribe, emit or ping",
                "unknown op \"dance\"; use subscribe, unsubscribe, emit or ping",
                400,
                "unknown op \"dance\"; use subscribe, unsubscribe, emit or ping",
            ),
            (
                Refusal::UnsupportedBinary,
                "unsupported_binary",
                "send JSON text messages",
                "send JSON text messages",
                400,
                "send JSON text messages",
            ),
            (
                Refusal::PublishForbidden(ChannelName::new("chat:x").unwrap()),
                "forbidden",
                "not allowed to publish to chat:x",
                "not allowed to publish to chat:x",
                403,
                "forbidden",
            ),
            (
                Refusal::MissingClaim("no claim `team`".into()),
                "missing_claim",
                "no claim `team`",
                "no claim `team`",
                400,
                "no claim `team`",
            ),
            (
                Refusal::TooLarge("data is 9 bytes; at most 8".into()),
                "payload_too_large",
                "data is 9 bytes; at most 8",
                "data is 9 bytes; at most 8",
                413,
                "data is 9 bytes; at most 8",
            ),
            (
                Refusal::Busy,
                "busy",
                "too many requests pending; retry shortly",
                "too many requests pending; retry shortly",
                503,
                "too many requests pending; retry shortly",
            ),
            (
                Refusal::Unavailable,
                "unavailable",
                "storage is unavailable; try again",
                "storage is unavailable",
                503,
                "storage is unavailable; try again",
            ),
            (
                Refusal::Action {
                    code: "monitor_not_found",
                    message: "no monitor \"m1\"".into(),
                },
                "monitor_not_found",
                "no monitor \"m1\"",
                "no monitor \"m1\"",
                400,
                "no monitor \"m1\"",
            ),
        ]
    }

    #[test]
    fn socketio_acks_error_events_and_connect_errors() {
        for (r, code, message, ..) in cases() {
            assert_eq!(r.code(), code);
            assert_eq!(
                r.ack().to_string(),
                format!(
                    r#"{{"error":{{"code":"{code}","message":{}}},"ok":false}}"#,
                    q(message)
                ),
                "{r:?}"
            );
            assert_eq!(
                r.error_event("subscribe").to_string(),
                format!(
                    r#"{{"code":"{code}","event":"subscribe","message":{}}}"#,
                    q(message)
                ),
                "{r:?}"
            );
            let e = r.connect_error();
            assert_eq!(e.message, message, "{r:?}");
            assert_eq!(e.data, Some(json!({"code": code})), "{r:?}");
        }
    }

    #[test]
    fn websocket_error_messages() {
        for (r, code, _, message, ..) in cases() {
            assert_eq!(
                r.frame(Some(json!(7))),
                format!(
                    r#"{{"code":"{code}","id":7,"message":{},"type":"error"}}"#,
                    q(message)
                ),
                "{r:?}"
            );
            assert_eq!(
                r.frame(None),
                format!(
                    r#"{{"code":"{code}","message":{},"type":"error"}}"#,
                    q(message)
                ),
                "{r:?}"
            );
        }
    }

    #[tokio::test]
    async fn http_answers() {
        for (r, code, _, _, status, message) in cases() {
            let response = r.response();
            assert_eq!(response.status().as_u16(), status, "{r:?}");
            let body = axum::body::to_bytes(response.into_body(), 1 << 16)
                .await
                .unwrap();
            assert_eq!(
                std::str::from_utf8(&body).unwrap(),
                format!(
                    r#"{{"error":{{"code":"{code}","message":{}}}}}"#,
                    q(message)
                ),
                "{r:?}"
            );
        }
    }
}
