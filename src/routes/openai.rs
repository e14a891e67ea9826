//! The OpenAI-compatible HTTP front: `POST /v1/chat/completions` (streaming SSE and plain) and
//! `GET /v1/models`, so any OpenAI SDK can use the gateway. Requests go through the same hooks
//! (limits, usage records), registry and routes as WebSocket chat.

use std::{
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::{Instant, SystemTime, UNIX_EPOCH},
};

use actix_web::{http::StatusCode, web, HttpRequest, HttpResponse, ResponseError};
use ai_gateway_actors::{
    provider::{forward_events, Finish, StreamEvent, StreamEventKind, StreamHandle},
    ChunkSink, FlowControl, ProviderError, ProviderRequest, RequestHooks, RequestOutcome,
    RequestStart, SessionInfo, StartChat,
};
use ai_gateway_proto::{ChatMessage, ChunkKind, ErrorReason, FinishReason, Role, Usage};
use bytes::{Bytes, BytesMut};
use futures_util::Stream;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::mpsc::UnboundedReceiver;

use super::{AppState, Caller};

/// Microseconds the gateway added to the first chunk (provider's chunk to response start).
pub const ADDED_LATENCY_HEADER: &str = "x-gateway-first-chunk-added-us";

/// Bytes of answer that may wait for a slow HTTP client before the provider pauses.
const HIGH_WATERMARK_BYTES: usize = 64 * 1024;

/// An error in OpenAI's shape: `{"error": {"message", "type", "code"}}`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct OpenAiError {
    status: StatusCode,
    kind: &'static str,
    code: String,
    message: String,
    retry_after_secs: Option<u64>,
}

impl OpenAiError {
    fn new(reason: ErrorReason, message: impl Into<String>) -> Self {
        let status =
            StatusCode::from_u16(reason.status_code()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let kind = match status.as_u16() {
            400 | 404 | 409 | 415 => "invalid_request_error",
            429 => "rate_limit_error",
            _ => "server_error",
        };
        let code = serde_json::to_value(reason)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        OpenAiError {
            status,
            kind,
            code,
            message: message.into(),
            retry_after_secs: None,
        }
    }

    fn of_provider(e: &ProviderError) -> Self {
        let mut err = OpenAiError::new(e.reason(), e.to_string());
        if let ProviderError::RateLimited {
            retry_after_ms: Some(ms),
            ..
        } = e
        {
            err.retry_after_secs = Some(ms.div_ceil(1000).max(1));
        }
        err
    }

    fn body(&self) -> Value {
        json!({"error": {"message": self.message, "type": self.kind, "code": self.code}})
    }
}

impl ResponseError for OpenAiError {
    fn status_code(&self) -> StatusCode {
        self.status
    }

    fn error_response(&self) -> HttpResponse {
        let mut res = HttpResponse::build(self.status);
        if let Some(secs) = self.retry_after_secs {
            res.insert_header(("Retry-After", secs.to_string()));
        }
        res.json(self.body())
    }
}

#[derive(Deserialize)]
pub struct CompletionRequest {
    model: String,
    messages: Vec<InMessage>,
    #[serde(default)]
    stream: bool,
    #[serde(default)]
    temperature: Option<f32>,
    #[serde(default)]
    max_tokens: Option<u32>,
    #[serde(default)]
    max_completion_tokens: Option<u32>,
    #[serde(default)]
    stream_options: Option<StreamOptions>,
}

#[derive(Deserialize)]
struct StreamOptions {
    #[serde(default)]
    include_usage: bool,
}

#[derive(Deserialize)]
struct InMessage {
    role: String,
    content: Content,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Content {
    Text(String),
    Parts(Vec<Part>),
}

#[derive(Deserialize)]
struct Part {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    text: String,
}

fn to_messages(input: Vec<InMessage>) -> Result<Vec<ChatMessage>, OpenAiError> {
    let bad = |m: String| OpenAiError::new(ErrorReason::InvalidPayload, m);
    input
        .into_iter()
        .map(|m| {
            let role = match m.role.as_str() {
                "system" | "developer" => Role::System,
                "user" => Role::User,
                "assistant" => Role::Assistant,
                other => return Err(bad(format!("messages: role {other:?} is not supported"))),
            };
            let content = match m.content {
                Content::Text(t) => t,
                Content::Parts(parts) => {
                    if let Some(p) = parts.iter().find(|p| p.kind != "text") {
                        return Err(bad(format!(
                            "messages: content type {:?} is not supported",
                            p.kind
                        )));
                    }
                    parts.into_iter().map(|p| p.text).collect()
                }
            };
            Ok(ChatMessage { role, content })
        })
        .collect()
}

/// `GET /v1/models`
pub async fn models(state: web::Data<AppState>, _caller: Caller) -> HttpResponse {
    let data: Vec<Value> = state
        .router
        .models()
        .map(|(name, route)| {
            json!({"id": name, "object": "model", "created": 0, "owned_by": route.primary().name()})
        })
        .collect();
    HttpResponse::Ok().json(json!({"object": "list", "data": data}))
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Everything needed to report the request when it ends, however it ends.
struct Tracker {
    hooks: Arc<dyn RequestHooks>,
    session: SessionInfo,
    model: String,
    provider: &'static str,
    started: Instant,
    first_chunk_ms: Option<u64>,
    handle: StreamHandle,
    flow: Arc<FlowControl>,
    _lease: Option<Box<dyn std::any::Any + Send>>,
    ended: bool,
}

impl Tracker {
    fn end(&mut self, finish_reason: FinishReason, usage: Usage) {
        if std::mem::replace(&mut self.ended, true) {
            return;
        }
        self.handle.cancel();
        self.flow.close();
        self.hooks.finished(RequestOutcome {
            session: self.session.clone(),
            request_id: self.session.session_id.to_string(),
            model: self.model.clone(),
            provider: if self.provider.is_empty() {
                "unknown"
            } else {
                self.provider
            },
            conversation_id: None,
            question: None,
            answer: String::new(),
            usage,
            finish_reason,
            first_chunk_ms: self.first_chunk_ms,
            duration_ms: self.started.elapsed().as_millis() as u64,
        });
    }

    /// Notes what an event tells (the provider, the first chunk's time, a chunk's bytes now
    /// leaving the queue); `None` for events with nothing for the client.
    fn note(&mut self, ev: StreamEventKind) -> Option<StreamEventKind> {
        match ev {
            StreamEventKind::Started { provider } => {
                self.provider = provider;
                None
            }
            StreamEventKind::Chunk { charge, .. } => {
                self.flow.release(charge);
                if self.first_chunk_ms.is_none() {
                    self.first_chunk_ms = Some(self.started.elapsed().as_millis() as u64);
                }
                Some(ev)
            }
            other => Some(other),
        }
    }

    /// Waits for the next event for the client.
    async fn next(&mut self, rx: &mut UnboundedReceiver<StreamEvent>) -> Option<StreamEventKind> {
        loop {
            let ev = rx.recv().await?.kind;
            if let Some(ev) = self.note(ev) {
                return Some(ev);
            }
        }
    }

    /// The next event for the client if one is already queued.
    fn next_ready(&mut self, rx: &mut UnboundedReceiver<StreamEvent>) -> Option<StreamEventKind> {
        loop {
            let ev = rx.try_recv().ok()?.kind;
            if let Some(ev) = self.note(ev) {
                return Some(ev);
            }
        }
    }
}

impl Drop for Tracker {
    /// The client went away (or the server stopped) before the end: cancel the upstream call.
    fn drop(&mut self) {
        self.end(FinishReason::Cancelled, Usage::default());
    }
}

fn finish_reason_str(r: FinishReason) -> &'static str {
    match r {
        FinishReason::Length => "length",
        _ => "stop",
    }
}

/// `POST /v1/chat/completions`
pub async fn completions(
    req: HttpRequest,
    state: web::Data<AppState>,
    caller: Caller,
    body: web::Json<CompletionRequest>,
) -> Result<HttpResponse, OpenAiError> {
    let body = body.into_inner();
    let principal = caller.0;
    let messages = to_messages(body.messages)?;
    if messages.is_empty() {
        return Err(OpenAiError::new(
            ErrorReason::InvalidPayload,
            "messages must not be empty",
        ));
    }
    let session = super::caller::session_of(
        principal,
        format!("http-{}", uuid::Uuid::new_v4().simple()),
        &state,
        &req,
    );
    let model = body.model;
    let span = tracing::info_span!(
        "chat_request",
        request.id = %session.session_id,
        user.id = %session.user_id,
        model = %model,
        front = "openai",
        trace_id = tracing::field::Empty,
    );
    ai_gateway_actors::trace::adopt(&span, &super::chat::trace_headers(&req));
    ai_gateway_actors::trace::record_trace_id(&span);
    let start = RequestStart {
        session: session.clone(),
        request_id: session.session_id.to_string(),
        request: ProviderRequest {
            model: model.clone(),
            upstream_model: String::new(),
            system: None,
            messages,
            temperature: body.temperature,
            max_tokens: body.max_completion_tokens.or(body.max_tokens),
            span,
        },
        conversation_id: None,
    };
    let hooks = state.session_env.hooks.clone();
    let admission = hooks
        .admit(start)
        .await
        .map_err(|r| OpenAiError::new(r.reason, r.message))?;

    let (recipient, mut rx) = forward_events();
    let flow = FlowControl::new(HIGH_WATERMARK_BYTES);
    let started = Instant::now();
    let handle = state
        .registry
        .send(StartChat {
            request: admission.request,
            sink: ChunkSink::new(0, recipient, flow.clone()),
            arbiter: actix_rt::Arbiter::current(),
        })
        .await
        .map_err(|_| OpenAiError::new(ErrorReason::Internal, "registry unavailable"))?
        .map_err(|unknown| OpenAiError::new(ErrorReason::UnknownModel, unknown.to_string()))?;
    let mut tracker = Tracker {
        hooks,
        session,
        model: model.clone(),
        provider: "",
        started,
        first_chunk_ms: None,
        handle,
        flow,
        _lease: admission.lease,
        ended: false,
    };

    // Nothing is sent before the first event, so an upstream that fails at once gets a proper
    // HTTP error status instead of a broken 200.
    let first = match tracker.next(&mut rx).await {
        Some(StreamEventKind::Failed(e)) => {
            tracker.end(FinishReason::Error, Usage::default());
            return Err(OpenAiError::of_provider(&e));
        }
        Some(ev) => ev,
        None => {
            tracker.end(FinishReason::Error, Usage::default());
            return Err(OpenAiError::new(
                ErrorReason::Internal,
                "the stream ended without an answer",
            ));
        }
    };
    // What the gateway added to the first chunk: from the provider producing it to now, when
    // the response starts.
    let added_us = match &first {
        StreamEventKind::Chunk { produced_at, .. } => produced_at.elapsed().as_micros() as u64,
        _ => 0,
    };
    let id = format!("chatcmpl-{}", uuid::Uuid::new_v4().simple());
    let created = unix_now();
    if body.stream {
        let include_usage = body.stream_options.is_some_and(|o| o.include_usage);
        let stream = SseStream {
            inner: Box::pin(sse_events(
                tracker,
                rx,
                first,
                id,
                created,
                model,
                include_usage,
            )),
        };
        return Ok(HttpResponse::Ok()
            .content_type("text/event-stream")
            .insert_header(("Cache-Control", "no-cache"))
            .insert_header((ADDED_LATENCY_HEADER, added_us.to_string()))
            .streaming(stream));
    }

    let (mut content, mut reasoning) = (String::new(), String::new());
    let mut next = Some(first);
    loop {
        match next {
            Some(StreamEventKind::Chunk { kind, text, .. }) => match kind {
                ChunkKind::Text => content.push_str(&text),
                ChunkKind::Reasoning => reasoning.push_str(&text),
            },
            Some(StreamEventKind::Done(Finish { reason, usage })) => {
                tracker.end(reason, usage);
                let mut message = json!({"role": "assistant", "content": content});
                if !reasoning.is_empty() {
                    message["reasoning_content"] = json!(reasoning);
                }
                return Ok(HttpResponse::Ok()
                    .insert_header((ADDED_LATENCY_HEADER, added_us.to_string()))
                    .json(json!({
                    "id": id, "object": "chat.completion", "created": created, "model": model,
                    "choices": [{"index": 0, "message": message, "finish_reason": finish_reason_str(reason)}],
                    "usage": usage,
                })));
            }
            Some(StreamEventKind::Failed(e)) => {
                tracker.end(FinishReason::Error, Usage::default());
                return Err(OpenAiError::of_provider(&e));
            }
            Some(StreamEventKind::Started { .. }) => {}
            None => {
                tracker.end(FinishReason::Error, Usage::default());
                return Err(OpenAiError::new(
                    ErrorReason::Internal,
                    "the stream ended early",
                ));
            }
        }
        next = tracker.next(&mut rx).await;
    }
}

/// Events already waiting are written together, up to this many bytes: one socket write
/// instead of one per event, and no waiting for events that have not come.
const SSE_BATCH_BYTES: usize = 16 * 1024;

fn push_sse(out: &mut BytesMut, v: &Value) {
    out.extend_from_slice(b"data: ");
    out.extend_from_slice(v.to_string().as_bytes());
    out.extend_from_slice(b"\n\n");
}

/// The SSE body. When the client drops it, the tracker inside cancels the upstream call.
fn sse_events(
    mut tracker: Tracker,
    mut rx: UnboundedReceiver<StreamEvent>,
    first: StreamEventKind,
    id: String,
    created: u64,
    model: String,
    include_usage: bool,
) -> impl Stream<Item = Bytes> {
    async_stream::stream! {
        let chunk = |out: &mut BytesMut, delta: Value, finish: Option<&str>| {
            push_sse(out, &json!({
                "id": id, "object": "chat.completion.chunk", "created": created, "model": model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            }));
        };
        let mut out = BytesMut::new();
        chunk(&mut out, json!({"role": "assistant", "content": ""}), None);
        let mut next = Some(first);
        loop {
            match next {
                Some(StreamEventKind::Chunk { kind, text, .. }) => {
                    let delta = match kind {
                        ChunkKind::Text => json!({"content": text}),
                        ChunkKind::Reasoning => json!({"reasoning_content": text}),
                    };
                    chunk(&mut out, delta, None);
                }
                Some(StreamEventKind::Done(Finish { reason, usage })) => {
                    tracker.end(reason, usage);
                    chunk(&mut out, json!({}), Some(finish_reason_str(reason)));
                    if include_usage {
                        push_sse(&mut out, &json!({
                            "id": id, "object": "chat.completion.chunk", "created": created,
                            "model": model, "choices": [], "usage": usage,
                        }));
                    }
                    out.extend_from_slice(b"data: [DONE]\n\n");
                    yield out.split().freeze();
                    break;
                }
                Some(StreamEventKind::Failed(e)) => {
                    tracker.end(FinishReason::Error, Usage::default());
                    // Never a quiet end: OpenAI SDKs raise on an error event.
                    push_sse(&mut out, &OpenAiError::of_provider(&e).body());
                    yield out.split().freeze();
                    break;
                }
                Some(StreamEventKind::Started { .. }) => {}
                None => {
                    tracker.end(FinishReason::Error, Usage::default());
                    let e = OpenAiError::new(ErrorReason::Internal, "the stream ended early");
                    push_sse(&mut out, &e.body());
                    yield out.split().freeze();
                    break;
                }
            }
            next = match tracker.next_ready(&mut rx) {
                Some(ev) if out.len() < SSE_BATCH_BYTES => Some(ev),
                ready => {
                    yield out.split().freeze();
                    match ready {
                        Some(ev) => Some(ev),
                        None => tracker.next(&mut rx).await,
                    }
                }
            };
        }
    }
}

struct SseStream<S> {
    inner: Pin<Box<S>>,
}

impl<S: Stream<Item = Bytes>> Stream for SseStream<S> {
    type Item = Result<Bytes, actix_web::Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.inner.as_mut().poll_next(cx).map(|o| o.map(Ok))
    }
}
