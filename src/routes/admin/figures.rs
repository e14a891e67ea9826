//! This node's figures for `GET /admin/nodes`, read on demand and, with Redis, published every
//! `directory.refresh_interval_ms` so that any node can show every node's.

use std::{
    sync::{atomic::Ordering, Arc},
    time::{Duration, SystemTime},
};

use actix_web::web;
use ai_gateway_actors::unix_time::{now_unix_ms, unix_ms};

use crate::{
    cluster::{publish_figures, NodeFigures},
    routes::AppState,
};

/// The node's figures now.
pub async fn local(state: &AppState) -> NodeFigures {
    let sessions = state.registry.sessions().await;
    let metrics = &state.session_env.metrics;
    let started_at = state.admin.started_at;
    NodeFigures {
        node_id: state.admin.node_id.clone(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        started_at: unix_ms(started_at),
        uptime_secs: SystemTime::now()
            .duration_since(started_at)
            .unwrap_or_default()
            .as_secs(),
        sessions: sessions.len(),
        running_requests: sessions.iter().map(|s| u64::from(s.running)).sum(),
        running_answers: state.session_env.answers.running(),
        rss_bytes: rss_bytes(),
        queued_bytes: metrics.outbound_queue_bytes.get(),
        chunks_relayed: metrics.chunks_relayed.get(),
        draining: state.draining.load(Ordering::Relaxed),
        at: now_unix_ms(),
    }
}

/// Resident memory from `/proc/self/status` (`VmRSS: N kB`); `None` off Linux.
fn rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Publishes the node's figures now and every `interval` (to expire after `ttl`) for as long
/// as its state lives.
pub fn publish_every(state: &web::Data<AppState>, interval: Duration, ttl: Duration) {
    let state = Arc::downgrade(&state.clone().into_inner());
    actix_rt::spawn(async move {
        let mut tick = actix_rt::time::interval(interval);
        loop {
            tick.tick().await;
            let Some(state) = state.upgrade() else { return };
            let Some(cluster) = state.cluster.clone() else {
                return;
            };
            let figures = local(&state).await;
            if let Err(e) = publish_figures(&cluster, &figures, ttl).await {
                tracing::warn!(error = %e, "could not publish the node's figures");
            }
        }
    });
}

/// The schema of [`NodeFigures`] (a cluster type, which does not derive `ToSchema`) for the
/// OpenAPI document; the test below holds the two to the same fields.
#[derive(utoipa::ToSchema)]
#[schema(as = NodeFigures)]
#[allow(dead_code)]
pub struct NodeFiguresSchema {
    node_id: String,
    /// The gateway's version (`CARGO_PKG_VERSION`).
    version: String,
    /// Unix milliseconds of the node's start.
    started_at: u64,
    uptime_secs: u64,
    /// Live WebSocket sessions.
    sessions: usize,
    /// Requests streaming now over the node's sessions.
    running_requests: u64,
    /// Answers this node's relays are producing (also those whose client left to resume).
    running_answers: usize,
    /// Resident memory, where the system tells it (Linux).
    rss_bytes: Option<u64>,
    /// Bytes queued to clients now.
    queued_bytes: i64,
    chunks_relayed: u64,
    /// The node is shutting down: it refuses new sessions and finishes its answers.
    draining: bool,
    /// Unix milliseconds of this reading.
    at: u64,
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use utoipa::PartialSchema;

    use super::*;

    #[test]
    fn the_figures_schema_names_the_fields_sent() {
        let figures = NodeFigures {
            node_id: "n".to_owned(),
            version: "v".to_owned(),
            started_at: 1,
            uptime_secs: 2,
            sessions: 3,
            running_requests: 4,
            running_answers: 5,
            rss_bytes: Some(6),
            queued_bytes: 7,
            chunks_relayed: 8,
            draining: false,
            at: 9,
        };
        let sent: BTreeSet<String> = serde_json::to_value(&figures)
            .unwrap()
            .as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect();
        let schema = serde_json::to_value(NodeFiguresSchema::schema()).unwrap();
        let documented: BTreeSet<String> = schema["properties"]
            .as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect();
        assert_eq!(sent, documented);
    }
}
