//! Users, their credentials, the providers and the audit trail.

use actix_web::{web, HttpResponse};
use ai_gateway_actors::{
    provider::{breaker::RecentCalls, BreakerState},
    unix_time::unix_secs,
};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::Admin;
use crate::{
    revocation::Revocation,
    routes::{
        account::{self, Credentials},
        bodies::Revoked,
        paging::page_limit,
        ApiError, AppState, Paging,
    },
    store::{ApiKey, AuditEntry, Role, User},
};

/// A user as the admin API shows them: never the password hash.
#[derive(Debug, Serialize, utoipa::ToSchema)]
struct UserView {
    id: String,
    username: String,
    role: Role,
    disabled: bool,
    /// Unix seconds.
    created_at: u64,
}

impl From<User> for UserView {
    fn from(u: User) -> Self {
        UserView {
            id: u.id,
            username: u.username,
            role: u.role,
            disabled: u.disabled,
            created_at: unix_secs(u.created_at),
        }
    }
}

/// `GET /admin/users`: a page of users, oldest first.
#[derive(Serialize, utoipa::ToSchema)]
struct UserPage {
    users: Vec<UserView>,
    offset: usize,
    limit: usize,
}

/// `GET /admin/users/{id}/keys`: every key of the user, oldest first.
#[derive(Serialize, utoipa::ToSchema)]
struct KeyList {
    /// Never the keys themselves.
    keys: Vec<ApiKey>,
}

/// `GET /admin/providers`: each model's route.
#[derive(Serialize, utoipa::ToSchema)]
struct ProviderList<'a> {
    models: Vec<ModelRoute<'a>>,
}

/// A model served, its route's first upstream and every upstream on the route.
#[derive(Serialize, utoipa::ToSchema)]
struct ModelRoute<'a> {
    model: &'a str,
    /// The first upstream's configured name.
    provider: &'a str,
    /// The first upstream's kind: `openai`, `anthropic`, `gemini` or `mock`.
    kind: &'static str,
    upstream_model: &'a str,
    targets: Vec<RouteTarget<'a>>,
}

/// An upstream on a model's route, and its circuit breaker on this node.
#[derive(Serialize, utoipa::ToSchema)]
struct RouteTarget<'a> {
    /// The configured name.
    provider: &'a str,
    /// `openai`, `anthropic`, `gemini` or `mock`.
    kind: &'static str,
    upstream_model: &'a str,
    breaker: BreakerState,
    /// The upstream's latest 100 calls at most, on this node.
    recent: RecentCalls,
}

/// `GET /admin/audit`: recent admin actions, newest first.
#[derive(Serialize, utoipa::ToSchema)]
struct AuditList {
    entries: Vec<AuditEntry>,
}

fn parse_role(role: &str) -> Result<Role, ApiError> {
    Role::parse(role).ok_or_else(|| ApiError::bad_request("role must be \"user\" or \"admin\""))
}

async fn user(state: &AppState, id: &str) -> Result<User, ApiError> {
    state
        .stores
        .identity
        .user_by_id(id)
        .await?
        .ok_or_else(|| ApiError::not_found("User"))
}

#[utoipa::path(
    get,
    path = "/admin/users",
    operation_id = "list_users",
    tag = "admin",
    summary = "Users, oldest first",
    security(("admin" = [])),
    params(Paging),
    responses(
        crate::routes::openapi::AdminErrors,
        (status = 200, description = "A page of users", body = UserPage),
        (status = 400, description = "Bad query", body = crate::routes::openapi::SeedError),
    ),
)]
pub async fn list(
    state: web::Data<AppState>,
    _: Admin,
    paging: web::Query<Paging>,
) -> Result<HttpResponse, ApiError> {
    let limit = paging.limit();
    let users: Vec<UserView> = state
        .stores
        .identity
        .list_users(paging.offset, limit)
        .await?
        .into_iter()
        .map(UserView::from)
        .collect();
    Ok(HttpResponse::Ok().json(UserPage {
        users,
        offset: paging.offset,
        limit,
    }))
}

#[utoipa::path(
    get,
    path = "/admin/users/{id}",
    operation_id = "show_user",
    tag = "admin",
    summary = "One user",
    security(("admin" = [])),
    params(("id" = String, Path, description = "The user id")),
    responses(
        crate::routes::openapi::AdminErrors,
        (status = 200, description = "The user", body = UserView),
        (status = 404, description = "No such user", body = crate::routes::openapi::SeedError),
    ),
)]
pub async fn show(
    state: web::Data<AppState>,
    _: Admin,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(UserView::from(user(&state, &id).await?)))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct NewUser {
    username: String,
    password: String,
    /// `user` (the default) or `admin`.
    #[serde(default = "default_role")]
    role: String,
}

fn default_role() -> String {
    Role::User.as_str().to_owned()
}

#[utoipa::path(
    post,
    path = "/admin/users",
    operation_id = "create_user",
    tag = "admin",
    summary = "Create a user",
    security(("admin" = [])),
    request_body = NewUser,
    responses(
        crate::routes::openapi::AdminErrors,
        (status = 201, description = "The user", body = UserView),
        (status = 400, description = "Bad username, password or role", body = crate::routes::openapi::SeedError),
        (status = 409, description = "The username is taken", body = crate::routes::openapi::SeedError),
    ),
)]
pub async fn create(
    state: web::Data<AppState>,
    admin: Admin,
    body: web::Json<NewUser>,
) -> Result<HttpResponse, ApiError> {
    let body = body.into_inner();
    let role = parse_role(&body.role)?;
    let creds = Credentials {
        username: body.username,
        password: body.password,
    };
    account::validate(&creds)?;
    admin
        .audit(
            &state,
            "create_user",
            &creds.username,
            json!({"role": role.as_str()}),
        )
        .await?;
    let hash = account::hash_password(&state, creds.password).await?;
    let user = state
        .stores
        .identity
        .create_user(&creds.username, hash, role)
        .await?;
    Ok(HttpResponse::Created().json(UserView::from(user)))
}

/// `PATCH /admin/users/{id}`: any of the fields.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct UserChange {
    /// `user` or `admin`.
    role: Option<String>,
    disabled: Option<bool>,
}

#[utoipa::path(
    patch,
    path = "/admin/users/{id}",
    operation_id = "update_user",
    tag = "admin",
    summary = "Change a user's role, or disable (closes their sessions everywhere) or enable them",
    security(("admin" = [])),
    params(("id" = String, Path, description = "The user id")),
    request_body = UserChange,
    responses(
        crate::routes::openapi::AdminErrors,
        (status = 200, description = "The user", body = UserView),
        (status = 400, description = "Bad role, or nothing to change", body = crate::routes::openapi::SeedError),
        (status = 404, description = "No such user", body = crate::routes::openapi::SeedError),
    ),
)]
pub async fn update(
    state: web::Data<AppState>,
    admin: Admin,
    id: web::Path<String>,
    body: web::Json<UserChange>,
) -> Result<HttpResponse, ApiError> {
    let target = user(&state, &id).await?;
    let role = body.role.as_deref().map(parse_role).transpose()?;
    if role.is_none() && body.disabled.is_none() {
        return Err(ApiError::bad_request(
            "nothing to change: give \"role\" or \"disabled\"",
        ));
    }
    let detail = json!({"username": target.username, "role": role, "disabled": body.disabled});
    admin
        .audit(&state, "update_user", &target.id, detail)
        .await?;
    if let Some(role) = role {
        state.stores.identity.set_role(&target.id, role).await?;
        state.access.user_changed(&target.id).await;
    }
    match body.disabled {
        // Closes the user's sessions on every node.
        Some(true) => {
            state
                .access
                .revoke(Revocation::User {
                    id: target.id.clone(),
                })
                .await?
        }
        Some(false) => {
            state
                .stores
                .identity
                .set_disabled(&target.id, false)
                .await?;
            state.access.user_changed(&target.id).await;
        }
        None => {}
    }
    Ok(HttpResponse::Ok().json(UserView::from(user(&state, &target.id).await?)))
}

#[utoipa::path(
    get,
    path = "/admin/users/{id}/keys",
    operation_id = "list_user_keys",
    tag = "admin",
    summary = "A user's API keys (never the keys themselves)",
    security(("admin" = [])),
    params(("id" = String, Path, description = "The user id")),
    responses(
        crate::routes::openapi::AdminErrors,
        (status = 200, description = "The user's keys", body = KeyList),
        (status = 404, description = "No such user", body = crate::routes::openapi::SeedError),
    ),
)]
pub async fn keys(
    state: web::Data<AppState>,
    _: Admin,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let target = user(&state, &id).await?;
    let keys = state.stores.identity.api_keys_of(&target.id).await?;
    Ok(HttpResponse::Ok().json(KeyList { keys }))
}

#[utoipa::path(
    delete,
    path = "/admin/keys/{id}",
    operation_id = "admin_revoke_key",
    tag = "admin",
    summary = "Revoke an API key on every node",
    security(("admin" = [])),
    params(("id" = String, Path, description = "The key id")),
    responses(
        crate::routes::openapi::AdminErrors,
        (status = 200, description = "The key is revoked: `revoked` is its id", body = Revoked),
        (status = 404, description = "No such API key", body = crate::routes::openapi::SeedError),
    ),
)]
pub async fn revoke_key(
    state: web::Data<AppState>,
    admin: Admin,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let key = state
        .stores
        .identity
        .api_key(&id)
        .await?
        .ok_or_else(|| ApiError::not_found("API key"))?;
    admin
        .audited(
            &state,
            "revoke_api_key",
            &key.id,
            json!({"user_id": key.user_id, "prefix": key.prefix}),
            async {
                let revoked = state
                    .access
                    .revoke(Revocation::ApiKey { id: key.id.clone() });
                Ok(revoked.await?)
            },
        )
        .await?;
    Ok(HttpResponse::Ok().json(Revoked { revoked: key.id }))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct TokenToRevoke {
    token: String,
}

/// `POST /admin/tokens/revoke {"token"}`: the token itself names its user and expiry.
#[utoipa::path(
    post,
    path = "/admin/tokens/revoke",
    operation_id = "revoke_token",
    tag = "admin",
    summary = "Revoke a session token on every node",
    security(("admin" = [])),
    request_body = TokenToRevoke,
    responses(
        crate::routes::openapi::AdminErrors,
        (status = 200, description = "The token is revoked: `revoked` is its jti", body = Revoked),
        (status = 400, description = "Not a valid token", body = crate::routes::openapi::SeedError),
    ),
)]
pub async fn revoke_token(
    state: web::Data<AppState>,
    admin: Admin,
    body: web::Json<TokenToRevoke>,
) -> Result<HttpResponse, ApiError> {
    let claims = state
        .access
        .tokens()
        .verify(body.token.trim())
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    admin
        .audited(
            &state,
            "revoke_token",
            &claims.jti,
            json!({"user_id": claims.sub, "username": claims.username}),
            async {
                let revoked = state.access.revoke(Revocation::Token {
                    jti: claims.jti.clone(),
                    user_id: claims.sub.clone(),
                    expires_at_unix: claims.exp,
                });
                Ok(revoked.await?)
            },
        )
        .await?;
    Ok(HttpResponse::Ok().json(Revoked {
        revoked: claims.jti,
    }))
}

/// Each model's route, with the circuit-breaker state of every upstream on it.
#[utoipa::path(
    get,
    path = "/admin/providers",
    operation_id = "list_providers",
    tag = "admin",
    summary = "Models served, their routes and each upstream's circuit breaker",
    security(("admin" = [])),
    responses(
        crate::routes::openapi::AdminErrors,
        (status = 200, description = "Each model's route", body = ProviderList),
    ),
)]
pub async fn providers(state: web::Data<AppState>, _: Admin) -> HttpResponse {
    let models: Vec<_> = state
        .router
        .models()
        .map(|(model, route)| {
            let targets: Vec<_> = route
                .targets
                .iter()
                .map(|t| RouteTarget {
                    provider: &t.upstream.name,
                    kind: t.upstream.provider.name(),
                    upstream_model: &t.upstream_model,
                    breaker: t.upstream.breaker.state(),
                    recent: t.upstream.breaker.recent(),
                })
                .collect();
            ModelRoute {
                model,
                provider: &route.targets[0].upstream.name,
                kind: route.primary().name(),
                upstream_model: &route.targets[0].upstream_model,
                targets,
            }
        })
        .collect();
    HttpResponse::Ok().json(ProviderList { models })
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AuditQuery {
    /// Entries: 100 by default, at most 1000.
    limit: Option<usize>,
}

#[utoipa::path(
    get,
    path = "/admin/audit",
    operation_id = "list_audit",
    tag = "admin",
    summary = "Recent admin actions, newest first",
    security(("admin" = [])),
    params(AuditQuery),
    responses(
        crate::routes::openapi::AdminErrors,
        (status = 200, description = "Recent admin actions", body = AuditList),
        (status = 400, description = "Bad query", body = crate::routes::openapi::SeedError),
    ),
)]
pub async fn audit(
    state: web::Data<AppState>,
    _: Admin,
    query: web::Query<AuditQuery>,
) -> Result<HttpResponse, ApiError> {
    let limit = page_limit(query.limit);
    let entries = state.stores.audit.recent_audit(limit).await?;
    Ok(HttpResponse::Ok().json(AuditList { entries }))
}
