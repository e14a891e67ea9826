//! Providers answer chat requests. Each running request is one [`ProviderStream`] actor, started
//! on the requesting session's arbiter so chunks never cross threads; it runs the provider's
//! stream future and dies with it. Stopping the actor (cancel, disconnect) drops the future at
//! once, which aborts any upstream I/O.

pub mod anthropic;
mod api_key;
pub mod breaker;
pub mod chat;
pub mod estimate;
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
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use actix::prelude::*;
use ai_gateway_proto::{ChunkKind, ErrorReason, FinishReason, Usage};
use futures_util::future::LocalBoxFuture;
use prometheus_client::metrics::{family::Family, histogram::Histogram};
use tokio::sync::mpsc;

use crate::{
    flow::{FlowControl, SessionClosed},
    metrics::ProviderLabel,
};
pub use api_key::ApiKey;
pub use breaker::{Breaker, BreakerState};
pub use chat::{
    Extra, ImageSource, Message, Part, ResponseFormat, Role, Tool, ToolCall, ToolCallDelta,
    ToolChoice,
};
pub use http::{InvalidSettings, Timeouts};
pub use route::{RetryPolicy, Route, Target, Upstream};
pub use stream::{CancelStream, ProviderStream, StreamHandle};

/// What a provider is asked to answer: the provider-neutral chat model (see [`chat`]).
#[derive(Debug, Clone)]
pub struct ProviderRequest {
    /// The model name the client asked for.
    pub model: String,
    /// The model name the upstream knows.
    pub upstream_model: String,
    pub system: Option<String>,
    /// Earlier turns, oldest first, then the new user message last.
    pub messages: Vec<Message>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub seed: Option<i64>,
    /// Stop sequences.
    pub stop: Vec<String>,
    /// Most tokens to generate (reasoning included, for models that think).
    pub max_tokens: Option<u32>,
    pub presence_penalty: Option<f32>,
    pub frequency_penalty: Option<f32>,
    /// `low`, `medium`, `high` (OpenAI's `reasoning_effort`).
    pub reasoning_effort: Option<String>,
    /// The end user, for the upstream's abuse monitoring.
    pub user: Option<String>,
    pub tools: Vec<Tool>,
    pub tool_choice: Option<ToolChoice>,
    pub parallel_tool_calls: Option<bool>,
    pub response_format: Option<ResponseFormat>,
    /// Fields of the client's request the front did not know, for upstreams of the same format.
    pub extra: Extra,
    /// The request's span; each provider call is a child of it.
    pub span: tracing::Span,
}

impl Default for ProviderRequest {
    fn default() -> Self {
        ProviderRequest {
            model: String::new(),
            upstream_model: String::new(),
            system: None,
            messages: Vec::new(),
            temperature: None,
            top_p: None,
            seed: None,
            stop: Vec::new(),
            max_tokens: None,
            presence_penalty: None,
            frequency_penalty: None,
            reasoning_effort: None,
            user: None,
            tools: Vec::new(),
            tool_choice: None,
            parallel_tool_calls: None,
            response_format: None,
            extra: Extra::new(),
            span: tracing::Span::none(),
        }
    }
}

/// Every parameter a request may carry beyond the model, the messages' text, `temperature`
/// and `max_tokens`, by the name of OpenAI's field. A provider lists those it takes; what it
/// does not take is refused by name ([`ProviderRequest::refuse_unsupported`]).
pub const PARAMS: [&str; 14] = [
    "top_p",
    "seed",
    "stop",
    "presence_penalty",
    "frequency_penalty",
    "reasoning_effort",
    "user",
    "tools",
    "tool_choice",
    "parallel_tool_calls",
    "response_format",
    "image_url",
    "tool_messages",
    "extra",
];

impl ProviderRequest {
    /// The parameters of [`PARAMS`] this request uses, each with the field to name in an
    /// error (`extra` fields by their own name).
    pub fn params_used(&self) -> Vec<(&'static str, String)> {
        let mut used = Vec::new();
        let mut add = |p: &'static str, on: bool| {
            if on {
                used.push((p, p.to_owned()));
            }
        };
        add("top_p", self.top_p.is_some());
        add("seed", self.seed.is_some());
        add("stop", !self.stop.is_empty());
        add("presence_penalty", self.presence_penalty.is_some());
        add("frequency_penalty", self.frequency_penalty.is_some());
        add("reasoning_effort", self.reasoning_effort.is_some());
        add("user", self.user.is_some());
        add("tools", !self.tools.is_empty());
        add("tool_choice", self.tool_choice.is_some());
        // `true` is every API's default; only turning it off asks something of the upstream.
        add(
            "parallel_tool_calls",
            self.parallel_tool_calls == Some(false),
        );
        add(
            "response_format",
            !matches!(self.response_format, None | Some(ResponseFormat::Text)),
        );
        for (i, m) in self.messages.iter().enumerate() {
            if m.has_images() {
                used.push(("image_url", format!("messages[{i}].content")));
            }
            if m.role == Role::Tool || !m.tool_calls.is_empty() {
                used.push(("tool_messages", format!("messages[{i}]")));
            }
        }
        used.extend(self.extra.keys().map(|k| ("extra", k.clone())));
        used
    }

    /// Drops the request parameters not in `supported` (a model's opt-in `drop_params`).
    /// Message content (images, tool messages) is never dropped: it stays refused.
    pub fn drop_unsupported(&mut self, supported: &[&str]) {
        let drop = |p: &str| !supported.contains(&p);
        if drop("top_p") {
            self.top_p = None;
        }
        if drop("seed") {
            self.seed = None;
        }
        if drop("stop") {
            self.stop.clear();
        }
        if drop("presence_penalty") {
            self.presence_penalty = None;
        }
        if drop("frequency_penalty") {
            self.frequency_penalty = None;
        }
        if drop("reasoning_effort") {
            self.reasoning_effort = None;
        }
        if drop("user") {
            self.user = None;
        }
        if drop("tools") {
            self.tools.clear();
        }
        if drop("tool_choice") {
            self.tool_choice = None;
        }
        if drop("parallel_tool_calls") {
            self.parallel_tool_calls = None;
        }
        if drop("response_format") {
            self.response_format = None;
        }
        if drop("extra") {
            self.extra.clear();
        }
    }

    /// Refuses the first parameter of this request that is not in `supported` (names from
    /// [`PARAMS`]).
    pub fn refuse_unsupported(
        &self,
        provider: &'static str,
        supported: &[&str],
    ) -> Result<(), ProviderError> {
        match self
            .params_used()
            .into_iter()
            .find(|(p, _)| !supported.contains(p))
        {
            None => Ok(()),
            Some((_, param)) => Err(ProviderError::Unsupported {
                provider,
                message: format!("this upstream cannot take `{param}`"),
                param,
            }),
        }
    }
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
    /// The request asks for something this upstream cannot do; `param` names it (as the
    /// client's OpenAI-style request would: `tools`, `response_format`, `seed`, ...).
    #[error("{provider} does not support the parameter `{param}`: {message}")]
    Unsupported {
        provider: &'static str,
        param: String,
        message: String,
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
            ProviderError::Unsupported { .. } => ErrorReason::InvalidPayload,
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
            | ProviderError::Unsupported { .. }
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

    /// The parameters of [`PARAMS`] this provider takes; it refuses the others by name.
    fn supported_params(&self) -> &'static [&'static str] {
        &PARAMS
    }

    /// Produces the answer into `sink`, chunk by chunk. Runs on the session's arbiter; dropping
    /// the future must abort the work.
    fn stream(
        self: Arc<Self>,
        request: ProviderRequest,
        sink: ChunkSink,
    ) -> LocalBoxFuture<'static, Result<Finish, ProviderError>>;
}

/// What closes a block of reasoning so that the provider can take it back in a later turn
/// (Anthropic's extended thinking). It travels as a reasoning chunk with no text, which only the
/// Anthropic-compatible front shows; the other fronts skip it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seal {
    /// The signature of the reasoning block just streamed (`signature_delta`).
    Signature(String),
    /// A block of reasoning the provider sent encrypted (`redacted_thinking`).
    Redacted(String),
}

/// One piece of an answer, as a provider produced it.
#[derive(Debug)]
pub struct Chunk {
    pub kind: ChunkKind,
    /// Text, reasoning, or a piece of a tool call's arguments.
    pub text: String,
    /// Which tool call the piece belongs to (kind [`ChunkKind::ToolCall`] only).
    pub tool_call: Option<Box<ToolCallDelta>>,
    /// The seal of the reasoning before it (kind [`ChunkKind::Reasoning`], no text).
    pub seal: Option<Box<Seal>>,
    /// When the provider produced it, to measure what the gateway adds.
    pub produced_at: Instant,
}

impl Chunk {
    /// Bytes this chunk is charged against its receiver's flow: its text and the frame around it.
    pub fn charge(&self) -> usize {
        let call = self.tool_call.as_ref().map_or(0, |c| {
            c.id.as_ref().map_or(0, String::len) + c.name.as_ref().map_or(0, String::len)
        });
        let seal = self.seal.as_deref().map_or(0, |s| match s {
            Seal::Signature(s) | Seal::Redacted(s) => s.len(),
        });
        self.text.len() + call + seal + CHUNK_FRAME_OVERHEAD_BYTES
    }

    /// A seal of reasoning: only the Anthropic-compatible front shows it.
    pub fn is_seal(&self) -> bool {
        self.seal.is_some()
    }
}

/// Everything a running request had ready, handed over in one message: the provider that
/// answers (when it starts, or changes after a failed attempt), the chunks in order, and the
/// end when the stream ended.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct StreamEvent {
    /// The receiver's private key for the request (client ids may be reused).
    pub key: u64,
    /// The configured name of the upstream now answering, when it is new.
    pub provider: Option<Arc<str>>,
    pub chunks: Vec<Chunk>,
    /// Bytes charged to the receiver's flow for `chunks`, released as they are written.
    pub charge: usize,
    /// How the stream ended; `None` while it runs.
    pub end: Option<Result<Finish, ProviderError>>,
}

/// Bytes charged for a chunk beyond its text: the frame's JSON around it.
pub const CHUNK_FRAME_OVERHEAD_BYTES: usize = 96;
/// A batch is handed over once it holds this many bytes, even if more chunks are ready.
pub const MAX_BATCH_BYTES: usize = 16 * 1024;
/// A batch is handed over once it holds this many chunks.
pub const MAX_BATCH_CHUNKS: usize = 64;

/// Where a request's events go: a session actor's mailbox, or a channel read by an HTTP
/// response. Either way it is the only queue a chunk crosses before its frame is encoded.
#[derive(Clone)]
enum Receiver {
    Actor(Recipient<StreamEvent>),
    Channel(mpsc::UnboundedSender<StreamEvent>),
}

impl Receiver {
    fn connected(&self) -> bool {
        match self {
            Receiver::Actor(r) => r.connected(),
            Receiver::Channel(tx) => !tx.is_closed(),
        }
    }

    /// Hands `event` over; when nobody takes it any more, its bytes leave `flow` at once.
    fn deliver(&self, event: StreamEvent, flow: &FlowControl) {
        match self {
            Receiver::Actor(r) => r.do_send(event),
            Receiver::Channel(tx) => {
                if let Err(unsent) = tx.send(event) {
                    flow.release(unsent.0.charge);
                }
            }
        }
    }
}

/// The receiving end of a sink's channel ([`ChunkSink::channel`]). The batches it still holds
/// when it is dropped (an answer that ended early with batches on their way) leave their flow's
/// count: on a WebSocket the flow is the session's, and bytes nobody will write must not hold
/// its later answers back at the watermark.
pub struct ChunkReceiver {
    rx: mpsc::UnboundedReceiver<StreamEvent>,
    flow: Arc<FlowControl>,
}

impl ChunkReceiver {
    pub async fn recv(&mut self) -> Option<StreamEvent> {
        self.rx.recv().await
    }

    pub fn try_recv(&mut self) -> Result<StreamEvent, mpsc::error::TryRecvError> {
        self.rx.try_recv()
    }
}

impl Drop for ChunkReceiver {
    fn drop(&mut self) {
        self.rx.close();
        while let Ok(event) = self.rx.try_recv() {
            self.flow.release(event.charge);
        }
    }
}

/// What a sink holds until its next hand-over.
#[derive(Default)]
struct Pending {
    provider: Option<Arc<str>>,
    chunks: Vec<Chunk>,
    charge: usize,
    /// The upstream attempt under way and when it began, until its first chunk.
    attempt: Option<(Arc<str>, Instant)>,
}

/// Where a provider writes its chunks. Chunks are gathered and handed over in batches: when a
/// batch is full, when the provider is about to wait (for its upstream, or a pause), and with
/// the stream's end. Handing over waits while the receiver is behind.
#[derive(Clone)]
pub struct ChunkSink {
    key: u64,
    to: Receiver,
    flow: Arc<FlowControl>,
    sent: Arc<AtomicU64>,
    pending: Arc<Mutex<Pending>>,
    first_chunk: Option<Family<ProviderLabel, Histogram>>,
    /// Every piece of the current attempt's answer, for estimating its tokens when the
    /// upstream reports none.
    answer: Arc<Mutex<String>>,
}

impl ChunkSink {
    /// A sink whose events go to an actor (a session).
    pub fn new(key: u64, session: Recipient<StreamEvent>, flow: Arc<FlowControl>) -> Self {
        Self::to(key, Receiver::Actor(session), flow)
    }

    /// A sink whose events come out of the returned channel. The channel needs no bound:
    /// `flow` keeps what waits in it bounded in bytes (the reader releases each event's
    /// `charge`).
    pub fn channel(key: u64, flow: Arc<FlowControl>) -> (Self, ChunkReceiver) {
        let (tx, rx) = mpsc::unbounded_channel();
        let incoming = ChunkReceiver {
            rx,
            flow: flow.clone(),
        };
        (Self::to(key, Receiver::Channel(tx), flow), incoming)
    }

    fn to(key: u64, to: Receiver, flow: Arc<FlowControl>) -> Self {
        ChunkSink {
            key,
            to,
            flow,
            sent: Arc::default(),
            pending: Arc::default(),
            first_chunk: None,
            answer: Arc::default(),
        }
    }

    /// Observes each upstream attempt's time to its first chunk in `histograms`, by provider.
    pub fn timing_first_chunks(mut self, histograms: Family<ProviderLabel, Histogram>) -> Self {
        self.first_chunk = Some(histograms);
        self
    }

    fn pending(&self) -> std::sync::MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Chunks produced so far through this sink (and its clones).
    pub fn chunks_sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    /// Adds one chunk to the batch; hands the batch over when it is full.
    pub async fn chunk(&self, kind: ChunkKind, text: String) -> Result<(), SessionClosed> {
        self.push(kind, text, None, None).await
    }

    /// Adds a piece of a tool call: `arguments` is the next piece of its arguments' text.
    pub async fn tool_call(
        &self,
        delta: ToolCallDelta,
        arguments: String,
    ) -> Result<(), SessionClosed> {
        self.push(ChunkKind::ToolCall, arguments, Some(Box::new(delta)), None)
            .await
    }

    /// Adds the seal of the reasoning just sent.
    pub async fn seal(&self, seal: Seal) -> Result<(), SessionClosed> {
        self.push(
            ChunkKind::Reasoning,
            String::new(),
            None,
            Some(Box::new(seal)),
        )
        .await
    }

    async fn push(
        &self,
        kind: ChunkKind,
        text: String,
        tool_call: Option<Box<ToolCallDelta>>,
        seal: Option<Box<Seal>>,
    ) -> Result<(), SessionClosed> {
        if self.flow.is_closed() {
            return Err(SessionClosed);
        }
        self.answer
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push_str(&text);
        let full = {
            let mut p = self.pending();
            if let Some((provider, began)) = p.attempt.take() {
                if let Some(h) = &self.first_chunk {
                    h.get_or_create(&ProviderLabel {
                        provider: provider.to_string(),
                    })
                    .observe(began.elapsed().as_secs_f64());
                }
            }
            let chunk = Chunk {
                kind,
                text,
                tool_call,
                seal,
                produced_at: Instant::now(),
            };
            p.charge += chunk.charge();
            p.chunks.push(chunk);
            p.charge >= MAX_BATCH_BYTES || p.chunks.len() >= MAX_BATCH_CHUNKS
        };
        self.sent.fetch_add(1, Ordering::Relaxed);
        if full {
            self.flush().await?;
        }
        Ok(())
    }

    /// Hands over the chunks gathered so far, after waiting for room at the receiver. A
    /// provider calls it before it waits for anything.
    pub async fn flush(&self) -> Result<(), SessionClosed> {
        if self.pending().chunks.is_empty() {
            return Ok(());
        }
        self.flow.ready().await?;
        if !self.to.connected() {
            return Err(SessionClosed);
        }
        let (provider, chunks, charge) = {
            let mut p = self.pending();
            (
                p.provider.take(),
                std::mem::take(&mut p.chunks),
                std::mem::take(&mut p.charge),
            )
        };
        if chunks.is_empty() {
            return Ok(());
        }
        self.flow.charge(charge);
        self.to.deliver(
            StreamEvent {
                key: self.key,
                provider,
                chunks,
                charge,
                end: None,
            },
            &self.flow,
        );
        Ok(())
    }

    /// The text, reasoning and tool arguments of the current attempt's answer.
    pub(crate) fn answer_text(&self) -> String {
        self.answer
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// An upstream attempt begins: `provider` (its configured name) answers from now on.
    pub(crate) fn started(&self, provider: Arc<str>) {
        self.answer
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
        let mut p = self.pending();
        p.provider = Some(provider.clone());
        p.attempt = Some((provider, Instant::now()));
    }

    /// Hands over what is left, with the stream's end. Nothing goes to a receiver that left.
    pub(crate) fn end(&self, result: Result<Finish, ProviderError>) {
        if matches!(result, Err(ProviderError::SessionClosed)) {
            return;
        }
        let (provider, chunks, charge) = {
            let mut p = self.pending();
            (
                p.provider.take(),
                std::mem::take(&mut p.chunks),
                std::mem::take(&mut p.charge),
            )
        };
        self.flow.charge(charge);
        self.to.deliver(
            StreamEvent {
                key: self.key,
                provider,
                chunks,
                charge,
                end: Some(result),
            },
            &self.flow,
        );
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
