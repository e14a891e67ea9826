//! The authenticated caller of a REST endpoint: `Authorization: Bearer <token or API key>`, or
//! `x-api-key` (Anthropic's SDKs).

use std::{future::Future, pin::Pin};

use actix_web::{dev::Payload, http::header, web, FromRequest, HttpRequest};

use super::{account::client_key, ApiError, AppState};
use crate::{
    access::{AuthError, Credential, Principal},
    auth::TokenError,
    limits::{Decision, Failure},
};

/// What the registry and the hooks know of a caller's session (a WebSocket connection, or one
/// OpenAI-compatible HTTP request).
pub fn session_of(
    principal: Principal,
    session_id: String,
    state: &AppState,
    req: &HttpRequest,
) -> ai_gateway_actors::SessionInfo {
    ai_gateway_actors::SessionInfo {
        session_id: session_id.into(),
        api_key: matches!(principal.credential, Credential::ApiKey { .. }),
        credential_id: principal.credential.id().to_owned(),
        user_id: principal.user_id,
        username: principal.username,
        role: principal.role.as_str().to_owned(),
        node_id: state.session_env.config.node_id.clone(),
        remote_addr: req.peer_addr().map(|a| a.to_string()),
        started_at: std::time::SystemTime::now(),
        running: 0,
        last_model: None,
    }
}

/// Extracts and checks the bearer credential; a handler that takes a `Caller` needs one.
pub struct Caller(pub Principal);

/// The bearer credential of a request, if any. The scheme is case-insensitive (RFC 9110):
/// `bearer`, `BEARER` and `Bearer` all work.
pub fn bearer(req: &HttpRequest) -> Option<&str> {
    let value = req.headers().get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.trim_start().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

impl FromRequest for Caller {
    type Error = ApiError;
    type Future = Pin<Box<dyn Future<Output = Result<Caller, ApiError>>>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let state = req.app_data::<web::Data<AppState>>().cloned();
        // Anthropic's SDKs send their key as `x-api-key`.
        let presented = bearer(req)
            .or_else(|| {
                req.headers()
                    .get("x-api-key")
                    .and_then(|v| v.to_str().ok())
                    .map(str::trim)
                    .filter(|k| !k.is_empty())
            })
            .map(str::to_owned);
        let req = req.clone();
        Box::pin(async move {
            let Some(state) = state else {
                return Err(ApiError::new(
                    actix_web::http::StatusCode::INTERNAL_SERVER_ERROR,
                    "AppState is not configured".to_owned(),
                ));
            };
            let presented = presented.ok_or(TokenError::Missing)?;
            let from = client_key(&req, &state.trusted_proxies);
            Ok(Caller(authenticate_from(&state, &from, &presented).await?))
        })
    }
}

/// Checks a presented token or API key for a client at address key `from`. Credentials that
/// match nothing count against the address; once it has used up `failed_auth_*`, its API keys
/// are refused (429) without a store lookup until the allowance refills.
pub async fn authenticate_from(
    state: &AppState,
    from: &str,
    presented: &str,
) -> Result<Principal, ApiError> {
    if state.access.may_look_up(presented) {
        if let Decision::Denied { retry_after } =
            state.limits.blocked(Failure::AuthPerIp, from).await
        {
            return Err(ApiError {
                status: actix_web::http::StatusCode::TOO_MANY_REQUESTS,
                message: "Too many failed authentication attempts; retry later".to_owned(),
                retry_after: Some(retry_after),
            });
        }
    }
    match state.access.authenticate(presented).await {
        Err(AuthError::Token(TokenError::Invalid)) => {
            state.limits.failed(Failure::AuthPerIp, from).await;
            Err(TokenError::Invalid.into())
        }
        other => Ok(other?),
    }
}
