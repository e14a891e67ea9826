//! HTTP routes: the seed's endpoints (`/register`, `/login`, `/chat`, `/`) and health.

mod account;
mod chat;
mod pages;

use std::sync::{atomic::AtomicBool, Arc};

use actix::Addr;
use actix_web::{http::StatusCode, web, HttpResponse, ResponseError};
use ai_gateway_actors::{SessionConfig, SessionRegistry};
use serde_json::json;

use crate::{
    auth::{TokenError, TokenIssuer},
    identity::{IdentityError, IdentityStore},
};

/// What every handler shares.
pub struct AppState {
    pub identity: Arc<dyn IdentityStore>,
    pub tokens: TokenIssuer,
    pub registry: Addr<SessionRegistry>,
    pub session_config: Arc<SessionConfig>,
    pub allowed_origins: Vec<String>,
    /// Set on SIGTERM: new WebSocket sessions are refused.
    pub draining: AtomicBool,
}

/// Largest JSON body the REST endpoints accept.
pub const MAX_JSON_BODY_BYTES: usize = 64 * 1024;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.app_data(
        web::JsonConfig::default()
            .limit(MAX_JSON_BODY_BYTES)
            .error_handler(|err, _| ApiError::new(StatusCode::BAD_REQUEST, err.to_string()).into()),
    )
    .route("/", web::get().to(pages::index))
    .route("/index.html", web::get().to(pages::index))
    .route("/login", web::get().to(pages::index))
    .route("/login", web::post().to(account::login))
    .route("/register", web::post().to(account::register))
    .route("/chat", web::get().to(chat::upgrade))
    .route("/healthz", web::get().to(pages::healthz))
    .default_service(web::to(|| async {
        ApiError::new(StatusCode::NOT_FOUND, "Not found".to_owned())
    }));
}

/// An HTTP error answered as `{"error": message}`, the seed's shape.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, message: String) -> Self {
        ApiError { status, message }
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.status
    }

    fn error_response(&self) -> HttpResponse {
        HttpResponse::build(self.status).json(json!({ "error": self.message }))
    }
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

impl From<IdentityError> for ApiError {
    fn from(e: IdentityError) -> Self {
        match e {
            IdentityError::UsernameTaken => ApiError::new(StatusCode::CONFLICT, e.to_string()),
            IdentityError::Unavailable(_) => {
                tracing::warn!(error = %e, "identity store failed");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "Identity store unavailable".to_owned(),
                )
            }
        }
    }
}
