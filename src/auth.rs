//! Passwords (argon2id) and session tokens (JWT HS256, the seed's `{sub, role, exp}` claims).

use argon2::{
    password_hash::{rand_core::OsRng, PasswordHash, PasswordHasher, PasswordVerifier, SaltString},
    Argon2,
};
use jsonwebtoken::{errors::ErrorKind, Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::store::Role;

/// Hashes a password with argon2id and a fresh salt (PHC string). CPU-heavy: call off the
/// async workers.
pub fn hash_password(password: &str) -> String {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .expect("argon2 with default parameters cannot fail")
        .to_string()
}

/// Checks a password against a stored PHC string. CPU-heavy like [`hash_password`].
pub fn verify_password(password: &str, phc: &str) -> bool {
    PasswordHash::new(phc)
        .map(|h| {
            Argon2::default()
                .verify_password(password.as_bytes(), &h)
                .is_ok()
        })
        .unwrap_or(false)
}

/// A hash of no one's password, checked when the user does not exist so that a login takes
/// as long for an unknown name as for a wrong password.
pub fn decoy_hash() -> &'static str {
    static DECOY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DECOY.get_or_init(|| hash_password("decoy password, never valid"))
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// User id.
    pub sub: String,
    pub username: String,
    pub role: Role,
    pub iat: u64,
    pub exp: u64,
    /// Token id, for revocation.
    pub jti: String,
}

/// Why a token was refused; the texts are the seed's 401 bodies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("Missing token")]
    Missing,
    #[error("Invalid token")]
    Invalid,
    #[error("Token expired or revoked")]
    ExpiredOrRevoked,
}

pub struct TokenIssuer {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    ttl_secs: u64,
}

impl TokenIssuer {
    pub fn new(secret: &[u8], ttl_secs: u64) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 0;
        validation.set_required_spec_claims(&["exp", "sub"]);
        TokenIssuer {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            validation,
            ttl_secs,
        }
    }

    pub fn issue(&self, user_id: &str, username: &str, role: Role) -> String {
        let now = jsonwebtoken::get_current_timestamp();
        let claims = Claims {
            sub: user_id.to_owned(),
            username: username.to_owned(),
            role,
            iat: now,
            exp: now + self.ttl_secs,
            jti: uuid::Uuid::new_v4().simple().to_string(),
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .expect("HS256 signing cannot fail")
    }

    pub fn verify(&self, token: &str) -> Result<Claims, TokenError> {
        jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map(|data| data.claims)
            .map_err(|e| match e.kind() {
                ErrorKind::ExpiredSignature => TokenError::ExpiredOrRevoked,
                _ => TokenError::Invalid,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_hash_with_argon2id_and_verify() {
        let h = hash_password("correct horse");
        assert!(h.starts_with("$argon2id$"), "{h}");
        assert!(verify_password("correct horse", &h));
        assert!(!verify_password("wrong horse", &h));
        assert!(!verify_password("x", "not a hash"));
    }

    #[test]
    fn tokens_round_trip_and_fail_clearly() {
        let issuer = TokenIssuer::new(&[7; 32], 60);
        let t = issuer.issue("u1", "ann", Role::User);
        let c = issuer.verify(&t).unwrap();
        assert_eq!(
            (c.sub.as_str(), c.username.as_str(), c.role),
            ("u1", "ann", Role::User)
        );
        assert_eq!(c.exp - c.iat, 60);

        let other = TokenIssuer::new(&[8; 32], 60);
        assert_eq!(other.verify(&t), Err(TokenError::Invalid));
        assert_eq!(issuer.verify("garbage"), Err(TokenError::Invalid));

        let expired = Claims {
            exp: 1,
            iat: 0,
            ..c
        };
        let t = jsonwebtoken::encode(
            &Header::default(),
            &expired,
            &EncodingKey::from_secret(&[7; 32]),
        )
        .unwrap();
        assert_eq!(issuer.verify(&t), Err(TokenError::ExpiredOrRevoked));
    }
}
