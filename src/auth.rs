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

/// Bounds the password hashing running at once: each argon2id hash or check takes 19 MiB and a
/// core for tens of milliseconds, so without a bound a burst of sign-ups or logins fills the
/// blocking pool (up to 512 threads) and memory. A call waits up to `wait` for a slot, then is
/// refused with [`HashingBusy`].
pub struct PasswordHashing {
    slots: std::sync::Arc<tokio::sync::Semaphore>,
    wait: std::time::Duration,
}

/// Every hashing slot stayed taken for the whole wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("password hashing is busy")]
pub struct HashingBusy;

impl PasswordHashing {
    /// `concurrency` 0 means one slot per core.
    pub fn new(concurrency: usize, wait: std::time::Duration) -> PasswordHashing {
        let slots = match concurrency {
            0 => std::thread::available_parallelism().map_or(2, |n| n.get()),
            n => n,
        };
        PasswordHashing {
            slots: std::sync::Arc::new(tokio::sync::Semaphore::new(slots)),
            wait,
        }
    }

    /// Runs `work` on the blocking pool once a slot is free. The slot stays taken until the
    /// work is done, even if the caller gave up.
    pub async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, HashingBusy> {
        let slot = match self.slots.clone().try_acquire_owned() {
            Ok(slot) => slot,
            Err(_) => tokio::time::timeout(self.wait, self.slots.clone().acquire_owned())
                .await
                .map_err(|_| HashingBusy)?
                .map_err(|_| HashingBusy)?,
        };
        actix_rt::task::spawn_blocking(move || {
            let out = work();
            drop(slot);
            out
        })
        .await
        .map_err(|_| HashingBusy)
    }

    pub async fn hash(&self, password: String) -> Result<String, HashingBusy> {
        self.run(move || hash_password(&password)).await
    }

    /// Checks `password` against `phc`, or against [`decoy_hash`] when there is none.
    pub async fn verify(&self, password: String, phc: Option<String>) -> Result<bool, HashingBusy> {
        self.run(move || {
            let valid = verify_password(&password, phc.as_deref().unwrap_or(decoy_hash()));
            valid && phc.is_some()
        })
        .await
    }
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

    #[actix_rt::test]
    async fn hashing_refuses_when_every_slot_stays_taken() {
        let hashing = PasswordHashing::new(1, std::time::Duration::from_millis(10));
        let (started_tx, started_rx) = std::sync::mpsc::channel();
        let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
        let hashing = std::sync::Arc::new(hashing);
        let held = {
            let hashing = hashing.clone();
            actix_rt::spawn(async move {
                hashing
                    .run(move || {
                        started_tx.send(()).unwrap();
                        release_rx.recv().unwrap();
                    })
                    .await
            })
        };
        let _ = actix_rt::task::spawn_blocking(move || started_rx.recv().unwrap()).await;
        assert_eq!(hashing.run(|| 1).await, Err(HashingBusy));
        release_tx.send(()).unwrap();
        assert_eq!(held.await.unwrap(), Ok(()));
        assert_eq!(hashing.run(|| 2).await, Ok(2));
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
