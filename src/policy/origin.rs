//! Which browser origins may connect, and CORS answers for the HTTP API, long-polling and SSE (exact origin and
//! credentials, as the reference Socket.IO server answers with `cors: {origin, credentials: true}`).

use axum::extract::Request;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

/// The origin allow-list.
#[derive(Debug, Clone, Default)]
pub struct Origins {
    /// Allowed origins; `*` allows any. Empty: no CORS headers, and no checks unless `same_origin`.
    allowed: Vec<String>,
    /// With an empty list, still refuse cross-site requests: with cookie authentication a cookie would ride
    /// along on a cross-site WebSocket, which CORS does not cover.
    same_origin: bool,
}

impl Origins {
    /// From the configured list.
    pub fn new(allowed: &[String], same_origin: bool) -> Self {
        Self {
            allowed: allowed
                .iter()
                .map(|o| o.trim_end_matches('/').to_owned())
                .collect(),
            same_origin,
        }
    }

    /// Whether a request with these headers may proceed: no `Origin` (not a browser) or an allowed one.
    pub fn permits(&self, headers: &HeaderMap) -> bool {
        let Some(origin) = headers.get(header::ORIGIN) else {
            return true;
        };
        let Ok(origin) = origin.to_str() else {
            return false;
        };
        if self.allowed.is_empty() {
            return !self.same_origin || same_site(origin, headers);
        }
        self.allowed.iter().any(|a| a == "*" || a == origin)
    }

    /// Axum middleware: refuses disallowed origins with 403 JSON, answers preflights, adds CORS headers.
    pub async fn layer(origins: axum::extract::State<Self>, req: Request, next: Next) -> Response {
        origins.answer("GET, HEAD, POST, OPTIONS", req, next).await
    }

    /// [`Origins::layer`] for routes that take any method (`[[proxy]]` prefixes): preflights allow PUT, PATCH
    /// and DELETE too. With an allow-list, Herald answers preflights itself and its `Access-Control-Allow-Origin`
    /// and `-Credentials` replace the upstream's; with none, requests and preflights pass through untouched.
    pub async fn layer_any_method(
        origins: axum::extract::State<Self>,
        req: Request,
        next: Next,
    ) -> Response {
        origins
            .answer("GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS", req, next)
            .await
    }

    async fn answer(&self, methods: &'static str, req: Request, next: Next) -> Response {
        let origins = self;
        let Some(origin) = req.headers().get(header::ORIGIN).cloned() else {
            return next.run(req).await;
        };
        if !origins.permits(req.headers()) {
            let body = serde_json::json!({"error": {"code": "origin_not_allowed", "message": "this origin may not use Herald"}});
            return (StatusCode::FORBIDDEN, axum::Json(body)).into_response();
        }
        if origins.allowed.is_empty() {
            // Same-origin pages need no CORS headers.
            return next.run(req).await;
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
                HeaderValue::from_static(methods),
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

/// Whether `origin` (`scheme://host[:port]`) names the host the request was sent to.
fn same_site(origin: &str, headers: &HeaderMap) -> bool {
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
    let authority = origin.split_once("://").map_or(origin, |(_, rest)| rest);
    host.is_some_and(|h| h.eq_ignore_ascii_case(authority))
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
        let o = Origins::new(&["https://dash.example.com/".into()], false);
        assert!(o.permits(&with_origin("https://dash.example.com")));
        assert!(!o.permits(&with_origin("https://evil.example.com")));
        assert!(
            o.permits(&HeaderMap::new()),
            "non-browser clients send no Origin"
        );
        assert!(Origins::new(&["*".into()], false).permits(&with_origin("https://any.example")));
        assert!(Origins::new(&[], false).permits(&with_origin("https://any.example")));
        let mut same = with_origin("http://herald.local:7700");
        same.insert(header::HOST, HeaderValue::from_static("herald.local:7700"));
        assert!(Origins::new(&[], true).permits(&same));
        let mut cross = with_origin("http://evil.example");
        cross.insert(header::HOST, HeaderValue::from_static("herald.local:7700"));
        assert!(
            !Origins::new(&[], true).permits(&cross),
            "cookie auth refuses cross-site by default"
        );
    }
}
