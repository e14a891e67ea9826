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
