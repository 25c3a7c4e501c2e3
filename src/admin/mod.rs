//! The admin dashboard at `/admin`: a static page embedded in the binary (HTML, plain JS and CSS, no build step, no
//! CDN) that reads the HTTP API and `/metrics` with an admin API key, plus the few JSON routes it needs that the API
//! lacks (`/api/admin/*`, admin scope). The page holds no data itself: everything it shows comes through the API's
//! key check; without configured keys the page is served to loopback peers only ([`page`]).

mod page;
mod routes;

use std::sync::Arc;

use axum::Router;

use crate::api::Mounts;
use crate::core::Engine;

/// What the dashboard's routes need to know of the server.
pub struct Setup {
    /// The engine.
    pub core: Arc<dyn Engine>,
    /// The engine's name (`sqlite`, `memory`, `redis`), shown on the overview.
    pub engine: &'static str,
    /// Whether API keys are configured; without any the page is served to loopback peers only.
    pub keyed: bool,
}

/// The dashboard's routes: the page and its assets at the root, its JSON under `/api/admin`.
pub fn mounts(setup: Setup) -> Mounts {
    Mounts {
        api: routes::router(routes::AdminState {
            core: setup.core,
            engine: setup.engine,
            started_ms: crate::core::event::now_ms(),
        }),
        keyed: Router::new(),
        public: page::router(setup.keyed),
        any_method: Router::new(),
    }
}
