//! `POST /register` and `POST /login`, with the seed's bodies and answers.

use std::time::SystemTime;

use actix_web::{http::StatusCode, web, HttpRequest, HttpResponse};
use serde::Deserialize;
use serde_json::json;

use super::{ApiError, AppState, Caller};
use crate::{
    access::{Credential, Revocation},
    auth,
    limits::Rate,
    store::Role,
};

pub const USERNAME_CHARS: std::ops::RangeInclusive<usize> = 3..=64;
pub const PASSWORD_BYTES: std::ops::RangeInclusive<usize> = 8..=1024;

#[derive(Deserialize)]
pub struct Credentials {
    pub(super) username: String,
    pub(super) password: String,
}

fn bad_request(message: &str) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, message.to_owned())
}

pub(super) fn validate(c: &Credentials) -> Result<(), ApiError> {
    let name_ok = USERNAME_CHARS.contains(&c.username.chars().count())
        && c.username
            .chars()
            .all(|ch| ch.is_ascii_alphanumeric() || "_.-".contains(ch));
    if !name_ok {
        return Err(bad_request(
            "username must be 3 to 64 characters of letters, digits, '_', '.' or '-'",
        ));
    }
    if !PASSWORD_BYTES.contains(&c.password.len()) {
        return Err(bad_request("password must be 8 to 1024 bytes"));
    }
    Ok(())
}

pub(super) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, ApiError> {
    web::block(f)
        .await
        .map_err(|_| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "Server busy".to_owned()))
}

pub async fn register(
    state: web::Data<AppState>,
    body: web::Json<Credentials>,
) -> Result<HttpResponse, ApiError> {
    let creds = body.into_inner();
    validate(&creds)?;
    let password = creds.password;
    let hash = blocking(move || auth::hash_password(&password)).await?;
    let user = state
        .access
        .identity()
        .create_user(&creds.username, hash, Role::User)
        .await?;
    tracing::info!(user_id = %user.id, username = %user.username, "user registered");
    Ok(HttpResponse::Ok().json(json!({
        "message": "User created successfully",
        "user_id": user.id,
    })))
}

/// The client's address, for per-address limits: the TCP peer, unless that is a trusted proxy;
/// then the nearest address in `X-Forwarded-For` that is not one.
pub fn client_ip(req: &HttpRequest, trusted: &[ipnet::IpNet]) -> String {
    let Some(peer) = req.peer_addr().map(|a| a.ip()) else {
        return String::new();
    };
    let is_trusted = |ip: &std::net::IpAddr| trusted.iter().any(|n| n.contains(ip));
    if !is_trusted(&peer) {
        return peer.to_string();
    }
    let hops: Vec<&str> = req
        .headers()
        .get_all("x-forwarded-for")
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect();
    for hop in hops.iter().rev() {
        match hop.parse::<std::net::IpAddr>() {
            Ok(ip) if is_trusted(&ip) => continue,
            Ok(ip) => return ip.to_string(),
            Err(_) => break,
        }
    }
    peer.to_string()
}

pub async fn login(
    req: HttpRequest,
    state: web::Data<AppState>,
    body: web::Json<Credentials>,
) -> Result<HttpResponse, ApiError> {
    ApiError::check(
        state
            .limits
            .check(Rate::LoginPerIp, &client_ip(&req, &state.trusted_proxies))
            .await,
        "logins",
    )?;
    let creds = body.into_inner();
    let user = state
        .access
        .identity()
        .user_by_name(&creds.username)
        .await?;
    let hash = user.as_ref().map_or_else(
        || auth::decoy_hash().to_owned(),
        |u| u.password_hash.clone(),
    );
    let password = creds.password;
    let valid = blocking(move || auth::verify_password(&password, &hash)).await?;
    let user = match user {
        Some(user) if valid => user,
        _ => {
            return Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "Invalid credentials".to_owned(),
            ))
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
    Ok(HttpResponse::Ok().json(json!({
        "token": token,
        "username": user.username,
        "role": user.role,
    })))
}

/// `POST /logout`: revokes the presented token on every node and closes its sessions.
pub async fn logout(state: web::Data<AppState>, caller: Caller) -> Result<HttpResponse, ApiError> {
    let p = caller.0;
    let Credential::Token { jti, expires_at } = p.credential else {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "API keys are revoked with DELETE /v1/keys/{id}".to_owned(),
        ));
    };
    let expires_at_unix = expires_at
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    state
        .access
        .revoke(Revocation::Token {
            jti,
            user_id: p.user_id,
            expires_at_unix,
        })
        .await?;
    Ok(HttpResponse::Ok().json(json!({ "message": "Logged out" })))
}
