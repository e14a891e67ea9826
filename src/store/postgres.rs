//! The stores in PostgreSQL, through a deadpool-postgres pool. Every query is parameterized.

use std::time::{Duration, SystemTime};

use ai_gateway_proto::Role as MessageRole;
use async_trait::async_trait;
use deadpool_postgres::{Pool, PoolConfig, Runtime, Timeouts};
use tokio_postgres::{error::SqlState, NoTls, Row};
use uuid::Uuid;

use super::*;

mod embedded {
    refinery::embed_migrations!("sql");
}

/// Any two nodes migrating at once serialize on this advisory lock.
const MIGRATION_LOCK_KEY: i64 = 0x0061_6777_5f6d_6967; // "agw_mig"

/// How long a query waits for a pooled connection, or to open one, before answering
/// "unavailable".
const POOL_TIMEOUT: Duration = Duration::from_secs(3);

/// How connections to PostgreSQL are made. With `sslmode=require` in `database_url`: TLS
/// (rustls), the server's certificate checked against the Mozilla roots and the PEM
/// certificates of `database_ca_file`, and its name against the URL's host. Otherwise plain TCP:
/// tokio-postgres' default `prefer` would try TLS and fail on a certificate it cannot verify,
/// so only an explicit `require` turns TLS on.
#[derive(Clone)]
pub enum PgTls {
    Plain,
    Rustls(tokio_postgres_rustls::MakeRustlsConnect),
}

/// A `database_ca_file` that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    #[error("database_ca_file {path}: {problem}")]
    CaFile { path: String, problem: String },
    #[error("TLS: {0}")]
    Rustls(#[from] rustls::Error),
}

impl PgTls {
    /// The TLS setting for `config`, trusting the certificates in `ca_file` (PEM) besides the
    /// Mozilla roots; `ca_file` empty: those roots only.
    pub fn for_config(
        config: &tokio_postgres::Config,
        ca_file: &str,
    ) -> Result<PgTls, TlsSetupError> {
        if config.get_ssl_mode() != tokio_postgres::config::SslMode::Require {
            return Ok(PgTls::Plain);
        }
        let mut roots = rustls::RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        };
        if !ca_file.is_empty() {
            use rustls::pki_types::{pem::PemObject, CertificateDer};
            let problem = |problem: String| TlsSetupError::CaFile {
                path: ca_file.to_owned(),
                problem,
            };
            let certs = CertificateDer::pem_file_iter(ca_file)
                .map_err(|e| problem(e.to_string()))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| problem(e.to_string()))?;
            if certs.is_empty() {
                return Err(problem("holds no PEM certificate".into()));
            }
            for cert in certs {
                roots.add(cert).map_err(|e| problem(e.to_string()))?;
            }
        }
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let client = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(PgTls::Rustls(
            tokio_postgres_rustls::MakeRustlsConnect::new(client),
        ))
    }

    /// [`PgTls::for_config`] of a URL (or connection string).
    pub fn for_url(database_url: &str, ca_file: &str) -> anyhow::Result<PgTls> {
        let config: tokio_postgres::Config = database_url.parse()?;
        Ok(PgTls::for_config(&config, ca_file)?)
    }

    /// Opens one connection, its driver running on a task of its own.
    pub async fn connect(
        &self,
        config: &tokio_postgres::Config,
    ) -> Result<(tokio_postgres::Client, tokio::task::JoinHandle<()>), tokio_postgres::Error> {
        match self {
            PgTls::Plain => {
                let (client, conn) = config.connect(NoTls).await?;
                Ok((client, tokio::spawn(async move { drop(conn.await) })))
            }
            PgTls::Rustls(tls) => {
                let (client, conn) = config.connect(tls.clone()).await?;
                Ok((client, tokio::spawn(async move { drop(conn.await) })))
            }
        }
    }
}

/// Applies the migrations in `sql/` that this database has not seen. Safe when several nodes
/// start at once.
pub async fn migrate(database_url: &str, tls: &PgTls) -> anyhow::Result<Vec<String>> {
    let config: tokio_postgres::Config = database_url.parse()?;
    let (mut client, conn) = tls.connect(&config).await?;
    client
        .execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK_KEY])
        .await?;
    let report = embedded::migrations::runner().run_async(&mut client).await;
    client
        .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK_KEY])
        .await?;
    drop(client);
    let _ = conn.await;
    Ok(report?
        .applied_migrations()
        .iter()
        .map(|m| m.to_string())
        .collect())
}

/// Opens a connection and runs `SELECT 1`: whether the server is there and lets us in.
pub async fn probe(
    config: &tokio_postgres::Config,
    tls: &PgTls,
) -> Result<(), tokio_postgres::Error> {
    let (client, conn) = tls.connect(config).await?;
    let answered = client.simple_query("SELECT 1").await.map(drop);
    drop(client);
    let _ = conn.await;
    answered
}

pub struct PgStore {
    pool: Pool,
}

impl PgStore {
    pub fn connect(database_url: &str, tls: &PgTls) -> anyhow::Result<PgStore> {
        let mut cfg = deadpool_postgres::Config::new();
        cfg.url = Some(database_url.to_owned());
        cfg.pool = Some(PoolConfig {
            timeouts: Timeouts {
                wait: Some(POOL_TIMEOUT),
                create: Some(POOL_TIMEOUT),
                recycle: Some(POOL_TIMEOUT),
            },
            ..PoolConfig::default()
        });
        let pool = match tls {
            PgTls::Plain => cfg.create_pool(Some(Runtime::Tokio1), NoTls)?,
            PgTls::Rustls(tls) => cfg.create_pool(Some(Runtime::Tokio1), tls.clone())?,
        };
        Ok(PgStore { pool })
    }

    /// Checks that a connection can be made and used.
    pub async fn ping(&self) -> StoreResult<()> {
        self.client()
            .await?
            .simple_query("SELECT 1")
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn client(&self) -> StoreResult<deadpool_postgres::Object> {
        self.pool
            .get()
            .await
            .map_err(|e| StoreError::Unavailable(e.to_string()))
    }

    /// Runs one statement on a pooled connection: its rows.
    async fn query(&self, sql: &str, params: Params<'_>) -> StoreResult<Vec<Row>> {
        self.client()
            .await?
            .query(sql, params)
            .await
            .map_err(unavailable)
    }

    /// Runs one statement on a pooled connection: its row, if any.
    async fn query_opt(&self, sql: &str, params: Params<'_>) -> StoreResult<Option<Row>> {
        self.client()
            .await?
            .query_opt(sql, params)
            .await
            .map_err(unavailable)
    }

    /// Runs one statement on a pooled connection: its one row.
    async fn query_one(&self, sql: &str, params: Params<'_>) -> StoreResult<Row> {
        self.client()
            .await?
            .query_one(sql, params)
            .await
            .map_err(unavailable)
    }

    /// Runs one statement on a pooled connection: how many rows it changed.
    async fn execute(&self, sql: &str, params: Params<'_>) -> StoreResult<u64> {
        self.client()
            .await?
            .execute(sql, params)
            .await
            .map_err(unavailable)
    }
}

/// A statement's parameters.
type Params<'a> = &'a [&'a (dyn tokio_postgres::types::ToSql + Sync)];

fn unavailable(e: tokio_postgres::Error) -> StoreError {
    if e.code() == Some(&SqlState::UNIQUE_VIOLATION) {
        return StoreError::Conflict("already exists".into());
    }
    StoreError::Unavailable(e.to_string())
}

fn uuid(s: &str) -> Option<Uuid> {
    Uuid::parse_str(s).ok()
}

fn user_of(row: &Row) -> User {
    User {
        id: row.get::<_, Uuid>("id").to_string(),
        username: row.get("username"),
        password_hash: row.get("password_hash"),
        role: Role::parse(row.get("role")).unwrap_or(Role::User),
        disabled: row.get("disabled"),
        created_at: row.get("created_at"),
    }
}

/// An offset or limit as PostgreSQL takes it: a huge one saturates instead of wrapping negative.
fn pg_count(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn key_of(row: &Row) -> ApiKey {
    ApiKey {
        id: row.get::<_, Uuid>("id").to_string(),
        user_id: row.get::<_, Uuid>("user_id").to_string(),
        name: row.get("name"),
        prefix: row.get("prefix"),
        key_hash: row.get("key_hash"),
        created_at: row.get("created_at"),
        expires_at: row.get("expires_at"),
        revoked_at: row.get("revoked_at"),
    }
}

fn message_of(row: &Row) -> StoredMessage {
    let opt_u64 = |name: &str| row.get::<_, Option<i64>>(name).map(|v| v as u64);
    StoredMessage {
        role: match row.get::<_, &str>("role") {
            "system" => MessageRole::System,
            "assistant" => MessageRole::Assistant,
            _ => MessageRole::User,
        },
        content: row.get("content"),
        model: row.get("model"),
        prompt_tokens: opt_u64("prompt_tokens"),
        completion_tokens: opt_u64("completion_tokens"),
        first_chunk_ms: opt_u64("first_chunk_ms"),
        duration_ms: opt_u64("duration_ms"),
        created_at: row.get("created_at"),
    }
}

fn conversation_of(row: &Row) -> Conversation {
    Conversation {
        id: row.get::<_, Uuid>("id").to_string(),
        title: row.get("title"),
        created_at: row.get("created_at"),
        updated_at: row.get("updated_at"),
    }
}

const USER_COLUMNS: &str = "id, username, password_hash, role, disabled, created_at";
const KEY_COLUMNS: &str = "id, user_id, name, prefix, key_hash, created_at, expires_at, revoked_at";
/// A count or offset as PostgreSQL's `bigint`, saturating.
fn sql_count(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

const MESSAGE_COLUMNS: &str = "role, content, model, prompt_tokens, completion_tokens, \
     first_chunk_ms, duration_ms, created_at";

#[async_trait]
impl IdentityStore for PgStore {
    async fn create_user(
        &self,
        username: &str,
        password_hash: String,
        role: Role,
    ) -> StoreResult<User> {
        let sql = format!(
            "INSERT INTO users (id, username, password_hash, role) VALUES ($1, $2, $3, $4) \
             RETURNING {USER_COLUMNS}"
        );
        let row = self
            .query_one(
                &sql,
                &[&Uuid::new_v4(), &username, &password_hash, &role.as_str()],
            )
            .await
            .map_err(|e| match e {
                StoreError::Conflict(_) => StoreError::Conflict("Username already exists".into()),
                other => other,
            })?;
        Ok(user_of(&row))
    }

    async fn user_by_name(&self, username: &str) -> StoreResult<Option<User>> {
        let sql = format!("SELECT {USER_COLUMNS} FROM users WHERE username = $1");
        let row = self.query_opt(&sql, &[&username]).await?;
        Ok(row.as_ref().map(user_of))
    }

    async fn user_by_id(&self, id: &str) -> StoreResult<Option<User>> {
        let Some(id) = uuid(id) else { return Ok(None) };
        let sql = format!("SELECT {USER_COLUMNS} FROM users WHERE id = $1");
        let row = self.query_opt(&sql, &[&id]).await?;
        Ok(row.as_ref().map(user_of))
    }

    async fn set_disabled(&self, user_id: &str, disabled: bool) -> StoreResult<bool> {
        let Some(id) = uuid(user_id) else {
            return Ok(false);
        };
        let n = self
            .execute(
                "UPDATE users SET disabled = $2, updated_at = now() WHERE id = $1",
                &[&id, &disabled],
            )
            .await?;
        Ok(n == 1)
    }

    async fn list_users(&self, offset: usize, limit: usize) -> StoreResult<Vec<User>> {
        let sql =
            format!("SELECT {USER_COLUMNS} FROM users ORDER BY created_at, id OFFSET $1 LIMIT $2");
        let rows = self
            .query(&sql, &[&pg_count(offset), &pg_count(limit)])
            .await?;
        Ok(rows.iter().map(user_of).collect())
    }

    async fn set_role(&self, user_id: &str, role: Role) -> StoreResult<bool> {
        let Some(id) = uuid(user_id) else {
            return Ok(false);
        };
        let n = self
            .execute(
                "UPDATE users SET role = $2, updated_at = now() WHERE id = $1",
                &[&id, &role.as_str()],
            )
            .await?;
        Ok(n == 1)
    }

    async fn revoke_token(
        &self,
        jti: &str,
        user_id: &str,
        expires_at: SystemTime,
    ) -> StoreResult<()> {
        let Some(user) = uuid(user_id) else {
            return Ok(());
        };
        self.execute(
            "INSERT INTO revoked_tokens (jti, user_id, expires_at) VALUES ($1, $2, $3) \
                 ON CONFLICT (jti) DO NOTHING",
            &[&jti, &user, &expires_at],
        )
        .await?;
        Ok(())
    }

    async fn create_api_key(&self, key: ApiKey, max_live: u32) -> StoreResult<ApiKey> {
        let (Some(id), Some(user)) = (uuid(&key.id), uuid(&key.user_id)) else {
            return Err(StoreError::Conflict("bad key or user id".into()));
        };
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(unavailable)?;
        // The user's row lock makes count-then-insert atomic against the same user's other
        // requests, on any node.
        tx.query_opt("SELECT 1 FROM users WHERE id = $1 FOR UPDATE", &[&user])
            .await
            .map_err(unavailable)?;
        let live: i64 = tx
            .query_one(
                "SELECT count(*) FROM api_keys WHERE user_id = $1 AND revoked_at IS NULL \
                 AND (expires_at IS NULL OR expires_at > now())",
                &[&user],
            )
            .await
            .map_err(unavailable)?
            .get(0);
        if live >= i64::from(max_live) {
            return Err(super::key_limit_reached(max_live));
        }
        let sql = format!(
            "INSERT INTO api_keys (id, user_id, name, prefix, key_hash, expires_at) \
             VALUES ($1, $2, $3, $4, $5, $6) RETURNING {KEY_COLUMNS}"
        );
        let row = tx
            .query_one(
                &sql,
                &[
                    &id,
                    &user,
                    &key.name,
                    &key.prefix,
                    &key.key_hash,
                    &key.expires_at,
                ],
            )
            .await
            .map_err(unavailable)?;
        tx.commit().await.map_err(unavailable)?;
        Ok(key_of(&row))
    }

    async fn api_key_by_hash(&self, key_hash: &[u8]) -> StoreResult<Option<ApiKey>> {
        let sql = format!("SELECT {KEY_COLUMNS} FROM api_keys WHERE key_hash = $1");
        let row = self.query_opt(&sql, &[&key_hash]).await?;
        Ok(row.as_ref().map(key_of))
    }

    async fn api_key(&self, id: &str) -> StoreResult<Option<ApiKey>> {
        let Some(id) = uuid(id) else { return Ok(None) };
        let sql = format!("SELECT {KEY_COLUMNS} FROM api_keys WHERE id = $1");
        let row = self.query_opt(&sql, &[&id]).await?;
        Ok(row.as_ref().map(key_of))
    }

    async fn api_keys_of(&self, user_id: &str) -> StoreResult<Vec<ApiKey>> {
        let Some(user) = uuid(user_id) else {
            return Ok(vec![]);
        };
        let sql =
            format!("SELECT {KEY_COLUMNS} FROM api_keys WHERE user_id = $1 ORDER BY created_at");
        let rows = self.query(&sql, &[&user]).await?;
        Ok(rows.iter().map(key_of).collect())
    }

    async fn api_keys_page(
        &self,
        user_id: &str,
        offset: usize,
        limit: usize,
    ) -> StoreResult<Vec<ApiKey>> {
        let Some(user) = uuid(user_id) else {
            return Ok(vec![]);
        };
        let sql = format!(
            "SELECT {KEY_COLUMNS} FROM api_keys WHERE user_id = $1 \
             ORDER BY created_at, id OFFSET $2 LIMIT $3"
        );
        let (offset, limit) = (pg_count(offset), pg_count(limit));
        let rows = self.query(&sql, &[&user, &offset, &limit]).await?;
        Ok(rows.iter().map(key_of).collect())
    }

    async fn revoke_api_key(&self, id: &str) -> StoreResult<bool> {
        let Some(id) = uuid(id) else { return Ok(false) };
        let n = self
            .execute(
                "UPDATE api_keys SET revoked_at = now() WHERE id = $1 AND revoked_at IS NULL",
                &[&id],
            )
            .await?;
        Ok(n == 1)
    }

    async fn revocations_since(&self, since: SystemTime) -> StoreResult<Revocations> {
        let client = self.client().await?;
        let tokens = client
            .query(
                "SELECT jti, expires_at FROM revoked_tokens WHERE revoked_at >= $1 \
                 AND expires_at > now()",
                &[&since],
            )
            .await
            .map_err(unavailable)?;
        let keys = client
            .query("SELECT id FROM api_keys WHERE revoked_at >= $1", &[&since])
            .await
            .map_err(unavailable)?;
        let users = client
            .query(
                "SELECT id FROM users WHERE disabled AND updated_at >= $1",
                &[&since],
            )
            .await
            .map_err(unavailable)?;
        Ok(Revocations {
            tokens: tokens.iter().map(|r| (r.get(0), r.get(1))).collect(),
            keys: keys
                .iter()
                .map(|r| r.get::<_, Uuid>(0).to_string())
                .collect(),
            disabled_users: users
                .iter()
                .map(|r| r.get::<_, Uuid>(0).to_string())
                .collect(),
        })
    }
}

#[async_trait]
impl ConversationStore for PgStore {
    async fn open_conversation(
        &self,
        user_id: &str,
        id: &str,
        title: &str,
        newest: usize,
    ) -> StoreResult<ConversationAccess> {
        let (Some(user), Some(conv)) = (uuid(user_id), uuid(id)) else {
            return Ok(ConversationAccess::Foreign);
        };
        let client = self.client().await?;
        client
            .execute(
                "INSERT INTO conversations (id, user_id, title) VALUES ($1, $2, $3) \
                 ON CONFLICT (id) DO NOTHING",
                &[&conv, &user, &title],
            )
            .await
            .map_err(unavailable)?;
        let owner: Uuid = client
            .query_one("SELECT user_id FROM conversations WHERE id = $1", &[&conv])
            .await
            .map_err(unavailable)?
            .get(0);
        if owner != user {
            return Ok(ConversationAccess::Foreign);
        }
        // The newest `newest`, read newest first through the index, then put oldest first.
        let sql = format!(
            "SELECT {MESSAGE_COLUMNS} FROM messages WHERE conversation_id = $1 \
             ORDER BY id DESC LIMIT $2"
        );
        let rows = client
            .query(&sql, &[&conv, &sql_count(newest)])
            .await
            .map_err(unavailable)?;
        Ok(ConversationAccess::Owned(
            rows.iter().rev().map(message_of).collect(),
        ))
    }

    async fn append_exchange(&self, e: &Exchange) -> StoreResult<()> {
        let (Some(conv), Some(request)) = (uuid(&e.conversation_id), uuid(&e.request_uuid)) else {
            return Ok(());
        };
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(unavailable)?;
        if let Some(q) = &e.question {
            tx.execute(
                "INSERT INTO messages (conversation_id, request_id, role, content) \
                 VALUES ($1, $2, 'user', $3) ON CONFLICT (request_id, role) DO NOTHING",
                &[&conv, &request, q],
            )
            .await
            .map_err(unavailable)?;
        }
        tx.execute(
            "INSERT INTO messages (conversation_id, request_id, role, content, model, \
             prompt_tokens, completion_tokens, first_chunk_ms, duration_ms) \
             VALUES ($1, $2, 'assistant', $3, $4, $5, $6, $7, $8) \
             ON CONFLICT (request_id, role) DO NOTHING",
            &[
                &conv,
                &request,
                &e.answer,
                &e.model,
                &(e.prompt_tokens as i64),
                &(e.completion_tokens as i64),
                &e.first_chunk_ms.map(|v| v as i64),
                &(e.duration_ms as i64),
            ],
        )
        .await
        .map_err(unavailable)?;
        tx.execute(
            "UPDATE conversations SET updated_at = now() WHERE id = $1",
            &[&conv],
        )
        .await
        .map_err(unavailable)?;
        // Past the cap, the oldest go: each message with, counting from the newest, more
        // messages or bytes than the cap allows, except this exchange's own.
        tx.execute(
            "DELETE FROM messages WHERE id IN ( \
               SELECT id FROM ( \
                 SELECT id, request_id, \
                   count(*) OVER newer AS n, sum(octet_length(content)) OVER newer AS bytes \
                 FROM messages WHERE conversation_id = $1 \
                 WINDOW newer AS (ORDER BY id DESC ROWS UNBOUNDED PRECEDING) \
               ) ranked \
               WHERE (n > $2 OR bytes > $3) AND request_id <> $4)",
            &[
                &conv,
                &sql_count(e.cap.max_messages),
                &sql_count(e.cap.max_bytes),
                &request,
            ],
        )
        .await
        .map_err(unavailable)?;
        tx.commit().await.map_err(unavailable)
    }

    async fn conversations_of(&self, user_id: &str) -> StoreResult<Vec<Conversation>> {
        let Some(user) = uuid(user_id) else {
            return Ok(vec![]);
        };
        let rows = self
            .query(
                "SELECT id, title, created_at, updated_at FROM conversations \
                 WHERE user_id = $1 ORDER BY updated_at DESC",
                &[&user],
            )
            .await?;
        Ok(rows.iter().map(conversation_of).collect())
    }

    async fn conversation(
        &self,
        user_id: &str,
        id: &str,
        offset: usize,
        limit: usize,
    ) -> StoreResult<Option<ConversationPage>> {
        let (Some(user), Some(conv)) = (uuid(user_id), uuid(id)) else {
            return Ok(None);
        };
        let client = self.client().await?;
        let Some(row) = client
            .query_opt(
                "SELECT id, title, created_at, updated_at FROM conversations \
                 WHERE id = $1 AND user_id = $2",
                &[&conv, &user],
            )
            .await
            .map_err(unavailable)?
        else {
            return Ok(None);
        };
        let sql = format!(
            "SELECT {MESSAGE_COLUMNS} FROM messages WHERE conversation_id = $1 \
             ORDER BY id OFFSET $2 LIMIT $3"
        );
        let rows = client
            .query(&sql, &[&conv, &sql_count(offset), &sql_count(limit)])
            .await
            .map_err(unavailable)?;
        let total: i64 = client
            .query_one(
                "SELECT count(*) FROM messages WHERE conversation_id = $1",
                &[&conv],
            )
            .await
            .map_err(unavailable)?
            .get(0);
        Ok(Some(ConversationPage {
            conversation: conversation_of(&row),
            messages: rows.iter().map(message_of).collect(),
            total: usize::try_from(total).unwrap_or(0),
        }))
    }

    async fn delete_conversation(&self, user_id: &str, id: &str) -> StoreResult<bool> {
        let (Some(user), Some(conv)) = (uuid(user_id), uuid(id)) else {
            return Ok(false);
        };
        let n = self
            .execute(
                "DELETE FROM conversations WHERE id = $1 AND user_id = $2",
                &[&conv, &user],
            )
            .await?;
        Ok(n == 1)
    }
}

#[async_trait]
impl UsageStore for PgStore {
    async fn record_usage(&self, r: &UsageRecord) -> StoreResult<()> {
        let (Some(id), Some(user)) = (uuid(&r.id), uuid(&r.user_id)) else {
            return Ok(());
        };
        let key = r.api_key_id.as_deref().and_then(uuid);
        self.execute(
            "INSERT INTO usage_records (id, user_id, api_key_id, session_id, request_id, \
                 model, provider, prompt_tokens, completion_tokens, first_chunk_ms, duration_ms, \
                 finish_reason, created_at, estimated) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14) \
                 ON CONFLICT (id) DO NOTHING",
            &[
                &id,
                &user,
                &key,
                &r.session_id,
                &r.request_id,
                &r.model,
                &r.provider,
                &(r.prompt_tokens as i64),
                &(r.completion_tokens as i64),
                &r.first_chunk_ms.map(|v| v as i64),
                &(r.duration_ms as i64),
                &r.finish_reason,
                &r.created_at,
                &r.estimated,
            ],
        )
        .await?;
        Ok(())
    }

    async fn usage_totals(&self, user_id: &str, since: SystemTime) -> StoreResult<Vec<UsageTotal>> {
        let Some(user) = uuid(user_id) else {
            return Ok(vec![]);
        };
        let rows = self.query(
                "SELECT to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD') AS day, model, \
                 count(*)::bigint, sum(prompt_tokens)::bigint, sum(completion_tokens)::bigint, \
                 count(*) FILTER (WHERE estimated)::bigint \
                 FROM usage_records WHERE user_id = $1 \
                 AND created_at >= date_trunc('day', $2::timestamptz AT TIME ZONE 'UTC') AT TIME ZONE 'UTC' \
                 GROUP BY 1, 2 ORDER BY 1, 2",
                &[&user, &since],
            ).await?;
        Ok(rows
            .iter()
            .map(|r| UsageTotal {
                day: r.get(0),
                model: r.get(1),
                requests: r.get::<_, i64>(2) as u64,
                prompt_tokens: r.get::<_, i64>(3) as u64,
                completion_tokens: r.get::<_, i64>(4) as u64,
                estimated_requests: r.get::<_, i64>(5) as u64,
            })
            .collect())
    }

    async fn usage_by_user(&self, since: SystemTime) -> StoreResult<Vec<UserUsageTotal>> {
        let rows = self.query(
                "SELECT to_char(r.created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD') AS day, r.user_id, \
                 u.username, r.model, count(*)::bigint, sum(r.prompt_tokens)::bigint, \
                 sum(r.completion_tokens)::bigint, count(*) FILTER (WHERE r.estimated)::bigint \
                 FROM usage_records r JOIN users u ON u.id = r.user_id \
                 WHERE r.created_at >= date_trunc('day', $1::timestamptz AT TIME ZONE 'UTC') AT TIME ZONE 'UTC' \
                 GROUP BY 1, 2, 3, 4 ORDER BY 1, 3, 4",
                &[&since],
            ).await?;
        Ok(rows
            .iter()
            .map(|r| UserUsageTotal {
                user_id: r.get::<_, Uuid>(1).to_string(),
                username: r.get(2),
                total: UsageTotal {
                    day: r.get(0),
                    model: r.get(3),
                    requests: r.get::<_, i64>(4) as u64,
                    prompt_tokens: r.get::<_, i64>(5) as u64,
                    completion_tokens: r.get::<_, i64>(6) as u64,
                    estimated_requests: r.get::<_, i64>(7) as u64,
                },
            })
            .collect())
    }
}

#[async_trait]
impl AuditStore for PgStore {
    async fn record_audit(
        &self,
        actor: &str,
        action: &str,
        target: &str,
        detail: &serde_json::Value,
    ) -> StoreResult<()> {
        self.execute(
                "INSERT INTO admin_audit (actor, action, target, detail) VALUES ($1, $2, $3, $4::text::jsonb)",
                &[&actor, &action, &target, &detail.to_string()],
            ).await?;
        Ok(())
    }

    async fn recent_audit(&self, limit: usize) -> StoreResult<Vec<AuditEntry>> {
        let rows = self
            .query(
                "SELECT id, actor, action, target, detail::text AS detail, at FROM admin_audit \
                 ORDER BY id DESC LIMIT $1",
                &[&(limit as i64)],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| AuditEntry {
                id: r.get("id"),
                actor: r.get("actor"),
                action: r.get("action"),
                target: r.get("target"),
                detail: serde_json::from_str(r.get::<_, &str>("detail"))
                    .unwrap_or(serde_json::Value::Null),
                at: r.get("at"),
            })
            .collect())
    }
}
