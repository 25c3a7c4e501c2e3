//! Echo server for the official Engine.IO and Socket.IO protocol test suites: `/engine.io/`
//! echoes every message, `/socket.io/` implements the suites' reference behaviour
//! (`auth` on connect, `message` → `message-back`, `message-with-ack` acked, `/custom`).
//! Listens on 127.0.0.1:3000 unless `PORT` is set.

use std::net::SocketAddr;
use std::sync::{Arc, Weak};
use std::time::Duration;

use axum::Router;
use herald::transport::engineio::{
    CloseReason, EngineHandler, EngineIo, EngineIoConfig, Frame, Message, Session, SessionHandler,
    Work, message_frame,
};
use herald::transport::socketio::{
    Accept, AckResponder, BoxFuture, ConnectError, DisconnectReason, NamespaceHandler, Payload,
    Socket, SocketIo, SocketIoConfig,
};
use serde_json::Value;

/// Delay of the suites' `auth` event after the CONNECT reply (see `on_connected`).
const AUTH_DELAY: Duration = Duration::from_millis(20);

/// Raw Engine.IO echo: every text or binary message is sent back.
struct EngineEcho;

struct EchoSession(Weak<Session>);

impl EngineHandler for EngineEcho {
    fn on_open(&self, session: &Arc<Session>) -> Arc<dyn SessionHandler> {
        Arc::new(EchoSession(Arc::downgrade(session)))
    }
}

impl SessionHandler for EchoSession {
    fn on_message(self: Arc<Self>, message: Message) -> Option<Work> {
        let session = self.0.upgrade()?;
        let frame = match message {
            Message::Text(text) => message_frame(&text),
            Message::Binary(data) => Frame::Binary(data),
        };
        let _ = session.send(frame);
        None
    }

    fn on_close(&self, _reason: CloseReason) {}
}

/// The suites' Socket.IO namespace behaviour (used for `/` and `/custom`).
struct SuiteNamespace;

impl NamespaceHandler for SuiteNamespace {
    fn on_connect(
        &self,
        _socket: Arc<Socket>,
        _auth: Option<Value>,
    ) -> BoxFuture<Result<Accept, ConnectError>> {
        Box::pin(async { Ok(Accept::default()) })
    }

    fn on_connected(&self, socket: Arc<Socket>) {
        let auth = socket
            .handshake()
            .auth
            .clone()
            .unwrap_or_else(|| Value::Object(Default::default()));
        // The suite's `waitFor` adds a one-shot listener per frame and `ws` emits every frame
        // of one TCP read synchronously, so a second frame in the same read is lost. Our
        // writer coalesces the CONNECT reply and this event into one write (real clients
        // handle that); send `auth` a moment later so it arrives in its own read.
        tokio::spawn(async move {
            tokio::time::sleep(AUTH_DELAY).await;
            let _ = socket.emit("auth", Payload::new(vec![auth]));
        });
    }

    fn on_event(
        &self,
        socket: Arc<Socket>,
        event: String,
        payload: Payload,
        ack: Option<AckResponder>,
    ) -> BoxFuture<()> {
        match (event.as_str(), ack) {
            ("message", _) => {
                let _ = socket.emit("message-back", payload);
            }
            ("message-with-ack", Some(ack)) => {
                let _ = ack.send(payload);
            }
            _ => {}
        }
        Box::pin(async {})
    }

    fn on_disconnect(&self, _socket: Arc<Socket>, _reason: DisconnectReason) {}
}

/// Both servers on one router; `max_queue_bytes` applies to both.
pub fn app(max_queue_bytes: usize) -> (Router, Arc<EngineIo>, Arc<SocketIo>) {
    let engine = EngineIo::new(
        EngineIoConfig {
            path: "/engine.io/".into(),
            ping_interval: Duration::from_millis(300),
            ping_timeout: Duration::from_millis(200),
            max_payload: 1_000_000,
            max_queue_bytes,
            cors_any_origin: true,
            ..EngineIoConfig::default()
        },
        Arc::new(EngineEcho),
    );
    let namespace: Arc<dyn NamespaceHandler> = Arc::new(SuiteNamespace);
    let io = SocketIo::builder(SocketIoConfig {
        path: "/socket.io".into(),
        ping_interval: Duration::from_millis(300),
        ping_timeout: Duration::from_millis(200),
        max_payload: 1_000_000,
        connect_timeout: Duration::from_millis(1000),
        max_queue_bytes,
        cors_any_origin: true,
    })
    .namespace("/", namespace.clone())
    .namespace("/custom", namespace)
    .build();
    let router = engine.router().merge(io.router());
    (router, engine, io)
}

#[allow(dead_code)] // unused when the integration tests include this file
#[tokio::main]
async fn main() -> std::io::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let port: u16 = std::env::var("PORT")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(3000);
    let (router, _engine, _io) = app(4 << 20);
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    tracing::info!(port, "protocol echo server listening");
    axum::serve(
        listener,
        router.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .await
}
