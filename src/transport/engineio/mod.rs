//! Engine.IO v4 server: handshake and request verification, session registry, and the
//! axum router serving one path over HTTP long-polling and WebSocket.
//!
//! Outbound data is queued per session as [`Frame`]s. Text frames hold the *complete*
//! Engine.IO packet (type character included, e.g. `4hello`) as a refcounted
//! [`Utf8Bytes`](axum::extract::ws::Utf8Bytes): WebSocket sends it as the frame payload with no
//! copy, long-polling concatenates it into the response body. So a packet encoded once can
//! be queued on many sessions at the cost of a refcount increment each.

mod packet;
mod polling;
mod session;
mod timers;
mod websocket;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, Query, Request};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use base64::Engine as _;
use futures_util::future::BoxFuture;
use parking_lot::RwLock;

pub use packet::{
    DecodeError, Frame, Message, Packet, decode_payload, decode_text, encode_payload, message_frame,
};
pub use session::{
    CloseReason, ON_STAMPED_WRITE, SendError, Session, TransportKind, WRITTEN_BYTES, Work,
};

/// Engine.IO server settings.
#[derive(Debug, Clone)]
pub struct EngineIoConfig {
    /// The path served, e.g. `/engine.io/` (with or without the trailing slash).
    pub path: String,
    /// Time between a pong (or the open) and the next ping.
    pub ping_interval: Duration,
    /// Time allowed for the pong.
    pub ping_timeout: Duration,
    /// Largest accepted POST body / WebSocket message, advertised as `maxPayload`.
    pub max_payload: usize,
    /// Outbound bytes a session may have queued before it is closed as a slow consumer.
    pub max_queue_bytes: usize,
    /// Time allowed between the WebSocket upgrade request and the `5` packet.
    pub upgrade_timeout: Duration,
    /// Sessions not marked ready ([`Session::mark_ready`]) within this time are closed.
    pub connect_timeout: Option<Duration>,
    /// Answer CORS with `Access-Control-Allow-Origin: *` (only browsers on other origins need it).
    pub cors_any_origin: bool,
}

impl Default for EngineIoConfig {
    fn default() -> Self {
        EngineIoConfig {
            path: "/engine.io/".into(),
            ping_interval: Duration::from_millis(25_000),
            ping_timeout: Duration::from_millis(20_000),
            max_payload: 1_000_000,
            max_queue_bytes: 4 << 20,
            upgrade_timeout: Duration::from_secs(10),
            connect_timeout: None,
            cors_any_origin: false,
        }
    }
}

/// What the server knows of the HTTP request that opened a session.
///
/// `allow_request`/`admit` see every header of the handshake. The session then keeps a compact owned copy
/// ([`RequestInfo::for_session`]): only the headers in [`SESSION_HEADERS`] and the application's query
/// parameters. Keeping the request's own `HeaderMap` would pin hyper's whole read buffer (its header values
/// are slices of it) for the session's lifetime: about 8 KiB of resident memory per idle connection.
#[derive(Debug, Clone)]
pub struct RequestInfo {
    /// Query parameters in order (after the handshake, without Engine.IO's own `EIO`, `transport`, `sid`,
    /// `t` and `b64`).
    pub query: Vec<(String, String)>,
    /// Request headers (after the handshake, only [`SESSION_HEADERS`]).
    pub headers: HeaderMap,
    /// Peer address, if the server was started with `into_make_service_with_connect_info`.
    pub remote_addr: Option<SocketAddr>,
}

/// The request headers a session keeps after its handshake: those that authentication and applications read
/// later (at a Socket.IO CONNECT).
pub const SESSION_HEADERS: [header::HeaderName; 5] = [
    header::AUTHORIZATION,
    header::COOKIE,
    header::ORIGIN,
    header::USER_AGENT,
    header::HeaderName::from_static("x-forwarded-for"),
];

/// Query parameters of the Engine.IO protocol itself, not kept for the session.
const ENGINE_PARAMS: [&str; 5] = ["EIO", "transport", "sid", "t", "b64"];

impl RequestInfo {
    /// The first query parameter named `key`.
    pub fn query_param(&self, key: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// The compact copy a session keeps: [`SESSION_HEADERS`] with their values copied (so nothing points into
    /// the connection's read buffer) and the query without Engine.IO's own parameters.
    pub fn for_session(&self) -> RequestInfo {
        let mut headers = HeaderMap::new();
        for name in &SESSION_HEADERS {
            for value in self.headers.get_all(name) {
                // `from_bytes` copies; the source value is a slice of hyper's read buffer.
                if let Ok(mut owned) = HeaderValue::from_bytes(value.as_bytes()) {
                    owned.set_sensitive(value.is_sensitive());
                    headers.append(name.clone(), owned);
                }
            }
        }
        let mut query: Vec<(String, String)> = self
            .query
            .iter()
            .filter(|(k, _)| !ENGINE_PARAMS.contains(&k.as_str()))
            .cloned()
            .collect();
        query.shrink_to_fit();
        RequestInfo {
            query,
            headers,
            remote_addr: self.remote_addr,
        }
    }
}

/// Something a session holds until it closes, such as a connection slot.
pub type Admission = Box<dyn std::any::Any + Send + Sync>;

/// The application side of an Engine.IO server.
pub trait EngineHandler: Send + Sync + 'static {
    /// Like the reference's `allowRequest`: `Err(message)` refuses a handshake with 403 code 4.
    fn allow_request(&self, _request: &RequestInfo) -> Result<(), String> {
        Ok(())
    }
    /// Admission control after `allow_request`: `Err(response)` is answered as is (e.g. 429); `Ok(Some(guard))`
    /// is held by the session until it closes (e.g. a per-address connection slot).
    fn admit(&self, _request: &RequestInfo) -> Result<Option<Admission>, Box<Response>> {
        Ok(None)
    }
    /// A session opened; returns the handler for its messages.
    fn on_open(&self, session: &Arc<Session>) -> Arc<dyn SessionHandler>;
}

/// Per-session receiver of messages and of the close.
pub trait SessionHandler: Send + Sync + 'static {
    /// Called by the transport reader in arrival order. Synchronous work (decoding) happens
    /// here; returned work runs after all earlier work of this session has finished.
    fn on_message(self: Arc<Self>, message: Message) -> Option<Work>;
    /// The session closed (called once, from the engine's timer task).
    fn on_close(&self, reason: CloseReason);
}

/// Where the sessions of other servers are found, when several servers share clients without sticky sessions.
///
/// The server tells it of each session it opens and closes; a request naming a sid this server does not hold is
/// handed to [`Directory::forward`] (a WebSocket upgrade is not: it gets the usual "Session ID unknown", and the
/// client keeps polling).
pub trait Directory: Send + Sync + 'static {
    /// A session opened here; its handshake is answered once this resolves (so the next request finds it).
    fn opened(&self, sid: &Arc<str>) -> BoxFuture<'static, ()>;
    /// A session opened here closed.
    fn closed(&self, sid: &str);
    /// A request for `sid`, not held here: `Some(response)` when another server answered it, `None` when no
    /// server holds it.
    fn forward(&self, sid: &str, req: Request) -> BoxFuture<'static, Option<Response>>;
}

/// Engine.IO error codes (`engine.io/lib/server.ts` `Server.errors`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// 0: transport missing or unknown.
    #[error("Transport unknown")]
    UnknownTransport,
    /// 1: sid not found.
    #[error("Session ID unknown")]
    UnknownSid,
    /// 2: handshake with a method other than GET.
    #[error("Bad handshake method")]
    BadHandshakeMethod,
    /// 3: transport mismatch and other bad requests.
    #[error("Bad request")]
    BadRequest,
    /// 4: refused by `allow_request`.
    #[error("Forbidden")]
    Forbidden,
    /// 5: `EIO` missing or not 4.
    #[error("Unsupported protocol version")]
    UnsupportedProtocolVersion,
}

impl RequestError {
    fn code(self) -> u8 {
        match self {
            RequestError::UnknownTransport => 0,
            RequestError::UnknownSid => 1,
            RequestError::BadHandshakeMethod => 2,
            RequestError::BadRequest => 3,
            RequestError::Forbidden => 4,
            RequestError::UnsupportedProtocolVersion => 5,
        }
    }

    fn status(self) -> StatusCode {
        match self {
            RequestError::Forbidden => StatusCode::FORBIDDEN,
            _ => StatusCode::BAD_REQUEST,
        }
    }

    /// The JSON error response for plain HTTP requests.
    fn json_response(self, message: Option<&str>) -> Response {
        let message = message.map_or_else(|| self.to_string(), str::to_owned);
        let body = serde_json::json!({ "code": self.code(), "message": message }).to_string();
        (
            self.status(),
            [(header::CONTENT_TYPE, "application/json")],
            body,
        )
            .into_response()
    }

    /// Failed WebSocket upgrade requests get a bare 400 with the message as HTML.
    fn upgrade_response(self) -> Response {
        (
            StatusCode::BAD_REQUEST,
            [(header::CONTENT_TYPE, "text/html")],
            self.to_string(),
        )
            .into_response()
    }
}

/// An Engine.IO server: the session registry plus configuration and the handler.
pub struct EngineIo {
    pub(crate) config: EngineIoConfig,
    handler: Arc<dyn EngineHandler>,
    directory: Option<Arc<dyn Directory>>,
    sessions: RwLock<HashMap<Arc<str>, Arc<Session>>>,
    accepting: AtomicBool,
    timers: timers::Timers,
}

impl std::fmt::Debug for EngineIo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EngineIo")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl EngineIo {
    /// Creates a server; serve it with [`EngineIo::router`].
    pub fn new(config: EngineIoConfig, handler: Arc<dyn EngineHandler>) -> Arc<EngineIo> {
        Self::with_directory(config, handler, None)
    }

    /// Creates a server that finds the sessions of other servers in `directory`.
    pub fn with_directory(
        config: EngineIoConfig,
        handler: Arc<dyn EngineHandler>,
        directory: Option<Arc<dyn Directory>>,
    ) -> Arc<EngineIo> {
        Arc::new(EngineIo {
            config,
            handler,
            directory,
            sessions: RwLock::new(HashMap::new()),
            accepting: AtomicBool::new(true),
            timers: timers::Timers::new(),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &EngineIoConfig {
        &self.config
    }

    /// An axum router serving the configured path (with and without trailing slash).
    pub fn router(self: &Arc<Self>) -> Router {
        let trimmed = self.config.path.trim_end_matches('/');
        let engine = self.clone();
        let service = any(move |req: Request| {
            let engine = engine.clone();
            async move { engine.handle(req).await }
        });
        let with_slash = format!("{trimmed}/");
        let mut router = Router::new().route(&with_slash, service.clone());
        if !trimmed.is_empty() {
            router = router.route(trimmed, service);
        }
        router
    }

    /// Looks up an open session.
    pub fn session(&self, sid: &str) -> Option<Arc<Session>> {
        self.sessions.read().get(sid).cloned()
    }

    /// Stops accepting handshakes and closes every session with close packet `1`.
    pub fn shutdown(&self) {
        self.accepting.store(false, Ordering::SeqCst);
        let sessions: Vec<_> = self.sessions.read().values().cloned().collect();
        for session in sessions {
            session.close(CloseReason::ServerShutdown);
        }
    }

    pub(crate) fn remove(&self, sid: &str) {
        let removed = self.sessions.write().remove(sid).is_some();
        if let (true, Some(directory)) = (removed, &self.directory) {
            directory.closed(sid);
        }
    }

    fn open_packet(&self, sid: &str, upgrades: bool) -> String {
        let upgrades: &[&str] = if upgrades { &["websocket"] } else { &[] };
        let json = serde_json::json!({
            "sid": sid,
            "upgrades": upgrades,
            "pingInterval": self.config.ping_interval.as_millis() as u64,
            "pingTimeout": self.config.ping_timeout.as_millis() as u64,
            "maxPayload": self.config.max_payload,
        });
        format!("0{json}")
    }

    /// Registers a new session (here and in the directory) and schedules its heartbeat.
    async fn open_session(
        self: &Arc<Self>,
        request: Arc<RequestInfo>,
        transport: TransportKind,
    ) -> Arc<Session> {
        let sid: Arc<str> = generate_id().into();
        let session = Session::new(sid.clone(), request, self.clone(), transport);
        self.sessions.write().insert(sid.clone(), session.clone());
        if let Some(directory) = &self.directory {
            directory.opened(&sid).await;
        }
        session.set_handler(self.handler.on_open(&session));
        session.start_heartbeat();
        session
    }

    async fn handle(self: Arc<Self>, req: Request) -> Response {
        let cors = self.config.cors_any_origin;
        let mut response = self.route(req).await;
        if cors {
            response.headers_mut().insert(
                header::ACCESS_CONTROL_ALLOW_ORIGIN,
                HeaderValue::from_static("*"),
            );
        }
        response
    }

    async fn route(self: Arc<Self>, req: Request) -> Response {
        if self.config.cors_any_origin && req.method() == Method::OPTIONS {
            return (
                StatusCode::NO_CONTENT,
                [
                    (
                        header::ACCESS_CONTROL_ALLOW_METHODS,
                        "GET,HEAD,PUT,PATCH,POST,DELETE",
                    ),
                    (header::ACCESS_CONTROL_ALLOW_HEADERS, "content-type"),
                ],
            )
                .into_response();
        }
        let is_upgrade = req
            .headers()
            .get(header::UPGRADE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
        let query: Vec<(String, String)> = Query::try_from_uri(req.uri())
            .map(|Query(q)| q)
            .unwrap_or_default();
        let request = |req: &Request| RequestInfo {
            query: query.clone(),
            headers: req.headers().clone(),
            remote_addr: req
                .extensions()
                .get::<ConnectInfo<SocketAddr>>()
                .map(|c| c.0),
        };
        let param = |k: &str| query.iter().find(|(q, _)| q == k).map(|(_, v)| v.as_str());
        let reject = |e: RequestError, msg: Option<&str>| {
            if is_upgrade {
                e.upgrade_response()
            } else {
                e.json_response(msg)
            }
        };

        // Order of checks as in the reference `Server.verify` then `handshake`.
        let transport = param("transport");
        if !matches!(transport, Some("polling" | "websocket")) {
            return reject(RequestError::UnknownTransport, None);
        }
        let websocket = transport == Some("websocket");
        if let Some(sid) = param("sid") {
            let Some(session) = self.session(sid).filter(|s| !s.check_expired()) else {
                // Another server may hold it; an upgrade is not forwarded (the client keeps polling).
                if let (Some(directory), false) = (&self.directory, is_upgrade) {
                    let sid = sid.to_owned();
                    if let Some(response) = directory.forward(&sid, req).await {
                        return response;
                    }
                }
                return reject(RequestError::UnknownSid, None);
            };
            // Only a GET may still see a (lingering) closed session: it gets its noop.
            let polling_get = !is_upgrade && !websocket && req.method() == Method::GET;
            if session.is_closed() && !polling_get {
                return reject(RequestError::UnknownSid, None);
            }
            if is_upgrade && websocket {
                return websocket::upgrade(session, req).await;
            }
            let current = session.transport();
            if websocket || current == TransportKind::WebSocket {
                return reject(RequestError::BadRequest, None);
            }
            return match *req.method() {
                Method::GET => polling::get(session).await,
                Method::POST => polling::post(session, req).await,
                _ => reject(RequestError::BadRequest, None),
            };
        }
        if req.method() != Method::GET {
            return reject(RequestError::BadHandshakeMethod, None);
        }
        if websocket && !is_upgrade {
            return reject(RequestError::BadRequest, None);
        }
        if param("EIO") != Some("4") {
            return reject(RequestError::UnsupportedProtocolVersion, None);
        }
        if !self.accepting.load(Ordering::SeqCst) {
            return reject(RequestError::BadRequest, Some("Server shutting down"));
        }
        let info = request(&req);
        if let Err(message) = self.handler.allow_request(&info) {
            return reject(RequestError::Forbidden, Some(&message));
        }
        let admission = match self.handler.admit(&info) {
            Ok(admission) => admission,
            Err(response) => return *response,
        };
        if websocket {
            let mut req = req;
            let (response, upgrade) = match websocket::handshake(&mut req) {
                Ok(accepted) => accepted,
                Err(e) => return e.upgrade_response(),
            };
            let session = self
                .open_session(Arc::new(info.for_session()), TransportKind::WebSocket)
                .await;
            session.hold(admission);
            let open = self.open_packet(session.sid(), false);
            // The open packet is the first frame; nothing can be queued before it.
            let _ = session.send(Frame::Text(open.into()));
            return websocket::accept(session, upgrade, response);
        }
        let session = self
            .open_session(Arc::new(info.for_session()), TransportKind::Polling)
            .await;
        session.hold(admission);
        let open = self.open_packet(session.sid(), true);
        polling::text_response(Body::from(open))
    }
}

/// A random 20-character URL-safe id (15 random bytes), like the reference's `base64id`.
pub(crate) fn generate_id() -> String {
    let bytes: [u8; 15] = rand::random();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}
