//! `GET /api/openapi.json`: the OpenAPI 3.1 description of Herald's own HTTP routes, a JSON file embedded in the
//! binary (`openapi.json` beside this file). Public, like `/healthz`: it describes routes, never data. Kept true
//! by the route test in `server` (every route of the router described, nothing extra) and by the schemathesis run
//! of `scripts/openapi-fuzz` against the live server.

use axum::http::header;
use axum::response::{IntoResponse, Response};

/// The document, as served.
pub const SPEC: &str = include_str!("openapi.json");

/// The handler.
pub async fn spec() -> Response {
    (
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        SPEC,
    )
        .into_response()
}
