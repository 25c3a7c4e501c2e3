//! The dashboard's page and assets, embedded at compile time and served with a strict content security policy (its
//! own scripts and styles only, no inline code, no framing), so a payload or channel name it shows can never run.
//! Without API keys the API needs none, and the page is then served to loopback peers only.

use std::net::SocketAddr;

use axum::Router;
use axum::extract::{ConnectInfo, Path, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::api::ApiError;

/// The page's files: name under `/admin/`, content type, content.
const ASSETS: [(&str, &str, &str); 3] = [
    (
        "app.js",
        "text/javascript; charset=utf-8",
        include_str!("assets/app.js"),
    ),
    (
        "app.css",
        "text/css; charset=utf-8",
        include_str!("assets/app.css"),
    ),
    ("icon.svg", "image/svg+xml", include_str!("assets/icon.svg")),
];

const INDEX: &str = include_str!("assets/index.html");

/// What the page may load and run: only its own files, and requests to its own origin.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; \
                   base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// `/admin` and its assets; `keyed`: whether API keys are configured (else loopback peers only).
pub fn router(keyed: bool) -> Router {
    Router::new()
        .route("/admin", get(index))
        .route("/admin/", get(index))
        .route("/admin/{file}", get(asset))
        .layer(middleware::from_fn_with_state(keyed, loopback_unless_keyed))
}

/// Refuses (403) a peer that is not on this host when no API key is configured: nothing else stands between such
/// a peer and the API the page drives.
async fn loopback_unless_keyed(
    State(keyed): State<bool>,
    req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let local = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .is_some_and(|ConnectInfo(peer)| peer.ip().to_canonical().is_loopback());
    if keyed || local {
        Ok(next.run(req).await)
    } else {
        Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "without api_keys the admin dashboard is served to loopback peers only",
        ))
    }
}

async fn index() -> Response {
    serve("text/html; charset=utf-8", INDEX)
}

async fn asset(Path(file): Path<String>) -> Response {
    match ASSETS.iter().find(|(name, _, _)| *name == file) {
        Some((_, kind, body)) => serve(kind, body),
        None => ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no admin asset {file:?}"),
        )
        .into_response(),
    }
}

fn serve(kind: &'static str, body: &'static str) -> Response {
    let mut response = (
        [
            (header::CONTENT_TYPE, kind),
            // Assets change with the binary: revalidate rather than run an old script against a new API.
            (header::CACHE_CONTROL, "no-cache"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
        ],
        body,
    )
        .into_response();
    response.headers_mut().insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    response
        .headers_mut()
        .insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::ServiceExt as _;

    async fn get_from(keyed: bool, peer: &str, path: &str) -> Response {
        let mut req = Request::builder()
            .uri(path)
            .body(axum::body::Body::empty())
            .unwrap();
        let peer: SocketAddr = peer.parse().unwrap();
        req.extensions_mut().insert(ConnectInfo(peer));
        router(keyed).oneshot(req).await.unwrap()
    }

    #[tokio::test]
    async fn without_keys_only_loopback_peers_get_the_page() {
        assert_eq!(
            get_from(false, "127.0.0.1:5000", "/admin").await.status(),
            StatusCode::OK
        );
        assert_eq!(
            get_from(false, "[::ffff:127.0.0.1]:5000", "/admin")
                .await
                .status(),
            StatusCode::OK
        );
        assert_eq!(
            get_from(false, "192.0.2.7:5000", "/admin/app.js")
                .await
                .status(),
            StatusCode::FORBIDDEN
        );
        assert_eq!(
            get_from(true, "192.0.2.7:5000", "/admin").await.status(),
            StatusCode::OK
        );
    }

    #[tokio::test]
    async fn assets_have_their_types_and_the_policy() {
        let r = get_from(true, "127.0.0.1:1", "/admin/app.js").await;
        assert_eq!(r.headers()[header::CONTENT_TYPE], ASSETS[0].1);
        assert!(
            r.headers()[header::CONTENT_SECURITY_POLICY]
                .to_str()
                .unwrap()
                .contains("script-src 'self'")
        );
        let r = get_from(true, "127.0.0.1:1", "/admin/nope.js").await;
        assert_eq!(r.status(), StatusCode::NOT_FOUND);
    }
}
