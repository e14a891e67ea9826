//! Starting and stopping one gateway node.

use std::{
    any::Any,
    net::SocketAddr,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use actix_http::HttpService;
use actix_service::{map_config, IntoServiceFactory, ServiceFactoryExt as _};
use actix_web::{
    dev::{fn_factory, AppConfig, ServerHandle, ServiceFactory},
    rt::net::TcpStream,
    web, App, HttpServer,
};
use ai_gateway_actors::{
    answer::SharedJournals, close_code, AnswerHub, Engine, KillSession, Metrics, MockProvider,
    NoDirectory, Registry, SessionDirectory, SessionEnv,
};
use rand::RngCore;

use crate::{
    access::Access,
    auth::TokenIssuer,
    cluster::{Cluster, ClusterEvent, RedisDirectory, RedisJournals},
    config::{redact_url, Config},
    conn,
    limits::Limits,
    request_hooks::{GatewayHooks, HistoryCap},
    routes::{self, AdminContext, AppState},
    startup,
    store::{memory::MemoryStore, postgres, Stores, WriteBehind},
    upgrade::Upgrade,
};

/// How often idle in-memory limiter state is forgotten.
const LIMITS_PRUNE_INTERVAL: Duration = Duration::from_secs(60);

/// A running node. Dropping it leaves the server running; call [`Gateway::shutdown`].
pub struct Gateway {
    node: Node,
    listener: Listener,
    drain_timeout: Duration,
    close_grace: Duration,
}

/// What a node is made of, wired together before it listens.
struct Node {
    node_id: String,
    state: web::Data<AppState>,
    mock: Arc<MockProvider>,
    writes: WriteBehind,
}

/// The HTTP server answering a node's routes.
struct Listener {
    addr: SocketAddr,
    server: ServerHandle,
    serving: actix_rt::task::JoinHandle<std::io::Result<()>>,
    open_connections: Arc<AtomicUsize>,
    /// The internal listener of `metrics_listen`, when configured.
    metrics: Option<(SocketAddr, ServerHandle)>,
}

fn node_id(config: &Config) -> String {
    if config.node_id.is_empty() {
        format!("gw-{}", &uuid::Uuid::new_v4().simple().to_string()[..8])
    } else {
        config.node_id.clone()
    }
}

fn jwt_secret(config: &Config) -> Vec<u8> {
    if config.jwt_secret.is_empty() {
        tracing::warn!(
            "no jwt_secret configured: using a random one; tokens die with this process"
        );
        let mut bytes = [0u8; 32];
        rand::rng().fill_bytes(&mut bytes);
        bytes.to_vec()
    } else {
        config.jwt_secret.clone().into_bytes()
    }
}

/// The stores (PostgreSQL, migrated, when configured; else memory) and the PostgreSQL store
/// for the readiness probe. Waits up to `db_connect_timeout_secs` for a database that is late.
async fn open_stores(config: &Config) -> anyhow::Result<(Stores, Option<Arc<postgres::PgStore>>)> {
    if config.database_url.is_empty() {
        return Ok((Stores::from_backend(Arc::new(MemoryStore::default())), None));
    }
    let wait_limit = startup::limit(config.db_connect_timeout_secs);
    let url = config.database_url.clone();
    let tls = startup::wait_for_postgres(&url, &config.database_ca_file, wait_limit).await?;
    let applied = postgres::migrate(&url, &tls).await?;
    if !applied.is_empty() {
        tracing::info!(migrations = ?applied, "database migrated");
    }
    let pg = Arc::new(postgres::PgStore::connect(&url, &tls)?);
    let target = redact_url(&url);
    startup::wait_for("PostgreSQL", &target, wait_limit, |_| true, || pg.ping()).await?;
    Ok((Stores::from_backend(pg.clone()), Some(pg)))
}

async fn join_cluster(config: &Config) -> anyhow::Result<Option<Arc<Cluster>>> {
    if config.redis_url.is_empty() {
        return Ok(None);
    }
    let wait_limit = startup::limit(config.db_connect_timeout_secs);
    let cluster = Arc::new(Cluster::new(
        &config.redis_url,
        &config.redis_ca_file,
        &config.redis_prefix,
    )?);
    let target = redact_url(&config.redis_url);
    // Every Redis error is retried up to the limit: the redis crate reports a certificate that
    // does not verify as text, not as a rustls error.
    startup::wait_for("Redis", &target, wait_limit, |_| true, || cluster.ping()).await?;
    Ok(Some(cluster))
}

/// The node's journals of answers (shared through Redis when it is there), swept now and then.
fn answer_hub(
    config: &Config,
    node_id: &str,
    cluster: Option<&Arc<Cluster>>,
    metrics: &Metrics,
) -> Arc<AnswerHub> {
    let retention = Duration::from_millis(config.resume.retention_ms);
    let shared = cluster.map(|c| {
        Arc::new(RedisJournals::new(c.clone(), node_id.to_owned(), retention))
            as Arc<dyn SharedJournals>
    });
    let answers = AnswerHub::sharing(config.resume.to_actors(), metrics.journal.clone(), shared);
    let swept = Arc::downgrade(&answers);
    let sweep_every = (retention / 4).clamp(Duration::from_millis(100), Duration::from_secs(10));
    actix_rt::spawn(async move {
        let mut tick = actix_rt::time::interval(sweep_every);
        loop {
            tick.tick().await;
            match swept.upgrade() {
                Some(hub) => hub.sweep(),
                None => return,
            }
        }
    });
    answers
}

/// Applies what other nodes announce: revocations, kills of sessions held here, user changes.
fn dispatch_cluster_events(
    cluster: &Arc<Cluster>,
    access: &Arc<Access>,
    registry: &Registry,
    answers: &Arc<AnswerHub>,
) {
    let on_event = access.clone();
    let answers = answers.clone();
    let on_connected = Arc::downgrade(access);
    let local = registry.clone();
    cluster.subscribe(
        move |event| match event {
            ClusterEvent::Revoked(r) => {
                tracing::debug!("revocation heard from another node");
                on_event.apply(&r)
            }
            ClusterEvent::KillSession { session_id, reason } => {
                let local = local.clone();
                actix_rt::spawn(async move {
                    local
                        .kill(KillSession {
                            session_id,
                            code: close_code::POLICY,
                            reason,
                        })
                        .await
                });
            }
            ClusterEvent::UserChanged { user_id } => on_event.forget_user(&user_id),
            ClusterEvent::CancelAnswer { stream_id, user_id } => {
                answers.cancel(&stream_id, &user_id);
            }
        },
        // Catch up on what was revoked while the subscription was down.
        move || {
            if let Some(access) = on_connected.upgrade() {
                actix_rt::spawn(async move {
                    let _ = access.sync().await;
                });
            }
        },
    );
}

/// Forgets idle in-memory limiter state every [`LIMITS_PRUNE_INTERVAL`] while `limits` lives.
fn prune_limits(limits: &Arc<Limits>) {
    let pruned = Arc::downgrade(limits);
    actix_rt::spawn(async move {
        let mut tick = actix_rt::time::interval(LIMITS_PRUNE_INTERVAL);
        loop {
            tick.tick().await;
            match pruned.upgrade() {
                Some(l) => l.prune(),
                None => return,
            }
        }
    });
}

impl Node {
    /// Connects the stores and Redis, and wires the router, registry, access, limits, hooks
    /// and the state every handler shares.
    async fn wire(config: &Config) -> anyhow::Result<Node> {
        let node_id = node_id(config);
        let secret = jwt_secret(config);
        let (stores, postgres_store) = open_stores(config).await?;
        let cluster = join_cluster(config).await?;

        let mock = MockProvider::new(config.mock.clone());
        let router = Arc::new(crate::routing::build_router(config, mock.clone())?);
        let directory: Arc<dyn SessionDirectory> = match &cluster {
            Some(c) => Arc::new(RedisDirectory::start(
                c.clone(),
                node_id.clone(),
                Duration::from_millis(config.directory.session_ttl_ms),
            )),
            None => Arc::new(NoDirectory),
        };
        let registry = Registry::with_directory(router.clone(), directory);
        if cluster.is_some() {
            registry.refresh_directory_every(Duration::from_millis(
                config.directory.refresh_interval_ms,
            ));
        }

        let access = Arc::new(Access::new(
            stores.identity.clone(),
            TokenIssuer::new(&secret, config.token_ttl_secs),
            registry.clone(),
            cluster.clone(),
            Duration::from_millis(config.auth_cache_ttl_ms),
        ));
        if let Err(e) = access.sync().await {
            tracing::warn!(error = %e, "could not load revocations; will retry");
        }
        access.spawn_sync(Duration::from_millis(config.revocation_sync_ms));
        let metrics = Metrics::new();
        let answers = answer_hub(config, &node_id, cluster.as_ref(), &metrics);
        if let Some(c) = &cluster {
            dispatch_cluster_events(c, &access, &registry, &answers);
        }

        let limits = Limits::counted(
            config.rate_limits.clone(),
            cluster.clone(),
            metrics.rate_limit_rejections.clone(),
        );
        prune_limits(&limits);
        let writes = WriteBehind::start(stores.clone(), config.write_queue_capacity);
        let hooks = Arc::new(GatewayHooks {
            stores: stores.clone(),
            limits: limits.clone(),
            writes: writes.clone(),
            history: HistoryCap {
                max_messages: config.conversation_history_messages,
                max_bytes: config.conversation_history_bytes,
            },
            stored: crate::store::ConversationCap {
                max_messages: config.conversation_max_messages,
                max_bytes: config.conversation_max_bytes,
            },
        });

        let state = web::Data::new(AppState {
            router: router.clone(),
            access,
            stores,
            limits,
            cluster,
            registry: registry.clone(),
            session_env: SessionEnv {
                config: config.session_config(&node_id),
                engine: Arc::new(Engine {
                    hooks,
                    router,
                    registry: registry.clone(),
                    metrics: metrics.clone(),
                }),
                registry,
                metrics: metrics.clone(),
                answers,
            },
            telemetry: crate::routes::Telemetry::new(metrics),
            postgres: postgres_store,
            allowed_origins: config.allowed_origins.clone(),
            trusted_proxies: config
                .trusted_proxy_nets()
                .map_err(|e| anyhow::anyhow!("trusted_proxies: {e}"))?,
            draining: false.into(),
            admin: AdminContext {
                token: config.admin_token.clone(),
                node_id: node_id.clone(),
                started_at: std::time::SystemTime::now(),
            },
            guards: routes::Guards::new(config),
        });
        if state.cluster.is_some() {
            routes::admin::figures::publish_every(
                &state,
                Duration::from_millis(config.directory.refresh_interval_ms),
                Duration::from_millis(config.directory.session_ttl_ms),
            );
        }
        Ok(Node {
            node_id,
            state,
            mock,
            writes,
        })
    }
}

/// The node's listening socket (address reuse, as actix-web's `HttpServer` sets it up).
fn listen_socket(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    // Room for a burst of handshakes (the kernel caps it at net.core.somaxconn).
    socket.listen(2048)?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

impl Listener {
    /// Binds `config.listen` and serves `state`'s routes on `config.workers` worker threads.
    fn bind(config: &Config, state: &web::Data<AppState>) -> anyhow::Result<Listener> {
        let drain_timeout = Duration::from_millis(config.shutdown.drain_timeout_ms);
        let close_grace = Duration::from_millis(config.session.close_grace_ms);
        let app_state = state.clone();
        let open_connections = Arc::new(AtomicUsize::new(0));
        let open = open_connections.clone();
        let disconnect = Duration::from_millis(config.session.client_disconnect_timeout_ms);
        let make_app = move || {
            App::new()
                .app_data(app_state.clone())
                .wrap(actix_web::middleware::from_fn(log_request))
                .configure(routes::configure_for(&app_state))
        };
        let listener = listen_socket(config.listen)?;
        let addr = listener.local_addr()?;
        let mut server = actix_web::dev::Server::build()
            .disable_signals()
            .shutdown_timeout((drain_timeout + close_grace).as_secs() + 2);
        if config.workers > 0 {
            server = server.workers(config.workers);
        }
        let server = server
            .listen("ai-gateway", listener, move || {
                // What HttpServer gives the application (host and local address). Its own
                // constructor is crate-private; this one is public but hidden, and a change to it
                // in an actix-web update would fail the build, not the behaviour.
                let app_config = || AppConfig::__priv_test_new(false, addr.to_string(), addr);
                let (for_upgrades, config_u) = (make_app.clone(), app_config());
                // Upgrades (the chat WebSocket) leave the HTTP/1 dispatcher: see `upgrade`.
                let upgrade = fn_factory(move || {
                    let app = for_upgrades().into_factory().new_service(config_u.clone());
                    async move {
                        let app = app.await.map_err(|_| ())?;
                        Ok::<_, ()>(Upgrade::new(app, disconnect))
                    }
                });
                let open = open.clone();
                let app = make_app().into_factory().map_err(|e| e.error_response());
                let config = app_config();
                // Keep-alive and request-head timeouts: actix-http's defaults, which are
                // HttpServer's (5 s each).
                HttpService::build()
                    .client_disconnect_timeout(disconnect)
                    .local_addr(addr)
                    .on_connect_ext(move |io: &TcpStream, ext| {
                        conn::record_socket(&open, io as &dyn Any, ext)
                    })
                    .upgrade(upgrade)
                    .finish(map_config(app, move |_| config.clone()))
                    .tcp()
            })?
            .run();
        let handle = server.handle();
        let serving = actix_rt::spawn(server);
        let metrics = match config.metrics_listen {
            Some(listen) => Some(Self::bind_metrics(listen, state)?),
            None => None,
        };
        Ok(Listener {
            addr,
            server: handle,
            serving,
            open_connections,
            metrics,
        })
    }

    /// `/metrics` alone, on an address of its own (one worker: a scraper is its only client).
    fn bind_metrics(
        listen: SocketAddr,
        state: &web::Data<AppState>,
    ) -> anyhow::Result<(SocketAddr, ServerHandle)> {
        let app_state = state.clone();
        let server = HttpServer::new(move || {
            App::new()
                .app_data(app_state.clone())
                .configure(routes::configure_internal)
        })
        .workers(1)
        .disable_signals()
        .bind(listen)?;
        let addr = server.addrs()[0];
        let server = server.run();
        let handle = server.handle();
        actix_rt::spawn(server);
        tracing::info!(%addr, "metrics listening");
        Ok((addr, handle))
    }
}

impl Gateway {
    /// Binds `config.listen` and starts serving. Must run inside an actix system. Refuses
    /// published secrets ([`Config::check_secrets`]). Waits (with backoff, up to
    /// `db_connect_timeout_secs`) for PostgreSQL and Redis when they are configured.
    pub async fn start(config: Config) -> anyhow::Result<Gateway> {
        config.check_secrets()?;
        // rustls (provider calls, PostgreSQL, `rediss://`) with ring; the redis crate asks for
        // the process's default provider. Already installed is fine.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let node = Node::wire(&config).await?;
        let listener = Listener::bind(&config, &node.state)?;
        tracing::info!(addr = %listener.addr, node_id = node.node_id, "ai-gateway listening");
        Ok(Gateway {
            node,
            listener,
            drain_timeout: Duration::from_millis(config.shutdown.drain_timeout_ms),
            close_grace: Duration::from_millis(config.session.close_grace_ms),
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener.addr
    }

    /// Where `/metrics` is served when `metrics_listen` is set.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.listener.metrics.as_ref().map(|(addr, _)| *addr)
    }

    pub fn node_id(&self) -> &str {
        &self.node.node_id
    }

    pub fn registry(&self) -> &Registry {
        &self.node.state.registry
    }

    /// Waits until every usage record and conversation turn queued so far is stored.
    pub async fn flush_writes(&self) {
        self.node.writes.flush().await;
    }

    pub fn access(&self) -> &Arc<Access> {
        &self.node.state.access
    }

    pub fn cluster(&self) -> Option<&Arc<Cluster>> {
        self.node.state.cluster.as_ref()
    }

    pub fn stores(&self) -> &Stores {
        &self.node.state.stores
    }

    /// The mock provider, for tests that count what it produced.
    pub fn mock(&self) -> &MockProvider {
        &self.node.mock
    }

    /// TCP connections open on this node (HTTP and WebSocket).
    pub fn open_connections(&self) -> usize {
        self.listener.open_connections.load(Ordering::Relaxed)
    }

    /// Live sessions on this node.
    pub async fn session_count(&self) -> usize {
        self.node.state.registry.count()
    }

    /// Graceful shutdown: stop accepting, let running streams finish for up to the drain
    /// timeout, close every session with 1012, then stop the server.
    pub async fn shutdown(self) {
        tracing::info!("draining");
        self.node.state.draining.store(true, Ordering::Relaxed);
        // Stop accepting now, but keep the workers: answers run on them until they end, even
        // with every connection gone (their clients resume on another node).
        self.listener.server.pause().await;
        let registry = &self.node.state.registry;
        registry.drain(self.drain_timeout);
        // Answers run on until they end, also those whose clients went to resume them on
        // another node; what is still running at the drain timeout ends with an error there.
        let answers = &self.node.state.session_env.answers;
        let drained = Instant::now() + self.drain_timeout;
        while (registry.count() > 0 || answers.running() > 0) && Instant::now() < drained {
            actix_rt::time::sleep(Duration::from_millis(20)).await;
        }
        if answers.running() > 0 {
            let msg = "the node shut down before this answer finished; retry elsewhere";
            answers.fail_running(ai_gateway_proto::ErrorReason::ShuttingDown, msg);
        }
        let patience = self.close_grace + Duration::from_secs(1);
        let _ = actix_rt::time::timeout(patience, registry.until_empty()).await;
        let deadline = Instant::now() + patience;
        while answers.running() > 0 && Instant::now() < deadline {
            actix_rt::time::sleep(Duration::from_millis(20)).await;
        }
        // The last chunks and the end of what this node finished must reach Redis before its
        // workers stop: clients that resumed on another node read them there.
        let deadline = Instant::now() + patience;
        while answers.unwritten() > 0 && Instant::now() < deadline {
            actix_rt::time::sleep(Duration::from_millis(20)).await;
        }
        self.listener.server.stop(true).await;
        let _ = self.listener.serving.await;
        if let Some((_, metrics)) = &self.listener.metrics {
            metrics.stop(true).await;
        }
        self.node.writes.flush().await;
        registry.stop();
        tracing::info!("stopped");
    }
}

/// One line per request: method, path (never the query, which may hold a token), status, time.
async fn log_request(
    req: actix_web::dev::ServiceRequest,
    next: actix_web::middleware::Next<impl actix_web::body::MessageBody>,
) -> Result<actix_web::dev::ServiceResponse<impl actix_web::body::MessageBody>, actix_web::Error> {
    let started = Instant::now();
    let method = req.method().clone();
    let path = req.path().to_owned();
    let res = next.call(req).await?;
    tracing::info!(
        %method,
        path,
        status = res.status().as_u16(),
        elapsed_ms = started.elapsed().as_secs_f64() * 1000.0,
        "http"
    );
    Ok(res)
}
