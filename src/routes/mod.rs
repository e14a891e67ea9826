//! HTTP routes: the seed's endpoints (`/register`, `/login`, `/chat`, `/`), the user's own
//! keys, conversations and usage under `/v1`, and health.

mod account;
pub(crate) mod admin;
mod anthropic;
mod bodies;
mod caller;
mod chat;
mod conversations;
mod health;
mod keys;
mod openai;
mod openapi;
mod pages;
mod paging;

use std::{
    sync::{atomic::AtomicBool, Arc},
    time::Duration,
};

use actix_web::{
    body::{BoxBody, MessageBody},
    dev::{ServiceRequest, ServiceResponse},
    error::{JsonPayloadError, PayloadError},
    http::{header, StatusCode},
    middleware::{self, Next},
    web, HttpResponse, ResponseError,
};
use ai_gateway_actors::{Registry, Router, SessionEnv};
use serde_json::json;

pub use admin::AdminContext;
pub use caller::Caller;
pub use health::Telemetry;
pub use paging::Paging;

use crate::{
    access::{Access, AuthError},
    auth::{PasswordHashing, TokenError},
    cluster::Cluster,
    config::Config,
    limits::{Decision, Limits},
    store::{StoreError, Stores},
};

/// What every handler shares.
pub struct AppState {
    pub router: Arc<Router>,
    pub access: Arc<Access>,
    pub stores: Stores,
    pub limits: Arc<Limits>,
    pub cluster: Option<Arc<Cluster>>,
    pub registry: Registry,
    pub session_env: SessionEnv,
    pub allowed_origins: Vec<String>,
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Set on SIGTERM: new WebSocket sessions are refused.
    pub draining: AtomicBool,
    pub telemetry: Telemetry,
    /// For the readiness probe.
    pub postgres: Option<Arc<crate::store::postgres::PgStore>>,
    pub admin: AdminContext,
    pub guards: Guards,
}

/// What defends the gateway against abuse beyond the rate limits (docs/SECURITY.md).
pub struct Guards {
    /// `/metrics` is served on the public listener (no `metrics_listen`).
    pub public_metrics: bool,
    pub open_registration: bool,
    pub max_body_bytes: usize,
    pub max_api_keys_per_user: u32,
    /// The node's few password-hashing slots.
    pub hashing: PasswordHashing,
    /// How long a `/chat` connection without a token waits for its `auth` message.
    pub auth_timeout: Duration,
}

impl Guards {
    pub fn new(config: &Config) -> Guards {
        Guards {
            public_metrics: config.metrics_listen.is_none(),
            open_registration: config.open_registration,
            max_body_bytes: config.max_body_bytes,
            max_api_keys_per_user: config.max_api_keys_per_user,
            hashing: PasswordHashing::new(
                config.password_hash_concurrency,
                Duration::from_millis(config.password_hash_wait_ms),
            ),
            auth_timeout: Duration::from_millis(config.session.auth_timeout_ms),
        }
    }
}

/// A body past `max_body_bytes` is 413; any other unreadable JSON body is 400.
fn json_error(err: JsonPayloadError) -> ApiError {
    let too_large = matches!(
        err,
        JsonPayloadError::Overflow { .. }
            | JsonPayloadError::OverflowKnownLength { .. }
            | JsonPayloadError::Payload(PayloadError::Overflow)
    );
    if too_large {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "Request body too large".to_owned(),
        )
    } else {
        ApiError::bad_request(err.to_string())
    }
}

/// Largest body of the sign-up, login and key endpoints, whose bodies are a few short strings
/// (`max_body_bytes` when that is smaller): a credential endpoint has no reason to buffer 20 MiB
/// for anyone who asks.
pub const MAX_SMALL_BODY_BYTES: usize = 64 * 1024;

fn json_config(limit: usize) -> web::JsonConfig {
    web::JsonConfig::default()
        .limit(limit)
        .error_handler(|err, _| json_error(err).into())
}

/// Every route, wrapped in CORS and the security headers, for the app state's settings.
pub fn configure_for(state: &AppState) -> impl FnOnce(&mut web::ServiceConfig) {
    let max_body = state.guards.max_body_bytes;
    let small_body = max_body.min(MAX_SMALL_BODY_BYTES);
    let public_metrics = state.guards.public_metrics;
    let origins = state.allowed_origins.clone();
    move |cfg| {
        cfg.service(
            web::scope("")
                .app_data(json_config(max_body))
                .app_data(
                    web::QueryConfig::default()
                        .error_handler(|err, _| ApiError::bad_request(err.to_string()).into()),
                )
                .wrap(middleware::from_fn(v1_errors))
                .wrap(pages::cors(&origins))
                .wrap(middleware::from_fn(pages::security_headers))
                .configure(|cfg| configure(cfg, small_body, public_metrics))
                .default_service(web::to(|| async {
                    ApiError::new(StatusCode::NOT_FOUND, "Not found".to_owned())
                })),
        );
    }
}

/// The internal listener's routes (`metrics_listen`): `/metrics` only.
pub fn configure_internal(cfg: &mut web::ServiceConfig) {
    cfg.route("/metrics", web::get().to(health::metrics));
}

fn configure(cfg: &mut web::ServiceConfig, small_body: usize, public_metrics: bool) {
    if public_metrics {
        cfg.route("/metrics", web::get().to(health::metrics));
    }
    cfg.route("/", web::get().to(pages::index))
        .route("/index.html", web::get().to(pages::index))
        .route("/gateway-client.js", web::get().to(pages::client_js))
        .route("/gateway-client.d.ts", web::get().to(pages::client_dts))
        .route("/assets/{name}", web::get().to(pages::asset))
        .service(
            web::resource("/login")
                .app_data(json_config(small_body))
                .route(web::get().to(pages::index))
                .route(web::post().to(account::login)),
        )
        .service(
            web::resource("/register")
                .app_data(json_config(small_body))
                .route(web::post().to(account::register)),
        )
        .route("/logout", web::post().to(account::logout))
        .route("/chat", web::get().to(chat::upgrade))
        .service(
            web::resource("/v1/keys")
                .app_data(json_config(small_body))
                .route(web::post().to(keys::create))
                .route(web::get().to(keys::list)),
        )
        .route("/v1/keys/{id}", web::delete().to(keys::revoke))
        .route("/v1/conversations", web::get().to(conversations::list))
        .route("/v1/conversations/{id}", web::get().to(conversations::show))
        .route(
            "/v1/conversations/{id}",
            web::delete().to(conversations::delete),
        )
        .route("/v1/usage", web::get().to(conversations::usage))
        .route("/v1/models", web::get().to(openai::models))
        .route("/v1/chat/completions", web::post().to(openai::completions))
        .route(
            "/v1/chat/completions/{stream_id}/events",
            web::get().to(openai::events),
        )
        .route("/v1/messages", web::post().to(anthropic::messages))
        .route("/healthz", web::get().to(health::healthz))
        .route("/readyz", web::get().to(health::readyz))
        .route("/openapi.json", web::get().to(openapi::serve))
        .configure(admin::configure);
}

/// Every error under `/v1/` in OpenAI's shape, `{"error": {"message", "type", "param",
/// "code"}}`, whatever produced it (authentication, a body too large or unreadable, a rate
/// limit, a route that does not exist), so that OpenAI SDKs read it; under `/v1/messages` in
/// Anthropic's, `{"type": "error", "error": {"type", "message"}}`. The seed's endpoints keep
/// `{"error": message}`.
async fn v1_errors(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    let v1 = req.path().starts_with("/v1/");
    let anthropic_shape = req.path().starts_with("/v1/messages");
    let res = next.call(req).await?;
    let status = res.status();
    if !v1 || !(status.is_client_error() || status.is_server_error()) {
        return Ok(res.map_into_boxed_body());
    }
    let (req, res) = res.into_parts();
    let (res, body) = res.into_parts();
    let bytes = actix_web::body::to_bytes(body).await.unwrap_or_default();
    let parsed: Option<serde_json::Value> = serde_json::from_slice(&bytes).ok();
    let body = match parsed {
        // Already in the front's shape (its handler wrote it).
        Some(v) if v["error"].is_object() => v,
        other => {
            let message = other
                .as_ref()
                .and_then(|v| v["error"].as_str().map(str::to_owned))
                .unwrap_or_else(|| {
                    let text = String::from_utf8_lossy(&bytes).trim().to_owned();
                    if text.is_empty() {
                        status.canonical_reason().unwrap_or("error").to_owned()
                    } else {
                        text
                    }
                });
            if anthropic_shape {
                anthropic::error_body(status, &message)
            } else {
                openai_error_body(status, &message)
            }
        }
    };
    let mut res = res.set_body(BoxBody::new(body.to_string()));
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    Ok(ServiceResponse::new(req, res))
}

/// OpenAI's error body for `status`: its `type`, and a `code` for the statuses SDKs know.
pub fn openai_error_body(status: StatusCode, message: &str) -> serde_json::Value {
    let code = match status.as_u16() {
        401 => Some("invalid_api_key"),
        403 => Some("permission_denied"),
        404 => Some("not_found"),
        413 => Some("request_too_large"),
        429 => Some("rate_limit_exceeded"),
        _ => None,
    };
    json!({"error": {
        "message": message,
        "type": openai::error_type(status.as_u16()),
        "param": null,
        "code": code,
    }})
}

/// Whole seconds a client is told to wait (`Retry-After`, and the same figure in messages):
/// rounded up, at least 1.
pub fn retry_after_secs(wait: Duration) -> u64 {
    wait.as_secs_f64().ceil().max(1.0) as u64
}

/// An HTTP error answered as `{"error": message}`, the seed's shape.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    /// Sent as `Retry-After` (seconds) with a 429.
    pub retry_after: Option<Duration>,
}

impl ApiError {
    pub fn new(status: StatusCode, message: String) -> Self {
        ApiError {
            status,
            message,
            retry_after: None,
        }
    }

    /// A 400 with this message.
    pub fn bad_request(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, message.into())
    }

    pub fn not_found(what: &str) -> Self {
        ApiError::new(StatusCode::NOT_FOUND, format!("{what} not found"))
    }

    /// Turns a rate limit's decision into a 429 with `Retry-After`.
    pub fn check(decision: Decision, what: &str) -> Result<(), ApiError> {
        match decision {
            Decision::Allowed => Ok(()),
            Decision::Denied { retry_after } => Err(ApiError {
                status: StatusCode::TOO_MANY_REQUESTS,
                message: format!("Too many {what}; retry later"),
                retry_after: Some(retry_after),
            }),
        }
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.status
    }

    fn error_response(&self) -> HttpResponse {
        let retry = self.retry_after.map(retry_after_secs);
        error_json(self.status, retry, json!({ "error": self.message }))
    }
}

/// An error response of every front: its JSON body, and `Retry-After` when the client should wait.
pub fn error_json(
    status: StatusCode,
    retry_after_secs: Option<u64>,
    body: serde_json::Value,
) -> HttpResponse {
    let mut res = HttpResponse::build(status);
    if let Some(secs) = retry_after_secs {
        res.insert_header(("Retry-After", secs.to_string()));
    }
    res.json(body)
}

impl actix_web::Responder for ApiError {
    type Body = actix_web::body::BoxBody;

    fn respond_to(self, _: &actix_web::HttpRequest) -> HttpResponse {
        self.error_response()
    }
}

impl From<TokenError> for ApiError {
    fn from(e: TokenError) -> Self {
        ApiError::new(StatusCode::UNAUTHORIZED, e.to_string())
    }
}

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> Self {
        match e {
            AuthError::Token(t) => t.into(),
            AuthError::Disabled => ApiError::new(StatusCode::FORBIDDEN, e.to_string()),
            AuthError::Unavailable => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Conflict(m) => ApiError::new(StatusCode::CONFLICT, m),
            StoreError::Unavailable(_) => {
                tracing::warn!(error = %e, "store failed");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "Store unavailable".to_owned(),
                )
            }
        }
    }
}
