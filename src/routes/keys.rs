//! API keys for programs: created by their owner (shown once), listed, revoked by the owner or
//! an admin.

use std::time::{Duration, SystemTime};

use actix_web::{web, HttpResponse};
use serde::{Deserialize, Serialize};

use super::{ApiError, AppState, Caller, Paging};
use crate::{
    access::{api_key_hash, new_api_key},
    revocation::Revocation,
    store::{ApiKey, Role},
};

/// Longest name a key may have.
const MAX_KEY_NAME_CHARS: usize = 100;

/// Longest lifetime a key may be given: ten years.
pub const MAX_KEY_LIFETIME_SECS: u64 = 10 * 365 * 24 * 3600;

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewKey {
    name: String,
    /// Seconds from now; absent means the key does not expire.
    #[serde(default)]
    expires_in_secs: Option<u64>,
}

/// `POST /v1/keys`'s answer: the key's record and, this once, the key itself.
#[derive(Serialize, utoipa::ToSchema)]
pub struct CreatedKey {
    #[serde(flatten)]
    record: ApiKey,
    /// The key itself, shown only in this answer.
    key: String,
}

/// `GET /v1/keys`: a page of the caller's keys.
#[derive(Serialize, utoipa::ToSchema)]
pub struct KeyPage {
    /// Never the keys themselves.
    keys: Vec<ApiKey>,
    offset: usize,
    limit: usize,
    /// Where the next page starts; null on the last page.
    next_offset: Option<usize>,
}

/// `DELETE /v1/keys/{id}`'s answer.
#[derive(Serialize, utoipa::ToSchema)]
pub struct RevokedKey {
    id: String,
    /// Always true.
    revoked: bool,
}

/// When a key asked to live `secs` from `now` expires: 1 second to ten years, else 400.
fn expiry(now: SystemTime, secs: Option<u64>) -> Result<Option<SystemTime>, ApiError> {
    let Some(secs) = secs else { return Ok(None) };
    if !(1..=MAX_KEY_LIFETIME_SECS).contains(&secs) {
        return Err(ApiError::bad_request(format!(
            "expires_in_secs must be 1 to {MAX_KEY_LIFETIME_SECS} (ten years), or absent for a key that does not expire"
        )));
    }
    now.checked_add(Duration::from_secs(secs))
        .map(Some)
        .ok_or_else(|| ApiError::bad_request("expires_in_secs is too large"))
}

/// Create an API key for the caller; the key itself is shown only in this answer
#[utoipa::path(
    post,
    path = "/v1/keys",
    operation_id = "create_key",
    tag = "v1",
    security(("bearer" = []), ("x_api_key" = [])),
    request_body = NewKey,
    responses(
        crate::routes::openapi::OpenAiErrors,
        (status = 201, description = "The key's record and, this once, `key`", body = CreatedKey),
        (status = 400, description = "Bad name (1 to 100 characters) or expires_in_secs, or an unknown field", body = crate::routes::openapi::OpenAiErrorBody),
        (status = 409, description = "The caller has max_api_keys_per_user keys", body = crate::routes::openapi::OpenAiErrorBody),
        (status = 413, description = "Body too large", body = crate::routes::openapi::OpenAiErrorBody),
    ),
)]
pub async fn create(
    state: web::Data<AppState>,
    caller: Caller,
    body: web::Json<NewKey>,
) -> Result<HttpResponse, ApiError> {
    let body = body.into_inner();
    let name = body.name.trim();
    if name.is_empty() || name.chars().count() > MAX_KEY_NAME_CHARS {
        return Err(ApiError::bad_request("name must be 1 to 100 characters"));
    }
    let now = SystemTime::now();
    let expires_at = expiry(now, body.expires_in_secs)?;
    let (secret, prefix) = new_api_key();
    let key = ApiKey {
        id: uuid::Uuid::new_v4().to_string(),
        user_id: caller.0.user_id,
        name: name.to_owned(),
        prefix,
        key_hash: api_key_hash(&secret),
        created_at: now,
        expires_at,
        revoked_at: None,
    };
    let key = state
        .access
        .identity()
        .create_api_key(key, state.guards.max_api_keys_per_user)
        .await?;
    // The only time the key itself is shown.
    Ok(HttpResponse::Created().json(CreatedKey {
        record: key,
        key: secret,
    }))
}

/// `GET /v1/keys?offset=&limit=`: the caller's keys, oldest first, `limit` (default 100, at
/// most 1000) from `offset`. `next_offset` is where the next page starts, or null.
#[utoipa::path(
    get,
    path = "/v1/keys",
    operation_id = "list_keys",
    tag = "v1",
    security(("bearer" = []), ("x_api_key" = [])),
    params(Paging),
    responses(
        crate::routes::openapi::OpenAiErrors,
        (status = 200, description = "A page of the caller's keys (never the keys themselves)", body = KeyPage),
        (status = 400, description = "Bad query", body = crate::routes::openapi::OpenAiErrorBody),
    ),
)]
pub async fn list(
    state: web::Data<AppState>,
    caller: Caller,
    page: web::Query<Paging>,
) -> Result<HttpResponse, ApiError> {
    let limit = page.limit();
    let mut keys = state
        .access
        .identity()
        .api_keys_page(&caller.0.user_id, page.offset, limit + 1)
        .await?;
    let more = keys.len() > limit;
    keys.truncate(limit);
    let next_offset = more.then(|| page.offset.saturating_add(limit));
    Ok(HttpResponse::Ok().json(KeyPage {
        keys,
        offset: page.offset,
        limit,
        next_offset,
    }))
}

/// Revoke one of the caller's API keys (an admin may revoke anyone's) on every node
#[utoipa::path(
    delete,
    path = "/v1/keys/{id}",
    operation_id = "revoke_key",
    tag = "v1",
    security(("bearer" = []), ("x_api_key" = [])),
    params(("id" = String, Path, description = "The key's id")),
    responses(
        crate::routes::openapi::OpenAiErrors,
        (status = 200, description = "The key is revoked", body = RevokedKey),
        (status = 404, description = "No such key of the caller's", body = crate::routes::openapi::OpenAiErrorBody),
    ),
)]
pub async fn revoke(
    state: web::Data<AppState>,
    caller: Caller,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = id.into_inner();
    let key = state
        .access
        .identity()
        .api_key(&id)
        .await?
        .filter(|k| k.user_id == caller.0.user_id || caller.0.role == Role::Admin)
        .ok_or_else(|| ApiError::not_found("API key"))?;
    state
        .access
        .revoke(Revocation::ApiKey { id: key.id.clone() })
        .await?;
    Ok(HttpResponse::Ok().json(RevokedKey {
        id: key.id,
        revoked: true,
    }))
}

#[cfg(test)]
mod tests {
    use actix_web::http::StatusCode;

    use super::*;

    #[test]
    fn expiry_refuses_what_time_cannot_hold() {
        let now = SystemTime::now();
        assert_eq!(expiry(now, None), Ok(None));
        assert_eq!(
            expiry(now, Some(60)),
            Ok(Some(now + Duration::from_secs(60)))
        );
        for bad in [0, MAX_KEY_LIFETIME_SECS + 1, u64::MAX] {
            assert_eq!(
                expiry(now, Some(bad)).unwrap_err().status,
                StatusCode::BAD_REQUEST
            );
        }
    }
}
