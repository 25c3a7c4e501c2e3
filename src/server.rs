//! The server: wires config, core, HTTP API and transports into one router, and shuts them down in order.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use tokio::net::TcpListener;

use crate::api::{self, ApiState, Connections};
use crate::binding::access::Access;
use crate::binding::socketio::ChannelsNamespace;
use crate::binding::sse::SseBinding;
use crate::binding::websocket::WebSocketBinding;
use crate::config::Config;
use crate::core::Core;
use crate::core::store::{StoreError, StoreOptions};
use crate::policy::Origins;
use crate::transport::socketio::{SocketIo, SocketIoConfig};

/// Start-up and run-time failures of the server.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The store could not be opened.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The `[auth]` section could not be loaded (key files, secrets).
    #[error(transparent)]
    Auth(#[from] crate::auth::AuthConfigError),
    /// The listener failed.
    #[error("server I/O error: {0}")]
    Io(#[from] std::io::Error),
}

/// How long shutdown waits for connections to finish after telling them to go.
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(2);

/// A started server, ready to accept connections.
pub struct Server {
    core: Arc<Core>,
    socketio: Arc<SocketIo>,
    shutdown: tokio::sync::watch::Sender<bool>,
    router: Router,
}

struct SocketIoConnections(Arc<ChannelsNamespace>);

impl Connections for SocketIoConnections {
    fn close_transport(&self, id: &str) -> bool {
        self.0.close_transport(id)
    }
}

impl Server {
    /// Opens the store and builds the routes.
    pub async fn start(config: Config) -> Result<Self, ServerError> {
        let core = Core::open(StoreOptions {
            data_dir: config.data_dir.clone(),
            durability: config.durability,
            retention: config.retention(),
            session_ttl: config.socketio.session_ttl,
        })?;
        let s = &config.socketio;
        let access = Access::new(&config)?;
        let namespace = ChannelsNamespace::new(core.clone(), access.clone(), s.max_queue_bytes);
        let socketio = SocketIo::builder(SocketIoConfig {
            path: s.path.clone(),
            ping_interval: s.ping_interval,
            ping_timeout: s.ping_timeout,
            max_payload: s.max_payload,
            connect_timeout: s.connect_timeout,
            max_queue_bytes: s.max_queue_bytes,
            cors_any_origin: false,
        })
        .namespace("/", namespace.handler())
        .build();
        let api = api::router(ApiState {
            core: core.clone(),
            api_keys: Arc::new(config.api_keys.clone()),
            max_body_bytes: config.max_body_bytes,
            max_event_bytes: config.max_event_bytes,
            connections: Arc::new(SocketIoConnections(namespace)),
            policy: access.policy.clone(),
        });
        let (shutdown, stopping) = tokio::sync::watch::channel(false);
        let router = api
            .merge(socketio.router())
            .merge(WebSocketBinding::router(
                core.clone(),
                access.clone(),
                config.websocket.clone(),
                stopping.clone(),
            ))
            .merge(SseBinding::router(
                core.clone(),
                access.clone(),
                config.sse.clone(),
                stopping,
            ))
            // Origins are checked once, for every transport and the API, before anything else.
            .layer(axum::middleware::from_fn_with_state(
                access.policy.origins.clone(),
                Origins::layer,
            ));
        Ok(Self {
            core,
            socketio,
            shutdown,
            router,
        })
    }

    /// Serves until `shutdown` resolves, then tells clients, drains and flushes the store.
    pub async fn run(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServerError> {
        let socketio = self.socketio.clone();
        let stop = self.shutdown;
        let mut stopping = stop.subscribe();
        let app = self
            .router
            .into_make_service_with_connect_info::<SocketAddr>();
        let serve = axum::serve(listener, app).with_graceful_shutdown(async move {
            shutdown.await;
            socketio.shutdown();
            let _ = stop.send(true);
        });
        // Clients were told to go; one that stopped reading must not hold the process hostage.
        let grace = async move {
            let _ = stopping.wait_for(|s| *s).await;
            tokio::time::sleep(SHUTDOWN_GRACE).await;
        };
        tokio::select! {
            served = serve => served?,
            () = grace => tracing::warn!(grace = ?SHUTDOWN_GRACE, "connections still open after the grace period; closing them"),
        }
        self.core.shutdown().await;
        tracing::info!("herald stopped");
        Ok(())
    }
}
