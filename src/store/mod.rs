//! What the gateway stores: users and their credentials, conversations, usage. Each concern is a
//! trait; [`memory`] implements them in process memory (the embedded default) and [`postgres`]
//! in PostgreSQL.

pub mod memory;
pub mod postgres;
mod writer;

use std::{sync::Arc, time::SystemTime};

use ai_gateway_actors::unix_time::{as_unix_secs, unix_secs};
use ai_gateway_proto::Role as MessageRole;
use async_trait::async_trait;
use serde::{Deserialize, Serialize};

pub use writer::{PendingWrite, WriteBehind};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    User,
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::User => "user",
            Role::Admin => "admin",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "user" => Some(Role::User),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub id: String,
    pub username: String,
    /// argon2id PHC string; never logged, never sent.
    pub password_hash: String,
    pub role: Role,
    pub disabled: bool,
    pub created_at: SystemTime,
}

/// An API key as stored: never the key itself, only its hash and visible prefix.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct ApiKey {
    pub id: String,
    pub user_id: String,
    pub name: String,
    /// The key's first characters, to tell keys apart.
    pub prefix: String,
    #[serde(skip)]
    pub key_hash: Vec<u8>,
    /// Unix seconds.
    #[serde(with = "as_unix_secs")]
    #[schema(value_type = u64)]
    pub created_at: SystemTime,
    /// Unix seconds; null when the key does not expire.
    #[serde(with = "as_unix_secs::option")]
    #[schema(value_type = Option<u64>)]
    pub expires_at: Option<SystemTime>,
    /// Unix seconds; null while the key is not revoked.
    #[serde(with = "as_unix_secs::option")]
    #[schema(value_type = Option<u64>)]
    pub revoked_at: Option<SystemTime>,
}

impl ApiKey {
    pub fn usable_at(&self, now: SystemTime) -> bool {
        self.revoked_at.is_none() && self.expires_at.is_none_or(|e| e > now)
    }
}

/// Credentials revoked, and users disabled, since some moment: what a node catches up on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Revocations {
    /// `(jti, expires_at)`
    pub tokens: Vec<(String, SystemTime)>,
    pub keys: Vec<String>,
    pub disabled_users: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Conversation {
    pub id: String,
    pub title: String,
    /// Unix seconds.
    #[serde(with = "as_unix_secs")]
    #[schema(value_type = u64)]
    pub created_at: SystemTime,
    /// Unix seconds.
    #[serde(with = "as_unix_secs")]
    #[schema(value_type = u64)]
    pub updated_at: SystemTime,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct StoredMessage {
    pub role: MessageRole,
    pub content: String,
    pub model: Option<String>,
    pub prompt_tokens: Option<u64>,
    pub completion_tokens: Option<u64>,
    pub first_chunk_ms: Option<u64>,
    pub duration_ms: Option<u64>,
    /// Unix seconds.
    #[serde(with = "as_unix_secs")]
    #[schema(value_type = u64)]
    pub created_at: SystemTime,
}

/// What one conversation may store: past either bound its oldest messages are deleted when a
/// new exchange is added (the newest exchange is always kept).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConversationCap {
    pub max_messages: usize,
    /// Bytes of message text (UTF-8).
    pub max_bytes: usize,
}

impl ConversationCap {
    /// How many of `sizes` (the messages' byte sizes, oldest first) to delete, oldest first,
    /// so that the rest fit; the last `newest` are never deleted.
    pub fn excess(&self, sizes: &[usize], newest: usize) -> usize {
        let mut bytes = 0usize;
        // `kept`: the newer messages already kept.
        for (kept, (i, size)) in sizes.iter().enumerate().rev().enumerate() {
            bytes = bytes.saturating_add(*size);
            let protected = sizes.len() - i <= newest;
            if !protected && (kept >= self.max_messages || bytes > self.max_bytes) {
                return i + 1;
            }
        }
        0
    }
}

/// One question and its answer, added to a conversation when the request ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exchange {
    pub conversation_id: String,
    /// Makes a retried write harmless.
    pub request_uuid: String,
    pub question: Option<String>,
    pub answer: String,
    pub model: String,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub first_chunk_ms: Option<u64>,
    pub duration_ms: u64,
    /// The conversation's bounds, applied as this exchange is stored.
    pub cap: ConversationCap,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageRecord {
    /// Chosen by the gateway, so a retried write is harmless.
    pub id: String,
    pub user_id: String,
    pub api_key_id: Option<String>,
    pub session_id: String,
    pub request_id: String,
    pub model: String,
    pub provider: String,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    /// The token figures are the gateway's own count (the upstream reported none).
    pub estimated: bool,
    pub first_chunk_ms: Option<u64>,
    pub duration_ms: u64,
    pub finish_reason: String,
    pub created_at: SystemTime,
}

/// A user's usage of one model on one UTC day.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct UsageTotal {
    /// `YYYY-MM-DD`, UTC.
    pub day: String,
    pub model: String,
    pub requests: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    /// Requests whose token figures the gateway counted itself (the upstream reported none).
    pub estimated_requests: u64,
}

/// Every user's totals for one UTC day and model (the admin panel's usage charts).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct UserUsageTotal {
    pub user_id: String,
    pub username: String,
    #[serde(flatten)]
    pub total: UsageTotal,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    #[error("{0}")]
    Conflict(String),
    #[error("store unavailable: {0}")]
    Unavailable(String),
}

pub type StoreResult<T> = Result<T, StoreError>;

/// What a user is told when they hold as many live API keys as they may.
pub fn key_limit_reached(max_live: u32) -> StoreError {
    StoreError::Conflict(format!(
        "API key limit reached: at most {max_live} live keys per user; revoke one first"
    ))
}

#[async_trait]
pub trait IdentityStore: Send + Sync + 'static {
    /// Creates a user; a taken name is a [`StoreError::Conflict`].
    async fn create_user(
        &self,
        username: &str,
        password_hash: String,
        role: Role,
    ) -> StoreResult<User>;
    async fn user_by_name(&self, username: &str) -> StoreResult<Option<User>>;
    async fn user_by_id(&self, id: &str) -> StoreResult<Option<User>>;
    /// Answers whether the user exists.
    async fn set_disabled(&self, user_id: &str, disabled: bool) -> StoreResult<bool>;
    /// Users by creation time (oldest first), for the admin API.
    async fn list_users(&self, offset: usize, limit: usize) -> StoreResult<Vec<User>>;
    /// Answers whether the user exists.
    async fn set_role(&self, user_id: &str, role: Role) -> StoreResult<bool>;

    async fn revoke_token(
        &self,
        jti: &str,
        user_id: &str,
        expires_at: SystemTime,
    ) -> StoreResult<()>;

    /// Stores a new key unless its user already holds `max_live` usable (not revoked, not
    /// expired) keys: then a [`StoreError::Conflict`] saying so. Atomic per user.
    async fn create_api_key(&self, key: ApiKey, max_live: u32) -> StoreResult<ApiKey>;
    async fn api_key_by_hash(&self, key_hash: &[u8]) -> StoreResult<Option<ApiKey>>;
    async fn api_key(&self, id: &str) -> StoreResult<Option<ApiKey>>;
    /// Every key of a user, oldest first.
    async fn api_keys_of(&self, user_id: &str) -> StoreResult<Vec<ApiKey>>;
    /// One page of a user's keys, oldest first.
    async fn api_keys_page(
        &self,
        user_id: &str,
        offset: usize,
        limit: usize,
    ) -> StoreResult<Vec<ApiKey>> {
        Ok(self
            .api_keys_of(user_id)
            .await?
            .into_iter()
            .skip(offset)
            .take(limit)
            .collect())
    }
    /// Answers whether a live key was revoked.
    async fn revoke_api_key(&self, id: &str) -> StoreResult<bool>;

    /// Everything revoked or disabled at or after `since`.
    async fn revocations_since(&self, since: SystemTime) -> StoreResult<Revocations>;
}

/// One admin action, as the audit table keeps it.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct AuditEntry {
    pub id: i64,
    /// The admin's username, or `static-token`.
    pub actor: String,
    pub action: String,
    pub target: String,
    /// What the action was given (its fields depend on `action`).
    #[schema(value_type = Object)]
    pub detail: serde_json::Value,
    /// Unix seconds.
    #[serde(with = "as_unix_secs")]
    #[schema(value_type = u64)]
    pub at: SystemTime,
}

#[async_trait]
pub trait AuditStore: Send + Sync + 'static {
    async fn record_audit(
        &self,
        actor: &str,
        action: &str,
        target: &str,
        detail: &serde_json::Value,
    ) -> StoreResult<()>;
    /// The most recent entries, newest first.
    async fn recent_audit(&self, limit: usize) -> StoreResult<Vec<AuditEntry>>;
}

/// How a named conversation stands for a user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConversationAccess {
    /// Theirs (perhaps just created), with its newest messages, oldest first.
    Owned(Vec<StoredMessage>),
    /// Another user's: treated as not found.
    Foreign,
}

/// A conversation with one page of its messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConversationPage {
    pub conversation: Conversation,
    pub messages: Vec<StoredMessage>,
    /// Messages in the whole conversation.
    pub total: usize,
}

#[async_trait]
pub trait ConversationStore: Send + Sync + 'static {
    /// Opens the user's conversation `id`, creating it (titled `title`) if no one has it, with
    /// its `newest` latest messages (never more are read).
    async fn open_conversation(
        &self,
        user_id: &str,
        id: &str,
        title: &str,
        newest: usize,
    ) -> StoreResult<ConversationAccess>;
    /// Adds a question and its answer, then deletes the oldest messages past `exchange.cap`.
    async fn append_exchange(&self, exchange: &Exchange) -> StoreResult<()>;
    async fn conversations_of(&self, user_id: &str) -> StoreResult<Vec<Conversation>>;
    /// The user's conversation `id`, a page of its messages (oldest first, from `offset`, at
    /// most `limit`) and how many it holds.
    async fn conversation(
        &self,
        user_id: &str,
        id: &str,
        offset: usize,
        limit: usize,
    ) -> StoreResult<Option<ConversationPage>>;
    /// Answers whether the user's conversation existed.
    async fn delete_conversation(&self, user_id: &str, id: &str) -> StoreResult<bool>;
}

#[async_trait]
pub trait UsageStore: Send + Sync + 'static {
    async fn record_usage(&self, record: &UsageRecord) -> StoreResult<()>;
    /// The user's totals by UTC day and model, from `since` on, oldest first.
    async fn usage_totals(&self, user_id: &str, since: SystemTime) -> StoreResult<Vec<UsageTotal>>;
    /// Every user's totals by UTC day and model, from `since` on, oldest first.
    async fn usage_by_user(&self, since: SystemTime) -> StoreResult<Vec<UserUsageTotal>>;
}

/// Every store the gateway needs, from one backend.
#[derive(Clone)]
pub struct Stores {
    pub identity: Arc<dyn IdentityStore>,
    pub conversations: Arc<dyn ConversationStore>,
    pub usage: Arc<dyn UsageStore>,
    pub audit: Arc<dyn AuditStore>,
}

impl Stores {
    pub fn from_backend<B>(backend: Arc<B>) -> Stores
    where
        B: IdentityStore + ConversationStore + UsageStore + AuditStore,
    {
        Stores {
            identity: backend.clone(),
            conversations: backend.clone(),
            usage: backend.clone(),
            audit: backend,
        }
    }
}

/// Conversation and message ids are UUIDs; anything else names nothing.
pub fn is_uuid(s: &str) -> bool {
    uuid::Uuid::parse_str(s).is_ok()
}

/// `YYYY-MM-DD` (UTC) of a moment.
pub fn utc_day(t: SystemTime) -> String {
    let secs = i64::try_from(unix_secs(t)).unwrap_or(i64::MAX);
    let date = time::OffsetDateTime::from_unix_timestamp(secs)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
        .date();
    format!(
        "{:04}-{:02}-{:02}",
        date.year(),
        u8::from(date.month()),
        date.day()
    )
}

#[cfg(test)]
mod tests {
    use super::ConversationCap;

    #[test]
    fn the_oldest_go_first_and_the_newest_exchange_stays() {
        let cap = ConversationCap {
            max_messages: 3,
            max_bytes: 10,
        };
        assert_eq!(cap.excess(&[1, 1, 1], 2), 0);
        assert_eq!(cap.excess(&[1, 1, 1, 1, 1], 2), 2);
        assert_eq!(cap.excess(&[5, 4, 1, 1], 2), 1);
        assert_eq!(cap.excess(&[2, 9, 1, 1], 2), 2, "bytes count too");
        // One exchange larger than the cap is still kept whole.
        assert_eq!(cap.excess(&[1, 1, 50, 50], 2), 2);
        assert_eq!(cap.excess(&[], 2), 0);
    }
}
