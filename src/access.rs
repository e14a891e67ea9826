//! Who is calling: tokens and API keys checked against caches, so a handshake costs no database
//! query once a user is known; revocations reach every node and close the sessions they cover.
//!
//! What is valid is cached for `auth_cache_ttl_ms`; what is revoked never is. Revocations arrive
//! three ways: from this node's own calls, from other nodes over Redis pub/sub (within
//! milliseconds), and from a periodic pull of the store (in case a message was missed).

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

use ai_gateway_actors::{
    unix_time::{from_unix_secs, unix_secs},
    Registry, Revoked,
};
use sha2::{Digest, Sha256};

use crate::{
    auth::{TokenError, TokenIssuer},
    cluster::{Cluster, ClusterError, ClusterEvent},
    revocation::Revocation,
    store::{ApiKey, IdentityStore, Role, StoreError},
};

/// Every API key starts with this, so it can be told from a JWT at a glance.
pub const API_KEY_PREFIX: &str = "agw_";

/// How far back each periodic pull looks beyond the previous one, to cover clock skew between
/// nodes and the database.
const SYNC_OVERLAP: Duration = Duration::from_secs(5);

/// How long an API key that matched nothing is answered from memory. Keys are random, so one
/// that is unknown now will not become valid later; the TTL only bounds memory.
const KEY_MISS_TTL: Duration = Duration::from_secs(60);
/// Unknown keys remembered at most, per node.
const KEY_MISS_CAPACITY: u64 = 100_000;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credential {
    Token { jti: String, expires_at: SystemTime },
    ApiKey { id: String },
}

impl Credential {
    pub fn id(&self) -> &str {
        match self {
            Credential::Token { jti, .. } => jti,
            Credential::ApiKey { id } => id,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub user_id: String,
    pub username: String,
    pub role: Role,
    pub credential: Credential,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error(transparent)]
    Token(#[from] TokenError),
    #[error("User disabled")]
    Disabled,
    #[error("Identity store unavailable")]
    Unavailable,
}

#[derive(Clone)]
struct UserStatus {
    username: String,
    role: Role,
    disabled: bool,
}

pub struct Access {
    identity: Arc<dyn IdentityStore>,
    tokens: TokenIssuer,
    registry: Registry,
    cluster: Option<Arc<Cluster>>,
    users: moka::sync::Cache<String, UserStatus>,
    keys: moka::sync::Cache<Vec<u8>, ApiKey>,
    /// Hashes of presented API keys that matched nothing: a repeated miss costs no store query.
    key_misses: moka::sync::Cache<Vec<u8>, ()>,
    revoked: Mutex<RevokedSet>,
}

#[derive(Default)]
struct RevokedSet {
    /// jti → when the token would have expired anyway.
    tokens: HashMap<String, SystemTime>,
    keys: HashSet<String>,
    last_sync: Option<SystemTime>,
}

/// The hash an API key is stored and looked up by. Keys carry 160 random bits, so a fast hash
/// is enough; no password-style stretching is needed.
pub fn api_key_hash(key: &str) -> Vec<u8> {
    Sha256::digest(key.as_bytes()).to_vec()
}

/// A fresh API key and its visible prefix: `agw_<8 hex>_<32 hex>`.
pub fn new_api_key() -> (String, String) {
    let raw =
        uuid::Uuid::new_v4().simple().to_string() + &uuid::Uuid::new_v4().simple().to_string();
    let prefix = format!("{API_KEY_PREFIX}{}", &raw[..8]);
    (format!("{prefix}_{}", &raw[8..40]), prefix)
}

impl Access {
    pub fn new(
        identity: Arc<dyn IdentityStore>,
        tokens: TokenIssuer,
        registry: Registry,
        cluster: Option<Arc<Cluster>>,
        cache_ttl: Duration,
    ) -> Access {
        Access {
            identity,
            tokens,
            registry,
            cluster,
            users: moka::sync::Cache::builder()
                .time_to_live(cache_ttl)
                .max_capacity(1_000_000)
                .build(),
            keys: moka::sync::Cache::builder()
                .time_to_live(cache_ttl)
                .max_capacity(1_000_000)
                .build(),
            key_misses: moka::sync::Cache::builder()
                .time_to_live(KEY_MISS_TTL)
                .max_capacity(KEY_MISS_CAPACITY)
                .build(),
            revoked: Mutex::default(),
        }
    }

    /// Whether checking `presented` could cost a store lookup: an API key this node has not
    /// validated lately. (A token costs one only when its signature is good.)
    pub fn may_look_up(&self, presented: &str) -> bool {
        presented.starts_with(API_KEY_PREFIX) && !self.keys.contains_key(&api_key_hash(presented))
    }

    pub fn tokens(&self) -> &TokenIssuer {
        &self.tokens
    }

    pub fn identity(&self) -> &Arc<dyn IdentityStore> {
        &self.identity
    }

    fn revoked(&self) -> std::sync::MutexGuard<'_, RevokedSet> {
        self.revoked.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Checks a presented token or API key.
    pub async fn authenticate(&self, presented: &str) -> Result<Principal, AuthError> {
        if presented.starts_with(API_KEY_PREFIX) {
            return self.authenticate_key(presented).await;
        }
        let claims = self.tokens.verify(presented)?;
        if self.revoked().tokens.contains_key(&claims.jti) {
            return Err(TokenError::ExpiredOrRevoked.into());
        }
        let user = self.user_status(&claims.sub).await?;
        Ok(Principal {
            user_id: claims.sub,
            username: user.username,
            role: user.role,
            credential: Credential::Token {
                jti: claims.jti,
                expires_at: from_unix_secs(claims.exp),
            },
        })
    }

    async fn authenticate_key(&self, presented: &str) -> Result<Principal, AuthError> {
        let hash = api_key_hash(presented);
        let key = match self.keys.get(&hash) {
            Some(key) => key,
            None => {
                if self.key_misses.contains_key(&hash) {
                    return Err(TokenError::Invalid.into());
                }
                let Some(key) = self
                    .identity
                    .api_key_by_hash(&hash)
                    .await
                    .map_err(|_| AuthError::Unavailable)?
                else {
                    self.key_misses.insert(hash, ());
                    return Err(TokenError::Invalid.into());
                };
                if key.usable_at(SystemTime::now()) {
                    self.keys.insert(hash, key.clone());
                }
                key
            }
        };
        if !key.usable_at(SystemTime::now()) || self.revoked().keys.contains(&key.id) {
            return Err(TokenError::ExpiredOrRevoked.into());
        }
        let user = self.user_status(&key.user_id).await?;
        Ok(Principal {
            user_id: key.user_id,
            username: user.username,
            role: user.role,
            credential: Credential::ApiKey { id: key.id },
        })
    }

    async fn user_status(&self, user_id: &str) -> Result<UserStatus, AuthError> {
        let status = match self.users.get(user_id) {
            Some(s) => s,
            None => {
                let user = self
                    .identity
                    .user_by_id(user_id)
                    .await
                    .map_err(|_| AuthError::Unavailable)?
                    .ok_or(TokenError::ExpiredOrRevoked)?;
                let status = UserStatus {
                    username: user.username,
                    role: user.role,
                    disabled: user.disabled,
                };
                if !status.disabled {
                    self.users.insert(user_id.to_owned(), status.clone());
                }
                status
            }
        };
        if status.disabled {
            return Err(AuthError::Disabled);
        }
        Ok(status)
    }

    /// Revokes for good: applies it here, tells every other node and stores it, the last two at
    /// once. The sessions close without waiting for the store (a slow commit used to hold every
    /// close behind it). If the store fails the caller gets the error, and what was closed stays
    /// closed: the nodes that heard it keep refusing a revoked token or key in memory, a new node
    /// would not, so the caller retries (revoking twice is harmless). (A
    /// [`Revocation::UserSessions`] is not stored: it closes what is live now, once.)
    pub async fn revoke(&self, revocation: Revocation) -> Result<(), StoreError> {
        self.apply(&revocation);
        let store = async {
            match &revocation {
                Revocation::Token {
                    jti,
                    user_id,
                    expires_at_unix,
                } => {
                    let exp = from_unix_secs(*expires_at_unix);
                    self.identity.revoke_token(jti, user_id, exp).await
                }
                Revocation::ApiKey { id } => self.identity.revoke_api_key(id).await.map(drop),
                Revocation::User { id } => self.identity.set_disabled(id, true).await.map(drop),
                Revocation::UserSessions { .. } => Ok(()),
            }
        };
        let broadcast = async {
            if let Some(cluster) = &self.cluster {
                if let Err(e) = cluster
                    .publish(&ClusterEvent::Revoked(revocation.clone()))
                    .await
                {
                    // Other nodes still learn of it at their next pull from the store.
                    tracing::warn!(error = %e, "could not broadcast a revocation");
                }
            }
        };
        let (stored, ()) = futures_util::join!(store, broadcast);
        stored
    }

    /// Closes every live session of a user on this node and (through one broadcast) on every
    /// other node, with code 1008 and `reason`. Nothing is stored: unlike a revocation, a node
    /// that misses the broadcast does not catch up, so a failed broadcast is an error.
    pub async fn close_user_sessions(
        &self,
        user_id: &str,
        reason: &str,
    ) -> Result<(), ClusterError> {
        let revocation = Revocation::UserSessions {
            id: user_id.to_owned(),
            reason: reason.to_owned(),
        };
        self.apply(&revocation);
        match &self.cluster {
            Some(cluster) => cluster.publish(&ClusterEvent::Revoked(revocation)).await,
            None => Ok(()),
        }
    }

    /// A user's role changed or they were enabled again: forget what this node and every other
    /// node cached about them.
    pub async fn user_changed(&self, user_id: &str) {
        self.forget_user(user_id);
        if let Some(cluster) = &self.cluster {
            let event = ClusterEvent::UserChanged {
                user_id: user_id.to_owned(),
            };
            if let Err(e) = cluster.publish(&event).await {
                // Other nodes see the change when their cache entry expires.
                tracing::warn!(error = %e, "could not broadcast a user change");
            }
        }
    }

    /// Drops this node's cached status of a user, so the next request reads the store.
    pub fn forget_user(&self, user_id: &str) {
        self.users.invalidate(user_id);
    }

    /// Applies a revocation on this node: refuse the credential from now on and close the
    /// sessions it opened.
    pub fn apply(&self, revocation: &Revocation) {
        let (revoked, reason) = match revocation {
            Revocation::Token {
                jti,
                expires_at_unix,
                ..
            } => {
                let exp = from_unix_secs(*expires_at_unix);
                self.revoked().tokens.insert(jti.clone(), exp);
                (Revoked::Credential(jti.clone()), "token revoked")
            }
            Revocation::ApiKey { id } => {
                self.revoked().keys.insert(id.clone());
                (Revoked::Credential(id.clone()), "API key revoked")
            }
            Revocation::User { id } => {
                self.users.invalidate(id);
                (Revoked::User(id.clone()), "user disabled")
            }
            Revocation::UserSessions { id, reason } => (Revoked::User(id.clone()), reason.as_str()),
        };
        tracing::debug!(reason, "revocation applied on this node");
        self.registry.close_revoked(revoked, reason);
    }

    /// Pulls what was revoked since the last pull and applies it; also forgets revoked tokens
    /// that have expired anyway.
    pub async fn sync(&self) -> Result<(), StoreError> {
        let now = SystemTime::now();
        let since = self
            .revoked()
            .last_sync
            .map_or(SystemTime::UNIX_EPOCH, |t| t - SYNC_OVERLAP);
        let found = self.identity.revocations_since(since).await?;
        for (jti, exp) in found.tokens {
            let fresh = !self.revoked().tokens.contains_key(&jti);
            if fresh {
                let expires_at_unix = unix_secs(exp);
                self.apply(&Revocation::Token {
                    jti,
                    user_id: String::new(),
                    expires_at_unix,
                });
            }
        }
        for id in found.keys {
            let fresh = !self.revoked().keys.contains(&id);
            if fresh {
                self.apply(&Revocation::ApiKey { id });
            }
        }
        for id in found.disabled_users {
            self.apply(&Revocation::User { id });
        }
        let mut revoked = self.revoked();
        revoked.tokens.retain(|_, exp| *exp > now);
        revoked.last_sync = Some(now);
        Ok(())
    }

    /// Runs [`Access::sync`] every `every`, for as long as the current runtime lives.
    pub fn spawn_sync(self: &Arc<Self>, every: Duration) {
        let access = Arc::downgrade(self);
        actix_rt::spawn(async move {
            let mut tick = actix_rt::time::interval(every);
            loop {
                tick.tick().await;
                let Some(access) = access.upgrade() else {
                    return;
                };
                if let Err(e) = access.sync().await {
                    tracing::warn!(error = %e, "revocation sync failed; will retry");
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_keys_look_like_keys_and_hash_stably() {
        let (key, prefix) = new_api_key();
        assert!(key.starts_with(&prefix));
        assert!(prefix.starts_with(API_KEY_PREFIX));
        assert_eq!(key.len(), API_KEY_PREFIX.len() + 8 + 1 + 32);
        assert_eq!(api_key_hash(&key), api_key_hash(&key));
        assert_ne!(api_key_hash(&key), api_key_hash(&new_api_key().0));
    }
}
