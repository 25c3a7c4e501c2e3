//! The server: wires config, core, HTTP API and transports into one router, and shuts them down in order.

use std::future::Future;
use std::sync::Arc;

use axum::Router;
use tokio::net::TcpListener;

use crate::accept::{self, Edge};
use crate::api::{self, ApiState};
use crate::binding::access::Access;
use crate::binding::socketio::{Actions, ChannelsNamespace};
use crate::binding::sse::SseBinding;
use crate::binding::websocket::WebSocketBinding;
use crate::config::Config;
use crate::core::Engine;
use crate::core::channel::Pattern;
use crate::core::engine::{self, EngineChoice, EngineError, EngineKind, EngineOptions};
use crate::policy::{Origins, Policy};
use crate::registry::Registry;
use crate::source::monitor::Monitors;
use crate::source::sql::SqlSources;
use crate::tls::Tls;
use crate::transport::socketio::{SocketIo, SocketIoConfig};

/// Start-up and run-time failures of the server.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The engine could not be opened.
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// The certificate or key could not be loaded.
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    /// The `[auth]` section could not be loaded (key files, secrets).
    #[error(transparent)]
    Auth(#[from] crate::auth::AuthConfigError),
    /// A `[[sources.sql]]` source is invalid (e.g. its SQL does not prepare).
    #[error(transparent)]
    Source(#[from] crate::source::sql::SourceError),
    /// The monitor could not start (its storage or import, or a monitor declared in the config).
    #[error("monitor: {0}")]
    Monitor(#[from] crate::source::monitor::MonitorError),
    /// The bindings' event encodings do not fit an event's cache.
    #[error(transparent)]
    Encodings(#[from] crate::core::event::SlotError),
    /// The listener failed.
    #[error("server I/O error: {0}")]
    Io(#[from] std::io::Error),
}

/// How long shutdown waits for connections to finish after telling them to go.
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(2);

/// A started server, ready to accept connections.
pub struct Server {
    core: Arc<dyn Engine>,
    monitors: Arc<Monitors>,
    socketio: Arc<SocketIo>,
    shutdown: tokio::sync::watch::Sender<bool>,
    router: Router,
    tls: Option<Arc<Tls>>,
    sources: Arc<SqlSources>,
    policy: Arc<Policy>,
    registry: Registry,
    head_timeout: Option<std::time::Duration>,
    keep_alive_timeout: Option<std::time::Duration>,
}

/// Client events mapped to monitor actions: `monitor.refresh` with a monitor id checks it now.
struct MonitorActions(Arc<Monitors>);

impl Actions for MonitorActions {
    fn run(
        &self,
        action: &str,
        args: &[serde_json::Value],
        may_subscribe: &dyn Fn(&crate::core::channel::ChannelName) -> bool,
    ) -> Result<serde_json::Value, (&'static str, String)> {
        if action != "monitor.refresh" {
            return Err(("unknown_action", format!("no action {action:?}")));
        }
        // Seed 002 sends the id as a string; an object `{id}` or `{serviceId}` is accepted too.
        let id = args.first().and_then(|a| {
            a.as_str()
                .or_else(|| a.get("id").and_then(|v| v.as_str()))
                .or_else(|| a.get("serviceId").and_then(|v| v.as_str()))
        });
        let Some(id) = id else {
            return Err(("invalid_request", "expected a monitor id".into()));
        };
        let not_found = || ("monitor_not_found", format!("no monitor {id:?}"));
        let channel = self.0.channel_of(id).map_err(|_| not_found())?;
        // A client that may not see a monitor learns nothing about it, not even that it exists.
        if !may_subscribe(&channel) {
            return Err(not_found());
        }
        match self.0.refresh(id) {
            Ok(()) => Ok(serde_json::json!({"id": id})),
            Err(crate::source::monitor::MonitorError::TooSoon(..)) => Err((
                "rate_limited",
                "this monitor was checked a moment ago; try again shortly".into(),
            )),
            Err(_) => Err(not_found()),
        }
    }
}

impl Server {
    /// Opens the store and builds the routes.
    pub async fn start(config: Config) -> Result<Self, ServerError> {
        crate::binding::register_encodings()?;
        let kind = match config.engine.kind {
            EngineChoice::Sqlite => EngineKind::Sqlite {
                data_dir: config.data_dir.clone(),
                durability: config.durability,
            },
            EngineChoice::Memory => EngineKind::Memory,
        };
        // The monitor's own channels keep their log bounds whatever the configured rules match.
        let mut retention = config.history.retention();
        retention.rules.splice(
            0..0,
            crate::source::monitor::store::retention(&config.monitor),
        );
        let core = engine::open(EngineOptions {
            kind,
            retention,
            session_ttl: config.socketio.session_ttl,
        })?;
        for st in &config.state {
            core.declare_state(Pattern::new(&st.channels), st.snapshot());
        }
        let s = &config.socketio;
        let access = Access::new(
            &config.auth,
            &config.allowed_origins,
            &config.limits,
            config.socketio.server_side_channels(),
        )?;
        // A `monitors.db` left by an earlier version is imported into a durable engine; the memory engine touches
        // no file.
        let legacy =
            (config.engine.kind == EngineChoice::Sqlite).then_some(config.data_dir.as_path());
        let monitors = Monitors::start(core.clone(), legacy, &config.monitor).await?;
        // Last: the core takes the first state declaration matching a channel, and a template like `{unit}` is
        // broad; `[[state]]` and the monitor's channels keep theirs.
        let sources = SqlSources::start(&core, &config.sources.sql).await?;
        // Every binding lists its connections here; the API reads and closes them.
        let registry = Registry::new();
        let namespace = ChannelsNamespace::new(
            core.clone(),
            access.clone(),
            s.max_queue_bytes,
            s.client_events.clone(),
            Some(Arc::new(MonitorActions(monitors.clone()))),
            registry.clone(),
        );
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
        .admit({
            // Every Engine.IO session, joined to a namespace or not, holds one of its address's connection slots.
            let access = access.clone();
            move |request| access.admit_session(request.remote_addr.map(|a| a.ip()))
        })
        .build();
        let api = api::router(ApiState {
            core: core.clone(),
            api_keys: Arc::new(config.api_keys.clone()),
            max_body_bytes: config.max_body_bytes,
            max_event_bytes: config.max_event_bytes,
            connections: registry.clone(),
            policy: access.policy.clone(),
            sources: sources.clone(),
            monitors: monitors.clone(),
            status_page: config.monitor.status_page,
        });
        let (shutdown, stopping) = tokio::sync::watch::channel(false);
        let router = api
            .merge(socketio.router())
            .merge(WebSocketBinding::router(
                core.clone(),
                access.clone(),
                config.websocket.clone(),
                stopping.clone(),
                registry.clone(),
            ))
            .merge(SseBinding::router(
                core.clone(),
                access.clone(),
                config.sse.clone(),
                stopping,
                registry.clone(),
            ))
            // Origins are checked once, for every transport and the API, before anything else.
            .layer(axum::middleware::from_fn_with_state(
                access.policy.origins.clone(),
                Origins::layer,
            ));
        let tls = match &config.tls {
            Some(t) => Some(Tls::load(&t.cert, &t.key)?),
            None => None,
        };
        Ok(Self {
            core,
            monitors,
            socketio,
            shutdown,
            router,
            tls,
            sources,
            policy: access.policy.clone(),
            registry,
            head_timeout: config.limits.request_head_timeout(),
            keep_alive_timeout: config.limits.keep_alive_timeout(),
        })
    }

    /// Whether connections are served over TLS.
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// Serves until `shutdown` resolves, then tells clients, drains and flushes the store.
    pub async fn run(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServerError> {
        let socketio = self.socketio.clone();
        let stop = self.shutdown.clone();
        let mut stopping = self.shutdown.subscribe();
        let begin_shutdown = async move {
            shutdown.await;
            socketio.shutdown();
            let _ = stop.send(true);
        };
        // Clients were told to go; one that stopped reading must not hold the process hostage.
        let grace = async move {
            let _ = stopping.wait_for(|s| *s).await;
            tokio::time::sleep(SHUTDOWN_GRACE).await;
        };
        // Refusals are counted as they happen and logged once per interval.
        let flusher = {
            let policy = self.policy.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(crate::policy::refusals::INTERVAL);
                tick.tick().await;
                loop {
                    tick.tick().await;
                    policy.refusals.flush();
                }
            })
        };
        let edge = Edge {
            policy: self.policy.clone(),
            head_timeout: self.head_timeout,
            keep_alive_timeout: self.keep_alive_timeout,
            tls: self.tls.clone(),
        };
        tokio::pin!(grace);
        let (served, grace_over) = tokio::select! {
            served = accept::serve(edge, listener, self.router.clone(), begin_shutdown) => (served.map_err(ServerError::from), false),
            () = &mut grace => (Ok(()), true),
        };
        // Upgraded (WebSocket) connections leave hyper's graceful watch: within the same
        // grace, wait for them to send their close (1001) before the process goes.
        if served.is_ok() && !grace_over {
            tokio::select! {
                () = self.registry.until_empty() => {}
                () = &mut grace => {}
            }
        }
        flusher.abort();
        self.policy.refusals.flush();
        served?;
        self.sources.shutdown().await;
        self.monitors.flush().await;
        self.core.shutdown().await;
        tracing::info!("herald stopped");
        Ok(())
    }
}
