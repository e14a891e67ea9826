//! A user's stored conversations and usage. Nobody sees another user's.

use std::time::{Duration, SystemTime};

use actix_web::{web, HttpResponse};
use serde::Deserialize;
use serde_json::json;

use super::{ApiError, AppState, Caller, Paging};

/// The caller's conversations
#[utoipa::path(
    get,
    path = "/v1/conversations",
    operation_id = "list_conversations",
    tag = "v1",
    security(("bearer" = []), ("x_api_key" = [])),
    responses(
        crate::routes::openapi::OpenAiErrors,
        (status = 200, description = "`{conversations: [{id, title, created_at, updated_at}]}`", body = Object),
    ),
)]
pub async fn list(state: web::Data<AppState>, caller: Caller) -> Result<HttpResponse, ApiError> {
    let list = state
        .stores
        .conversations
        .conversations_of(&caller.0.user_id)
        .await?;
    Ok(HttpResponse::Ok().json(json!({ "conversations": list })))
}

/// `GET /v1/conversations/{id}?offset=&limit=`: the conversation and a page of its messages,
/// oldest first (100 by default, 1,000 at most), with their `total`.
#[utoipa::path(
    get,
    path = "/v1/conversations/{id}",
    operation_id = "show_conversation",
    tag = "v1",
    security(("bearer" = []), ("x_api_key" = [])),
    params(("id" = String, Path, description = "The conversation's id"), Paging),
    responses(
        crate::routes::openapi::OpenAiErrors,
        (status = 200, description = "`{id, title, created_at, updated_at, messages, total, offset}`", body = Object),
        (status = 400, description = "Bad query", body = crate::routes::openapi::OpenAiErrorBody),
        (status = 404, description = "No such conversation of the caller's", body = crate::routes::openapi::OpenAiErrorBody),
    ),
)]
pub async fn show(
    state: web::Data<AppState>,
    caller: Caller,
    id: web::Path<String>,
    page: web::Query<Paging>,
) -> Result<HttpResponse, ApiError> {
    let found = state
        .stores
        .conversations
        .conversation(&caller.0.user_id, &id, page.offset, page.limit())
        .await?
        .ok_or_else(|| ApiError::not_found("Conversation"))?;
    let mut body = serde_json::to_value(found.conversation).expect("conversations serialize");
    body["messages"] = json!(found.messages);
    body["total"] = json!(found.total);
    body["offset"] = json!(page.offset);
    Ok(HttpResponse::Ok().json(body))
}

/// Delete one of the caller's conversations
#[utoipa::path(
    delete,
    path = "/v1/conversations/{id}",
    operation_id = "delete_conversation",
    tag = "v1",
    security(("bearer" = []), ("x_api_key" = [])),
    params(("id" = String, Path, description = "The conversation's id")),
    responses(
        crate::routes::openapi::OpenAiErrors,
        (status = 204, description = "Deleted"),
        (status = 404, description = "No such conversation of the caller's", body = crate::routes::openapi::OpenAiErrorBody),
    ),
)]
pub async fn delete(
    state: web::Data<AppState>,
    caller: Caller,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    if !state
        .stores
        .conversations
        .delete_conversation(&caller.0.user_id, &id)
        .await?
    {
        return Err(ApiError::not_found("Conversation"));
    }
    Ok(HttpResponse::NoContent().finish())
}

/// Most days of usage one request may ask for.
const MAX_USAGE_DAYS: u64 = 366;

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct UsageQuery {
    /// Today and the days before it; 30 by default.
    #[serde(default = "default_days")]
    days: u64,
}

fn default_days() -> u64 {
    30
}

impl UsageQuery {
    /// The days asked for (bounded) and the moment they start from.
    pub fn window(&self) -> (u64, SystemTime) {
        let days = self.days.clamp(1, MAX_USAGE_DAYS);
        let since = SystemTime::now()
            .checked_sub(Duration::from_secs((days - 1) * 86_400))
            .unwrap_or(SystemTime::UNIX_EPOCH);
        (days, since)
    }
}

/// `GET /v1/usage?days=N`: the caller's totals by UTC day and model.
#[utoipa::path(
    get,
    path = "/v1/usage",
    tag = "v1",
    security(("bearer" = []), ("x_api_key" = [])),
    params(UsageQuery),
    responses(
        crate::routes::openapi::OpenAiErrors,
        (status = 200, description = "`{days, totals: [{day, model, requests, prompt_tokens, completion_tokens, estimated_requests}]}`", body = Object),
        (status = 400, description = "Bad query", body = crate::routes::openapi::OpenAiErrorBody),
    ),
)]
pub async fn usage(
    state: web::Data<AppState>,
    caller: Caller,
    query: web::Query<UsageQuery>,
) -> Result<HttpResponse, ApiError> {
    let (days, since) = query.window();
    let totals = state
        .stores
        .usage
        .usage_totals(&caller.0.user_id, since)
        .await?;
    Ok(HttpResponse::Ok().json(json!({ "days": days, "totals": totals })))
}
