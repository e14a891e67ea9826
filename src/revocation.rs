//! What a revocation is, in its own module so that `access` (which applies revocations) and
//! `cluster` (which carries them between nodes) need not import each other.

use serde::{Deserialize, Serialize};

/// A credential or user taken away, as sent between nodes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Revocation {
    Token {
        jti: String,
        user_id: String,
        expires_at_unix: u64,
    },
    ApiKey {
        id: String,
    },
    /// The user was disabled.
    User {
        id: String,
    },
}
