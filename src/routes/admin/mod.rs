//! The admin API under `/admin`: live sessions on every node, nodes, users, credentials,
//! providers and the audit trail, for a user with the `admin` role or the static admin token.
//! Every change is written to the audit table before it is made.

pub mod figures;
mod openapi;
mod sessions;
mod usage;
mod users;

pub use openapi::AdminApi;

use std::future::{ready, Ready};

use actix_web::{
    body::MessageBody,
    dev::{Payload, ServiceRequest, ServiceResponse},
    http::{header::ContentType, StatusCode},
    middleware::{self, Next},
    web, FromRequest, HttpMessage, HttpRequest, HttpResponse,
};
use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::{caller::bearer, ApiError, AppState};
use crate::{auth::TokenError, store::Role};

/// `web/admin.html`, built into the binary like the chat demo.
const ADMIN_HTML: &str = include_str!("../../../web/admin.html");

/// The longest close reason a WebSocket close frame can carry.
pub const MAX_CLOSE_REASON_BYTES: usize = 123;

/// The reason sent when an admin gives none.
const DEFAULT_KILL_REASON: &str = "closed by an administrator";

/// The actor name the audit table records for the static admin token.
pub const STATIC_TOKEN_ACTOR: &str = "static-token";

/// What the admin API needs beyond the rest of the app state.
pub struct AdminContext {
    /// The static admin token; empty means none.
    pub token: String,
    pub node_id: String,
    /// When the node started (its uptime in `GET /admin/nodes`).
    pub started_at: std::time::SystemTime,
}

pub fn configure(cfg: &mut web::ServiceConfig) {
    // The page and the document are public; everything else in the scope needs an admin,
    // checked before any parameter or body is read.
    cfg.route("/admin", web::get().to(page))
        .route("/admin.html", web::get().to(page))
        .route("/admin/openapi.json", web::get().to(openapi))
        .service(
            web::scope("/admin")
                .wrap(middleware::from_fn(require_admin))
                .route("/sessions", web::get().to(sessions::list))
                .route("/sessions/{id}", web::get().to(sessions::show))
                .route("/sessions/{id}", web::delete().to(sessions::kill))
                .route(
                    "/users/{id}/sessions",
                    web::delete().to(sessions::kill_user),
                )
                .route("/nodes", web::get().to(sessions::nodes))
                .route("/users", web::get().to(users::list))
                .route("/users", web::post().to(users::create))
                .route("/users/{id}", web::get().to(users::show))
                .route("/users/{id}", web::patch().to(users::update))
                .route("/users/{id}/keys", web::get().to(users::keys))
                .route("/keys/{id}", web::delete().to(users::revoke_key))
                .route("/tokens/revoke", web::post().to(users::revoke_token))
                .route("/providers", web::get().to(users::providers))
                .route("/audit", web::get().to(users::audit))
                .route("/usage", web::get().to(usage::list)),
        );
}

async fn page() -> HttpResponse {
    HttpResponse::Ok()
        .content_type(ContentType::html())
        .body(ADMIN_HTML)
}

/// The OpenAPI document, the same as `/openapi.json`.
#[utoipa::path(
    get,
    path = "/admin/openapi.json",
    operation_id = "admin_openapi_document",
    tag = "admin",
    responses((status = 200, description = "The OpenAPI 3.1 document of the REST API (the same as /openapi.json)", body = Object)),
)]
async fn openapi() -> HttpResponse {
    HttpResponse::Ok().json(super::openapi::document())
}

/// An authenticated administrator, put in place by [`require_admin`]: 401 without a
/// credential, 403 for anyone else.
#[derive(Clone)]
pub struct Admin {
    /// The admin's username, or [`STATIC_TOKEN_ACTOR`].
    pub name: String,
}

/// Compares in time independent of where the strings differ (both are hashed to equal length).
fn same_secret(presented: &str, expected: &str) -> bool {
    let a = Sha256::digest(presented.as_bytes());
    let b = Sha256::digest(expected.as_bytes());
    a.iter()
        .zip(b.iter())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y))
        == 0
}

/// Lets only admins (or the static token) through to the admin API.
async fn require_admin(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let state = req
        .app_data::<web::Data<AppState>>()
        .cloned()
        .expect("AppState is configured");
    let presented = bearer(req.request())
        .map(str::to_owned)
        .ok_or(ApiError::from(TokenError::Missing))?;
    let static_token = &state.admin.token;
    let admin = if !static_token.is_empty() && same_secret(&presented, static_token) {
        Admin {
            name: STATIC_TOKEN_ACTOR.to_owned(),
        }
    } else {
        let principal = state
            .access
            .authenticate(&presented)
            .await
            .map_err(ApiError::from)?;
        if principal.role != Role::Admin {
            return Err(ApiError::new(StatusCode::FORBIDDEN, "Admin only".to_owned()).into());
        }
        Admin {
            name: principal.username,
        }
    };
    req.extensions_mut().insert(admin);
    next.call(req).await
}

impl FromRequest for Admin {
    type Error = ApiError;
    type Future = Ready<Result<Admin, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        ready(
            req.extensions()
                .get::<Admin>()
                .cloned()
                .ok_or_else(|| ApiError::new(StatusCode::FORBIDDEN, "Admin only".to_owned())),
        )
    }
}

impl Admin {
    /// Writes the audit row for an action about to be taken; an action that cannot be recorded
    /// is not taken (but see [`Admin::audited`]).
    async fn audit(
        &self,
        state: &AppState,
        action: &str,
        target: &str,
        detail: serde_json::Value,
    ) -> Result<(), ApiError> {
        state
            .stores
            .audit
            .record_audit(&self.name, action, target, &detail)
            .await?;
        tracing::info!(actor = %self.name, action, target, "admin action");
        Ok(())
    }

    /// Takes a protective action (closing sessions, revoking a credential) and writes its audit
    /// row at once, so that a slow store never delays the closes. If the row cannot be written,
    /// the action has still been taken: the answer is the store's error, and the log keeps the
    /// action (repeating it is harmless, and records it).
    async fn audited<T>(
        &self,
        state: &AppState,
        action: &str,
        target: &str,
        detail: serde_json::Value,
        act: impl std::future::Future<Output = Result<T, ApiError>>,
    ) -> Result<T, ApiError> {
        tracing::debug!(actor = %self.name, action, target, "admin action starts");
        let (audited, done) = futures_util::join!(self.audit(state, action, target, detail), act);
        if audited.is_err() {
            tracing::error!(actor = %self.name, action, target, "admin action taken but not audited: the store failed");
        }
        let done = done?;
        audited?;
        Ok(done)
    }
}

/// `?reason=` of a kill.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct KillReason {
    /// The close reason the client sees (cut to 123 bytes); "closed by an administrator" by default.
    pub reason: Option<String>,
}

impl KillReason {
    /// The reason the client will see, cut to what a close frame can carry.
    fn close_reason(&self) -> String {
        let reason = self
            .reason
            .as_deref()
            .map(str::trim)
            .filter(|r| !r.is_empty())
            .unwrap_or(DEFAULT_KILL_REASON);
        truncate_utf8(reason, MAX_CLOSE_REASON_BYTES).to_owned()
    }
}

/// The longest prefix of `s` of at most `max` bytes that ends on a character boundary.
pub fn truncate_utf8(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_reasons_are_cut_on_a_character_boundary() {
        let long = "é".repeat(100);
        let cut = truncate_utf8(&long, MAX_CLOSE_REASON_BYTES);
        assert_eq!(cut.len(), 122);
        assert_eq!(truncate_utf8("short", 123), "short");
        let r = KillReason { reason: None };
        assert_eq!(r.close_reason(), DEFAULT_KILL_REASON);
    }

    #[test]
    fn the_static_token_must_match_exactly() {
        assert!(same_secret("abc", "abc"));
        assert!(!same_secret("abc", "abd"));
        assert!(!same_secret("ab", "abc"));
    }
}
