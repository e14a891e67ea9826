//! Liveness (`/healthz`), readiness (`/readyz`) and Prometheus metrics (`/metrics`).

use std::sync::{atomic::Ordering, Arc, Mutex};

use actix_web::{web, HttpResponse};
use ai_gateway_actors::{provider::BreakerState, Metrics};
use prometheus_client::{
    encoding::{text::encode, EncodeLabelSet},
    metrics::{family::Family, gauge::Gauge},
    registry::Registry,
};
use serde::Serialize;

use super::AppState;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UpstreamLabels {
    model: String,
    provider: String,
    upstream_model: String,
}

/// The node's metrics registry (every name starts `gateway_`).
pub struct Telemetry {
    pub metrics: Arc<Metrics>,
    registry: Mutex<Registry>,
    breakers: Family<UpstreamLabels, Gauge>,
}

impl Telemetry {
    pub fn new(metrics: Arc<Metrics>) -> Self {
        let mut registry = Registry::with_prefix("gateway");
        metrics.register(&mut registry);
        let breakers = Family::<UpstreamLabels, Gauge>::default();
        registry.register(
            "circuit_breaker_state",
            "Circuit breaker of each route target: 0 closed, 1 half-open, 2 open",
            breakers.clone(),
        );
        Telemetry {
            metrics,
            registry: Mutex::new(registry),
            breakers,
        }
    }
}

/// `GET /healthz`'s answer.
#[derive(Serialize, utoipa::ToSchema)]
pub struct Liveness {
    /// Always `ok`.
    status: &'static str,
}

/// `GET /readyz`'s answer, with either status.
#[derive(Serialize, utoipa::ToSchema)]
pub struct Readiness {
    status: ReadyStatus,
    /// The node is shutting down.
    draining: bool,
    /// Null when not configured.
    postgres: Option<DependencyState>,
    /// Null when not configured.
    redis: Option<DependencyState>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub enum ReadyStatus {
    #[serde(rename = "ready")]
    Ready,
    /// Draining, or a dependency is down.
    #[serde(rename = "not ready")]
    NotReady,
}

#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum DependencyState {
    Up,
    Down,
}

impl From<bool> for DependencyState {
    fn from(up: bool) -> Self {
        if up {
            DependencyState::Up
        } else {
            DependencyState::Down
        }
    }
}

/// Liveness: the process answers
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "health",
    responses((status = 200, description = "The process answers", body = Liveness)),
)]
pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(Liveness { status: "ok" })
}

/// Ready when not draining and every configured dependency answers.
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "health",
    responses(
        (status = 200, description = "Ready: `status` is `ready`", body = Readiness),
        (status = 503, description = "The same body with `status: \"not ready\"`: draining, or a dependency is down", body = Readiness),
    ),
)]
pub async fn readyz(state: web::Data<AppState>) -> HttpResponse {
    let draining = state.draining.load(Ordering::Relaxed);
    let postgres = match &state.postgres {
        Some(pg) => Some(pg.ping().await.is_ok()),
        None => None,
    };
    let redis = match &state.cluster {
        Some(c) => Some(c.ping().await.is_ok()),
        None => None,
    };
    let ready = !draining && postgres != Some(false) && redis != Some(false);
    let body = Readiness {
        status: if ready {
            ReadyStatus::Ready
        } else {
            ReadyStatus::NotReady
        },
        draining,
        postgres: postgres.map(DependencyState::from),
        redis: redis.map(DependencyState::from),
    };
    if ready {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable().json(body)
    }
}

/// Prometheus metrics (here only when no `metrics_listen` is configured; else on that listener)
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "health",
    responses((status = 200, description = "OpenMetrics text; every name starts `gateway_`", body = String, content_type = "application/openmetrics-text")),
)]
pub async fn metrics(state: web::Data<AppState>) -> HttpResponse {
    let t = &state.telemetry;
    for (model, route) in state.router.models() {
        for target in &route.targets {
            let labels = UpstreamLabels {
                model: model.to_owned(),
                provider: target.upstream.name.to_string(),
                upstream_model: target.upstream_model.clone(),
            };
            let value = match target.upstream.breaker.state() {
                BreakerState::Closed => 0,
                BreakerState::HalfOpen => 1,
                BreakerState::Open => 2,
            };
            t.breakers.get_or_create(&labels).set(value);
        }
    }
    let mut body = String::new();
    let registry = t.registry.lock().unwrap_or_else(|p| p.into_inner());
    if encode(&mut body, &registry).is_err() {
        return HttpResponse::InternalServerError().finish();
    }
    HttpResponse::Ok()
        .content_type("application/openmetrics-text; version=1.0.0; charset=utf-8")
        .body(body)
}
