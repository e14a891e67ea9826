//! The one request engine: a chat request's life, the same for every front.
//!
//! A [`ChatRequest`] is created when a front (the WebSocket session, an HTTP handler) accepts a
//! chat request. [`Engine::admit`] admits it through the node's hooks (limits, stored history);
//! [`Engine::start`] has the registry start its provider stream on the caller's own arbiter,
//! with its events going to a [`ChunkSink`] that is either the session's mailbox or a channel. The request then
//! owns its admission lease, its stream, and its accounting: usage, timings, span fields,
//! metrics and the outcome handed to [`RequestHooks::finished`]. However it ends (done, error,
//! cancel, a client that went away), that happens once, in [`ChatRequest::finish`] or its `Drop`.

use std::{any::Any, sync::Arc, time::Instant};

use ai_gateway_proto::{ChunkKind, ErrorReason, FinishReason, Usage};

use crate::{
    hooks::{Admission, Refusal, RequestHooks, RequestOutcome, RequestStart},
    metrics::{Direction, Front, Outcome, ProviderErrorLabels, RequestLabels, TokenLabels},
    provider::{Chunk, ChunkSink, ProviderError, ProviderRequest, Router, StreamHandle},
    registry::{Registry, SessionInfo},
    Metrics,
};

/// What every request of a node shares: the hooks, the routes, the registry that starts
/// provider streams, the metrics.
pub struct Engine {
    pub hooks: Arc<dyn RequestHooks>,
    pub router: Arc<Router>,
    pub registry: Registry,
    pub metrics: Arc<Metrics>,
}

impl Engine {
    /// Admits `start` through the hooks (limits, stored history), after checking that its
    /// model is served here, so that a typo spends no limit.
    pub async fn admit(self: Arc<Self>, start: RequestStart) -> Result<Admission, Refusal> {
        if let Err(unknown) = self.router.resolve(&start.request.model) {
            return Err(Refusal::new(ErrorReason::UnknownModel, unknown.to_string()));
        }
        self.hooks.admit(start).await
    }

    /// Has the registry start the admitted request's provider stream on this arbiter, its
    /// events going to `sink`.
    pub async fn start(
        self: Arc<Self>,
        request: ProviderRequest,
        sink: ChunkSink,
    ) -> Result<StreamHandle, Refusal> {
        let sink = sink.timing_first_chunks(self.metrics.upstream_first_chunk.clone());
        self.registry
            .start_chat(request, sink)
            .await
            .map_err(|_| Refusal::new(ErrorReason::Internal, "registry unavailable"))?
            .map_err(|unknown| Refusal::new(ErrorReason::UnknownModel, unknown.to_string()))
    }

    /// Counts a request refused before it had a [`ChatRequest`] (a connection's own limits).
    pub fn refused(&self, front: Front, model: &str) {
        self.count(front, model, "none", Outcome::Refused);
    }

    fn count(&self, front: Front, model: &str, provider: &str, outcome: Outcome) {
        self.metrics
            .requests
            .get_or_create(&RequestLabels {
                front,
                model: model.to_owned(),
                provider: provider.to_owned(),
                outcome,
            })
            .inc();
    }
}

/// What the gateway added to a request's chunks: from a provider producing a chunk to its frame
/// being queued for the client, in microseconds.
#[derive(Debug, Default, Clone, Copy)]
pub struct AddedLatency {
    pub first_us: Option<u64>,
    pub sum_us: u64,
    pub max_us: u64,
}

/// One chat request, from acceptance to its end.
pub struct ChatRequest {
    engine: Arc<Engine>,
    front: Front,
    session: SessionInfo,
    /// The client's id for the request.
    pub id: String,
    /// The model the client asked for.
    pub model: String,
    pub conversation_id: Option<String>,
    /// The user's new message, kept only when a conversation is stored.
    question: Option<String>,
    /// The answer's text, kept only when a conversation is stored.
    answer: String,
    span: tracing::Span,
    started: Instant,
    provider: Option<Arc<str>>,
    /// Chunks delivered so far; the next chunk's `seq`.
    chunks: u64,
    first_chunk_ms: Option<u64>,
    added: AddedLatency,
    /// Set once the hooks admitted the request (the lease it holds while it runs).
    lease: Option<Option<Box<dyn Any + Send>>>,
    stream: Option<StreamHandle>,
    ended: bool,
}

impl ChatRequest {
    /// A request the front has accepted. `span` is its `chat_request` span; the engine records
    /// the provider, tokens, first-chunk time and finish reason on it.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        engine: Arc<Engine>,
        front: Front,
        session: SessionInfo,
        id: String,
        model: String,
        span: tracing::Span,
        conversation_id: Option<String>,
        question: Option<String>,
    ) -> Self {
        ChatRequest {
            engine,
            front,
            session,
            id,
            model,
            conversation_id,
            question,
            answer: String::new(),
            span,
            started: Instant::now(),
            provider: None,
            chunks: 0,
            first_chunk_ms: None,
            added: AddedLatency::default(),
            lease: None,
            stream: None,
            ended: false,
        }
    }

    /// The hooks admitted the request: from now on its end is recorded, and `lease` is held
    /// until then.
    pub fn admitted(&mut self, lease: Option<Box<dyn Any + Send>>) {
        self.lease = Some(lease);
    }

    /// Its provider stream runs; it is cancelled when the request ends early.
    pub fn streaming(&mut self, stream: StreamHandle) {
        self.stream = Some(stream);
    }

    /// The user the request runs for.
    pub fn user_id(&self) -> &str {
        &self.session.user_id
    }

    pub fn span(&self) -> &tracing::Span {
        &self.span
    }

    pub fn started(&self) -> Instant {
        self.started
    }

    /// Chunks delivered so far.
    pub fn chunks(&self) -> u64 {
        self.chunks
    }

    pub fn added_latency(&self) -> AddedLatency {
        self.added
    }

    /// The upstream now answering (its configured name).
    pub fn provider_started(&mut self, provider: Arc<str>) {
        self.provider = Some(provider);
    }

    /// Accounts for one chunk about to go to the client; answers its `seq`.
    pub fn chunk(&mut self, chunk: &Chunk) -> u64 {
        if self.first_chunk_ms.is_none() {
            self.first_chunk_ms = Some(self.started.elapsed().as_millis() as u64);
        }
        if self.conversation_id.is_some() && chunk.kind == ChunkKind::Text {
            self.answer.push_str(&chunk.text);
        }
        let added_us = chunk.produced_at.elapsed().as_micros() as u64;
        let a = &mut self.added;
        a.first_us.get_or_insert(added_us);
        a.sum_us += added_us;
        a.max_us = a.max_us.max(added_us);
        let seq = self.chunks;
        self.chunks += 1;
        seq
    }

    /// What a request stopped early has used, as far as the gateway knows: a token per chunk
    /// (an estimate, so marked when there is any).
    pub fn partial_usage(&self) -> Usage {
        Usage {
            completion_tokens: self.chunks,
            total_tokens: self.chunks,
            estimated: self.chunks > 0,
            ..Usage::default()
        }
    }

    /// The request was refused (by the hooks, or for an unknown model): it ends here.
    pub fn refused(mut self) {
        self.ended = true;
        self.span
            .record("finish_reason", tracing::field::display("refused"));
        self.engine
            .count(self.front, &self.model, "none", Outcome::Refused);
    }

    /// The provider failed: counted by provider and kind, then the request ends as an error.
    pub fn failed(&mut self, error: &ProviderError) {
        tracing::info!(session = %self.session.session_id, request = %self.id, error = %error, "provider failed");
        let kind = serde_json::to_value(error.reason())
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        self.engine
            .metrics
            .provider_errors
            .get_or_create(&ProviderErrorLabels {
                provider: self.provider_name().to_owned(),
                kind,
            })
            .inc();
        // What reached the client before the failure was used all the same.
        let usage = self.partial_usage();
        self.finish(FinishReason::Error, usage);
    }

    fn provider_name(&self) -> &str {
        self.provider.as_deref().unwrap_or("unknown")
    }

    /// Ends the request: stops its stream, frees its lease, records its span fields and
    /// metrics, and hands its outcome to the hooks. Only the first call counts.
    pub fn finish(&mut self, reason: FinishReason, usage: Usage) {
        if std::mem::replace(&mut self.ended, true) {
            return;
        }
        if let Some(stream) = self.stream.take() {
            stream.cancel();
        }
        let provider = self.provider_name().to_owned();
        let span = &self.span;
        span.record("provider", provider.as_str());
        span.record("prompt_tokens", usage.prompt_tokens);
        span.record("completion_tokens", usage.completion_tokens);
        if let Some(ms) = self.first_chunk_ms {
            span.record("time_to_first_chunk_ms", ms);
        }
        span.record("finish_reason", tracing::field::debug(reason));
        let outcome = match reason {
            FinishReason::Stop | FinishReason::ToolCalls => Outcome::Stop,
            FinishReason::Length => Outcome::Length,
            FinishReason::ContentFilter => Outcome::ContentFilter,
            FinishReason::Cancelled => Outcome::Cancelled,
            FinishReason::Error => Outcome::Error,
        };
        let metrics = &self.engine.metrics;
        self.engine
            .count(self.front, &self.model, &provider, outcome);
        for (direction, n) in [
            (Direction::Prompt, usage.prompt_tokens),
            (Direction::Completion, usage.completion_tokens),
        ] {
            if n > 0 {
                metrics
                    .tokens
                    .get_or_create(&TokenLabels {
                        model: self.model.clone(),
                        direction,
                    })
                    .inc_by(n);
            }
        }
        // Only a request that was admitted has used anything worth recording.
        let Some(lease) = self.lease.take() else {
            return;
        };
        self.engine.hooks.finished(RequestOutcome {
            session: self.session.clone(),
            request_id: self.id.clone(),
            model: self.model.clone(),
            provider,
            conversation_id: self.conversation_id.clone(),
            question: self.question.take(),
            answer: std::mem::take(&mut self.answer),
            usage,
            finish_reason: reason,
            first_chunk_ms: self.first_chunk_ms,
            duration_ms: self.started.elapsed().as_millis() as u64,
        });
        // The lease goes last, after the outcome is handed over.
        drop(lease);
    }
}

impl Drop for ChatRequest {
    /// A request dropped before its end (its client went away, its connection closed) is
    /// cancelled: the upstream call stops and what it used is recorded.
    fn drop(&mut self) {
        let usage = self.partial_usage();
        self.finish(FinishReason::Cancelled, usage);
    }
}
