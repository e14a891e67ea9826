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
    /// An admin closed every live session of the user (code 1008, this reason). Nothing is
    /// stored or refused afterwards: the user may connect again. Sent as one event, so every node
    /// closes its share at once instead of waiting for the directory to be listed.
    UserSessions {
        id: String,
        reason: String,
    },
}
