//! Forwarding to the user's HTTP backend: a client event mapped to `forward = "URL"`, and the connect and
//! disconnect hooks of `[forward]`. Herald POSTs `{event, args, identity, connection}` as JSON; the backend's
//! answer ([`answer`]) becomes the client's ack (or its refusal) and may ask Herald to publish, to subscribe or
//! unsubscribe the connection, or to disconnect it.
//!
//! Every forward is bounded: `[forward] timeout` for the whole call (retries included), `per_connection` and
//! `in_flight` forwards at once (`too_many_forwards` beyond), `max_answer_bytes` read. Retries happen only when
//! the TCP connection was refused — nothing was sent, so the backend cannot have acted twice. A backend that is
//! down, slow, answers 5xx or garbage is answered to that one client as `backend_unavailable`, `backend_timeout`
//! or `backend_error`; nothing waits on it but that client's forward.
//!
//! The HTTP client is `reqwest`, already in the build for the monitor's HTTP checks and JWKS: maintained,
//! pooled, with connect/timeout errors told apart (what the retry rule needs). Disconnects go through a durable
//! outbox ([`disconnects`]).

pub mod answer;
pub mod config;
pub mod disconnects;

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use serde_json::{Value, json};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

use super::refusal::Refusal;
use crate::auth::Identity;
use crate::core::Engine;
use crate::core::event::NewEvent;
use crate::core::stats::Origin;
pub use answer::Answer;
pub use config::ForwardConfig;

/// Distinct codes of backends' own refusals passed on to clients; later new ones become `backend_refused` (each
/// is kept for the process's life, so a backend cannot grow them without bound).
const MAX_BACKEND_CODES: usize = 64;

/// First pause before retrying a refused connection (doubled per attempt, within the timeout).
const RETRY_PAUSE: Duration = Duration::from_millis(50);

/// Codes of forward refusals.
pub mod code {
    /// Over `per_connection` or `in_flight`.
    pub const TOO_MANY: &str = "too_many_forwards";
    /// The backend cannot be reached (refused the connection, after the retries; or failed mid-request).
    pub const UNAVAILABLE: &str = "backend_unavailable";
    /// No full answer within `timeout`.
    pub const TIMEOUT: &str = "backend_timeout";
    /// The backend answered 5xx, or a body that is not an answer (or too large).
    pub const ERROR: &str = "backend_error";
    /// A backend's own code, once [`super::MAX_BACKEND_CODES`] distinct ones were passed on.
    pub const REFUSED: &str = "backend_refused";
}

/// Whether `code` says the forward failed on the backend's side or for lack of room (not the client's doing).
pub fn is_backend_failure(code: &str) -> bool {
    [
        code::TOO_MANY,
        code::UNAVAILABLE,
        code::TIMEOUT,
        code::ERROR,
    ]
    .contains(&code)
}

/// Forwards to backends, within the `[forward]` bounds.
pub struct Forwarder {
    config: ForwardConfig,
    client: reqwest::Client,
    engine: Arc<dyn Engine>,
    /// The server-wide in-flight bound.
    in_flight: Arc<Semaphore>,
    /// Largest event the backend may publish (`max_event_bytes`).
    max_event_bytes: usize,
    /// Backend codes passed on so far.
    codes: Mutex<HashSet<&'static str>>,
    /// For `/metrics`: forwards by outcome code (`ok` or a refusal code).
    counts: Mutex<BTreeMap<&'static str, u64>>,
    /// Woken when this node adds a disconnect notice (other nodes' are found by polling).
    pub(crate) outbox_added: Notify,
    /// Disconnect notices delivered, retried, and dropped (the outbox was full).
    pub(crate) outbox_counts: Mutex<(u64, u64, u64)>,
    /// Disconnect notices being stored now, and a wake-up when one is.
    pub(crate) storing: AtomicUsize,
    pub(crate) stored_one: Notify,
}

/// The forwards one connection has in flight, and who it is (what the backend is told as `connection`).
pub struct Slots {
    in_flight: Arc<AtomicUsize>,
    /// `{id, transport, address}`.
    pub connection: Value,
}

impl Slots {
    /// A new connection's slots; `connection` describes it to the backend.
    pub fn new(connection: Value) -> Self {
        Self {
            in_flight: Arc::new(AtomicUsize::new(0)),
            connection,
        }
    }
}

/// One forward's place in both bounds, given back when dropped.
pub struct Permit {
    _server: OwnedSemaphorePermit,
    conn: Arc<AtomicUsize>,
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.conn.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A refusal of a forward with one of [`code`]'s codes.
fn refusal(code: &'static str, message: String) -> Refusal {
    Refusal::Action { code, message }
}

/// What a connection is, for the backend: `{id, transport, address}`.
pub fn connection(id: &str, transport: &str, address: Option<std::net::SocketAddr>) -> Value {
    json!({"id": id, "transport": transport, "address": address.map(|a| a.ip().to_string())})
}

/// What the backend is told of an identity: `{user, roles, claims, anonymous}`.
pub fn identity(identity: &Identity) -> Value {
    json!({
        "user": identity.user,
        "roles": identity.roles,
        "claims": identity.claims,
        "anonymous": identity.anonymous,
    })
}

impl Forwarder {
    /// A forwarder within `config`, publishing on `engine` events of at most `max_event_bytes`.
    pub fn new(
        config: ForwardConfig,
        engine: Arc<dyn Engine>,
        max_event_bytes: usize,
    ) -> Result<Arc<Self>, String> {
        // The ring provider is passed explicitly, so nothing process-wide needs installing (as the monitor does).
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS setup: {e}"))?;
        let tls = {
            use rustls_platform_verifier::BuilderVerifierExt as _;
            tls.with_platform_verifier()
                .map_err(|e| format!("TLS setup: {e}"))?
                .with_no_client_auth()
        };
        let client = reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .redirect(reqwest::redirect::Policy::none())
            .pool_idle_timeout(Duration::from_secs(60))
            // The backend is the user's own: no environment proxy between Herald and it.
            .no_proxy()
            .user_agent(concat!("Herald/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("HTTP client setup: {}", error_chain(&e)))?;
        Ok(Arc::new(Self {
            in_flight: Arc::new(Semaphore::new(config.in_flight)),
            config,
            client,
            engine,
            max_event_bytes,
            codes: Mutex::new(HashSet::new()),
            counts: Mutex::new(BTreeMap::new()),
            outbox_added: Notify::new(),
            outbox_counts: Mutex::new((0, 0, 0)),
            storing: AtomicUsize::new(0),
            stored_one: Notify::new(),
        }))
    }

    /// The `[forward]` section in force.
    pub fn config(&self) -> &ForwardConfig {
        &self.config
    }

    /// Takes a place for one forward of the connection holding `slots`, or refuses with `too_many_forwards`.
    pub fn permit(&self, slots: &Slots) -> Result<Permit, Refusal> {
        let Ok(server) = self.in_flight.clone().try_acquire_owned() else {
            self.count(code::TOO_MANY);
            return Err(refusal(
                code::TOO_MANY,
                format!(
                    "the server has {} forwards in flight, the most allowed; retry shortly",
                    self.config.in_flight
                ),
            ));
        };
        let before = slots.in_flight.fetch_add(1, Ordering::AcqRel);
        let permit = Permit {
            _server: server,
            conn: slots.in_flight.clone(),
        };
        if before >= self.config.per_connection {
            drop(permit);
            self.count(code::TOO_MANY);
            return Err(refusal(
                code::TOO_MANY,
                format!(
                    "this connection has {} forwards in flight, the most allowed; wait for an answer",
                    self.config.per_connection
                ),
            ));
        }
        Ok(permit)
    }

    fn count(&self, code: &'static str) {
        *self.counts.lock().entry(code).or_default() += 1;
    }

    /// POSTs `body` to `url` and reads the answer, within the timeout; then publishes what the answer asks to. A
    /// refusal says which of [`code`]'s cases it was, or carries the backend's own code.
    pub async fn call(&self, url: &str, body: &Value) -> Result<Answer, Refusal> {
        let result = match tokio::time::timeout(self.config.timeout, self.exchange(url, body)).await
        {
            Ok(r) => r,
            Err(_) => Err(refusal(
                code::TIMEOUT,
                format!(
                    "the backend did not answer within {} ms",
                    self.config.timeout.as_millis()
                ),
            )),
        };
        let result = match result {
            Ok(answer) => self.publish(answer).await,
            Err(r) => Err(r),
        };
        match &result {
            Ok(_) => self.count("ok"),
            Err(r) => {
                tracing::debug!(url, code = r.code(), reason = %r, "forward refused");
                self.count(r.code());
            }
        }
        result
    }

    /// Sends (retrying refused connections) and reads the answer, unbounded in time: [`Forwarder::call`] bounds it.
    async fn exchange(&self, url: &str, body: &Value) -> Result<Answer, Refusal> {
        let mut pause = RETRY_PAUSE;
        let mut attempt = 0;
        let response = loop {
            let mut request = self.client.post(url).json(body);
            for (name, value) in &self.config.headers {
                request = request.header(name, value);
            }
            match request.send().await {
                Ok(r) => break r,
                // Refused before anything was sent: the backend did nothing, so trying again is safe.
                Err(e) if e.is_connect() && attempt < self.config.retries => {
                    attempt += 1;
                    tokio::time::sleep(pause).await;
                    pause *= 2;
                }
                Err(e) => {
                    return Err(refusal(
                        code::UNAVAILABLE,
                        format!("the backend cannot be reached: {}", error_chain(&e)),
                    ));
                }
            }
        };
        let status = response.status();
        let body = self.read(response).await?;
        if status.is_server_error() {
            return Err(refusal(
                code::ERROR,
                format!("the backend failed: HTTP {}", status.as_u16()),
            ));
        }
        let parsed = answer::parse(&body);
        match parsed {
            // A 4xx that names its error (Herald's own `{"error":{code,message}}` shape) is the backend's refusal.
            Ok(a) if status.is_success() || a.error.is_some() => self.refused(a),
            Ok(_) => Err(refusal(
                code::ERROR,
                format!(
                    "the backend answered HTTP {} without an error",
                    status.as_u16()
                ),
            )),
            Err(e) if status.is_success() => Err(refusal(
                code::ERROR,
                format!("the backend's answer is not usable: {e}"),
            )),
            Err(_) => Err(refusal(
                code::ERROR,
                format!("the backend answered HTTP {}", status.as_u16()),
            )),
        }
    }

    /// An answer carrying an error becomes that refusal (its code passed on, within [`MAX_BACKEND_CODES`]).
    fn refused(&self, mut a: Answer) -> Result<Answer, Refusal> {
        let Some((code, message)) = a.error.take() else {
            return Ok(a);
        };
        let code = {
            let mut codes = self.codes.lock();
            match codes.get(code.as_str()) {
                Some(c) => *c,
                None if codes.len() < MAX_BACKEND_CODES => {
                    // Bounded by MAX_BACKEND_CODES for the process's life.
                    let c: &'static str = Box::leak(code.into_boxed_str());
                    codes.insert(c);
                    c
                }
                None => code::REFUSED,
            }
        };
        Err(Refusal::Action { code, message })
    }

    /// Reads at most `max_answer_bytes` of the body.
    async fn read(&self, mut response: reqwest::Response) -> Result<Vec<u8>, Refusal> {
        let max = self.config.max_answer_bytes;
        let mut body = Vec::new();
        loop {
            match response.chunk().await {
                Ok(Some(chunk)) => {
                    if body.len() + chunk.len() > max {
                        return Err(refusal(
                            code::ERROR,
                            format!("the backend's answer is over {max} bytes"),
                        ));
                    }
                    body.extend_from_slice(&chunk);
                }
                Ok(None) => return Ok(body),
                Err(e) => {
                    return Err(refusal(
                        code::UNAVAILABLE,
                        format!("the backend's answer broke off: {}", error_chain(&e)),
                    ));
                }
            }
        }
    }

    /// Publishes the answer's events in one batch, as `POST /api/publish` does (durable, ordered, all or none).
    async fn publish(&self, mut answer: Answer) -> Result<Answer, Refusal> {
        if answer.publish.is_empty() {
            return Ok(answer);
        }
        let mut events = Vec::with_capacity(answer.publish.len());
        for p in answer.publish.drain(..) {
            if p.data.get().len() > self.max_event_bytes {
                return Err(refusal(
                    code::ERROR,
                    format!(
                        "the backend published {} bytes to {}; at most {} per event",
                        p.data.get().len(),
                        p.channel,
                        self.max_event_bytes
                    ),
                ));
            }
            events.push(NewEvent {
                channel: p.channel,
                name: p.event,
                data: p.data,
                id: p.id,
                state: None,
            });
        }
        self.engine.publish_from(Origin::Forward, events).await?;
        Ok(answer)
    }

    /// Asks the connect hook (if configured) about a new connection: the channels it adds, or its refusal.
    pub async fn connect(
        &self,
        who: &Identity,
        connection: &Value,
    ) -> Result<Vec<crate::core::channel::ChannelName>, Refusal> {
        let Some(url) = &self.config.connect else {
            return Ok(Vec::new());
        };
        let slots = Slots::new(Value::Null);
        let _permit = self.permit(&slots)?;
        let body = json!({"event": "connect", "args": [], "identity": identity(who), "connection": connection});
        let answer = self.call(url, &body).await?;
        Ok(answer.subscribe)
    }

    /// Appends the Prometheus counters: forwards by outcome, and the disconnect outbox.
    pub fn metrics(&self, out: &mut String) {
        use std::fmt::Write as _;
        let counts = self.counts.lock().clone();
        let (delivered, retried, dropped) = *self.outbox_counts.lock();
        let _ = write!(
            out,
            "# HELP herald_forwards_total Forwards to the backend (client events and the connect hook), by outcome.\n\
             # TYPE herald_forwards_total counter\n"
        );
        for (code, n) in counts {
            let _ = writeln!(out, "herald_forwards_total{{outcome=\"{code}\"}} {n}");
        }
        let _ = write!(
            out,
            "# HELP herald_forward_disconnects_total Disconnect notices from the outbox: delivered, delivery attempts that failed, dropped (outbox full).\n\
             # TYPE herald_forward_disconnects_total counter\n\
             herald_forward_disconnects_total{{result=\"delivered\"}} {delivered}\n\
             herald_forward_disconnects_total{{result=\"failed_attempt\"}} {retried}\n\
             herald_forward_disconnects_total{{result=\"dropped\"}} {dropped}\n"
        );
    }
}

/// An error with its causes, for messages (reqwest's own message alone says only "error sending request").
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::engine::{EngineKind, EngineOptions};

    async fn forwarder(config: ForwardConfig) -> Arc<Forwarder> {
        let engine = crate::core::engine::open(EngineOptions {
            kind: EngineKind::Memory,
            retention: Default::default(),
            session_ttl: Duration::from_secs(60),
        })
        .await
        .unwrap();
        Forwarder::new(config, engine, 1024).unwrap()
    }

    #[tokio::test]
    async fn limits_per_connection_and_per_server() {
        let f = forwarder(ForwardConfig {
            per_connection: 2,
            in_flight: 3,
            ..Default::default()
        })
        .await;
        let (a, b) = (Slots::new(Value::Null), Slots::new(Value::Null));
        let a1 = f.permit(&a).unwrap();
        let _a2 = f.permit(&a).unwrap();
        let e = f.permit(&a).err().unwrap();
        assert_eq!(e.code(), code::TOO_MANY);
        assert!(e.to_string().contains("this connection"), "{e}");
        let _b1 = f.permit(&b).unwrap();
        let e = f.permit(&b).err().unwrap();
        assert!(e.to_string().contains("the server"), "{e}");
        drop(a1);
        // Both bounds are given back.
        let _b2 = f.permit(&b).unwrap();
        assert_eq!(a.in_flight.load(Ordering::Acquire), 1);
    }

    #[tokio::test]
    async fn a_closed_port_is_unavailable_after_the_retries_and_a_silent_one_times_out() {
        let f = forwarder(ForwardConfig {
            timeout: Duration::from_millis(300),
            ..Default::default()
        })
        .await;
        // A port nobody listens on: bound, then closed.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let e = f
            .call(&format!("http://127.0.0.1:{port}/x"), &json!({}))
            .await
            .unwrap_err();
        assert_eq!(e.code(), code::UNAVAILABLE, "{e}");
        // Accepts and never answers.
        let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = silent.local_addr().unwrap();
        let started = std::time::Instant::now();
        let e = f
            .call(&format!("http://{addr}/x"), &json!({}))
            .await
            .unwrap_err();
        assert_eq!(e.code(), code::TIMEOUT, "{e}");
        assert!(started.elapsed() < Duration::from_secs(2));
        drop(silent);
    }

    #[tokio::test]
    async fn backend_codes_are_bounded() {
        let f = forwarder(ForwardConfig::default()).await;
        let answer = |code: String| Answer {
            error: Some((code, "no".into())),
            ..Default::default()
        };
        for i in 0..MAX_BACKEND_CODES {
            let e = f.refused(answer(format!("c{i}"))).unwrap_err();
            assert_eq!(e.code(), format!("c{i}"));
        }
        let e = f.refused(answer("c0".into())).unwrap_err();
        assert_eq!(e.code(), "c0", "a known code stays");
        let e = f.refused(answer("new_one".into())).unwrap_err();
        assert_eq!(e.code(), code::REFUSED);
    }
}
