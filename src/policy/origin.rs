//! Which browser origins may connect, and CORS answers for the HTTP API, long-polling and SSE (exact origin and
//! credentials, as the reference Socket.IO server answers with `cors: {origin, credentials: true}`).

use axum::extract::Request;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

/// The origin allow-list.
#[derive(Debug, Clone, Default)]
pub struct Origins {
    /// Allowed origins; `*` allows any. Empty: no checks and no CORS headers (same-origin pages only).
    allowed: Vec<String>,
}

impl Origins {
    /// From the configured list.
    pub fn new(allowed: &[String]) -> Self {
        Self {
            allowed: allowed
                .iter()
                .map(|o| o.trim_end_matches('/').to_owned())
                .collect(),
        }
    }

    /// Whether a request with these headers may proceed: no `Origin` (not a browser) or an allowed one.
    pub fn permits(&self, headers: &HeaderMap) -> bool {
        match headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) {
            None => true,
            Some(origin) => self.allowed.is_empty() || self.allows(origin),
        }
    }

    fn allows(&self, origin: &str) -> bool {
        self.allowed.iter().any(|a| a == "*" || a == origin)
    }

    /// Axum middleware: refuses disallowed origins with 403 JSON, answers preflights, adds CORS headers.
    pub async fn layer(origins: axum::extract::State<Self>, req: Request, next: Next) -> Response {
        let origin = req.headers().get(header::ORIGIN).cloned();
        let Some(origin) = origin else {
            return next.run(req).await;
        };
        if origins.allowed.is_empty() {
            return next.run(req).await;
        }
        let allowed = origin.to_str().is_ok_and(|o| origins.allows(o));
        if !allowed {
            let body = serde_json::json!({"error": {"code": "origin_not_allowed", "message": "this origin may not use Herald"}});
            return (StatusCode::FORBIDDEN, axum::Json(body)).into_response();
        }
        let preflight = req.method() == Method::OPTIONS
            && req
                .headers()
                .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
        let requested_headers = req
            .headers()
            .get(header::ACCESS_CONTROL_REQUEST_HEADERS)
            .cloned();
        let mut response = if preflight {
            let mut r = StatusCode::NO_CONTENT.into_response();
            let h = r.headers_mut();
            h.insert(
                header::ACCESS_CONTROL_ALLOW_METHODS,
                HeaderValue::from_static("GET, HEAD, POST, OPTIONS"),
            );
            if let Some(v) = requested_headers {
                h.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, v);
            }
            h.insert(
                header::ACCESS_CONTROL_MAX_AGE,
                HeaderValue::from_static("600"),
            );
            r
        } else {
            next.run(req).await
        };
        let h = response.headers_mut();
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        h.insert(
            header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
            HeaderValue::from_static("true"),
        );
        h.append(header::VARY, HeaderValue::from_static("Origin"));
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_origin(o: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::ORIGIN, HeaderValue::from_str(o).unwrap());
        h
    }

    #[test]
    fn checks_the_allow_list() {
        let o = Origins::new(&["https://dash.example.com/".into()]);
        assert!(o.permits(&with_origin("https://dash.example.com")));
        assert!(!o.permits(&with_origin("https://evil.example.com")));
        assert!(
            o.permits(&HeaderMap::new()),
            "non-browser clients send no Origin"
        );
        assert!(Origins::new(&["*".into()]).permits(&with_origin("https://any.example")));
        assert!(Origins::new(&[]).permits(&with_origin("https://any.example")));
    }
}
