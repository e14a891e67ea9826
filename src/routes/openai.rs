//! The OpenAI-compatible HTTP front: `POST /v1/chat/completions` (streaming SSE and plain) and
//! `GET /v1/models`, so any OpenAI SDK can use the gateway. Requests go through the same hooks
//! (limits, usage records), registry and routes as WebSocket chat.

use std::{
    collections::VecDeque,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use actix_web::{http::StatusCode, web, HttpRequest, HttpResponse, ResponseError};
use ai_gateway_actors::{
    provider::Finish, unix_time::now_unix_secs, ChatRequest, Chunk, ChunkSink, FlowControl, Front,
    ProviderError, ProviderRequest, Refusal, RequestStart, StreamEvent,
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
            err.retry_after_secs = Some(super::retry_after_secs(Duration::from_millis(*ms)));
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

/// A piece of a running answer, as the HTTP front writes it.
enum Piece {
    Chunk(Chunk),
    End(Result<Finish, ProviderError>),
}

/// A running answer: the request (its accounting and stream) and the channel its events come
/// out of. Dropping it before the end (the client went away) cancels the request.
struct Answer {
    request: ChatRequest,
    events: UnboundedReceiver<StreamEvent>,
    flow: Arc<FlowControl>,
    ready: VecDeque<Piece>,
}

impl Answer {
    /// Takes a batch off the channel; its bytes leave the flow's count as they enter ours.
    fn take(&mut self, ev: StreamEvent) {
        self.flow.release(ev.charge);
        if let Some(provider) = ev.provider {
            self.request.provider_started(provider);
        }
        self.ready.extend(ev.chunks.into_iter().map(Piece::Chunk));
        if let Some(end) = ev.end {
            self.ready.push_back(Piece::End(end));
        }
    }

    /// The next piece, waiting for it; `None` if the stream stopped without an end.
    async fn next(&mut self) -> Option<Piece> {
        loop {
            if let Some(piece) = self.ready.pop_front() {
                return Some(piece);
            }
            let ev = self.events.recv().await?;
            self.take(ev);
        }
    }

    /// The next piece if one is already here.
    fn next_ready(&mut self) -> Option<Piece> {
        loop {
            if let Some(piece) = self.ready.pop_front() {
                return Some(piece);
            }
            let ev = self.events.try_recv().ok()?;
            self.take(ev);
        }
    }

    /// Ends the request as its stream said, answering the error to report if it failed.
    fn end(&mut self, end: Result<Finish, ProviderError>) -> Result<Finish, OpenAiError> {
        match end {
            Ok(finish) => {
                self.request.finish(finish.reason, finish.usage);
                Ok(finish)
            }
            Err(e) => {
                self.request.failed(&e);
                Err(OpenAiError::of_provider(&e))
            }
        }
    }

    /// The stream stopped without saying how it ended.
    fn broken(&mut self) -> OpenAiError {
        self.request.finish(FinishReason::Error, Usage::default());
        OpenAiError::new(ErrorReason::Internal, "the stream ended early")
    }
}

impl Drop for Answer {
    fn drop(&mut self) {
        self.flow.close();
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
    let request_id = session.session_id.to_string();
    let model = body.model;
    let span = tracing::info_span!(
        "chat_request",
        request.id = %request_id,
        user.id = %session.user_id,
        model = %model,
        front = "http",
        provider = tracing::field::Empty,
        prompt_tokens = tracing::field::Empty,
        completion_tokens = tracing::field::Empty,
        time_to_first_chunk_ms = tracing::field::Empty,
        finish_reason = tracing::field::Empty,
        trace_id = tracing::field::Empty,
    );
    ai_gateway_actors::trace::adopt(&span, &super::chat::trace_headers(&req));
    ai_gateway_actors::trace::record_trace_id(&span);
    let start = RequestStart {
        session: session.clone(),
        request_id: request_id.clone(),
        request: ProviderRequest {
            model: model.clone(),
            upstream_model: String::new(),
            system: None,
            messages,
            temperature: body.temperature,
            max_tokens: body.max_completion_tokens.or(body.max_tokens),
            span: span.clone(),
        },
        conversation_id: None,
    };
    let engine = state.session_env.engine.clone();
    let mut request = ChatRequest::new(
        engine.clone(),
        Front::Http,
        session,
        request_id,
        model.clone(),
        span,
        None,
        None,
    );
    // A slow HTTP client holds back its provider at the same watermark as a WebSocket one.
    let flow = FlowControl::new(state.session_env.config.outbox_high_watermark_bytes);
    let (sink, events) = ChunkSink::channel(0, flow.clone());
    let refused = |request: ChatRequest, refusal: Refusal| {
        request.refused();
        OpenAiError::new(refusal.reason, refusal.message)
    };
    let admission = match engine.clone().admit(start).await {
        Ok(admission) => admission,
        Err(refusal) => return Err(refused(request, refusal)),
    };
    request.admitted(admission.lease);
    match engine.start(admission.request, sink).await {
        Ok(stream) => request.streaming(stream),
        Err(refusal) => return Err(refused(request, refusal)),
    }
    let mut answer = Answer {
        request,
        events,
        flow,
        ready: VecDeque::new(),
    };

    // Nothing is sent before the first piece, so an upstream that fails at once gets a proper
    // HTTP error status instead of a broken 200.
    let first = match answer.next().await {
        Some(Piece::End(Err(e))) => return Err(answer.end(Err(e)).unwrap_err()),
        Some(piece) => piece,
        None => return Err(answer.broken()),
    };
    // What the gateway added to the first chunk: from the provider producing it to now, when
    // the response starts.
    let added_us = match &first {
        Piece::Chunk(c) => c.produced_at.elapsed().as_micros() as u64,
        Piece::End(_) => 0,
    };
    let id = format!("chatcmpl-{}", uuid::Uuid::new_v4().simple());
    let created = now_unix_secs();
    if body.stream {
        let include_usage = body.stream_options.is_some_and(|o| o.include_usage);
        let stream = SseStream {
            inner: Box::pin(sse_events(answer, first, id, created, model, include_usage)),
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
            Some(Piece::Chunk(chunk)) => {
                answer.request.chunk(&chunk);
                match chunk.kind {
                    ChunkKind::Text => content.push_str(&chunk.text),
                    ChunkKind::Reasoning => reasoning.push_str(&chunk.text),
                }
            }
            Some(Piece::End(end)) => {
                let Finish { reason, usage } = answer.end(end)?;
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
            None => return Err(answer.broken()),
        }
        next = answer.next().await;
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

/// The SSE body. When the client drops it, the answer inside cancels the upstream call.
fn sse_events(
    mut answer: Answer,
    first: Piece,
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
                Some(Piece::Chunk(c)) => {
                    answer.request.chunk(&c);
                    let delta = match c.kind {
                        ChunkKind::Text => json!({"content": c.text}),
                        ChunkKind::Reasoning => json!({"reasoning_content": c.text}),
                    };
                    chunk(&mut out, delta, None);
                }
                Some(Piece::End(end)) => {
                    match answer.end(end) {
                        Ok(Finish { reason, usage }) => {
                            chunk(&mut out, json!({}), Some(finish_reason_str(reason)));
                            if include_usage {
                                push_sse(&mut out, &json!({
                                    "id": id, "object": "chat.completion.chunk", "created": created,
                                    "model": model, "choices": [], "usage": usage,
                                }));
                            }
                            out.extend_from_slice(b"data: [DONE]\n\n");
                        }
                        // Never a quiet end: OpenAI SDKs raise on an error event.
                        Err(e) => push_sse(&mut out, &e.body()),
                    }
                    yield out.split().freeze();
                    break;
                }
                None => {
                    let e = answer.broken();
                    push_sse(&mut out, &e.body());
                    yield out.split().freeze();
                    break;
                }
            }
            next = match answer.next_ready() {
                Some(piece) if out.len() < SSE_BATCH_BYTES => Some(piece),
                ready => {
                    yield out.split().freeze();
                    match ready {
                        Some(piece) => Some(piece),
                        None => answer.next().await,
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
