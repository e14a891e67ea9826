//! API keys for programs: created by their owner (shown once), listed, revoked by the owner or
//! an admin.

use std::time::{Duration, SystemTime};

use actix_web::{http::StatusCode, web, HttpResponse};
use serde::Deserialize;
use serde_json::json;

use super::{ApiError, AppState, Caller};
use crate::{
    access::{api_key_hash, new_api_key, Revocation},
    store::{ApiKey, Role},
};

/// Longest name a key may have.
const MAX_KEY_NAME_CHARS: usize = 100;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewKey {
    name: String,
    /// Seconds from now; absent means the key does not expire.
    #[serde(default)]
    expires_in_secs: Option<u64>,
}

pub async fn create(
    state: web::Data<AppState>,
    caller: Caller,
    body: web::Json<NewKey>,
) -> Result<HttpResponse, ApiError> {
    let body = body.into_inner();
    let name = body.name.trim();
    if name.is_empty() || name.chars().count() > MAX_KEY_NAME_CHARS {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "name must be 1 to 100 characters".to_owned(),
        ));
    }
    let (secret, prefix) = new_api_key();
    let key = ApiKey {
        id: uuid::Uuid::new_v4().to_string(),
        user_id: caller.0.user_id,
        name: name.to_owned(),
        prefix,
        key_hash: api_key_hash(&secret),
        created_at: SystemTime::now(),
        expires_at: body
            .expires_in_secs
            .map(|s| SystemTime::now() + Duration::from_secs(s)),
        revoked_at: None,
    };
    let key = state.access.identity().create_api_key(key).await?;
    let mut body = serde_json::to_value(&key).expect("keys serialize");
    // The only time the key itself is shown.
    body["key"] = json!(secret);
    Ok(HttpResponse::Created().json(body))
}

pub async fn list(state: web::Data<AppState>, caller: Caller) -> Result<HttpResponse, ApiError> {
    let keys = state
        .access
        .identity()
        .api_keys_of(&caller.0.user_id)
        .await?;
    Ok(HttpResponse::Ok().json(json!({ "keys": keys })))
}

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
    Ok(HttpResponse::Ok().json(json!({ "id": key.id, "revoked": true })))
}
