//! A user's stored conversations and usage. Nobody sees another user's.

use std::time::{Duration, SystemTime};

use actix_web::{web, HttpResponse};
use serde::Deserialize;
use serde_json::json;

use super::{ApiError, AppState, Caller, Paging};

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
pub async fn show(
    state: web::Data<AppState>,
    caller: Caller,
    id: web::Path<String>,
    page: web::Query<Paging>,
) -> Result<HttpResponse, ApiError> {
    let (conversation, messages) = state
        .stores
        .conversations
        .conversation(&caller.0.user_id, &id)
        .await?
        .ok_or_else(|| ApiError::not_found("Conversation"))?;
    let total = messages.len();
    let shown: Vec<_> = messages
        .into_iter()
        .skip(page.offset)
        .take(page.limit())
        .collect();
    let mut body = serde_json::to_value(conversation).expect("conversations serialize");
    body["messages"] = json!(shown);
    body["total"] = json!(total);
    body["offset"] = json!(page.offset);
    Ok(HttpResponse::Ok().json(body))
}

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

#[derive(Deserialize)]
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
