//! Starting and stopping one gateway node.

use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use actix::{Actor, Addr};
use actix_rt::Arbiter;
use actix_web::{dev::ServerHandle, web, App, HttpServer};
use ai_gateway_actors::{
    answer::SharedJournals, close_code, AnswerHub, Drain, Engine, KillSession, Metrics,
    MockProvider, NoDirectory, SessionCount, SessionDirectory, SessionEnv, SessionRegistry,
};
use rand::RngCore;

use crate::{
    access::Access,
    auth::TokenIssuer,
    cluster::{Cluster, ClusterEvent, RedisDirectory, RedisJournals},
    config::{redact_url, Config},
    conn,
    limits::Limits,
    request_hooks::GatewayHooks,
    routes::{self, AdminContext, AppState},
    startup,
    store::{memory::MemoryStore, postgres, Stores, WriteBehind},
};

/// How often idle in-memory limiter state is forgotten.
const LIMITS_PRUNE_INTERVAL: Duration = Duration::from_secs(60);

/// A running node. Dropping it leaves the server running; call [`Gateway::shutdown`].
pub struct Gateway {
    addr: SocketAddr,
    node_id: String,
    state: web::Data<AppState>,
    server: ServerHandle,
    serving: actix_rt::task::JoinHandle<std::io::Result<()>>,
    mock: Arc<MockProvider>,
    writes: WriteBehind,
    open_connections: Arc<AtomicUsize>,
    drain_timeout: Duration,
    close_grace: Duration,
    registry_arbiter: Arbiter,
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
        let wait_limit = startup::limit(config.db_connect_timeout_secs);
        let node_id = if config.node_id.is_empty() {
            format!("gw-{}", &uuid::Uuid::new_v4().simple().to_string()[..8])
        } else {
            config.node_id.clone()
        };
        let secret = if config.jwt_secret.is_empty() {
            tracing::warn!(
                "no jwt_secret configured: using a random one; tokens die with this process"
            );
            let mut bytes = [0u8; 32];
            rand::rng().fill_bytes(&mut bytes);
            bytes.to_vec()
        } else {
            config.jwt_secret.clone().into_bytes()
        };

        let mut postgres_store = None;
        let stores = if config.database_url.is_empty() {
            Stores::from_backend(Arc::new(MemoryStore::default()))
        } else {
            let url = config.database_url.clone();
            let tls =
                startup::wait_for_postgres(&url, &config.database_ca_file, wait_limit).await?;
            let applied = postgres::migrate(&url, &tls).await?;
            if !applied.is_empty() {
                tracing::info!(migrations = ?applied, "database migrated");
            }
            let pg = Arc::new(postgres::PgStore::connect(&url, &tls)?);
            let target = redact_url(&url);
            startup::wait_for("PostgreSQL", &target, wait_limit, |_| true, || pg.ping()).await?;
            postgres_store = Some(pg.clone());
            Stores::from_backend(pg)
        };
        let cluster = if config.redis_url.is_empty() {
            None
        } else {
            let cluster = Arc::new(Cluster::new(&config.redis_url, &config.redis_prefix)?);
            let target = redact_url(&config.redis_url);
            // Every Redis error is retried up to the limit: the redis crate reports a
            // certificate that does not verify as text, not as a rustls error.
            startup::wait_for("Redis", &target, wait_limit, |_| true, || cluster.ping()).await?;
            Some(cluster)
        };

        let mock = MockProvider::new(config.mock.clone());
        let router = Arc::new(crate::routing::build_router(&config, mock.clone())?);
        let directory: Arc<dyn SessionDirectory> = match &cluster {
            Some(c) => Arc::new(RedisDirectory::start(
                c.clone(),
                node_id.clone(),
                Duration::from_millis(config.directory.session_ttl_ms),
            )),
            None => Arc::new(NoDirectory),
        };
        let refresh = Duration::from_millis(config.directory.refresh_interval_ms);
        let registry_arbiter = Arbiter::new();
        let registry_router = router.clone();
        let registry = SessionRegistry::start_in_arbiter(&registry_arbiter.handle(), move |_| {
            SessionRegistry::new(registry_router).with_directory(directory, refresh)
        });

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
        if let Some(c) = &cluster {
            let on_event = access.clone();
            let on_connected = Arc::downgrade(&access);
            let local = registry.clone();
            c.subscribe(
                move |event| match event {
                    ClusterEvent::Revoked(r) => on_event.apply(&r),
                    ClusterEvent::KillSession { session_id, reason } => {
                        local.do_send(KillSession {
                            session_id,
                            code: close_code::POLICY,
                            reason,
                        })
                    }
                    ClusterEvent::UserChanged { user_id } => on_event.forget_user(&user_id),
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

        let metrics = Metrics::new();
        let limits = Limits::counted(
            config.rate_limits.clone(),
            cluster.clone(),
            metrics.rate_limit_rejections.clone(),
        );
        let pruned = Arc::downgrade(&limits);
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
        let writes = WriteBehind::start(stores.clone(), config.write_queue_capacity);
        let hooks = Arc::new(GatewayHooks {
            stores: stores.clone(),
            limits: limits.clone(),
            writes: writes.clone(),
        });

        let shared_journals = cluster.as_ref().map(|c| {
            Arc::new(RedisJournals::new(
                c.clone(),
                node_id.clone(),
                Duration::from_millis(config.resume.retention_ms),
            )) as Arc<dyn SharedJournals>
        });
        let answers = AnswerHub::sharing(
            config.resume.to_actors(),
            metrics.journal.clone(),
            shared_journals,
        );
        let swept = Arc::downgrade(&answers);
        let sweep_every = (Duration::from_millis(config.resume.retention_ms) / 4)
            .clamp(Duration::from_millis(100), Duration::from_secs(10));
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
                    router: router.clone(),
                    registry: registry.clone(),
                    metrics: metrics.clone(),
                }),
                registry,
                metrics: metrics.clone(),
                answers: answers.clone(),
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
            },
            guards: routes::Guards::new(&config),
        });

        let drain_timeout = Duration::from_millis(config.shutdown.drain_timeout_ms);
        let close_grace = Duration::from_millis(config.session.close_grace_ms);
        let app_state = state.clone();
        let open_connections = Arc::new(AtomicUsize::new(0));
        let open = open_connections.clone();
        let mut server = HttpServer::new(move || {
            App::new()
                .app_data(app_state.clone())
                .wrap(actix_web::middleware::from_fn(log_request))
                .configure(routes::configure_for(&app_state))
        })
        .on_connect(move |conn, ext| conn::record_socket(&open, conn, ext))
        .client_disconnect_timeout(Duration::from_millis(
            config.session.client_disconnect_timeout_ms,
        ))
        .disable_signals()
        .shutdown_timeout((drain_timeout + close_grace).as_secs() + 2)
        .bind(config.listen)?;
        if config.workers > 0 {
            server = server.workers(config.workers);
        }
        let addr = server.addrs()[0];
        let server = server.run();
        let handle = server.handle();
        let serving = actix_rt::spawn(server);
        tracing::info!(%addr, node_id, "ai-gateway listening");
        Ok(Gateway {
            addr,
            node_id,
            state,
            server: handle,
            serving,
            mock,
            writes,
            open_connections,
            drain_timeout,
            close_grace,
            registry_arbiter,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    pub fn registry(&self) -> &Addr<SessionRegistry> {
        &self.state.registry
    }

    /// Waits until every usage record and conversation turn queued so far is stored.
    pub async fn flush_writes(&self) {
        self.writes.flush().await;
    }

    pub fn access(&self) -> &Arc<Access> {
        &self.state.access
    }

    pub fn cluster(&self) -> Option<&Arc<Cluster>> {
        self.state.cluster.as_ref()
    }

    pub fn stores(&self) -> &Stores {
        &self.state.stores
    }

    /// The mock provider, for tests that count what it produced.
    pub fn mock(&self) -> &MockProvider {
        &self.mock
    }

    /// TCP connections open on this node (HTTP and WebSocket).
    pub fn open_connections(&self) -> usize {
        self.open_connections.load(Ordering::Relaxed)
    }

    /// Live sessions on this node.
    pub async fn session_count(&self) -> usize {
        self.state.registry.send(SessionCount).await.unwrap_or(0)
    }

    /// Graceful shutdown: stop accepting, let running streams finish for up to the drain
    /// timeout, close every session with 1012, then stop the server.
    pub async fn shutdown(self) {
        tracing::info!("draining");
        self.state.draining.store(true, Ordering::Relaxed);
        // Stop accepting now, but keep the workers: answers run on them until they end, even
        // with every connection gone (their clients resume on another node).
        self.server.pause().await;
        let _ = self
            .state
            .registry
            .send(Drain {
                timeout: self.drain_timeout,
            })
            .await;
        // Answers run on until they end, also those whose clients went to resume them on
        // another node; what is still running at the drain timeout ends with an error there.
        let answers = &self.state.session_env.answers;
        let drained = Instant::now() + self.drain_timeout;
        while (self.session_count().await > 0 || answers.running() > 0) && Instant::now() < drained
        {
            actix_rt::time::sleep(Duration::from_millis(20)).await;
        }
        if answers.running() > 0 {
            let msg = "the node shut down before this answer finished; retry elsewhere";
            answers.fail_running(ai_gateway_proto::ErrorReason::ShuttingDown, msg);
        }
        let deadline = Instant::now() + self.close_grace + Duration::from_secs(1);
        while (self.session_count().await > 0 || answers.running() > 0) && Instant::now() < deadline
        {
            actix_rt::time::sleep(Duration::from_millis(20)).await;
        }
        self.server.stop(true).await;
        let _ = self.serving.await;
        self.writes.flush().await;
        self.registry_arbiter.stop();
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
