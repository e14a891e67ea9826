//! What nodes share through Redis: events over pub/sub, the session directory, rate limits.
//! Every key starts with the configured prefix, so several deployments (or tests) can share one
//! Redis.

mod directory;
mod figures;
mod journal;
mod shared;

use std::{sync::Arc, time::Duration};

use deadpool_redis::{redis, Pool, Runtime};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};

pub use directory::{
    count_user_sessions, find_session, list_legacy_sessions, list_nodes, list_sessions,
    list_sessions_snapshot, DirectoryEntry, NodeEntry, RedisDirectory,
};
pub use figures::{list_figures, publish_figures, NodeFigures};
pub use journal::RedisJournals;
pub use shared::SharedConnection;

use crate::revocation::Revocation;

/// Longest pause between two attempts to reach Redis again.
const MAX_RECONNECT_DELAY: Duration = Duration::from_secs(5);

/// What one node tells the others.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum ClusterEvent {
    Revoked(Revocation),
    /// An admin killed a session; the node that holds it closes it (code 1008, this reason).
    KillSession {
        session_id: String,
        reason: String,
    },
    /// A user's role changed or they were enabled: drop cached copies.
    UserChanged {
        user_id: String,
    },
    /// A client following this user's answer from another node cancelled it: the node running
    /// it stops it.
    CancelAnswer {
        stream_id: String,
        user_id: String,
    },
}

pub struct Cluster {
    /// Makes the shared connection (and a new one when it breaks).
    pool: Pool,
    shared: Arc<shared::Slot>,
    client: redis::Client,
    prefix: String,
    /// The latest full session listing and when it was read, for paging through it.
    snapshot: std::sync::Mutex<Option<(std::time::Instant, Arc<Vec<DirectoryEntry>>)>>,
}

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("redis pool: {0}")]
    Pool(#[from] deadpool_redis::PoolError),
}

/// A `redis_ca_file` that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("redis_ca_file {path}: {problem}")]
pub struct RedisCaFileError {
    path: String,
    problem: String,
}

/// The client for `url`. With `ca_file` (PEM) a `rediss://` server's certificate must come from
/// one of its CAs (the system's store is not used then); without it, from the system's store.
fn client(url: &str, ca_file: &str) -> anyhow::Result<redis::Client> {
    if ca_file.is_empty() {
        return Ok(redis::Client::open(url)?);
    }
    let problem = |problem: String| RedisCaFileError {
        path: ca_file.to_owned(),
        problem,
    };
    let pem = std::fs::read(ca_file).map_err(|e| problem(e.to_string()))?;
    use rustls::pki_types::{pem::PemObject, CertificateDer};
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| problem(e.to_string()))?;
    if certs.is_empty() {
        return Err(problem("holds no PEM certificate".into()).into());
    }
    let certificates = redis::TlsCertificates {
        client_tls: None,
        root_cert: Some(pem),
    };
    Ok(redis::Client::build_with_tls(url, certificates).map_err(|e| problem(e.to_string()))?)
}

impl Cluster {
    /// `ca_file`: `redis_ca_file`, the CAs of a `rediss://` server (empty: the system's).
    pub fn new(url: &str, ca_file: &str, prefix: &str) -> anyhow::Result<Cluster> {
        let client = client(url, ca_file)?;
        let mut pool_cfg = deadpool_redis::PoolConfig::default();
        pool_cfg.timeouts.wait = Some(Duration::from_secs(2));
        pool_cfg.timeouts.create = Some(Duration::from_secs(2));
        pool_cfg.timeouts.recycle = Some(Duration::from_secs(2));
        // The pool's connections are the client's: same address, same TLS settings.
        let manager = deadpool_redis::Manager::new(client.get_connection_info().clone())?;
        let pool = Pool::builder(manager)
            .config(pool_cfg)
            .runtime(Runtime::Tokio1)
            .build()?;
        Ok(Cluster {
            pool,
            shared: Arc::default(),
            client,
            prefix: prefix.to_owned(),
            snapshot: std::sync::Mutex::default(),
        })
    }

    pub fn key(&self, suffix: &str) -> String {
        format!("{}{suffix}", self.prefix)
    }

    /// The node's connection for commands, shared by every task (see [`SharedConnection`]).
    pub async fn conn(&self) -> Result<SharedConnection, ClusterError> {
        self.shared.get(&self.pool).await
    }

    pub async fn ping(&self) -> Result<(), ClusterError> {
        let mut conn = self.conn().await?;
        redis::cmd("PING").query_async::<()>(&mut conn).await?;
        Ok(())
    }

    fn events_channel(&self) -> String {
        self.key("events")
    }

    pub async fn publish(&self, event: &ClusterEvent) -> Result<(), ClusterError> {
        let payload = serde_json::to_string(event).expect("events serialize");
        let mut conn = self.conn().await?;
        redis::cmd("PUBLISH")
            .arg(self.events_channel())
            .arg(payload)
            .query_async::<()>(&mut conn)
            .await?;
        Ok(())
    }

    /// Delivers every event published by any node (this one included) to `on_event`, for as long
    /// as the current runtime lives. After each (re)connection `on_connected` runs, so the caller
    /// can catch up on what it may have missed while disconnected.
    pub fn subscribe(
        self: &Arc<Self>,
        on_event: impl Fn(ClusterEvent) + 'static,
        on_connected: impl Fn() + 'static,
    ) {
        let cluster = Arc::downgrade(self);
        actix_rt::spawn(async move {
            let mut delay = Duration::from_millis(100);
            loop {
                let Some(c) = cluster.upgrade() else { return };
                let channel = c.events_channel();
                let connected = async {
                    let mut pubsub = c.client.get_async_pubsub().await?;
                    pubsub.subscribe(&channel).await?;
                    Ok::<_, redis::RedisError>(pubsub)
                }
                .await;
                drop(c);
                match connected {
                    Ok(pubsub) => {
                        delay = Duration::from_millis(100);
                        on_connected();
                        let mut messages = pubsub.into_on_message();
                        while let Some(msg) = messages.next().await {
                            let Ok(payload) = msg.get_payload::<String>() else {
                                continue;
                            };
                            match serde_json::from_str(&payload) {
                                Ok(event) => on_event(event),
                                Err(e) => {
                                    tracing::warn!(error = %e, "ignoring an unreadable cluster event")
                                }
                            }
                        }
                        tracing::warn!("lost the Redis subscription; reconnecting");
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "cannot subscribe to Redis");
                        actix_rt::time::sleep(delay).await;
                        delay = (delay * 2).min(MAX_RECONNECT_DELAY);
                    }
                }
            }
        });
    }
}
