//! A JWKS fetched from a URL: cached, refreshed in the background and when stale, and fetched again (rate-limited)
//! when a token names a `kid` the cache does not know.
//!
//! The HTTP client is hyper's with rustls on an explicit `ring` provider (platform certificate verifier), so nothing
//! process-wide is installed and the crate's `reqwest` keeps its TLS-free feature set (enabling reqwest's
//! `rustls-no-provider` would make every `reqwest::Client::new()` elsewhere panic without an installed provider).

use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use parking_lot::RwLock;

use super::keys::{MAX_JWKS_BYTES, VerifyKey, parse_jwks};

/// How long one fetch may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

/// The HTTP(S) client shared by all JWKS URLs of one authenticator.
pub(crate) type HttpClient = Client<HttpsConnector<HttpConnector>, Empty<Bytes>>;

/// Builds the client: HTTPS via rustls (`ring`, platform verifier) or plain HTTP, HTTP/1.1.
pub(crate) fn http_client() -> Result<HttpClient, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_provider_and_platform_verifier(provider)
        .map_err(|e| e.to_string())?
        .https_or_http()
        .enable_http1()
        .build();
    Ok(Client::builder(TokioExecutor::new()).build(connector))
}

/// One JWKS URL and its cached keys.
pub(crate) struct RemoteJwks {
    url: http::Uri,
    refresh: Duration,
    cooldown: Duration,
    client: HttpClient,
    state: RwLock<State>,
    /// Single flight: one fetch at a time per URL.
    fetching: tokio::sync::Mutex<()>,
}

#[derive(Default)]
struct State {
    keys: Arc<Vec<VerifyKey>>,
    /// Last successful fetch.
    fetched_at: Option<Instant>,
    /// Last attempt, successful or not.
    attempted_at: Option<Instant>,
    /// Bumped by every attempt, so waiters can tell a fetch happened while they queued.
    generation: u64,
}

impl RemoteJwks {
    pub(crate) fn new(
        url: http::Uri,
        refresh: Duration,
        cooldown: Duration,
        client: HttpClient,
    ) -> Self {
        Self {
            url,
            refresh,
            cooldown,
            client,
            state: RwLock::new(State::default()),
            fetching: tokio::sync::Mutex::new(()),
        }
    }

    /// The cached keys.
    pub(crate) fn keys(&self) -> Arc<Vec<VerifyKey>> {
        self.state.read().keys.clone()
    }

    /// Whether any fetch has succeeded.
    pub(crate) fn loaded(&self) -> bool {
        self.state.read().fetched_at.is_some()
    }

    /// Fetches if nothing is cached or the cache is older than `refresh`. Failed attempts are retried no sooner
    /// than `refetch_cooldown` (or at once on the very first load), and stale keys stay in use meanwhile.
    pub(crate) async fn ensure_fresh(&self) {
        if !self.stale() {
            return;
        }
        let _guard = self.fetching.lock().await;
        if self.stale() {
            self.fetch().await;
        }
    }

    fn stale(&self) -> bool {
        let s = self.state.read();
        let now = Instant::now();
        let due = s
            .fetched_at
            .is_none_or(|t| now.duration_since(t) >= self.refresh);
        let retry_ok = s.attempted_at.is_none_or(|t| {
            s.fetched_at.is_some_and(|f| f >= t) || now.duration_since(t) >= self.cooldown
        });
        due && retry_ok
    }

    /// A token named a `kid` the cache lacks: fetch again unless the last attempt was within `refetch_cooldown`.
    /// Returns whether the keys may have changed since `seen` (the generation the caller looked at).
    pub(crate) async fn refetch_unknown_kid(&self, seen: u64) -> bool {
        let _guard = self.fetching.lock().await;
        let (generation, recent) = {
            let s = self.state.read();
            let recent = s.attempted_at.is_some_and(|t| t.elapsed() < self.cooldown);
            (s.generation, recent)
        };
        if generation != seen {
            return true;
        }
        if recent {
            return false;
        }
        self.fetch().await;
        true
    }

    /// The current generation.
    pub(crate) fn generation(&self) -> u64 {
        self.state.read().generation
    }

    /// Fetches now (the caller holds `fetching`); on failure the old keys stay.
    async fn fetch(&self) {
        let result = self.download().await;
        let mut s = self.state.write();
        s.attempted_at = Some(Instant::now());
        s.generation += 1;
        match result {
            Ok(keys) => {
                s.keys = Arc::new(keys);
                s.fetched_at = s.attempted_at;
            }
            Err(e) => tracing::warn!(url = %self.url, error = %e, "JWKS fetch failed"),
        }
    }

    async fn download(&self) -> Result<Vec<VerifyKey>, String> {
        let fetch = async {
            let response = self
                .client
                .get(self.url.clone())
                .await
                .map_err(|e| e.to_string())?;
            if !response.status().is_success() {
                return Err(format!("HTTP {}", response.status()));
            }
            Limited::new(response.into_body(), MAX_JWKS_BYTES)
                .collect()
                .await
                .map(|body| body.to_bytes())
                .map_err(|e| format!("reading the body: {e}"))
        };
        let body = tokio::time::timeout(FETCH_TIMEOUT, fetch)
            .await
            .map_err(|_| format!("no answer within {FETCH_TIMEOUT:?}"))??;
        // Symmetric keys never come from a URL: a published secret is no secret.
        parse_jwks(&body, false)
    }

    /// Refreshes every `refresh` in the background while the source is alive (needs a tokio runtime).
    pub(crate) fn spawn_refresher(this: &Arc<Self>) {
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let weak: Weak<Self> = Arc::downgrade(this);
        let period = this.refresh;
        handle.spawn(async move {
            loop {
                match weak.upgrade() {
                    Some(source) => source.ensure_fresh().await,
                    None => return,
                }
                tokio::time::sleep(period).await;
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// TLS smoke test against a public HTTPS server (not a JWKS: the parse error proves the handshake worked).
    #[tokio::test]
    #[ignore = "needs internet"]
    async fn https_handshake() {
        let url: http::Uri = "https://index.crates.io/config.json".parse().unwrap();
        let source = RemoteJwks::new(
            url,
            Duration::from_secs(60),
            Duration::ZERO,
            http_client().unwrap(),
        );
        let e = source.download().await.unwrap_err();
        assert!(e.contains("no \"keys\" array"), "{e}");
    }
}
