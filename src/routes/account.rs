//! `POST /register` and `POST /login`, with the seed's bodies and answers.

use std::{net::IpAddr, time::Duration};

use actix_web::{http::StatusCode, web, HttpRequest, HttpResponse};
use ai_gateway_actors::unix_time::unix_secs;
use serde::{Deserialize, Serialize};

use super::{ApiError, AppState, Caller};
use crate::{
    access::Credential,
    auth,
    limits::{Decision, Failure, Rate},
    revocation::Revocation,
    store::Role,
};

pub const USERNAME_CHARS: std::ops::RangeInclusive<usize> = 3..=64;
pub const PASSWORD_BYTES: std::ops::RangeInclusive<usize> = 8..=1024;

#[derive(Deserialize, utoipa::ToSchema)]
pub struct Credentials {
    pub(super) username: String,
    pub(super) password: String,
}

/// `POST /register`'s answer.
#[derive(Serialize, utoipa::ToSchema)]
pub struct Registered {
    /// `User created successfully`.
    message: &'static str,
    user_id: String,
}

/// `POST /login`'s answer.
#[derive(Serialize, utoipa::ToSchema)]
pub struct LoggedIn {
    /// The session token: `Authorization: Bearer <token>`.
    token: String,
    username: String,
    role: Role,
}

/// `POST /logout`'s answer.
#[derive(Serialize, utoipa::ToSchema)]
pub struct LoggedOut {
    /// `Logged out`.
    message: &'static str,
}

pub(super) fn validate(c: &Credentials) -> Result<(), ApiError> {
    let name_ok = USERNAME_CHARS.contains(&c.username.chars().count())
        && c.username
            .chars()
            .all(|ch| ch.is_ascii_alphanumeric() || "_.-".contains(ch));
    if !name_ok {
        return Err(ApiError::bad_request(
            "username must be 3 to 64 characters of letters, digits, '_', '.' or '-'",
        ));
    }
    if !PASSWORD_BYTES.contains(&c.password.len()) {
        return Err(ApiError::bad_request("password must be 8 to 1024 bytes"));
    }
    Ok(())
}

/// How long a client refused for busy password hashing is asked to wait.
const HASHING_RETRY_AFTER: Duration = Duration::from_secs(1);

fn hashing_busy(_: auth::HashingBusy) -> ApiError {
    ApiError {
        status: StatusCode::SERVICE_UNAVAILABLE,
        message: "Server busy; retry later".to_owned(),
        retry_after: Some(HASHING_RETRY_AFTER),
    }
}

/// Hashes a password in one of the node's few hashing slots (503 when none frees up in time).
pub(super) async fn hash_password(state: &AppState, password: String) -> Result<String, ApiError> {
    state
        .guards
        .hashing
        .hash(password)
        .await
        .map_err(hashing_busy)
}

/// Checks a password against a user's hash, or a decoy when there is no such user (so both take
/// as long), in a hashing slot.
async fn verify_password(
    state: &AppState,
    password: String,
    phc: Option<String>,
) -> Result<bool, ApiError> {
    state
        .guards
        .hashing
        .verify(password, phc)
        .await
        .map_err(hashing_busy)
}

/// Create an account (when registration is open)
#[utoipa::path(
    post,
    path = "/register",
    tag = "account",
    request_body = Credentials,
    responses(
        (status = 200, description = "The account is created", body = Registered),
        (status = 400, description = "Bad username (3 to 64 of letters, digits, '_', '.', '-') or password (8 to 1024 bytes)", body = crate::routes::openapi::SeedError),
        (status = 403, description = "Registration is closed", body = crate::routes::openapi::SeedError),
        (status = 409, description = "The username is taken", body = crate::routes::openapi::SeedError),
        (status = 413, description = "Body too large", body = crate::routes::openapi::SeedError),
        (status = 429, description = "Too many sign-ups from this address; see Retry-After", body = crate::routes::openapi::SeedError),
        (status = 503, description = "Password hashing busy (Retry-After) or store unavailable", body = crate::routes::openapi::SeedError),
    ),
)]
pub async fn register(
    req: HttpRequest,
    state: web::Data<AppState>,
    body: web::Json<Credentials>,
) -> Result<HttpResponse, ApiError> {
    if !state.guards.open_registration {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "Registration is closed; ask an administrator for an account".to_owned(),
        ));
    }
    ApiError::check(
        state
            .limits
            .check(
                Rate::RegisterPerIp,
                &client_key(&req, &state.trusted_proxies),
            )
            .await,
        "sign-ups",
    )?;
    let creds = body.into_inner();
    validate(&creds)?;
    let hash = hash_password(&state, creds.password).await?;
    let user = state
        .access
        .identity()
        .create_user(&creds.username, hash, Role::User)
        .await?;
    tracing::info!(user_id = %user.id, username = %user.username, "user registered");
    Ok(HttpResponse::Ok().json(Registered {
        message: "User created successfully",
        user_id: user.id,
    }))
}

/// The key per-address limits count by: an IPv4 address, or the /64 network of an IPv6 one
/// (one subscriber usually holds a whole /64, so counting single addresses would let one client
/// rotate through 2^64 of them).
pub fn client_key(req: &HttpRequest, trusted: &[ipnet::IpNet]) -> String {
    client_addr(req, trusted).map_or_else(String::new, limit_key)
}

/// An address as a limit key: IPv4 (and IPv4-mapped IPv6) as is, IPv6 as its /64.
pub fn limit_key(ip: IpAddr) -> String {
    match ip.to_canonical() {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => ipnet::Ipv6Net::new(v6, 64)
            .map(|n| n.trunc().to_string())
            .unwrap_or_else(|_| v6.to_string()),
    }
}

/// The client's address: the TCP peer, unless that is a trusted proxy; then the nearest address
/// in `X-Forwarded-For` that is not one.
pub fn client_addr(req: &HttpRequest, trusted: &[ipnet::IpNet]) -> Option<IpAddr> {
    let peer = req.peer_addr()?.ip();
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|n| n.contains(ip));
    if !is_trusted(&peer) {
        return Some(peer);
    }
    let hops: Vec<&str> = req
        .headers()
        .get_all("x-forwarded-for")
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect();
    for hop in hops.iter().rev() {
        match hop.parse::<IpAddr>() {
            Ok(ip) if is_trusted(&ip) => continue,
            Ok(ip) => return Some(ip),
            Err(_) => break,
        }
    }
    Some(peer)
}

/// Exchange a username and password for a session token
#[utoipa::path(
    post,
    path = "/login",
    tag = "account",
    request_body = Credentials,
    responses(
        (status = 200, description = "A session token", body = LoggedIn),
        (status = 400, description = "Unreadable body", body = crate::routes::openapi::SeedError),
        (status = 401, description = "Invalid credentials", body = crate::routes::openapi::SeedError),
        (status = 403, description = "User disabled", body = crate::routes::openapi::SeedError),
        (status = 413, description = "Body too large", body = crate::routes::openapi::SeedError),
        (status = 429, description = "Too many logins from this address, or failed logins for this account; see Retry-After", body = crate::routes::openapi::SeedError),
        (status = 503, description = "Password hashing busy (Retry-After) or store unavailable", body = crate::routes::openapi::SeedError),
    ),
)]
pub async fn login(
    req: HttpRequest,
    state: web::Data<AppState>,
    body: web::Json<Credentials>,
) -> Result<HttpResponse, ApiError> {
    ApiError::check(
        state
            .limits
            .check(Rate::LoginPerIp, &client_key(&req, &state.trusted_proxies))
            .await,
        "logins",
    )?;
    let creds = body.into_inner();
    let invalid = || ApiError::new(StatusCode::UNAUTHORIZED, "Invalid credentials".to_owned());
    if !USERNAME_CHARS.contains(&creds.username.chars().count()) {
        // No such user can exist: no lookup, no hash, and no limit key of any size.
        return Err(invalid());
    }
    // Wrong passwords for one name, from however many addresses, lock that name for a while.
    let account = creds.username.to_lowercase();
    if let Decision::Denied { retry_after } = state
        .limits
        .blocked(Failure::LoginPerAccount, &account)
        .await
    {
        return Err(ApiError {
            status: StatusCode::TOO_MANY_REQUESTS,
            message: "Too many failed logins for this account; retry later".to_owned(),
            retry_after: Some(retry_after),
        });
    }
    let user = state
        .access
        .identity()
        .user_by_name(&creds.username)
        .await?;
    let hash = user.as_ref().map(|u| u.password_hash.clone());
    let valid = verify_password(&state, creds.password, hash).await?;
    let user = match user {
        Some(user) if valid => user,
        _ => {
            state
                .limits
                .failed(Failure::LoginPerAccount, &account)
                .await;
            return Err(invalid());
        }
    };
    if user.disabled {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "User disabled".to_owned(),
        ));
    }
    let token = state
        .access
        .tokens()
        .issue(&user.id, &user.username, user.role);
    Ok(HttpResponse::Ok().json(LoggedIn {
        token,
        username: user.username,
        role: user.role,
    }))
}

/// `POST /logout`: revokes the presented token on every node and closes its sessions.
#[utoipa::path(
    post,
    path = "/logout",
    tag = "account",
    security(("bearer" = [])),
    responses(
        crate::routes::openapi::UserErrors,
        (status = 200, description = "The token is revoked and its sessions closed", body = LoggedOut),
        (status = 400, description = "The credential is an API key (revoke it with DELETE /v1/keys/{id})", body = crate::routes::openapi::SeedError),
    ),
)]
pub async fn logout(state: web::Data<AppState>, caller: Caller) -> Result<HttpResponse, ApiError> {
    let p = caller.0;
    let Credential::Token { jti, expires_at } = p.credential else {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "API keys are revoked with DELETE /v1/keys/{id}".to_owned(),
        ));
    };
    let expires_at_unix = unix_secs(expires_at);
    state
        .access
        .revoke(Revocation::Token {
            jti,
            user_id: p.user_id,
            expires_at_unix,
        })
        .await?;
    Ok(HttpResponse::Ok().json(LoggedOut {
        message: "Logged out",
    }))
}
