//! The node's Prometheus metrics. One [`Metrics`] per node, registered in the node's own
//! registry (so several nodes in one process, as in tests, do not mix their numbers).

use std::sync::Arc;

use prometheus_client::{
    encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder},
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
    pub provider: String,
    pub kind: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProviderLabel {
    pub provider: String,
}

/// Which front a request came through.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub enum Front {
    /// The WebSocket protocol (`/chat`).
    Ws,
    /// An HTTP front (`/v1/chat/completions`).
    Http,
}

/// How a request ended, for `gateway_requests_total`.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub enum Outcome {
    Stop,
    Length,
    /// The provider stopped the answer for its content.
    ContentFilter,
    Cancelled,
    /// The provider (or the node) failed it.
    Error,
    /// A limit, a policy or an unknown model refused it before any provider ran.
    Refused,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub front: Front,
    pub model: String,
    /// The configured name of the upstream that answered; `none` when none was called.
    pub provider: String,
    pub outcome: Outcome,
}

#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub enum Direction {
    Prompt,
    Completion,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TokenLabels {
    pub model: String,
    pub direction: Direction,
}

/// Label values in lower case, as Prometheus users expect.
macro_rules! label_values {
    ($($ty:ident { $($variant:ident => $name:literal),+ $(,)? })+) => {$(
        impl $ty {
            pub fn as_str(self) -> &'static str {
                match self {
                    $($ty::$variant => $name),+
                }
            }
        }

        impl EncodeLabelValue for $ty {
            fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
                self.as_str().encode(encoder)
            }
        }
    )+};
}

label_values! {
    Front { Ws => "ws", Http => "http" }
    Outcome {
        Stop => "stop",
        Length => "length",
        ContentFilter => "content_filter",
        Cancelled => "cancelled",
        Error => "error",
        Refused => "refused",
    }
    Direction { Prompt => "prompt", Completion => "completion" }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BuildLabels {
    pub version: &'static str,
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
    /// Every chat request of every front, when it ends.
    pub requests: Family<RequestLabels, Counter>,
    pub tokens: Family<TokenLabels, Counter>,
    /// From an upstream attempt's start to its first chunk, by provider.
    pub upstream_first_chunk: Family<ProviderLabel, Histogram>,
    pub build_info: Family<BuildLabels, Gauge>,
    /// The node's journals of answers, for `resume`.
    pub journal: crate::answer::JournalMetrics,
    pub resumes: Counter,
    pub resumes_unavailable: Counter,
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
            requests: Family::default(),
            tokens: Family::default(),
            upstream_first_chunk: Family::new_with_constructor(|| {
                Histogram::new(first_chunk_buckets())
            }),
            build_info: {
                let info: Family<BuildLabels, Gauge> = Family::default();
                info.get_or_create(&BuildLabels {
                    version: env!("CARGO_PKG_VERSION"),
                })
                .set(1);
                info
            },
            journal: crate::answer::JournalMetrics::default(),
            resumes: Counter::default(),
            resumes_unavailable: Counter::default(),
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
            "requests",
            "Chat requests, when they end, by front, model, provider and outcome",
            self.requests.clone(),
        );
        registry.register(
            "tokens",
            "Tokens of ended chat requests, by model and direction (prompt, completion)",
            self.tokens.clone(),
        );
        registry.register(
            "upstream_ttfb_seconds",
            "From sending a request upstream to the upstream's first piece of the answer, by provider",
            self.upstream_first_chunk.clone(),
        );
        registry.register(
            "resume_journal_bytes",
            "Bytes kept by the journals of answers, for resume",
            self.journal.bytes.clone(),
        );
        registry.register(
            "resume_journal_answers",
            "Answers whose journal is kept (running and finished within the retention time)",
            self.journal.answers.clone(),
        );
        registry.register(
            "resume_journal_dropped_too_large",
            "Answers no longer kept for resume because they outgrew resume.max_answer_bytes",
            self.journal.lost_too_large.clone(),
        );
        registry.register(
            "resume_journal_dropped_budget",
            "Answers no longer kept for resume because the node's resume.max_journal_bytes ran out",
            self.journal.lost_budget.clone(),
        );
        registry.register(
            "resumes",
            "Resume requests that found their answer",
            self.resumes.clone(),
        );
        registry.register(
            "resumes_unavailable",
            "Resume requests for an unknown, expired or foreign answer",
            self.resumes_unavailable.clone(),
        );
        registry.register(
            "build_info",
            "The running build (value 1)",
            self.build_info.clone(),
        );
        registry.register(
            "rate_limit_rejections",
            "Requests refused by a rate limit, by limit",
            self.rate_limit_rejections.clone(),
        );
    }
}
