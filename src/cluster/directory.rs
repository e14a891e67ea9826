//! The session directory in Redis: every node keeps its live sessions there with an expiry it
//! refreshes, so a node that dies (even by SIGKILL) vanishes within `session_ttl`.
//!
//! Keys: `session:{id}` (JSON, expires), `sessions` (sorted set of ids by expiry time, for
//! listing), `node:{id}` and `nodes` the same for nodes.

use std::{sync::Arc, time::Duration};

use ai_gateway_actors::{
    unix_time::{now_unix_ms, unix_ms},
    SessionDirectory, SessionInfo,
};
use deadpool_redis::redis;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use super::{Cluster, ClusterError};

/// Directory updates waiting to be written; past this they are dropped (the next refresh
/// repairs the directory).
const QUEUE_CAPACITY: usize = 65_536;

/// A session as other nodes see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DirectoryEntry {
    pub session_id: String,
    pub user_id: String,
    pub username: String,
    pub role: String,
    pub node_id: String,
    pub remote_addr: Option<String>,
    /// Unix milliseconds.
    pub started_at: u64,
    pub running: u32,
    /// The model of the session's latest request.
    #[serde(default)]
    pub last_model: Option<String>,
}

/// A node as other nodes see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeEntry {
    pub node_id: String,
    pub sessions: usize,
    /// Unix milliseconds of the last refresh.
    pub refreshed_at: u64,
}

impl From<&SessionInfo> for DirectoryEntry {
    fn from(s: &SessionInfo) -> Self {
        DirectoryEntry {
            session_id: s.session_id.to_string(),
            user_id: s.user_id.clone(),
            username: s.username.clone(),
            role: s.role.clone(),
            node_id: s.node_id.to_string(),
            remote_addr: s.remote_addr.clone(),
            started_at: unix_ms(s.started_at),
            running: s.running,
            last_model: s.last_model.clone(),
        }
    }
}

enum Update {
    Joined(DirectoryEntry),
    Left(String),
    Refresh(Vec<DirectoryEntry>),
}

pub struct RedisDirectory {
    tx: mpsc::Sender<Update>,
}

impl RedisDirectory {
    /// Starts the writer task on the current runtime.
    pub fn start(cluster: Arc<Cluster>, node_id: String, ttl: Duration) -> RedisDirectory {
        let (tx, mut rx) = mpsc::channel(QUEUE_CAPACITY);
        actix_rt::spawn(async move {
            while let Some(update) = rx.recv().await {
                if let Err(e) = write(&cluster, &node_id, ttl, update).await {
                    tracing::warn!(error = %e, "session directory update failed");
                }
            }
        });
        RedisDirectory { tx }
    }

    fn send(&self, update: Update) {
        if self.tx.try_send(update).is_err() {
            tracing::warn!("session directory queue full; an update waits for the next refresh");
        }
    }
}

impl SessionDirectory for RedisDirectory {
    fn joined(&self, session: &SessionInfo) {
        self.send(Update::Joined(session.into()));
    }

    fn left(&self, session_id: &str) {
        self.send(Update::Left(session_id.to_owned()));
    }

    fn refresh(&self, sessions: Vec<SessionInfo>) {
        self.send(Update::Refresh(sessions.iter().map(Into::into).collect()));
    }
}

async fn write(
    cluster: &Cluster,
    node_id: &str,
    ttl: Duration,
    update: Update,
) -> Result<(), ClusterError> {
    let mut conn = cluster.conn().await?;
    let now = now_unix_ms();
    let expires = now + ttl.as_millis() as u64;
    let ttl_ms = ttl.as_millis() as u64;
    let index = cluster.key("sessions");
    let mut pipe = redis::pipe();
    match update {
        Update::Joined(entry) => {
            add_session(&mut pipe, cluster, &entry, ttl_ms, expires);
        }
        Update::Left(id) => {
            pipe.del(cluster.key(&format!("session:{id}")))
                .ignore()
                .zrem(&index, &id)
                .ignore();
        }
        Update::Refresh(entries) => {
            for entry in &entries {
                add_session(&mut pipe, cluster, entry, ttl_ms, expires);
            }
            let node = NodeEntry {
                node_id: node_id.to_owned(),
                sessions: entries.len(),
                refreshed_at: now,
            };
            pipe.cmd("SET")
                .arg(cluster.key(&format!("node:{node_id}")))
                .arg(serde_json::to_string(&node).expect("entries serialize"))
                .arg("PX")
                .arg(ttl_ms)
                .ignore()
                .zadd(cluster.key("nodes"), node_id, expires)
                .ignore()
                .zrembyscore(&index, "-inf", now)
                .ignore()
                .zrembyscore(cluster.key("nodes"), "-inf", now)
                .ignore();
        }
    }
    pipe.query_async::<()>(&mut conn).await?;
    Ok(())
}

fn add_session(
    pipe: &mut redis::Pipeline,
    cluster: &Cluster,
    entry: &DirectoryEntry,
    ttl_ms: u64,
    expires: u64,
) {
    pipe.cmd("SET")
        .arg(cluster.key(&format!("session:{}", entry.session_id)))
        .arg(serde_json::to_string(entry).expect("entries serialize"))
        .arg("PX")
        .arg(ttl_ms)
        .ignore()
        .zadd(cluster.key("sessions"), &entry.session_id, expires)
        .ignore();
}

/// Keys read per `MGET` when listing: a whole directory in one command would hold Redis (and the
/// reply) for longer than a command may take, and 100,000 entries outlast the client's 0.5 s.
const LIST_CHUNK: usize = 1000;

/// The live entries of an index (`sessions` or `nodes`): ids whose expiry is still ahead (read
/// with `ZSCAN`, [`LIST_CHUNK`] at a time), then their JSON under `{kind}:{id}`, [`LIST_CHUNK`]
/// keys per `MGET`. No reply is larger than a chunk, so none outlasts the client's response
/// timeout however large the directory. Entries that expired between the reads are skipped.
pub(super) async fn list_live<T: serde::de::DeserializeOwned>(
    cluster: &Cluster,
    index: &str,
    kind: &str,
) -> Result<Vec<T>, ClusterError> {
    let mut conn = cluster.conn().await?;
    let now = now_unix_ms();
    let mut ids = std::collections::HashSet::new();
    let mut cursor = 0u64;
    loop {
        // ZSCAN may return an id twice (the set is rehashed); the set keeps it once.
        let (next, found): (u64, Vec<(String, f64)>) = redis::cmd("ZSCAN")
            .arg(cluster.key(index))
            .arg(cursor)
            .arg("COUNT")
            .arg(LIST_CHUNK)
            .query_async(&mut conn)
            .await?;
        ids.extend(
            found
                .into_iter()
                .filter(|(_, expires)| *expires >= now as f64)
                .map(|(id, _)| id),
        );
        cursor = next;
        if cursor == 0 {
            break;
        }
    }
    let ids: Vec<String> = ids.into_iter().collect();
    let mut live = Vec::with_capacity(ids.len());
    for chunk in ids.chunks(LIST_CHUNK) {
        let keys: Vec<String> = chunk
            .iter()
            .map(|id| cluster.key(&format!("{kind}:{id}")))
            .collect();
        let values: Vec<Option<String>> =
            redis::cmd("MGET").arg(&keys).query_async(&mut conn).await?;
        live.extend(
            values
                .into_iter()
                .flatten()
                .filter_map(|v| serde_json::from_str(&v).ok()),
        );
    }
    Ok(live)
}

/// Every live session of every node, as the directory holds them.
pub async fn list_sessions(cluster: &Cluster) -> Result<Vec<DirectoryEntry>, ClusterError> {
    list_live(cluster, "sessions", "session").await
}

/// Every live session, sorted by start, from a listing read at most `max_age` ago (read now when
/// older, or when `fresh`). A paged walk through 100,000 sessions reads the directory once, not
/// once a page, and its pages are cut from one snapshot.
pub async fn list_sessions_snapshot(
    cluster: &Cluster,
    max_age: Duration,
    fresh: bool,
) -> Result<Arc<Vec<DirectoryEntry>>, ClusterError> {
    if !fresh {
        let kept = cluster
            .snapshot
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if let Some((at, sessions)) = kept {
            if at.elapsed() <= max_age {
                return Ok(sessions);
            }
        }
    }
    let at = std::time::Instant::now();
    let mut sessions = list_sessions(cluster).await?;
    sessions.sort_by(|a, b| (a.started_at, &a.session_id).cmp(&(b.started_at, &b.session_id)));
    let sessions = Arc::new(sessions);
    *cluster.snapshot.lock().unwrap_or_else(|p| p.into_inner()) = Some((at, sessions.clone()));
    Ok(sessions)
}

/// One live session by id: one `GET`, whatever the directory's size.
pub async fn find_session(
    cluster: &Cluster,
    session_id: &str,
) -> Result<Option<DirectoryEntry>, ClusterError> {
    let mut conn = cluster.conn().await?;
    let value: Option<String> = redis::cmd("GET")
        .arg(cluster.key(&format!("session:{session_id}")))
        .query_async(&mut conn)
        .await?;
    Ok(value.and_then(|v| serde_json::from_str(&v).ok()))
}

/// Every live node, as the directory holds them.
pub async fn list_nodes(cluster: &Cluster) -> Result<Vec<NodeEntry>, ClusterError> {
    list_live(cluster, "nodes", "node").await
}
