//! The gateway's answers to the session's request hooks: limits and stored history before a
//! request, usage records and stored turns after it.

use std::{sync::Arc, time::SystemTime};

use ai_gateway_actors::{
    provider::Message, Admission, Refusal, RequestHooks, RequestOutcome, RequestStart,
};
use ai_gateway_proto::{ErrorReason, FinishReason};
use futures_util::future::LocalBoxFuture;

use crate::{
    limits::{Decision, Limits, Rate},
    store::{
        ConversationAccess, ConversationCap, Exchange, PendingWrite, Stores, UsageRecord,
        WriteBehind,
    },
};

/// Longest title taken from a conversation's first question.
const TITLE_CHARS: usize = 80;

pub struct GatewayHooks {
    pub stores: Stores,
    pub limits: Arc<Limits>,
    pub writes: WriteBehind,
    pub history: HistoryCap,
    /// What one stored conversation may hold.
    pub stored: ConversationCap,
}

/// How much of a stored conversation goes to the model with a new message: the newest turns,
/// at most this many and this many bytes of text (the oldest are left out).
#[derive(Debug, Clone, Copy)]
pub struct HistoryCap {
    pub max_messages: usize,
    pub max_bytes: usize,
}

impl HistoryCap {
    /// Keeps the newest of `history` (oldest first) within the cap.
    fn apply<T>(&self, mut history: Vec<T>, bytes: impl Fn(&T) -> usize) -> Vec<T> {
        let mut total = 0usize;
        let mut keep = 0usize;
        for m in history.iter().rev() {
            total = total.saturating_add(bytes(m));
            if keep == self.max_messages || total > self.max_bytes {
                break;
            }
            keep += 1;
        }
        history.split_off(history.len() - keep)
    }
}

fn rate_limited(what: &str, retry_after: std::time::Duration) -> Refusal {
    let secs = crate::routes::retry_after_secs(retry_after);
    Refusal::new(
        ErrorReason::RateLimited,
        format!("{what}; retry in {secs} s"),
    )
}

impl GatewayHooks {
    async fn admit(
        stores: Stores,
        limits: Arc<Limits>,
        history_cap: HistoryCap,
        start: RequestStart,
    ) -> Result<Admission, Refusal> {
        let user = &start.session.user_id;
        // The slot first: a request refused for want of one does not spend the per-minute rate.
        let lease = limits.acquire_stream(user).await.ok_or_else(|| {
            Refusal::new(
                ErrorReason::RateLimited,
                "too many answers streaming at once for this user",
            )
        })?;
        if let Decision::Denied { retry_after } = limits.check(Rate::ChatPerUser, user).await {
            return Err(rate_limited(
                "too many chat requests per minute",
                retry_after,
            ));
        }
        if limits.token_budget_spent(user).await {
            return Err(Refusal::new(
                ErrorReason::RateLimited,
                "today's token budget is spent; it renews at 00:00 UTC",
            ));
        }
        let mut request = start.request;
        if let Some(id) = &start.conversation_id {
            if !crate::store::is_uuid(id) {
                return Err(Refusal::new(
                    ErrorReason::InvalidPayload,
                    "Invalid chat payload: conversation_id must be a UUID",
                ));
            }
            let title: String = request
                .messages
                .last()
                .map(|m| m.text_content().chars().take(TITLE_CHARS).collect())
                .unwrap_or_default();
            let history = match stores
                .conversations
                .open_conversation(user, id, &title, history_cap.max_messages)
                .await
            {
                Ok(ConversationAccess::Owned(history)) => history,
                Ok(ConversationAccess::Foreign) => {
                    return Err(Refusal::new(
                        ErrorReason::UnknownConversation,
                        format!("no conversation {id} of yours"),
                    ))
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot open a conversation");
                    return Err(Refusal::new(
                        ErrorReason::StorageUnavailable,
                        "conversation storage is unavailable; retry later or send without conversation_id",
                    ));
                }
            };
            let history = history_cap.apply(history, |m| m.content.len());
            let mut messages: Vec<Message> = history
                .into_iter()
                .map(|m| Message::text(m.role.into(), m.content))
                .collect();
            messages.append(&mut request.messages);
            request.messages = messages;
        }
        Ok(Admission {
            request,
            lease: Some(Box::new(lease)),
        })
    }
}

impl RequestHooks for GatewayHooks {
    fn admit(&self, start: RequestStart) -> LocalBoxFuture<'static, Result<Admission, Refusal>> {
        Box::pin(Self::admit(
            self.stores.clone(),
            self.limits.clone(),
            self.history,
            start,
        ))
    }

    fn finished(&self, o: RequestOutcome) {
        let usage_id = uuid::Uuid::new_v4().to_string();
        let api_key_id = o.session.api_key.then(|| o.session.credential_id.clone());
        if let Some(conversation_id) = &o.conversation_id {
            let worth_keeping = matches!(
                o.finish_reason,
                FinishReason::Stop | FinishReason::Length | FinishReason::ToolCalls
            ) || !o.answer.is_empty();
            if worth_keeping {
                self.writes.submit(PendingWrite::Exchange(Exchange {
                    conversation_id: conversation_id.clone(),
                    request_uuid: usage_id.clone(),
                    question: o.question.clone(),
                    answer: o.answer.clone(),
                    model: o.model.clone(),
                    prompt_tokens: o.usage.prompt_tokens,
                    completion_tokens: o.usage.completion_tokens,
                    first_chunk_ms: o.first_chunk_ms,
                    duration_ms: o.duration_ms,
                    cap: self.stored,
                }));
            }
        }
        self.writes.submit(PendingWrite::Usage(UsageRecord {
            id: usage_id,
            user_id: o.session.user_id.clone(),
            api_key_id,
            session_id: o.session.session_id.to_string(),
            request_id: o.request_id,
            model: o.model,
            provider: o.provider.to_owned(),
            prompt_tokens: o.usage.prompt_tokens,
            completion_tokens: o.usage.completion_tokens,
            estimated: o.usage.estimated,
            first_chunk_ms: o.first_chunk_ms,
            duration_ms: o.duration_ms,
            finish_reason: serde_json::to_value(o.finish_reason)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default(),
            created_at: SystemTime::now(),
        }));
        let limits = self.limits.clone();
        let user = o.session.user_id;
        // A long prompt costs as much as a long answer: both count against the budget.
        let spent = o.usage.prompt_tokens + o.usage.completion_tokens;
        actix_rt::spawn(async move { limits.spend_tokens(&user, spent).await });
    }
}

#[cfg(test)]
mod history_tests {
    use super::HistoryCap;

    fn keep(history: &[&str]) -> Vec<String> {
        let cap = HistoryCap {
            max_messages: 3,
            max_bytes: 10,
        };
        let owned: Vec<String> = history.iter().map(|m| m.to_string()).collect();
        cap.apply(owned, |m| m.len())
    }

    #[test]
    fn the_newest_turns_within_both_caps_are_kept() {
        assert_eq!(keep(&["a", "b", "c", "d"]), ["b", "c", "d"]);
        assert_eq!(keep(&["aaaa", "bbbb", "cccc"]), ["bbbb", "cccc"]);
        assert!(keep(&["aaaaaaaaaaa"]).is_empty());
    }
}
