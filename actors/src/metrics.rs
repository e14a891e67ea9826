//! The node's Prometheus metrics. One [`Metrics`] per node, registered in the node's own
//! registry (so several nodes in one process, as in tests, do not mix their numbers).

use std::sync::Arc;

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StageLabel {
    pub stage: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProviderErrorLabels {
    pub provider: &'static str,
    pub kind: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LimitLabel {
    pub limit: &'static str,
}

/// Buckets for latencies the gateway adds: 10 µs to about 1 s.
fn added_latency_buckets() -> impl Iterator<Item = f64> {
    prometheus_client::metrics::histogram::exponential_buckets(0.000_01, 2.5, 13)
}

/// Buckets for time to first chunk: 1 ms to about 60 s.
fn first_chunk_buckets() -> impl Iterator<Item = f64> {
    prometheus_client::metrics::histogram::exponential_buckets(0.001, 2.5, 13)
}

pub struct Metrics {
    pub sessions_live: Gauge,
    pub connects: Counter,
    pub disconnects: Family<ReasonLabel, Counter>,
    pub frames_in: Counter,
    pub frames_out: Counter,
    pub chunks_relayed: Counter,
    pub time_to_first_chunk: Histogram,
    /// From a provider producing a chunk to its frame being handed to the socket.
    pub added_latency: Family<StageLabel, Histogram>,
    /// The `chunk` and `first_chunk` series of `added_latency`, looked up once instead of per
    /// chunk.
    pub added_latency_chunk: Histogram,
    pub added_latency_first_chunk: Histogram,
    pub provider_errors: Family<ProviderErrorLabels, Counter>,
    pub outbound_queue_bytes: Gauge,
    pub rate_limit_rejections: Family<LimitLabel, Counter>,
}

impl Metrics {
    pub fn new() -> Arc<Metrics> {
        let added_latency: Family<StageLabel, Histogram> =
            Family::new_with_constructor(|| Histogram::new(added_latency_buckets()));
        let added_latency_chunk = added_latency
            .get_or_create(&StageLabel { stage: "chunk" })
            .clone();
        let added_latency_first_chunk = added_latency
            .get_or_create(&StageLabel {
                stage: "first_chunk",
            })
            .clone();
        Arc::new(Metrics {
            sessions_live: Gauge::default(),
            connects: Counter::default(),
            disconnects: Family::default(),
            frames_in: Counter::default(),
            frames_out: Counter::default(),
            chunks_relayed: Counter::default(),
            time_to_first_chunk: Histogram::new(first_chunk_buckets()),
            added_latency,
            added_latency_chunk,
            added_latency_first_chunk,
            provider_errors: Family::default(),
            outbound_queue_bytes: Gauge::default(),
            rate_limit_rejections: Family::default(),
        })
    }

    /// Adds every metric to `registry`, under the `gateway_` prefix the registry carries.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "sessions_live",
            "Live WebSocket sessions",
            self.sessions_live.clone(),
        );
        registry.register(
            "connects",
            "WebSocket sessions opened",
            self.connects.clone(),
        );
        registry.register(
            "disconnects",
            "WebSocket sessions closed, by reason",
            self.disconnects.clone(),
        );
        registry.register(
            "frames_in",
            "Frames received from clients",
            self.frames_in.clone(),
        );
        registry.register(
            "frames_out",
            "Frames written to clients",
            self.frames_out.clone(),
        );
        registry.register(
            "chunks_relayed",
            "Answer chunks written to clients",
            self.chunks_relayed.clone(),
        );
        registry.register(
            "time_to_first_chunk_seconds",
            "From a request's arrival to its first chunk reaching the socket",
            self.time_to_first_chunk.clone(),
        );
        registry.register(
            "added_latency_seconds",
            "Time the gateway adds: from a provider's chunk to its frame reaching the socket",
            self.added_latency.clone(),
        );
        registry.register(
            "provider_errors",
            "Failed provider calls, by provider and kind",
            self.provider_errors.clone(),
        );
        registry.register(
            "outbound_queue_bytes",
            "Bytes waiting to be written to clients, all sessions together",
            self.outbound_queue_bytes.clone(),
        );
        registry.register(
            "rate_limit_rejections",
            "Requests refused by a rate limit, by limit",
            self.rate_limit_rejections.clone(),
        );
    }
}
