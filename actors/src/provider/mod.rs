//! Providers answer chat requests. Each running request is one [`ProviderStream`] actor, started
//! on the requesting session's arbiter so chunks never cross threads; it runs the provider's
//! stream future and dies with it. Stopping the actor (cancel, disconnect) drops the future at
//! once, which aborts any upstream I/O.

pub mod anthropic;
mod api_key;
pub mod breaker;
mod forward;
pub mod gemini;
mod http;
pub mod mock;
pub mod openai;
mod route;
mod stream;

use std::{
    collections::BTreeMap,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use actix::prelude::*;
use ai_gateway_proto::{ChatMessage, ChunkKind, ErrorReason, FinishReason, Usage};
use futures_util::future::LocalBoxFuture;

use crate::flow::{FlowControl, SessionClosed};
pub use api_key::ApiKey;
pub use breaker::{Breaker, BreakerState};
pub use forward::forward_events;
pub use http::{InvalidSettings, Timeouts};
pub use route::{RetryPolicy, Route, Target, Upstream};
pub use stream::{CancelStream, ProviderStream, StreamHandle};

/// What a provider is asked to answer.
#[derive(Debug, Clone)]
pub struct ProviderRequest {
    /// The model name the client asked for.
    pub model: String,
    /// The model name the upstream knows.
    pub upstream_model: String,
    pub system: Option<String>,
    /// Earlier turns, oldest first, then the new user message last.
    pub messages: Vec<ChatMessage>,
    pub temperature: Option<f32>,
    pub max_tokens: Option<u32>,
    /// The request's span; each provider call is a child of it.
    pub span: tracing::Span,
}

/// How a stream ended when it ended well.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Finish {
    pub reason: FinishReason,
    pub usage: Usage,
}

/// Why a provider could not answer. Each says whom to blame through its [`ErrorReason`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProviderError {
    /// The upstream refused or failed the request: an HTTP error status, or an error event in
    /// its stream (then `status` is the one its documentation gives that error).
    #[error("{provider} answered {status}: {message}")]
    Upstream {
        provider: &'static str,
        status: u16,
        message: String,
    },
    /// The upstream said 429 (or an in-stream rate-limit error); retry no sooner than
    /// `retry_after_ms` when it said.
    #[error("{provider} is rate limiting: {message}")]
    RateLimited {
        provider: &'static str,
        retry_after_ms: Option<u64>,
        message: String,
    },
    #[error("{provider} timed out: {message}")]
    Timeout {
        provider: &'static str,
        message: String,
    },
    /// No answer could be had: connection refused or reset, or cut mid-stream.
    #[error("{provider} is unavailable: {message}")]
    Unavailable {
        provider: &'static str,
        message: String,
    },
    /// The upstream broke its own wire format: invalid JSON, or a stream that ended without its
    /// terminator.
    #[error("{provider} sent a broken stream: {message}")]
    Protocol {
        provider: &'static str,
        message: String,
    },
    /// The upstream stopped the answer for its content (safety filter, refusal).
    #[error("{provider} withheld the answer: {reason}")]
    Filtered {
        provider: &'static str,
        reason: String,
    },
    /// The session went away; nobody is left to tell.
    #[error("session closed")]
    SessionClosed,
}

impl ProviderError {
    pub fn reason(&self) -> ErrorReason {
        match self {
            ProviderError::Upstream { .. }
            | ProviderError::Protocol { .. }
            | ProviderError::Filtered { .. } => ErrorReason::ProviderError,
            ProviderError::RateLimited { .. } => ErrorReason::RateLimited,
            ProviderError::Timeout { .. } => ErrorReason::ProviderTimeout,
            ProviderError::Unavailable { .. } => ErrorReason::ProviderUnavailable,
            ProviderError::SessionClosed => ErrorReason::Internal,
        }
    }

    /// Whether the same request may succeed if tried again (here or on another provider):
    /// overload, rate limits, timeouts and lost connections, but not a bad request, a bad key,
    /// a broken stream or a filtered answer.
    pub fn is_retryable(&self) -> bool {
        match self {
            ProviderError::Upstream { status, .. } => {
                matches!(status, 408 | 409 | 429 | 500..=599)
            }
            ProviderError::RateLimited { .. }
            | ProviderError::Timeout { .. }
            | ProviderError::Unavailable { .. } => true,
            ProviderError::Protocol { .. }
            | ProviderError::Filtered { .. }
            | ProviderError::SessionClosed => false,
        }
    }
}

impl From<SessionClosed> for ProviderError {
    fn from(_: SessionClosed) -> Self {
        ProviderError::SessionClosed
    }
}

/// A source of streamed answers.
pub trait Provider: Send + Sync + 'static {
    /// Short name used in logs, metrics and `GET /v1/models`.
    fn name(&self) -> &'static str;

    /// Produces the answer into `sink`, chunk by chunk. Runs on the session's arbiter; dropping
    /// the future must abort the work.
    fn stream(
        self: Arc<Self>,
        request: ProviderRequest,
        sink: ChunkSink,
    ) -> LocalBoxFuture<'static, Result<Finish, ProviderError>>;
}

/// One event of a running request, sent by its stream to the session.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct StreamEvent {
    /// The session's private key for the request (client ids may be reused).
    pub key: u64,
    pub kind: StreamEventKind,
}

#[derive(Debug)]
pub enum StreamEventKind {
    /// The stream began; comes before any chunk.
    Started {
        provider: &'static str,
    },
    /// `charge` bytes were counted against the session's flow for this chunk.
    Chunk {
        kind: ChunkKind,
        text: String,
        charge: usize,
        /// When the provider produced it, to measure what the gateway adds.
        produced_at: std::time::Instant,
    },
    Done(Finish),
    Failed(ProviderError),
}

/// Bytes charged for a chunk beyond its text: the frame's JSON around it.
pub const CHUNK_FRAME_OVERHEAD_BYTES: usize = 96;

/// Where a provider writes its chunks. Sending waits while the client is behind.
#[derive(Clone)]
pub struct ChunkSink {
    key: u64,
    session: Recipient<StreamEvent>,
    flow: Arc<FlowControl>,
    sent: Arc<AtomicU64>,
}

impl ChunkSink {
    pub fn new(key: u64, session: Recipient<StreamEvent>, flow: Arc<FlowControl>) -> Self {
        ChunkSink {
            key,
            session,
            flow,
            sent: Arc::default(),
        }
    }

    /// Chunks sent so far through this sink (and its clones).
    pub fn chunks_sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    /// Sends one chunk, after waiting for room in the session's queue.
    pub async fn chunk(&self, kind: ChunkKind, text: String) -> Result<(), SessionClosed> {
        self.flow.ready().await?;
        if !self.session.connected() {
            return Err(SessionClosed);
        }
        let charge = text.len() + CHUNK_FRAME_OVERHEAD_BYTES;
        self.flow.charge(charge);
        self.sent.fetch_add(1, Ordering::Relaxed);
        self.session.do_send(StreamEvent {
            key: self.key,
            kind: StreamEventKind::Chunk {
                kind,
                text,
                charge,
                produced_at: std::time::Instant::now(),
            },
        });
        Ok(())
    }

    pub(crate) fn started(&self, provider: &'static str) {
        self.session.do_send(StreamEvent {
            key: self.key,
            kind: StreamEventKind::Started { provider },
        });
    }

    pub(crate) fn end(&self, result: Result<Finish, ProviderError>) {
        let kind = match result {
            Ok(finish) => StreamEventKind::Done(finish),
            Err(ProviderError::SessionClosed) => return,
            Err(e) => StreamEventKind::Failed(e),
        };
        self.session.do_send(StreamEvent {
            key: self.key,
            kind,
        });
    }
}

/// The model named in a request is not served here.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("Unknown model {requested:?}; available: {}", available.join(", "))]
pub struct UnknownModel {
    pub requested: String,
    pub available: Vec<String>,
}

/// The model used when a request names none (the seed's default).
pub const DEFAULT_MODEL: &str = "mock";

/// Maps the model names clients use to their routes.
#[derive(Clone, Default)]
pub struct Router {
    routes: BTreeMap<String, Arc<Route>>,
}

impl Router {
    pub fn with(mut self, model: &str, route: Route) -> Self {
        self.routes.insert(model.to_owned(), Arc::new(route));
        self
    }

    /// A route straight to one provider, without retries, fallback or breaker.
    pub fn with_route(
        self,
        model: &str,
        provider: Arc<dyn Provider>,
        upstream_model: &str,
    ) -> Self {
        let upstream = Upstream::new(provider, Breaker::new(u32::MAX, Duration::ZERO));
        self.with(
            model,
            Route::new(
                vec![Target::new(upstream, upstream_model)],
                RetryPolicy::none(),
            ),
        )
    }

    pub fn models(&self) -> impl Iterator<Item = (&str, &Arc<Route>)> {
        self.routes.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// Finds the route for `model`; empty means [`DEFAULT_MODEL`].
    pub fn resolve(&self, model: &str) -> Result<&Arc<Route>, UnknownModel> {
        let model = if model.is_empty() {
            DEFAULT_MODEL
        } else {
            model
        };
        self.routes.get(model).ok_or_else(|| UnknownModel {
            requested: model.to_owned(),
            available: self.routes.keys().cloned().collect(),
        })
    }
}
