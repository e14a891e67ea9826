//! Each node's figures (sessions, running answers, memory, uptime, version, draining) for the
//! admin panel: every node writes its own to `figures:{node}` with an expiry, indexed like the
//! directory's nodes, so any node can answer for all of them and a dead node's vanish.

use std::time::Duration;

use ai_gateway_actors::unix_time::now_unix_ms;
use deadpool_redis::redis;
use serde::{Deserialize, Serialize};

use super::{
    directory::{list_live, put_live},
    Cluster, ClusterError,
};

/// One node's figures at `at`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct NodeFigures {
    pub node_id: String,
    /// The gateway's version (`CARGO_PKG_VERSION`).
    pub version: String,
    /// Unix milliseconds of the node's start.
    pub started_at: u64,
    pub uptime_secs: u64,
    /// Live WebSocket sessions.
    pub sessions: usize,
    /// Requests streaming now over the node's sessions.
    pub running_requests: u64,
    /// Answers this node's relays are producing (also those whose client left to resume).
    pub running_answers: usize,
    /// Resident memory, where the system tells it (Linux).
    pub rss_bytes: Option<u64>,
    /// Bytes queued to clients now.
    pub queued_bytes: i64,
    pub chunks_relayed: u64,
    /// The node is shutting down: it refuses new sessions and finishes its answers.
    pub draining: bool,
    /// Unix milliseconds of this reading.
    pub at: u64,
}

/// Writes `figures` under the node's key, to expire after `ttl` unless written again.
pub async fn publish_figures(
    cluster: &Cluster,
    figures: &NodeFigures,
    ttl: Duration,
) -> Result<(), ClusterError> {
    let mut conn = cluster.conn().await?;
    let now = now_unix_ms();
    let ttl_ms = ttl.as_millis() as u64;
    let mut pipe = redis::pipe();
    let id = &figures.node_id;
    put_live(
        &mut pipe, cluster, "figures", "figures", id, figures, now, ttl_ms,
    );
    pipe.query_async::<()>(&mut conn).await?;
    Ok(())
}

/// The figures of every node that published within its expiry.
pub async fn list_figures(cluster: &Cluster) -> Result<Vec<NodeFigures>, ClusterError> {
    list_live(cluster, "figures", "figures").await
}
