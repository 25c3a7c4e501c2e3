//! The server: wires config, core, HTTP API and transports into one router, and shuts them down in order.

use std::future::Future;
use std::sync::Arc;

use axum::Router;
use futures_util::future::BoxFuture;
use tokio::net::TcpListener;

use crate::accept::{self, Edge};
use crate::api::{self, ApiState};
use crate::binding::access::Access;
use crate::binding::client_events::{Actions, ClientEvents};
use crate::binding::forward::{self, Forwarder};
use crate::binding::socketio::ChannelsNamespace;
use crate::binding::sse::SseBinding;
use crate::binding::websocket::WebSocketBinding;
use crate::cluster::{ClusterConfig, SessionDirectory};
use crate::config::Config;
use crate::core::Engine;
use crate::core::channel::Pattern;
use crate::core::engine::{self, EngineChoice, EngineError, EngineKind, EngineOptions};
use crate::policy::{Origins, Policy};
use crate::registry::Registry;
use crate::source::{self, MaySubscribe, Refused, Sources};
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
    /// A source could not start.
    #[error(transparent)]
    Source(#[from] crate::source::SourceError),
    /// The `[[proxy]]` client could not be built.
    #[error(transparent)]
    Proxy(#[from] crate::proxy::ProxySetupError),
    /// The `[forward]` HTTP client could not be built.
    #[error("the forward client: {0}")]
    Forward(String),
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
    sources: Arc<Sources>,
    socketio: Arc<SocketIo>,
    shutdown: tokio::sync::watch::Sender<bool>,
    router: Router,
    tls: Option<Arc<Tls>>,
    policy: Arc<Policy>,
    registry: Registry,
    head_timeout: Option<std::time::Duration>,
    keep_alive_timeout: Option<std::time::Duration>,
    /// With a shared engine: this node's Engine.IO sessions, findable by the others.
    directory: Option<SessionDirectory>,
    cluster: ClusterConfig,
    /// Forwards to the backend; its disconnect notices are stored before the engine stops.
    forwarder: Arc<Forwarder>,
    /// The disconnect outbox's deliverer, if a disconnect hook is configured.
    outbox: Option<tokio::task::JoinHandle<()>>,
}

/// Client events mapped to actions run on the sources that serve them.
impl Actions for Sources {
    fn run<'a>(
        &'a self,
        action: &'a str,
        args: &'a [serde_json::Value],
        may_subscribe: &'a MaySubscribe<'a>,
    ) -> BoxFuture<'a, Result<serde_json::Value, Refused>> {
        Box::pin(self.act(action, args, may_subscribe))
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
            EngineChoice::Redis => EngineKind::Redis {
                // Validated with the configuration: a Redis engine has a URL.
                url: config.engine.url.clone().unwrap_or_default(),
                prefix: config.engine.prefix.clone(),
            },
        };
        let sections = source::Sections {
            sources: &config.sources,
            monitor: &config.monitor,
            presence: &config.presence,
            collections: &config.collections,
        };
        // Sources' own channels keep their bounds whatever the configured rules match.
        let mut retention = config.history.retention();
        retention
            .rules
            .splice(0..0, source::retention_rules(sections));
        retention.rules.splice(
            0..0,
            forward::disconnects::retention(config.forward.outbox_max),
        );
        let core = engine::open(EngineOptions {
            kind,
            retention,
            session_ttl: config.socketio.session_ttl,
        })
        .await?;
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
        let sources = Arc::new(
            source::start_all(&source::Setup {
                engine: &core,
                sections,
                // A `monitors.db` left by an earlier version is imported into a durable engine; the memory engine
                // touches no file.
                legacy_dir: (config.engine.kind == EngineChoice::Sqlite)
                    .then_some(config.data_dir.as_path()),
                max_body_bytes: config.max_body_bytes,
                api_keys: &config.api_keys,
                identify: {
                    let access = access.clone();
                    Arc::new(move |headers, query| {
                        let access = access.clone();
                        Box::pin(async move { access.identify(&headers, &query, None).await })
                    })
                },
            })
            .await?,
        );
        // Every binding lists its connections here; the API reads and closes them.
        // … and each is present on the online channel while it is open (connection-wide presence).
        let registry = Registry::new().with_online(
            core.clone(),
            config
                .presence
                .online()
                .map_err(crate::source::SourceError::from)?,
        );
        // Forwards to the user's backend; one deliverer per cluster drains the disconnect outbox.
        let forwarder =
            Forwarder::new(config.forward.clone(), core.clone(), config.max_event_bytes)
                .map_err(ServerError::Forward)?;
        let outbox = forwarder.start_outbox();
        // One mapping of client events for Socket.IO events and `/ws` emits.
        let client_events = ClientEvents::new(
            s.client_events.clone(),
            sources.clone(),
            core.clone(),
            access.clone(),
            forwarder.clone(),
            config.max_event_bytes,
        );
        let namespace = ChannelsNamespace::new(
            core.clone(),
            access.clone(),
            s.max_queue_bytes,
            client_events.clone(),
            registry.clone(),
        );
        // Only an engine shared by several nodes can hold sessions this node does not.
        let directory = (config.engine.kind == EngineChoice::Redis).then(|| {
            SessionDirectory::new(
                core.clone(),
                &config.cluster,
                // Longer than a held long-poll GET, which the owner answers within a ping interval.
                s.ping_interval + s.ping_timeout,
                s.max_payload,
            )
        });
        let mut socketio = SocketIo::builder(SocketIoConfig {
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
        });
        if let Some(directory) = &directory {
            socketio = socketio.directory(Arc::new(directory.clone()));
        }
        let socketio = socketio.build();
        let mut mounts = sources.routes();
        let any_method = std::mem::take(&mut mounts.any_method);
        // The Engine.IO layer reports when the stamped (live) frames it queued are written: the delivery lag.
        let _ =
            crate::transport::engineio::ON_STAMPED_WRITE.set(crate::binding::stats::written_live);
        let api = api::router(
            ApiState {
                core: core.clone(),
                api_keys: Arc::new(config.api_keys.clone()),
                max_body_bytes: config.max_body_bytes,
                max_event_bytes: config.max_event_bytes,
                connections: registry.clone(),
                policy: access.policy.clone(),
                metrics: {
                    let sources = sources.clone();
                    let client_events = client_events.clone();
                    let forwarder = forwarder.clone();
                    let core = core.clone();
                    let registry = registry.clone();
                    Arc::new(move |out: &mut String| {
                        crate::metrics::render(out, &*core, &registry);
                        sources.metrics(out);
                        client_events.metrics(out);
                        forwarder.metrics(out);
                    })
                },
                readiness: {
                    let sources = sources.clone();
                    Arc::new(move || {
                        let sources = sources.clone();
                        Box::pin(async move { sources.readiness().await })
                    })
                },
            },
            mounts.merge(crate::admin::mounts(crate::admin::Setup {
                core: core.clone(),
                engine: match config.engine.kind {
                    EngineChoice::Sqlite => "sqlite",
                    EngineChoice::Memory => "memory",
                    EngineChoice::Redis => "redis",
                },
                keyed: !config.api_keys.is_empty(),
            })),
        );
        let (shutdown, stopping) = tokio::sync::watch::channel(false);
        let router = api
            .merge(socketio.router())
            .merge(WebSocketBinding::router(
                core.clone(),
                access.clone(),
                config.websocket.clone(),
                stopping.clone(),
                registry.clone(),
                client_events.clone(),
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
            ))
            // A collection's own REST paths and proxied prefixes carry the same origin policy, with preflights for
            // every method.
            .merge(any_method.layer(axum::middleware::from_fn_with_state(
                access.policy.origins.clone(),
                Origins::layer_any_method,
            )))
            .merge(crate::proxy::router(
                &config.proxy,
                access.policy.origins.clone(),
                access.policy.clone(),
                config.tls.is_some(),
            )?);
        let tls = match &config.tls {
            Some(t) => Some(Tls::load(&t.cert, &t.key)?),
            None => None,
        };
        Ok(Self {
            core,
            sources,
            socketio,
            shutdown,
            router,
            tls,
            policy: access.policy.clone(),
            registry,
            head_timeout: config.limits.request_head_timeout(),
            keep_alive_timeout: config.limits.keep_alive_timeout(),
            directory,
            cluster: config.cluster.clone(),
            forwarder,
            outbox,
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
        let core = self.core.clone();
        let begin_shutdown = async move {
            shutdown.await;
            // What was acknowledged reaches the connections before they are told to go (bounded: the queue is).
            let _ = tokio::time::timeout(SHUTDOWN_GRACE, core.delivered()).await;
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
        // Every connection hears of the engine's outages from one watch.
        let relay = {
            let registry = self.registry.clone();
            let health = self.core.health();
            tokio::spawn(async move { registry.relay_health(health).await })
        };
        let claims = match (&self.directory, listener.local_addr()) {
            (Some(directory), Ok(listen)) => {
                match self.cluster.advertise_for(listen, self.tls.is_some()) {
                    Some(advertise) => Some(directory.start(advertise)),
                    None => {
                        tracing::warn!(
                            %listen,
                            "set [cluster] advertise: other nodes cannot forward this node's sessions"
                        );
                        None
                    }
                }
            }
            _ => None,
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
        relay.abort();
        if let Some(claims) = claims {
            claims.abort();
        }
        self.policy.refusals.flush();
        // The last connections' disconnect notices go into the outbox before the engine stops.
        let _ = tokio::time::timeout(SHUTDOWN_GRACE, self.forwarder.stored()).await;
        if let Some(outbox) = self.outbox {
            outbox.abort();
        }
        served?;
        self.sources.shutdown().await;
        self.core.shutdown().await;
        tracing::info!("herald stopped");
        Ok(())
    }
}

#[cfg(test)]
mod tests;
