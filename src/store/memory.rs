//! Everything in process memory: the embedded default for one node, gone when the process ends.

use std::{
    collections::HashMap,
    sync::{Mutex, MutexGuard},
    time::SystemTime,
};

use ai_gateway_proto::Role as MessageRole;
use async_trait::async_trait;

use super::*;

#[derive(Default)]
struct State {
    users: HashMap<String, User>,
    user_ids_by_name: HashMap<String, String>,
    /// When each user was last disabled.
    disabled_at: HashMap<String, SystemTime>,
    revoked_tokens: HashMap<String, (SystemTime, SystemTime)>,
    api_keys: HashMap<String, ApiKey>,
    conversations: HashMap<String, (String, Conversation, Vec<StoredMessage>)>,
    /// `(user, day, model)` → totals: usage is kept aggregated, so it stays small.
    usage: HashMap<(String, String, String), UsageTotal>,
    audit: Vec<AuditEntry>,
}

#[derive(Default)]
pub struct MemoryStore {
    state: Mutex<State>,
}

impl MemoryStore {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[async_trait]
impl IdentityStore for MemoryStore {
    async fn create_user(
        &self,
        username: &str,
        password_hash: String,
        role: Role,
    ) -> StoreResult<User> {
        let mut s = self.state();
        if s.user_ids_by_name.contains_key(username) {
            return Err(StoreError::Conflict("Username already exists".into()));
        }
        let user = User {
            id: uuid::Uuid::new_v4().to_string(),
            username: username.to_owned(),
            password_hash,
            role,
            disabled: false,
            created_at: SystemTime::now(),
        };
        s.user_ids_by_name
            .insert(user.username.clone(), user.id.clone());
        s.users.insert(user.id.clone(), user.clone());
        Ok(user)
    }

    async fn user_by_name(&self, username: &str) -> StoreResult<Option<User>> {
        let s = self.state();
        Ok(s.user_ids_by_name
            .get(username)
            .and_then(|id| s.users.get(id))
            .cloned())
    }

    async fn user_by_id(&self, id: &str) -> StoreResult<Option<User>> {
        Ok(self.state().users.get(id).cloned())
    }

    async fn set_disabled(&self, user_id: &str, disabled: bool) -> StoreResult<bool> {
        let mut s = self.state();
        let Some(user) = s.users.get_mut(user_id) else {
            return Ok(false);
        };
        user.disabled = disabled;
        if disabled {
            s.disabled_at.insert(user_id.to_owned(), SystemTime::now());
        } else {
            s.disabled_at.remove(user_id);
        }
        Ok(true)
    }

    async fn list_users(&self, offset: usize, limit: usize) -> StoreResult<Vec<User>> {
        let s = self.state();
        let mut users: Vec<&User> = s.users.values().collect();
        users.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
        Ok(users
            .into_iter()
            .skip(offset)
            .take(limit)
            .cloned()
            .collect())
    }

    async fn set_role(&self, user_id: &str, role: Role) -> StoreResult<bool> {
        let mut s = self.state();
        let Some(user) = s.users.get_mut(user_id) else {
            return Ok(false);
        };
        user.role = role;
        Ok(true)
    }

    async fn revoke_token(
        &self,
        jti: &str,
        _user_id: &str,
        expires_at: SystemTime,
    ) -> StoreResult<()> {
        self.state()
            .revoked_tokens
            .insert(jti.to_owned(), (expires_at, SystemTime::now()));
        Ok(())
    }

    async fn create_api_key(&self, key: ApiKey, max_live: u32) -> StoreResult<ApiKey> {
        let now = SystemTime::now();
        let mut s = self.state();
        let live = s
            .api_keys
            .values()
            .filter(|k| k.user_id == key.user_id && k.usable_at(now))
            .count();
        if live >= max_live as usize {
            return Err(super::key_limit_reached(max_live));
        }
        s.api_keys.insert(key.id.clone(), key.clone());
        Ok(key)
    }

    async fn api_key_by_hash(&self, key_hash: &[u8]) -> StoreResult<Option<ApiKey>> {
        Ok(self
            .state()
            .api_keys
            .values()
            .find(|k| k.key_hash == key_hash)
            .cloned())
    }

    async fn api_key(&self, id: &str) -> StoreResult<Option<ApiKey>> {
        Ok(self.state().api_keys.get(id).cloned())
    }

    async fn api_keys_of(&self, user_id: &str) -> StoreResult<Vec<ApiKey>> {
        let mut keys: Vec<ApiKey> = self
            .state()
            .api_keys
            .values()
            .filter(|k| k.user_id == user_id)
            .cloned()
            .collect();
        keys.sort_by_key(|k| k.created_at);
        Ok(keys)
    }

    async fn revoke_api_key(&self, id: &str) -> StoreResult<bool> {
        let mut s = self.state();
        match s.api_keys.get_mut(id) {
            Some(k) if k.revoked_at.is_none() => {
                k.revoked_at = Some(SystemTime::now());
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn revocations_since(&self, since: SystemTime) -> StoreResult<Revocations> {
        let s = self.state();
        Ok(Revocations {
            tokens: s
                .revoked_tokens
                .iter()
                .filter(|(_, (_, at))| *at >= since)
                .map(|(jti, (exp, _))| (jti.clone(), *exp))
                .collect(),
            keys: s
                .api_keys
                .values()
                .filter(|k| k.revoked_at.is_some_and(|at| at >= since))
                .map(|k| k.id.clone())
                .collect(),
            disabled_users: s
                .disabled_at
                .iter()
                .filter(|(_, at)| **at >= since)
                .map(|(id, _)| id.clone())
                .collect(),
        })
    }
}

#[async_trait]
impl ConversationStore for MemoryStore {
    async fn open_conversation(
        &self,
        user_id: &str,
        id: &str,
        title: &str,
        newest: usize,
    ) -> StoreResult<ConversationAccess> {
        let mut s = self.state();
        let now = SystemTime::now();
        let (owner, _, messages) = s.conversations.entry(id.to_owned()).or_insert_with(|| {
            let conversation = Conversation {
                id: id.to_owned(),
                title: title.to_owned(),
                created_at: now,
                updated_at: now,
            };
            (user_id.to_owned(), conversation, Vec::new())
        });
        if owner != user_id {
            return Ok(ConversationAccess::Foreign);
        }
        let from = messages.len().saturating_sub(newest);
        Ok(ConversationAccess::Owned(messages[from..].to_vec()))
    }

    async fn append_exchange(&self, e: &Exchange) -> StoreResult<()> {
        // The memory store never fails, so writes are never retried and need no dedup.
        let mut s = self.state();
        let Some((_, conversation, messages)) = s.conversations.get_mut(&e.conversation_id) else {
            return Ok(());
        };
        let now = SystemTime::now();
        conversation.updated_at = now;
        if let Some(q) = &e.question {
            messages.push(StoredMessage {
                role: MessageRole::User,
                content: q.clone(),
                model: None,
                prompt_tokens: None,
                completion_tokens: None,
                first_chunk_ms: None,
                duration_ms: None,
                created_at: now,
            });
        }
        messages.push(StoredMessage {
            role: MessageRole::Assistant,
            content: e.answer.clone(),
            model: Some(e.model.clone()),
            prompt_tokens: Some(e.prompt_tokens),
            completion_tokens: Some(e.completion_tokens),
            first_chunk_ms: e.first_chunk_ms,
            duration_ms: Some(e.duration_ms),
            created_at: now,
        });
        let sizes: Vec<usize> = messages.iter().map(|m| m.content.len()).collect();
        let newest = 1 + usize::from(e.question.is_some());
        messages.drain(..e.cap.excess(&sizes, newest));
        Ok(())
    }

    async fn conversations_of(&self, user_id: &str) -> StoreResult<Vec<Conversation>> {
        let mut list: Vec<Conversation> = self
            .state()
            .conversations
            .values()
            .filter(|(owner, _, _)| owner == user_id)
            .map(|(_, c, _)| c.clone())
            .collect();
        list.sort_by_key(|c| std::cmp::Reverse(c.updated_at));
        Ok(list)
    }

    async fn conversation(
        &self,
        user_id: &str,
        id: &str,
        offset: usize,
        limit: usize,
    ) -> StoreResult<Option<ConversationPage>> {
        Ok(self
            .state()
            .conversations
            .get(id)
            .filter(|(owner, _, _)| owner == user_id)
            .map(|(_, c, m)| ConversationPage {
                conversation: c.clone(),
                messages: m.iter().skip(offset).take(limit).cloned().collect(),
                total: m.len(),
            }))
    }

    async fn delete_conversation(&self, user_id: &str, id: &str) -> StoreResult<bool> {
        let mut s = self.state();
        match s.conversations.get(id) {
            Some((owner, _, _)) if owner == user_id => {
                s.conversations.remove(id);
                Ok(true)
            }
            _ => Ok(false),
        }
    }
}

#[async_trait]
impl UsageStore for MemoryStore {
    async fn record_usage(&self, r: &UsageRecord) -> StoreResult<()> {
        let mut s = self.state();
        let day = utc_day(r.created_at);
        let total = s
            .usage
            .entry((r.user_id.clone(), day.clone(), r.model.clone()))
            .or_insert_with(|| UsageTotal {
                day,
                model: r.model.clone(),
                requests: 0,
                prompt_tokens: 0,
                completion_tokens: 0,
                estimated_requests: 0,
            });
        total.requests += 1;
        total.estimated_requests += u64::from(r.estimated);
        total.prompt_tokens += r.prompt_tokens;
        total.completion_tokens += r.completion_tokens;
        Ok(())
    }

    async fn usage_totals(&self, user_id: &str, since: SystemTime) -> StoreResult<Vec<UsageTotal>> {
        let from = utc_day(since);
        let mut totals: Vec<UsageTotal> = self
            .state()
            .usage
            .iter()
            .filter(|((user, day, _), _)| user == user_id && *day >= from)
            .map(|(_, t)| t.clone())
            .collect();
        totals.sort_by(|a, b| (&a.day, &a.model).cmp(&(&b.day, &b.model)));
        Ok(totals)
    }

    async fn usage_by_user(&self, since: SystemTime) -> StoreResult<Vec<UserUsageTotal>> {
        let from = utc_day(since);
        let s = self.state();
        let mut totals: Vec<UserUsageTotal> = s
            .usage
            .iter()
            .filter(|((_, day, _), _)| *day >= from)
            .map(|((user, _, _), t)| UserUsageTotal {
                user_id: user.clone(),
                username: s
                    .users
                    .get(user)
                    .map(|u| u.username.clone())
                    .unwrap_or_default(),
                total: t.clone(),
            })
            .collect();
        totals.sort_by(|a, b| {
            (&a.total.day, &a.username, &a.total.model).cmp(&(
                &b.total.day,
                &b.username,
                &b.total.model,
            ))
        });
        Ok(totals)
    }
}

#[async_trait]
impl AuditStore for MemoryStore {
    async fn record_audit(
        &self,
        actor: &str,
        action: &str,
        target: &str,
        detail: &serde_json::Value,
    ) -> StoreResult<()> {
        let mut s = self.state();
        let id = s.audit.len() as i64 + 1;
        s.audit.push(AuditEntry {
            id,
            actor: actor.to_owned(),
            action: action.to_owned(),
            target: target.to_owned(),
            detail: detail.clone(),
            at: SystemTime::now(),
        });
        Ok(())
    }

    async fn recent_audit(&self, limit: usize) -> StoreResult<Vec<AuditEntry>> {
        Ok(self
            .state()
            .audit
            .iter()
            .rev()
            .take(limit)
            .cloned()
            .collect())
    }
}
