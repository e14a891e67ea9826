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
use ai_gateway_actors::{Drain, MockProvider, Router, SessionCount, SessionRegistry};
use rand::RngCore;

use crate::{
    auth::TokenIssuer,
    config::Config,
    conn,
    identity::{IdentityStore, MemoryIdentityStore},
    routes::{self, AppState},
};

/// A running node. Dropping it leaves the server running; call [`Gateway::shutdown`].
pub struct Gateway {
    addr: SocketAddr,
    node_id: String,
    state: web::Data<AppState>,
    server: ServerHandle,
    serving: actix_rt::task::JoinHandle<std::io::Result<()>>,
    mock: Arc<MockProvider>,
    open_connections: Arc<AtomicUsize>,
    drain_timeout: Duration,
    close_grace: Duration,
    registry_arbiter: Arbiter,
}

impl Gateway {
    /// Binds `config.listen` and starts serving. Must run inside an actix system.
    pub async fn start(config: Config) -> anyhow::Result<Gateway> {
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

        let mock = MockProvider::new(config.mock.clone());
        let router = Arc::new(Router::default().with_route("mock", mock.clone(), "mock"));
        let registry_arbiter = Arbiter::new();
        let registry = SessionRegistry::start_in_arbiter(&registry_arbiter.handle(), move |_| {
            SessionRegistry::new(router)
        });
        let identity: Arc<dyn IdentityStore> = Arc::new(MemoryIdentityStore::default());

        let state = web::Data::new(AppState {
            identity,
            tokens: TokenIssuer::new(&secret, config.token_ttl_secs),
            registry,
            session_config: config.session_config(&node_id),
            allowed_origins: config.allowed_origins.clone(),
            draining: false.into(),
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
                .configure(routes::configure)
        })
        .on_connect(move |conn, ext| conn::record_socket(&open, conn, ext))
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
        let stopped = self.server.stop(true);
        let _ = self
            .state
            .registry
            .send(Drain {
                timeout: self.drain_timeout,
            })
            .await;
        let deadline =
            Instant::now() + self.drain_timeout + self.close_grace + Duration::from_secs(1);
        while self.session_count().await > 0 && Instant::now() < deadline {
            actix_rt::time::sleep(Duration::from_millis(20)).await;
        }
        stopped.await;
        let _ = self.serving.await;
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
