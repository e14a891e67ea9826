//! A user's stored conversations and usage. Nobody sees another user's.

use std::time::{Duration, SystemTime};

use actix_web::{web, HttpResponse};
use serde::{Deserialize, Serialize};

use super::{bodies::UsageReport, ApiError, AppState, Caller, Paging};
use crate::store::{Conversation, StoredMessage, UsageTotal};

/// `GET /v1/conversations`'s answer.
#[derive(Serialize, utoipa::ToSchema)]
pub struct ConversationList {
    conversations: Vec<Conversation>,
}

/// `GET /v1/conversations/{id}`'s answer: the conversation and a page of its messages.
#[derive(Serialize, utoipa::ToSchema)]
pub struct ConversationShown {
    #[serde(flatten)]
    conversation: Conversation,
    /// Oldest first.
    messages: Vec<StoredMessage>,
    /// Messages in the whole conversation.
    total: usize,
    offset: usize,
}

/// The caller's conversations
#[utoipa::path(
    get,
    path = "/v1/conversations",
    operation_id = "list_conversations",
    tag = "v1",
    security(("bearer" = []), ("x_api_key" = [])),
    responses(
        crate::routes::openapi::OpenAiErrors,
        (status = 200, description = "The caller's conversations", body = ConversationList),
    ),
)]
pub async fn list(state: web::Data<AppState>, caller: Caller) -> Result<HttpResponse, ApiError> {
    let list = state
        .stores
        .conversations
        .conversations_of(&caller.0.user_id)
        .await?;
    Ok(HttpResponse::Ok().json(ConversationList {
        conversations: list,
    }))
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
        (status = 200, description = "The conversation and a page of its messages", body = ConversationShown),
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
    Ok(HttpResponse::Ok().json(ConversationShown {
        conversation: found.conversation,
        messages: found.messages,
        total: found.total,
        offset: page.offset,
    }))
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
        (status = 200, description = "The caller's totals by UTC day and model", body = UsageReport<UsageTotal>),
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
    Ok(HttpResponse::Ok().json(UsageReport { days, totals }))
}
