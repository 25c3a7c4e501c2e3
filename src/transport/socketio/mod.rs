//! Socket.IO v5 server on top of [`engineio`](crate::transport::engineio): namespaces,
//! sockets, events, acks both ways, binary attachments and CONNECT/CONNECT_ERROR.
//!
//! Guarantees for [`NamespaceHandler`] implementations:
//! - packets of one connection are handled one at a time, in order: `on_connect` completes
//!   before any later packet of that connection is looked at, and `on_event` futures run
//!   sequentially (other connections proceed meanwhile);
//! - packets emitted on the socket during `on_connect` go out *before* the CONNECT reply;
//!   the socket is registered before the reply is queued, so no event is ever lost;
//! - `on_disconnect` is never called from inside a call into this module (it runs on the
//!   session's heartbeat task, the lane, or a spawned task), so handlers may take locks that
//!   their callers of `emit` hold.

mod client;
pub mod packet;
mod socket;

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use parking_lot::RwLock;
use serde_json::Value;

use crate::transport::engineio::{
    Admission, CloseReason, Directory, EngineHandler, EngineIo, EngineIoConfig, RequestInfo,
    Session, SessionHandler,
};
use client::Client;

pub use crate::transport::engineio::SendError;
pub use socket::{
    AckError, AckResponder, EncodedPacket, Handshake, Payload, Socket, encode_event,
    encode_event_raw,
};

/// A boxed, sendable future returned by [`NamespaceHandler`] methods.
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// Socket.IO server settings (the reference's option names in parentheses).
#[derive(Debug, Clone)]
pub struct SocketIoConfig {
    /// Path served (`path`), default `/socket.io`.
    pub path: String,
    /// `pingInterval`, default 25 s.
    pub ping_interval: Duration,
    /// `pingTimeout`, default 20 s.
    pub ping_timeout: Duration,
    /// `maxHttpBufferSize`, default 1e6 bytes.
    pub max_payload: usize,
    /// `connectTimeout`: close connections that join no namespace in time, default 45 s.
    pub connect_timeout: Duration,
    /// Outbound bytes queued per connection before it is closed as a slow consumer (4 MiB).
    pub max_queue_bytes: usize,
    /// Answer CORS with `Access-Control-Allow-Origin: *`.
    pub cors_any_origin: bool,
}

impl Default for SocketIoConfig {
    fn default() -> Self {
        SocketIoConfig {
            path: "/socket.io".into(),
            ping_interval: Duration::from_secs(25),
            ping_timeout: Duration::from_secs(20),
            max_payload: 1_000_000,
            connect_timeout: Duration::from_secs(45),
            max_queue_bytes: 4 << 20,
            cors_any_origin: false,
        }
    }
}

/// Result of a successful `on_connect`.
#[derive(Debug, Clone, Default)]
pub struct Accept {
    /// Reuse this socket id (a recovered session); `None` keeps the generated one.
    pub sid: Option<String>,
    /// Extra keys for the CONNECT reply, e.g. `{"pid": …}`.
    pub extra: serde_json::Map<String, Value>,
}

/// Refusal of a CONNECT, sent as `44{"message":…,"data":…}`.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct ConnectError {
    /// `err.message` on the client.
    pub message: String,
    /// `err.data` on the client (omitted when `None`).
    pub data: Option<Value>,
}

impl ConnectError {
    /// A refusal with a message and no data.
    pub fn new(message: impl Into<String>) -> ConnectError {
        ConnectError {
            message: message.into(),
            data: None,
        }
    }
}

/// Why a socket left its namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DisconnectReason {
    /// The client sent DISCONNECT (`41`).
    ClientNamespaceDisconnect,
    /// [`Socket::disconnect`] was called.
    ServerDisconnect,
    /// The connection closed (including a client close packet `1`).
    TransportClose,
    /// The transport failed or the client broke transport rules.
    TransportError,
    /// The client sent an undecodable packet.
    ParseError,
    /// No pong in time.
    PingTimeout,
    /// [`SocketIo::shutdown`].
    ServerShutdown,
    /// The outbound queue bound was exceeded.
    SlowConsumer,
    /// [`Socket::close_transport`].
    ForcedClose,
}

impl DisconnectReason {
    /// The reference's wording ("transport close", "ping timeout", …).
    pub fn as_str(self) -> &'static str {
        match self {
            DisconnectReason::ClientNamespaceDisconnect => "client namespace disconnect",
            DisconnectReason::ServerDisconnect => "server namespace disconnect",
            DisconnectReason::TransportClose => "transport close",
            DisconnectReason::TransportError => "transport error",
            DisconnectReason::ParseError => "parse error",
            DisconnectReason::PingTimeout => "ping timeout",
            DisconnectReason::ServerShutdown => "server shutting down",
            DisconnectReason::SlowConsumer => "slow consumer",
            DisconnectReason::ForcedClose => "forced close",
        }
    }

    /// Whether the reference would persist the session for connection state recovery.
    pub fn allows_recovery(self) -> bool {
        matches!(
            self,
            DisconnectReason::TransportClose
                | DisconnectReason::TransportError
                | DisconnectReason::PingTimeout
                | DisconnectReason::ServerShutdown
                | DisconnectReason::SlowConsumer
                | DisconnectReason::ForcedClose
        )
    }
}

impl From<CloseReason> for DisconnectReason {
    fn from(reason: CloseReason) -> Self {
        match reason {
            CloseReason::ClientClose
            | CloseReason::TransportClose
            | CloseReason::ConnectTimeout => DisconnectReason::TransportClose,
            CloseReason::TransportError => DisconnectReason::TransportError,
            CloseReason::ParseError => DisconnectReason::ParseError,
            CloseReason::PingTimeout => DisconnectReason::PingTimeout,
            CloseReason::ServerShutdown => DisconnectReason::ServerShutdown,
            CloseReason::SlowConsumer => DisconnectReason::SlowConsumer,
            CloseReason::Forced => DisconnectReason::ForcedClose,
        }
    }
}

/// Application logic of one namespace.
pub trait NamespaceHandler: Send + Sync + 'static {
    /// CONNECT received. Runs before the reply; packets emitted on `socket` meanwhile go out
    /// before it. `Ok` → `40{"sid":…, …extra}`, `Err` → `44{"message","data"}`.
    fn on_connect(
        &self,
        socket: Arc<Socket>,
        auth: Option<Value>,
    ) -> BoxFuture<Result<Accept, ConnectError>>;

    /// Called right after the CONNECT reply was queued (e.g. to greet the client).
    fn on_connected(&self, _socket: Arc<Socket>) {}

    /// An event; `ack` is set when the client asked for an acknowledgement.
    fn on_event(
        &self,
        socket: Arc<Socket>,
        event: String,
        payload: Payload,
        ack: Option<AckResponder>,
    ) -> BoxFuture<()>;

    /// The socket left the namespace (called once per accepted socket).
    fn on_disconnect(&self, socket: Arc<Socket>, reason: DisconnectReason);
}

/// A request filter like the reference's `allowRequest`: `Err(message)` → 403.
pub type AllowRequest = dyn Fn(&RequestInfo) -> Result<(), String> + Send + Sync;
/// Admission control of new Engine.IO sessions (see [`EngineHandler::admit`]).
pub type Admit =
    dyn Fn(&RequestInfo) -> Result<Option<Admission>, Box<axum::response::Response>> + Send + Sync;

/// Shared state referenced by every connection.
pub(crate) struct Inner {
    namespaces: HashMap<String, (Arc<str>, Arc<dyn NamespaceHandler>)>,
    sockets: RwLock<HashMap<Arc<str>, Arc<Socket>>>,
    allow_request: Option<Box<AllowRequest>>,
    admit: Option<Box<Admit>>,
}

impl Inner {
    fn namespace(&self, name: &str) -> Option<(Arc<str>, Arc<dyn NamespaceHandler>)> {
        self.namespaces.get(name).cloned()
    }

    fn register(&self, socket: &Arc<Socket>) {
        self.sockets.write().insert(socket.id(), socket.clone());
    }

    fn unregister(&self, socket: &Arc<Socket>) {
        let id = socket.id();
        let mut sockets = self.sockets.write();
        if sockets.get(&id).is_some_and(|s| Arc::ptr_eq(s, socket)) {
            sockets.remove(&id);
        }
    }
}

struct Bridge(Arc<Inner>);

impl EngineHandler for Bridge {
    fn allow_request(&self, request: &RequestInfo) -> Result<(), String> {
        self.0.allow_request.as_ref().map_or(Ok(()), |f| f(request))
    }

    fn admit(
        &self,
        request: &RequestInfo,
    ) -> Result<Option<Admission>, Box<axum::response::Response>> {
        self.0.admit.as_ref().map_or(Ok(None), |f| f(request))
    }

    fn on_open(&self, session: &Arc<Session>) -> Arc<dyn SessionHandler> {
        Arc::new(Client::new(self.0.clone(), session))
    }
}

/// Builds a [`SocketIo`].
pub struct SocketIoBuilder {
    config: SocketIoConfig,
    namespaces: HashMap<String, (Arc<str>, Arc<dyn NamespaceHandler>)>,
    allow_request: Option<Box<AllowRequest>>,
    admit: Option<Box<Admit>>,
    directory: Option<Arc<dyn Directory>>,
}

impl SocketIoBuilder {
    /// Finds the sessions of other servers (several servers without sticky sessions).
    pub fn directory(mut self, directory: Arc<dyn Directory>) -> Self {
        self.directory = Some(directory);
        self
    }

    /// Serves namespace `name` (e.g. `/`, `/custom`) with `handler`.
    pub fn namespace(mut self, name: &str, handler: Arc<dyn NamespaceHandler>) -> Self {
        self.namespaces
            .insert(name.to_owned(), (Arc::from(name), handler));
        self
    }

    /// Filters handshakes (e.g. on `Origin`); `Err(message)` answers 403 code 4.
    pub fn allow_request(
        mut self,
        filter: impl Fn(&RequestInfo) -> Result<(), String> + Send + Sync + 'static,
    ) -> Self {
        self.allow_request = Some(Box::new(filter));
        self
    }

    /// Admission control of new sessions: refuse with any response, or hold a guard for the session's life.
    pub fn admit(
        mut self,
        admit: impl Fn(&RequestInfo) -> Result<Option<Admission>, Box<axum::response::Response>>
        + Send
        + Sync
        + 'static,
    ) -> Self {
        self.admit = Some(Box::new(admit));
        self
    }

    /// Creates the server.
    pub fn build(self) -> Arc<SocketIo> {
        let inner = Arc::new(Inner {
            namespaces: self.namespaces,
            sockets: RwLock::new(HashMap::new()),
            allow_request: self.allow_request,
            admit: self.admit,
        });
        let config = &self.config;
        let engine_config = EngineIoConfig {
            path: format!("{}/", config.path.trim_end_matches('/')),
            ping_interval: config.ping_interval,
            ping_timeout: config.ping_timeout,
            max_payload: config.max_payload,
            max_queue_bytes: config.max_queue_bytes,
            connect_timeout: Some(config.connect_timeout),
            cors_any_origin: config.cors_any_origin,
            ..EngineIoConfig::default()
        };
        let engine = EngineIo::with_directory(
            engine_config,
            Arc::new(Bridge(inner.clone())),
            self.directory,
        );
        Arc::new(SocketIo { inner, engine })
    }
}

/// A Socket.IO server.
pub struct SocketIo {
    inner: Arc<Inner>,
    engine: Arc<EngineIo>,
}

impl std::fmt::Debug for SocketIo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SocketIo").finish_non_exhaustive()
    }
}

impl SocketIo {
    /// Starts building a server with `config`; add namespaces, then `build()`.
    pub fn builder(config: SocketIoConfig) -> SocketIoBuilder {
        SocketIoBuilder {
            config,
            namespaces: HashMap::new(),
            allow_request: None,
            admit: None,
            directory: None,
        }
    }

    /// An axum router serving the configured path.
    pub fn router(self: &Arc<Self>) -> Router {
        self.engine.router()
    }

    /// Sends close packet `1` to every connection and stops accepting new ones.
    pub fn shutdown(&self) {
        self.engine.shutdown();
    }

    /// Looks up a connected socket by its socket id.
    pub fn socket(&self, id: &str) -> Option<Arc<Socket>> {
        self.inner.sockets.read().get(id).cloned()
    }

    /// The underlying Engine.IO server.
    pub fn engine(&self) -> &Arc<EngineIo> {
        &self.engine
    }
}
