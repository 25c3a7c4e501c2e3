//! Several nodes without sticky sessions: the `[cluster]` section (the address other nodes reach this one at, the
//! bound on forwarded requests) and the Engine.IO [`SessionDirectory`] built on the engine.
//!
//! Each node claims its Engine.IO sessions in the engine (`sid` → its advertised address) when they open, keeps
//! the claims alive every [`CLAIM_REFRESH`] while they live, and drops them when they close. A long-polling
//! request that reaches a node for a session it does not hold is forwarded over plain HTTP to the owner and its
//! answer streamed back, so a round-robin balancer needs no session affinity. A WebSocket upgrade for a session
//! held elsewhere is answered "Session ID unknown" (the client stays on polling). In-process engines record
//! nothing: with them every sid is this node's or unknown, as before.

use std::collections::HashSet;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderName, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use futures_util::future::BoxFuture;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use parking_lot::Mutex;
use serde::Deserialize;
use tokio::sync::Semaphore;

use crate::config_error::InvalidConfig;
use crate::core::Engine;
use crate::transport::engineio::Directory;

/// How long a claim lives without being refreshed (a node that dies loses its sessions' claims within it).
pub const CLAIM_TTL: Duration = Duration::from_secs(60);

/// How often a node refreshes the claims of its live sessions.
pub const CLAIM_REFRESH: Duration = Duration::from_secs(20);

/// Marks a forwarded request, so the node it reaches never forwards it again.
const FORWARDED: HeaderName = HeaderName::from_static("x-herald-forwarded");

/// Idle connections kept open to each other node for later forwards.
const IDLE_PER_NODE: usize = 64;

/// Headers that belong to one connection and are not passed on.
const HOP_BY_HOP: [HeaderName; 6] = [
    header::CONNECTION,
    header::HOST,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// The `[cluster]` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterConfig {
    /// `http://host:port` other nodes reach this one at. Default: the listen address when it is a specific one
    /// (not `0.0.0.0` / `::`) and served without TLS; otherwise other nodes cannot forward to this one.
    pub advertise: Option<String>,
    /// Most requests this node forwards to other nodes at once (a held long-poll GET counts for as long as it is
    /// held); more are answered 503.
    pub max_forwards: usize,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            advertise: None,
            max_forwards: 8192,
        }
    }
}

impl ClusterConfig {
    /// Checks `advertise` is a plain `http://host[:port]` URL and `max_forwards` is positive.
    pub fn validate(&self) -> Result<(), InvalidConfig> {
        if let Some(a) = &self.advertise {
            let uri: Uri = a
                .parse()
                .map_err(|e| InvalidConfig(format!("cluster.advertise {a:?}: {e}")))?;
            let plain = uri.scheme_str() == Some("http")
                && uri.authority().is_some()
                && uri.path_and_query().is_none_or(|p| p.as_str() == "/");
            if !plain {
                return Err(InvalidConfig(format!(
                    "cluster.advertise {a:?} must be http://host:port (nodes forward to each other over plain HTTP)"
                )));
            }
        }
        if self.max_forwards == 0 {
            return Err(InvalidConfig(
                "cluster.max_forwards must be at least 1".into(),
            ));
        }
        Ok(())
    }

    /// The address to advertise for a node listening on `listen`, if other nodes can reach it.
    pub fn advertise_for(&self, listen: std::net::SocketAddr, tls: bool) -> Option<String> {
        match &self.advertise {
            Some(a) => Some(a.trim_end_matches('/').to_owned()),
            None if tls || listen.ip().is_unspecified() => None,
            None => Some(format!("http://{listen}")),
        }
    }
}

/// The Engine.IO session directory on an engine shared by several nodes.
#[derive(Clone)]
pub struct SessionDirectory(Arc<Inner>);

/// What a [`SessionDirectory`] shares with its forwards in flight.
struct Inner {
    engine: Arc<dyn Engine>,
    /// Set once the listener's address is known.
    advertise: OnceLock<String>,
    /// The sessions this node holds (whose claims it refreshes).
    local: Mutex<HashSet<Arc<str>>>,
    client: Client<HttpConnector, Body>,
    forwards: Arc<Semaphore>,
    timeout: Duration,
    max_body: usize,
}

impl SessionDirectory {
    /// A directory on `engine`; a forward may take `timeout` (longer than a held long-poll) and carry `max_body`.
    pub fn new(
        engine: Arc<dyn Engine>,
        config: &ClusterConfig,
        timeout: Duration,
        max_body: usize,
    ) -> Self {
        SessionDirectory(Arc::new(Inner {
            engine,
            advertise: OnceLock::new(),
            local: Mutex::new(HashSet::new()),
            client: Client::builder(TokioExecutor::new())
                .pool_max_idle_per_host(IDLE_PER_NODE)
                .build_http(),
            forwards: Arc::new(Semaphore::new(config.max_forwards)),
            timeout,
            max_body,
        }))
    }

    /// Starts claiming this node's sessions under `advertise`, refreshing the claims until the task is aborted.
    pub fn start(&self, advertise: String) -> tokio::task::JoinHandle<()> {
        tracing::info!(%advertise, "Engine.IO sessions are forwarded to this address");
        let _ = self.0.advertise.set(advertise);
        let this = self.0.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(CLAIM_REFRESH);
            loop {
                tick.tick().await;
                let sids: Vec<Arc<str>> = this.local.lock().iter().cloned().collect();
                if let Some(owner) = this.advertise.get()
                    && let Err(e) = this.engine.claim_sids(&sids, owner, CLAIM_TTL).await
                {
                    tracing::warn!(error = %e, "could not refresh this node's session claims");
                }
            }
        })
    }
}

impl Inner {
    /// Forwards `req` to the node holding `sid`; `None` when no other node does.
    async fn forward(self: Arc<Self>, sid: String, req: Request) -> Option<Response> {
        if req.headers().contains_key(&FORWARDED) {
            return None;
        }
        let owner = match self.engine.sid_owner(&sid).await {
            Ok(Some(owner)) if self.advertise.get() != Some(&owner) => owner,
            Ok(_) => return None,
            Err(e) => {
                tracing::warn!(error = %e, "could not look up a session's node");
                return None;
            }
        };
        let Ok(_permit) = self.forwards.clone().try_acquire_owned() else {
            return Some(unavailable(
                "too many requests being forwarded to other nodes",
            ));
        };
        let (parts, body) = req.into_parts();
        let Ok(body) = axum::body::to_bytes(body, self.max_body).await else {
            return Some(StatusCode::PAYLOAD_TOO_LARGE.into_response());
        };
        let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        let Ok(uri) = format!("{owner}{path}").parse::<Uri>() else {
            tracing::warn!(%owner, "a node advertised an unusable address");
            return None;
        };
        let mut upstream = Request::new(Body::from(body));
        *upstream.method_mut() = parts.method;
        *upstream.uri_mut() = uri;
        let headers = upstream.headers_mut();
        for (name, value) in &parts.headers {
            if !HOP_BY_HOP.contains(name) {
                headers.append(name.clone(), value.clone());
            }
        }
        headers.insert(FORWARDED, HeaderValue::from_static("1"));
        match tokio::time::timeout(self.timeout, self.client.request(upstream)).await {
            Ok(Ok(response)) => Some(response.map(Body::new)),
            // The owner is gone: the session is too, and the client starts a new one.
            Ok(Err(e)) => {
                tracing::debug!(%owner, error = %e, "could not forward to a session's node");
                None
            }
            Err(_) => Some(StatusCode::GATEWAY_TIMEOUT.into_response()),
        }
    }
}

/// A 503 in the API's error shape.
fn unavailable(message: &str) -> Response {
    let body = serde_json::json!({ "error": { "code": "forward_limit", "message": message } });
    (StatusCode::SERVICE_UNAVAILABLE, axum::Json(body)).into_response()
}

impl Directory for SessionDirectory {
    fn opened(&self, sid: &Arc<str>) -> BoxFuture<'static, ()> {
        self.0.local.lock().insert(sid.clone());
        let engine = self.0.engine.clone();
        let owner = self.0.advertise.get().cloned();
        let sid = sid.clone();
        Box::pin(async move {
            if let Some(owner) = owner
                && let Err(e) = engine.claim_sids(&[sid], &owner, CLAIM_TTL).await
            {
                tracing::warn!(error = %e, "could not claim a new session; other nodes cannot forward to it");
            }
        })
    }

    fn closed(&self, sid: &str) {
        self.0.local.lock().remove(sid);
        if self.0.advertise.get().is_some() {
            self.0.engine.release_sid(sid);
        }
    }

    fn forward(&self, sid: &str, req: Request) -> BoxFuture<'static, Option<Response>> {
        Box::pin(self.0.clone().forward(sid.to_owned(), req))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(advertise: Option<&str>) -> ClusterConfig {
        ClusterConfig {
            advertise: advertise.map(str::to_owned),
            ..ClusterConfig::default()
        }
    }

    #[test]
    fn advertise_must_be_plain_http_host_and_port() {
        assert!(config(Some("http://10.0.0.5:7700")).validate().is_ok());
        assert!(config(Some("http://node-a:7700/")).validate().is_ok());
        for bad in [
            "https://10.0.0.5:7700",
            "10.0.0.5:7700",
            "http://a:1/x",
            "http://",
        ] {
            assert!(config(Some(bad)).validate().is_err(), "{bad}");
        }
        let none = ClusterConfig {
            max_forwards: 0,
            ..ClusterConfig::default()
        };
        assert!(none.validate().is_err());
    }

    #[test]
    fn the_default_advertise_is_a_specific_plain_listen_address() {
        let listen = "127.0.0.1:7701".parse().unwrap();
        assert_eq!(
            config(None).advertise_for(listen, false).as_deref(),
            Some("http://127.0.0.1:7701")
        );
        assert_eq!(config(None).advertise_for(listen, true), None);
        assert_eq!(
            config(None).advertise_for("0.0.0.0:7700".parse().unwrap(), false),
            None
        );
        assert_eq!(
            config(None)
                .advertise_for("[::1]:7700".parse().unwrap(), false)
                .as_deref(),
            Some("http://[::1]:7700")
        );
        assert_eq!(
            config(Some("http://10.0.0.5:7700/"))
                .advertise_for(listen, true)
                .as_deref(),
            Some("http://10.0.0.5:7700")
        );
    }
}
