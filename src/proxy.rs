//! `[[proxy]]`: path prefixes Herald forwards to an upstream HTTP server, so a frontend that uses one base URL
//! for its REST calls and its socket (seed 001: `fetch('/books')` beside `io(url)`) keeps working with its
//! backend behind Herald. See `docs/proxy.md`.
//!
//! The forwarding itself is [`axum_reverse_proxy`]'s (maintained, on hyper 1 and axum 0.8 like Herald, with
//! hyper-util's pooled client underneath): it streams both bodies frame by frame (nothing is buffered, a 10 MB
//! upload holds a few frames of memory), strips the hop-by-hop headers of RFC 9110 §7.6.1 (those a `Connection`
//! header names too) both ways, appends `X-Forwarded-For` and an RFC 7239 `Forwarded` element, sets
//! `X-Forwarded-Host`/`-Proto`, and tunnels WebSocket upgrades holding a guard for the tunnel's life. It was
//! chosen over `hyper-reverse-proxy` (still on hyper 0.14) and over hand-written forwarding on the hyper-util
//! client (the header rules are where hand-written proxies go wrong). Built without its default features: the
//! client here is Herald's own, rustls on `ring` with the platform verifier (no aws-lc, no webpki-roots), with
//! the configured connect timeout.
//!
//! What this module adds around it: the section and its checks (segment-boundary prefixes that shadow none of
//! Herald's routes, refused at start-up), a bound on requests in flight per prefix (`503 proxy_limit`), JSON
//! errors with codes instead of the crate's plain-text ones (`502 upstream_unavailable`, `504 upstream_timeout`),
//! a deadline for the answer that starts once the upload is sent (the crate's would count the upload), idle
//! timeouts on both bodies, forwarding headers from untrusted clients dropped before the crate
//! appends Herald's own, and aggregated logs of failures (the crate's own per-request error lines are switched
//! off in `main.rs`'s default filter). Herald's origin policy applies to proxied routes: see [`Origins`].

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderName, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use axum_reverse_proxy::{ProxyError, ProxyPolicy, ReverseProxy, TunnelGuard};
use bytes::Bytes;
use http_body::{Body as _, Frame, SizeHint};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::Deserialize;
use tokio::sync::{Notify, Semaphore};

use crate::api::ApiError;
use crate::api::paths;
use crate::config_error::InvalidConfig;
use crate::policy::{Origins, Policy};

/// Longest timeout a proxy accepts: a day (a longer one is a typo, and would hold a permit that long).
const MAX_TIMEOUT: Duration = Duration::from_secs(86_400);

/// Most requests in flight one prefix may allow.
const MAX_IN_FLIGHT: usize = 1 << 20;

/// How long an unused pooled connection to an upstream stays open.
const POOL_IDLE: Duration = Duration::from_secs(60);

/// Forwarding headers a client could forge: dropped unless `trust_forwarded`, so the upstream reads Herald's.
const FORWARDING_HEADERS: [HeaderName; 4] = [
    HeaderName::from_static("x-forwarded-for"),
    HeaderName::from_static("x-forwarded-host"),
    HeaderName::from_static("x-forwarded-proto"),
    header::FORWARDED,
];

/// One `[[proxy]]` entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProxyConfig {
    /// Path prefix forwarded (`/books`: `/books` and everything below it, not `/bookshelf`).
    pub path: String,
    /// `http://` or `https://` server the requests go to; the request path is appended unchanged (after the
    /// upstream's own path, if it has one).
    pub upstream: String,
    /// Longest wait for the TCP (and TLS) connection to the upstream; failing it is `502 upstream_unavailable`.
    #[serde(default = "default_connect_timeout", with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Longest wait for the upstream's response headers once the whole request (its body included) was sent;
    /// past it the client gets `504 upstream_timeout`.
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// Longest silence of a body: an upload standing still (`504 upstream_timeout`), or a response body the
    /// upstream stopped streaming (cut off).
    #[serde(default = "default_idle_timeout", with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// Most requests forwarded under this prefix at once (until their response body ends, or their WebSocket
    /// tunnel closes); more are answered `503 proxy_limit`.
    #[serde(default = "default_max_in_flight")]
    pub max_in_flight: usize,
    /// Keep the `X-Forwarded-*` and `Forwarded` headers clients send (and append to them), for a Herald behind
    /// another proxy that sets them. Off: they are dropped and replaced with what Herald saw.
    #[serde(default)]
    pub trust_forwarded: bool,
}

fn default_connect_timeout() -> Duration {
    Duration::from_secs(5)
}

fn default_timeout() -> Duration {
    Duration::from_secs(30)
}

fn default_idle_timeout() -> Duration {
    Duration::from_secs(60)
}

fn default_max_in_flight() -> usize {
    256
}

/// Checks every `[[proxy]]` entry: literal paths on none of Herald's routes (`socketio_path` included), no two
/// overlapping, `http(s)://host[:port][/path]` upstreams, positive bounded timeouts and limits.
pub fn validate(proxies: &[ProxyConfig], socketio_path: &str) -> Result<(), InvalidConfig> {
    for (i, p) in proxies.iter().enumerate() {
        let bad = |field: &str, m: String| {
            Err(InvalidConfig(format!(
                "proxy[{i}] (path {:?}) field `{field}`: {m}",
                p.path
            )))
        };
        if p.path.ends_with('/') {
            return bad(
                "path",
                "must not end with '/' (a prefix such as \"/books\" already covers what lies below it; \"/\" would take Herald's own routes)".into(),
            );
        }
        if let Err(m) = paths::check_literal(&p.path, socketio_path) {
            return bad("path", m);
        }
        if let Some(other) = proxies[..i]
            .iter()
            .find(|o| paths::is_under(&p.path, &o.path) || paths::is_under(&o.path, &p.path))
        {
            return bad("path", format!("overlaps the proxy at {:?}", other.path));
        }
        if let Err(m) = check_upstream(&p.upstream) {
            return bad("upstream", m);
        }
        for (field, d) in [
            ("connect_timeout", p.connect_timeout),
            ("timeout", p.timeout),
            ("idle_timeout", p.idle_timeout),
        ] {
            if d.is_zero() || d > MAX_TIMEOUT {
                return bad(field, "must be positive and at most 24h".into());
            }
        }
        if p.max_in_flight == 0 || p.max_in_flight > MAX_IN_FLIGHT {
            return bad(
                "max_in_flight",
                format!("must be between 1 and {MAX_IN_FLIGHT}"),
            );
        }
    }
    Ok(())
}

/// An upstream is an absolute `http`/`https` URL with a host and no query.
fn check_upstream(upstream: &str) -> Result<(), String> {
    let uri: http::Uri = upstream.parse().map_err(|e| format!("not a URL: {e}"))?;
    if !matches!(uri.scheme_str(), Some("http" | "https")) {
        return Err("must start with http:// or https://".into());
    }
    if uri.authority().is_none_or(|a| a.host().is_empty()) {
        return Err("must name a host".into());
    }
    if uri.query().is_some() {
        return Err("must not have a query".into());
    }
    Ok(())
}

/// The proxy routes could not be built.
#[derive(Debug, thiserror::Error)]
#[error("cannot set up [[proxy]]: {0}")]
pub struct ProxySetupError(String);

/// The routes of every `[[proxy]]` entry, behind Herald's origin policy for any method (see
/// [`Origins::layer_any_method`]). `tls` says whether Herald itself is served over TLS (`X-Forwarded-Proto`).
pub fn router(
    proxies: &[ProxyConfig],
    origins: Origins,
    policy: Arc<Policy>,
    tls: bool,
) -> Result<Router, ProxySetupError> {
    let mut router = Router::new();
    if proxies.is_empty() {
        return Ok(router);
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    for p in proxies {
        let mut http = HttpConnector::new();
        http.set_connect_timeout(Some(p.connect_timeout));
        http.set_nodelay(true);
        // The TLS wrapper below decides which schemes are served.
        http.enforce_http(false);
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_provider_and_platform_verifier(provider.clone())
            .map_err(|e| ProxySetupError(e.to_string()))?
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(POOL_IDLE)
            .build(connector);
        // The crate strips `path` off the request and appends the rest to the target: the target ends with
        // `path` so the upstream sees the request's own path.
        let target = format!("{}{}", p.upstream.trim_end_matches('/'), p.path);
        // Checked by `validate`; checked again because the crate panics on a target without a host.
        if target
            .parse::<http::Uri>()
            .map_or(true, |u| u.authority().is_none())
        {
            return Err(ProxySetupError(format!(
                "unusable upstream {:?}",
                p.upstream
            )));
        }
        // No upstream timeout of the crate's: it would count the upload too (see `Progress`).
        let forwarding = ProxyPolicy::new().with_public_scheme(if tls { "https" } else { "http" });
        let upstream = Arc::new(Upstream {
            path: p.path.clone(),
            proxy: ReverseProxy::new_with_client(p.path.as_str(), target, client)
                .with_policy(forwarding),
            permits: Arc::new(Semaphore::new(p.max_in_flight)),
            timeout: p.timeout,
            idle_timeout: p.idle_timeout,
            trust_forwarded: p.trust_forwarded,
            policy: policy.clone(),
        });
        let routes = Router::new()
            .route(&p.path, any(forward))
            .route(&format!("{}/", p.path), any(forward))
            .route(&format!("{}/{{*rest}}", p.path), any(forward))
            .with_state(upstream);
        router = router.merge(routes);
    }
    Ok(router.layer(axum::middleware::from_fn_with_state(
        origins,
        Origins::layer_any_method,
    )))
}

/// One prefix's forwarding state.
struct Upstream {
    path: String,
    proxy: ReverseProxy<HttpsConnector<HttpConnector>>,
    permits: Arc<Semaphore>,
    timeout: Duration,
    idle_timeout: Duration,
    trust_forwarded: bool,
    policy: Arc<Policy>,
}

/// Forwards one request, holding one of the prefix's permits until its response body (or tunnel) ends.
async fn forward(State(up): State<Arc<Upstream>>, mut req: Request) -> Response {
    if req.method() == Method::CONNECT {
        return ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "CONNECT is not forwarded",
        )
        .into_response();
    }
    let Ok(permit) = up.permits.clone().try_acquire_owned() else {
        up.policy
            .refusals
            .record("proxy: requests in flight at max_in_flight", None);
        return ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "proxy_limit",
            format!(
                "too many requests being forwarded under {}; retry later",
                up.path
            ),
        )
        .into_response();
    };
    if !up.trust_forwarded {
        let headers = req.headers_mut();
        for name in &FORWARDING_HEADERS {
            headers.remove(name);
        }
    }
    req.extensions_mut().insert(TunnelGuard::new(permit));
    let progress = Arc::new(Progress::new());
    let req = req.map(|body| Body::new(Uploading::new(body, progress.clone())));
    // Dropping the forward on a timeout cancels the upstream request and frees the permit.
    let response = tokio::select! {
        forwarded = up.proxy.proxy_request(req) => match forwarded {
            Ok(response) => response,
            Err(never) => match never {},
        },
        () = progress.overdue(up.timeout, up.idle_timeout) => return late(&up),
    };
    if let Some(failure) = response.extensions().get::<ProxyError>() {
        tracing::debug!(path = %up.path, error = failure.message(), "proxied request failed");
        return if response.status() == StatusCode::GATEWAY_TIMEOUT {
            // The crate's own deadline: a WebSocket handshake the upstream did not complete.
            late(&up)
        } else {
            up.policy
                .refusals
                .record("proxy: upstream cannot be reached", None);
            ApiError::new(
                StatusCode::BAD_GATEWAY,
                "upstream_unavailable",
                format!("the upstream of {} cannot be reached", up.path),
            )
            .into_response()
        };
    }
    let (parts, body) = response.into_parts();
    Response::from_parts(parts, Body::new(IdleTimeout::new(body, up.idle_timeout)))
}

/// `504 upstream_timeout`, counted in the aggregated log.
fn late(up: &Upstream) -> Response {
    up.policy
        .refusals
        .record("proxy: upstream did not answer within timeout", None);
    ApiError::new(
        StatusCode::GATEWAY_TIMEOUT,
        "upstream_timeout",
        format!("the upstream of {} did not answer in time", up.path),
    )
    .into_response()
}

/// How far a request body has gone to the upstream. `timeout` counts from the moment all of it was sent — a
/// 1 GB upload over a slow link is not late for taking long — and while it is being sent, `idle_timeout` bounds
/// how long it may stand still (a stalled client, or an upstream that stopped reading).
struct Progress {
    start: tokio::time::Instant,
    /// When a frame last went through, in ms after `start`.
    moved_ms: AtomicU64,
    sent: AtomicBool,
    finished: Notify,
}

impl Progress {
    fn new() -> Self {
        Self {
            start: tokio::time::Instant::now(),
            moved_ms: AtomicU64::new(0),
            sent: AtomicBool::new(false),
            finished: Notify::new(),
        }
    }

    fn moved(&self) {
        let ms = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.moved_ms.store(ms, Ordering::Relaxed);
    }

    fn finish(&self) {
        if !self.sent.swap(true, Ordering::AcqRel) {
            // Stored as a permit if the waiter is not waiting yet.
            self.finished.notify_one();
        }
    }

    /// Resolves once the upstream is late: `timeout` after the body was all sent, or `idle` without it moving.
    async fn overdue(&self, timeout: Duration, idle: Duration) {
        loop {
            if self.sent.load(Ordering::Acquire) {
                tokio::time::sleep(timeout).await;
                return;
            }
            let idle_at =
                self.start + Duration::from_millis(self.moved_ms.load(Ordering::Relaxed)) + idle;
            if tokio::time::Instant::now() >= idle_at {
                return;
            }
            tokio::select! {
                () = self.finished.notified() => {}
                () = tokio::time::sleep_until(idle_at) => {}
            }
        }
    }
}

/// A request body on its way to the upstream, reporting its [`Progress`].
struct Uploading {
    inner: Body,
    progress: Arc<Progress>,
}

impl Uploading {
    fn new(inner: Body, progress: Arc<Progress>) -> Self {
        if inner.is_end_stream() {
            progress.finish();
        }
        Self { inner, progress }
    }
}

impl http_body::Body for Uploading {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(_))) => {
                this.progress.moved();
                if this.inner.is_end_stream() {
                    this.progress.finish();
                }
            }
            Poll::Ready(None) => this.progress.finish(),
            Poll::Ready(Some(Err(_))) | Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A response body cut off (with an error, so the client sees it incomplete) after `idle` without a frame.
struct IdleTimeout {
    inner: Body,
    idle: Duration,
    deadline: Pin<Box<tokio::time::Sleep>>,
}

impl IdleTimeout {
    fn new(inner: Body, idle: Duration) -> Self {
        Self {
            inner,
            idle,
            deadline: Box::pin(tokio::time::sleep(idle)),
        }
    }
}

/// The upstream stopped sending a response body.
#[derive(Debug, thiserror::Error)]
#[error("the upstream sent nothing for the proxy's idle_timeout")]
struct Idle;

impl http_body::Body for IdleTimeout {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                let next = tokio::time::Instant::now() + this.idle;
                this.deadline.as_mut().reset(next);
                Poll::Ready(frame)
            }
            Poll::Pending => match this.deadline.as_mut().poll(cx) {
                Poll::Ready(()) => {
                    tracing::debug!("proxied response cut off after idle_timeout");
                    Poll::Ready(Some(Err(axum::Error::new(Idle))))
                }
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Vec<ProxyConfig> {
        #[derive(Deserialize)]
        struct Doc {
            proxy: Vec<ProxyConfig>,
        }
        toml::from_str::<Doc>(text).unwrap().proxy
    }

    fn check(text: &str) -> Result<(), String> {
        validate(&parse(text), "/socket.io").map_err(|e| e.0)
    }

    #[test]
    fn defaults_apply() {
        let p = &parse("[[proxy]]\npath = \"/books\"\nupstream = \"http://127.0.0.1:4001\"\n")[0];
        assert_eq!(p.timeout, Duration::from_secs(30));
        assert_eq!(p.connect_timeout, Duration::from_secs(5));
        assert_eq!(p.idle_timeout, Duration::from_secs(60));
        assert_eq!(p.max_in_flight, 256);
        assert!(!p.trust_forwarded);
        assert!(
            check("[[proxy]]\npath = \"/books\"\nupstream = \"http://127.0.0.1:4001\"\n").is_ok()
        );
    }

    #[test]
    fn paths_may_not_shadow_herald_or_each_other() {
        let one = |path: &str| format!("[[proxy]]\npath = {path:?}\nupstream = \"http://h\"\n");
        for (path, why) in [
            ("/api", "collides with Herald's own route /api"),
            ("/socket.io", "collides with Herald's own route /socket.io"),
            ("/ws/x", "collides with Herald's own route /ws"),
            ("/", "must not end with '/'"),
            ("/books/", "must not end with '/'"),
            ("books", "must start with '/'"),
            ("/a/{b}", "may contain only"),
        ] {
            let e = check(&one(path)).unwrap_err();
            assert!(e.contains("field `path`") && e.contains(why), "{path}: {e}");
        }
        let e = check(&format!("{}{}", one("/books"), one("/books/covers"))).unwrap_err();
        assert!(e.contains("overlaps the proxy at \"/books\""), "{e}");
        assert!(check(&format!("{}{}", one("/books"), one("/bookshelf"))).is_ok());
    }

    #[test]
    fn upstreams_and_limits_are_checked() {
        let with = |extra: &str| check(&format!("[[proxy]]\npath = \"/b\"\n{extra}\n"));
        assert!(
            with("upstream = \"ftp://h\"")
                .unwrap_err()
                .contains("http://")
        );
        assert!(with("upstream = \"/relative\"").is_err());
        assert!(
            with("upstream = \"http://h/?q=1\"")
                .unwrap_err()
                .contains("query")
        );
        assert!(with("upstream = \"https://h/v1\"").is_ok());
        let e = with("upstream = \"http://h\"\ntimeout = \"0s\"").unwrap_err();
        assert!(e.contains("field `timeout`"), "{e}");
        let e = with("upstream = \"http://h\"\nmax_in_flight = 0").unwrap_err();
        assert!(e.contains("field `max_in_flight`"), "{e}");
    }
}
