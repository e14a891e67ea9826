//! Who may connect. [`IdentityStore`] hides where users live: [`MemoryIdentityStore`] for the
//! embedded default; PostgreSQL comes behind the same trait.

use std::{collections::HashMap, sync::RwLock, time::SystemTime};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
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

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("Username already exists")]
    UsernameTaken,
    #[error("identity store unavailable: {0}")]
    Unavailable(String),
}

#[async_trait]
pub trait IdentityStore: Send + Sync + 'static {
    /// Creates a user; the first name wins, a second gets [`IdentityError::UsernameTaken`].
    async fn create_user(
        &self,
        username: &str,
        password_hash: String,
        role: Role,
    ) -> Result<User, IdentityError>;

    async fn user_by_name(&self, username: &str) -> Result<Option<User>, IdentityError>;

    async fn user_by_id(&self, id: &str) -> Result<Option<User>, IdentityError>;
}

/// Users in process memory: the embedded default, gone when the process ends.
#[derive(Default)]
pub struct MemoryIdentityStore {
    users: RwLock<HashMap<String, User>>,
}

#[async_trait]
impl IdentityStore for MemoryIdentityStore {
    async fn create_user(
        &self,
        username: &str,
        password_hash: String,
        role: Role,
    ) -> Result<User, IdentityError> {
        let mut users = self.users.write().expect("identity lock poisoned");
        if users.values().any(|u| u.username == username) {
            return Err(IdentityError::UsernameTaken);
        }
        let user = User {
            id: uuid::Uuid::new_v4().to_string(),
            username: username.to_owned(),
            password_hash,
            role,
            disabled: false,
            created_at: SystemTime::now(),
        };
        users.insert(user.id.clone(), user.clone());
        Ok(user)
    }

    async fn user_by_name(&self, username: &str) -> Result<Option<User>, IdentityError> {
        let users = self.users.read().expect("identity lock poisoned");
        Ok(users.values().find(|u| u.username == username).cloned())
    }

    async fn user_by_id(&self, id: &str) -> Result<Option<User>, IdentityError> {
        let users = self.users.read().expect("identity lock poisoned");
        Ok(users.get(id).cloned())
    }
}
