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
    answer::{Ending, Journal, Remote},
    provider::{
        chat::joined_tool_calls, ChunkReceiver, Finish, ImageSource, Message, Part, ResponseFormat,
        Role, Tool, ToolCall, ToolCallDelta, ToolChoice,
    },
    relay,
    unix_time::now_unix_secs,
    AnswerHub, ChatRequest, Chunk, ChunkSink, FlowControl, Front, ProviderError, ProviderRequest,
    Refusal, RequestStart, StreamEvent,
};
use ai_gateway_proto::{ChunkKind, ErrorReason, FinishReason, Usage};
use bytes::{Bytes, BytesMut};
use futures_util::Stream;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use super::{AppState, Caller};

/// Microseconds the gateway added to the first chunk (provider's chunk to response start).
pub const ADDED_LATENCY_HEADER: &str = "x-gateway-first-chunk-added-us";
/// The stream id of a streamed completion, for `GET /v1/chat/completions/{stream_id}/events`.
pub const STREAM_ID_HEADER: &str = "x-gateway-stream-id";

/// An error in OpenAI's shape: `{"error": {"message", "type", "param", "code"}}`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct OpenAiError {
    status: StatusCode,
    kind: &'static str,
    code: String,
    message: String,
    param: Option<String>,
    retry_after_secs: Option<u64>,
}

/// OpenAI's error `type` for an HTTP status.
pub fn error_type(status: u16) -> &'static str {
    match status {
        401 => "authentication_error",
        403 => "permission_error",
        429 => "rate_limit_error",
        400..=499 => "invalid_request_error",
        _ => "server_error",
    }
}

impl OpenAiError {
    fn new(reason: ErrorReason, message: impl Into<String>) -> Self {
        let status =
            StatusCode::from_u16(reason.status_code()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let kind = error_type(status.as_u16());
        let code = serde_json::to_value(reason)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        OpenAiError {
            status,
            kind,
            code,
            message: message.into(),
            param: None,
            retry_after_secs: None,
        }
    }

    fn with_param(mut self, param: impl Into<String>) -> Self {
        self.param = Some(param.into());
        self
    }

    fn of_provider(e: &ProviderError) -> Self {
        let mut err = OpenAiError::new(e.reason(), e.to_string());
        if let ProviderError::Unsupported { param, .. } = e {
            err.param = Some(param.clone());
        }
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
        json!({"error": {
            "message": self.message, "type": self.kind, "param": self.param, "code": self.code,
        }})
    }
}

impl ResponseError for OpenAiError {
    fn status_code(&self) -> StatusCode {
        self.status
    }

    fn error_response(&self) -> HttpResponse {
        super::error_json(self.status, self.retry_after_secs, self.body())
    }
}

/// OpenAI's chat completion request. Fields the gateway does not know are kept in `extra` and
/// reach OpenAI-compatible upstreams unchanged; other upstreams refuse them by name.
#[derive(Deserialize, utoipa::ToSchema)]
pub struct CompletionRequest {
    model: String,
    messages: Vec<InMessage>,
    #[serde(default)]
    stream: bool,
    stream_options: Option<StreamOptions>,
    temperature: Option<f32>,
    top_p: Option<f32>,
    seed: Option<i64>,
    stop: Option<Stop>,
    max_tokens: Option<u32>,
    max_completion_tokens: Option<u32>,
    presence_penalty: Option<f32>,
    frequency_penalty: Option<f32>,
    reasoning_effort: Option<String>,
    user: Option<String>,
    #[serde(default)]
    tools: Vec<InTool>,
    /// `none`, `auto`, `required` or a named function.
    #[schema(value_type = Option<Value>)]
    tool_choice: Option<Value>,
    parallel_tool_calls: Option<bool>,
    #[schema(value_type = Option<Object>)]
    response_format: Option<Value>,
    /// Asking for more than one choice: only `1` is served.
    n: Option<u32>,
    #[serde(flatten)]
    #[schema(ignore)]
    extra: Map<String, Value>,
}

#[derive(Deserialize, utoipa::ToSchema)]
struct StreamOptions {
    #[serde(default)]
    include_usage: bool,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(untagged)]
enum Stop {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize, utoipa::ToSchema)]
#[schema(as = ChatMessage)]
struct InMessage {
    role: String,
    #[serde(default)]
    content: Option<Content>,
    #[serde(default)]
    tool_calls: Vec<InToolCall>,
    tool_call_id: Option<String>,
    name: Option<String>,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(untagged)]
enum Content {
    Text(String),
    Parts(Vec<Value>),
}

#[derive(Deserialize, utoipa::ToSchema)]
struct InToolCall {
    id: String,
    function: InFunctionCall,
}

#[derive(Deserialize, utoipa::ToSchema)]
struct InFunctionCall {
    name: String,
    #[serde(default)]
    arguments: String,
}

#[derive(Deserialize, utoipa::ToSchema)]
struct InTool {
    #[serde(rename = "type")]
    kind: String,
    function: InFunction,
}

#[derive(Deserialize, utoipa::ToSchema)]
struct InFunction {
    name: String,
    description: Option<String>,
    #[schema(value_type = Option<Object>)]
    parameters: Option<Value>,
    strict: Option<bool>,
}

fn bad(param: impl Into<String>, message: impl Into<String>) -> OpenAiError {
    OpenAiError::new(ErrorReason::InvalidPayload, message).with_param(param)
}

fn to_parts(i: usize, content: Option<Content>) -> Result<Vec<Part>, OpenAiError> {
    match content {
        None => Ok(Vec::new()),
        Some(Content::Text(t)) => Ok(vec![Part::Text(t)]),
        Some(Content::Parts(parts)) => parts
            .into_iter()
            .enumerate()
            .map(|(j, p)| {
                let param = format!("messages[{i}].content[{j}]");
                match p["type"].as_str() {
                    Some("text") => match p["text"].as_str() {
                        Some(t) => Ok(Part::Text(t.to_owned())),
                        None => Err(bad(param, "a text part needs `text`")),
                    },
                    Some("image_url") => {
                        let image = &p["image_url"];
                        let url = image["url"].as_str().or(image.as_str());
                        match url {
                            Some(url) => Ok(Part::Image {
                                source: ImageSource::from_url(url),
                                detail: image["detail"].as_str().map(str::to_owned),
                            }),
                            None => Err(bad(param, "an image_url part needs `image_url.url`")),
                        }
                    }
                    other => Err(bad(
                        format!("{param}.type"),
                        format!(
                            "content parts of type {} are not supported (text and image_url are)",
                            other.map_or("(none)".to_owned(), |t| format!("{t:?}"))
                        ),
                    )),
                }
            })
            .collect(),
    }
}

fn to_messages(input: Vec<InMessage>) -> Result<Vec<Message>, OpenAiError> {
    input
        .into_iter()
        .enumerate()
        .map(|(i, m)| {
            let role = match m.role.as_str() {
                "system" | "developer" => Role::System,
                "user" => Role::User,
                "assistant" => Role::Assistant,
                "tool" => Role::Tool,
                other => {
                    return Err(bad(
                        format!("messages[{i}].role"),
                        format!("messages: role {other:?} is not supported"),
                    ))
                }
            };
            if role == Role::Tool && m.tool_call_id.is_none() {
                return Err(bad(
                    format!("messages[{i}].tool_call_id"),
                    "a tool message needs `tool_call_id`",
                ));
            }
            Ok(Message {
                role,
                content: to_parts(i, m.content)?,
                tool_calls: m
                    .tool_calls
                    .into_iter()
                    .map(|c| ToolCall {
                        id: c.id,
                        name: c.function.name,
                        arguments: c.function.arguments,
                    })
                    .collect(),
                tool_call_id: m.tool_call_id,
                name: m.name,
            })
        })
        .collect()
}

fn to_tools(tools: Vec<InTool>) -> Result<Vec<Tool>, OpenAiError> {
    tools
        .into_iter()
        .enumerate()
        .map(|(i, t)| {
            if t.kind != "function" {
                return Err(bad(
                    format!("tools[{i}].type"),
                    format!("tools of type {:?} are not supported", t.kind),
                ));
            }
            Ok(Tool {
                name: t.function.name,
                description: t.function.description,
                parameters: t
                    .function
                    .parameters
                    .unwrap_or_else(|| json!({"type": "object", "properties": {}})),
                strict: t.function.strict,
            })
        })
        .collect()
}

fn to_tool_choice(v: Value) -> Result<ToolChoice, OpenAiError> {
    match &v {
        Value::String(s) => match s.as_str() {
            "auto" => Ok(ToolChoice::Auto),
            "none" => Ok(ToolChoice::None),
            "required" => Ok(ToolChoice::Required),
            _ => Err(bad("tool_choice", format!("unknown tool_choice {s:?}"))),
        },
        _ => match v["function"]["name"].as_str() {
            Some(name) => Ok(ToolChoice::Tool(name.to_owned())),
            None => Err(bad(
                "tool_choice",
                "tool_choice must be auto, none, required or {\"type\":\"function\",\"function\":{\"name\"}}",
            )),
        },
    }
}

fn to_response_format(v: Value) -> Result<ResponseFormat, OpenAiError> {
    match v["type"].as_str() {
        Some("text") => Ok(ResponseFormat::Text),
        Some("json_object") => Ok(ResponseFormat::JsonObject),
        Some("json_schema") => {
            let s = &v["json_schema"];
            let Some(name) = s["name"].as_str() else {
                return Err(bad(
                    "response_format.json_schema.name",
                    "json_schema needs a name",
                ));
            };
            Ok(ResponseFormat::JsonSchema {
                name: name.to_owned(),
                description: s["description"].as_str().map(str::to_owned),
                schema: s
                    .get("schema")
                    .cloned()
                    .unwrap_or_else(|| json!({"type": "object"})),
                strict: s["strict"].as_bool(),
            })
        }
        other => Err(bad(
            "response_format.type",
            format!("response_format type {other:?} is not supported"),
        )),
    }
}

impl CompletionRequest {
    /// The neutral request, less its span and upstream model.
    fn into_request(self) -> Result<ProviderRequest, OpenAiError> {
        if self.n.is_some_and(|n| n != 1) {
            return Err(bad("n", "only n = 1 is supported"));
        }
        let messages = to_messages(self.messages)?;
        if messages.is_empty() {
            return Err(bad("messages", "messages must not be empty"));
        }
        Ok(ProviderRequest {
            model: self.model,
            messages,
            temperature: self.temperature,
            top_p: self.top_p,
            seed: self.seed,
            stop: match self.stop {
                None => Vec::new(),
                Some(Stop::One(s)) => vec![s],
                Some(Stop::Many(v)) => v,
            },
            max_tokens: self.max_completion_tokens.or(self.max_tokens),
            presence_penalty: self.presence_penalty,
            frequency_penalty: self.frequency_penalty,
            reasoning_effort: self.reasoning_effort,
            user: self.user,
            tools: to_tools(self.tools)?,
            tool_choice: self.tool_choice.map(to_tool_choice).transpose()?,
            parallel_tool_calls: self.parallel_tool_calls,
            response_format: self.response_format.map(to_response_format).transpose()?,
            extra: self.extra,
            ..ProviderRequest::default()
        })
    }
}

/// `GET /v1/models`'s answer, in OpenAI's shape.
#[derive(Serialize, utoipa::ToSchema)]
pub struct ModelList<'a> {
    /// Always `list`.
    object: &'static str,
    data: Vec<Model<'a>>,
}

/// A model the gateway serves.
#[derive(Serialize, utoipa::ToSchema)]
pub struct Model<'a> {
    /// The name to request it by.
    id: &'a str,
    /// Always `model`.
    object: &'static str,
    /// Always 0.
    created: u64,
    /// The kind of its route's first upstream: `openai`, `anthropic`, `gemini` or `mock`.
    owned_by: &'static str,
}

/// `GET /v1/models`
#[utoipa::path(
    get,
    path = "/v1/models",
    operation_id = "list_models",
    tag = "v1",
    summary = "The models the gateway serves",
    security(("bearer" = []), ("x_api_key" = [])),
    responses(
        crate::routes::openapi::OpenAiErrors,
        (status = 200, description = "The models the gateway serves", body = ModelList),
    ),
)]
pub async fn models(state: web::Data<AppState>, _caller: Caller) -> HttpResponse {
    let data: Vec<Model> = state
        .router
        .models()
        .map(|(name, route)| Model {
            id: name,
            object: "model",
            created: 0,
            owned_by: route.primary().name(),
        })
        .collect();
    HttpResponse::Ok().json(ModelList {
        object: "list",
        data,
    })
}

/// A piece of a running answer, as the HTTP front writes it.
pub(super) enum Piece {
    Chunk(Chunk),
    End(Result<Finish, ProviderError>),
}

/// A running answer: the request (its accounting and stream) and the channel its events come
/// out of. Dropping it before the end (the client went away) cancels the request.
pub(super) struct Answer {
    pub request: ChatRequest,
    events: ChunkReceiver,
    flow: Arc<FlowControl>,
    ready: VecDeque<Piece>,
    /// Closes the flow (its provider stops waiting for room) unless the answer is detached.
    closer: FlowCloser,
}

struct FlowCloser(Option<Arc<FlowControl>>);

impl Drop for FlowCloser {
    fn drop(&mut self) {
        if let Some(flow) = self.0.take() {
            flow.close();
        }
    }
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
    pub(super) async fn next(&mut self) -> Option<Piece> {
        loop {
            if let Some(piece) = self.ready.pop_front() {
                return Some(piece);
            }
            let ev = self.events.recv().await?;
            self.take(ev);
        }
    }

    /// The next piece if one is already here.
    pub(super) fn next_ready(&mut self) -> Option<Piece> {
        loop {
            if let Some(piece) = self.ready.pop_front() {
                return Some(piece);
            }
            let ev = self.events.try_recv().ok()?;
            self.take(ev);
        }
    }

    /// Ends the request as its stream said.
    pub(super) fn finish(
        &mut self,
        end: Result<Finish, ProviderError>,
    ) -> Result<Finish, ProviderError> {
        match end {
            Ok(finish) => {
                self.request.finish(finish.reason, finish.usage);
                Ok(finish)
            }
            Err(e) => {
                self.request.failed(&e);
                Err(e)
            }
        }
    }

    /// Ends the request as its stream said, answering the error to report if it failed.
    fn end(&mut self, end: Result<Finish, ProviderError>) -> Result<Finish, OpenAiError> {
        self.finish(end).map_err(|e| OpenAiError::of_provider(&e))
    }

    /// The stream stopped without saying how it ended.
    pub(super) fn broken(&mut self) {
        self.request.finish(FinishReason::Error, Usage::default());
    }

    /// Takes the answer apart without stopping it: its request, its events, its flow and the
    /// pieces already taken off the channel.
    fn detach(
        self,
    ) -> (
        ChatRequest,
        ChunkReceiver,
        Arc<FlowControl>,
        VecDeque<Piece>,
    ) {
        let Answer {
            request,
            events,
            flow,
            ready,
            mut closer,
        } = self;
        closer.0 = None;
        (request, events, flow, ready)
    }
}

/// Ends `request` as its stream said, answering how for the answer's journal.
fn ending(request: &mut ChatRequest, end: Result<Finish, ProviderError>) -> Ending {
    match end {
        Ok(Finish { reason, usage }) => {
            request.finish(reason, usage);
            Ending {
                finish_reason: reason,
                usage,
                error: None,
            }
        }
        Err(e) => {
            request.failed(&e);
            Ending {
                finish_reason: FinishReason::Error,
                usage: request.partial_usage(),
                error: Some((e.reason(), e.to_string())),
            }
        }
    }
}

fn finish_reason_str(r: FinishReason) -> &'static str {
    match r {
        FinishReason::Length => "length",
        FinishReason::ToolCalls => "tool_calls",
        FinishReason::ContentFilter => "content_filter",
        // Only a resumed stream can meet it: the answer was cancelled (a gateway extension).
        FinishReason::Cancelled => "cancelled",
        _ => "stop",
    }
}

/// A tool-call piece as a streamed `delta.tool_calls` entry.
fn tool_call_delta(text: &str, call: Option<&ToolCallDelta>) -> Value {
    let d = call.cloned().unwrap_or(ToolCallDelta {
        index: 0,
        id: None,
        name: None,
    });
    let mut function = json!({"arguments": text});
    if let Some(name) = &d.name {
        function["name"] = json!(name);
    }
    let mut call = json!({"index": d.index, "function": function});
    if let Some(id) = &d.id {
        call["id"] = json!(id);
        call["type"] = json!("function");
    }
    json!({"tool_calls": [call]})
}

/// A request the HTTP fronts have started: its answer, the answer's first piece, and what the
/// gateway added to that piece (microseconds).
pub(super) struct Begun {
    pub answer: Answer,
    pub first: Piece,
    pub added_us: u64,
    pub model: String,
}

/// Why an HTTP front's request produced nothing: refused, failed before its first piece, or
/// its stream stopped without an end.
pub(super) enum Failure {
    Refused(Refusal),
    Provider(ProviderError),
    Broken,
}

impl From<Failure> for OpenAiError {
    fn from(f: Failure) -> Self {
        match f {
            Failure::Refused(r) => OpenAiError::new(r.reason, r.message),
            Failure::Provider(e) => OpenAiError::of_provider(&e),
            Failure::Broken => OpenAiError::new(ErrorReason::Internal, "the stream ended early"),
        }
    }
}

/// Runs `provider_request` for `principal` through the engine (admission, limits, the
/// provider stream) up to its first piece, so that a failure before anything was sent is an
/// HTTP status.
pub(super) async fn begin(
    req: &HttpRequest,
    state: &AppState,
    principal: crate::access::Principal,
    mut provider_request: ProviderRequest,
) -> Result<Begun, Failure> {
    let session = super::caller::session_of(
        principal,
        format!("http-{}", uuid::Uuid::new_v4().simple()),
        state,
        req,
    );
    let request_id = session.session_id.to_string();
    let model = provider_request.model.clone();
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
    ai_gateway_actors::trace::adopt(&span, &super::chat::trace_headers(req));
    ai_gateway_actors::trace::record_trace_id(&span);
    let start = RequestStart {
        session: session.clone(),
        request_id: request_id.clone(),
        request: {
            provider_request.span = span.clone();
            provider_request
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
        Failure::Refused(refusal)
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
        closer: FlowCloser(Some(flow.clone())),
        flow,
        ready: VecDeque::new(),
    };

    // Nothing is sent before the first piece, so an upstream that fails at once gets a proper
    // HTTP error status instead of a broken 200.
    let first = match answer.next().await {
        Some(Piece::End(Err(e))) => {
            answer.request.failed(&e);
            return Err(Failure::Provider(e));
        }
        Some(piece) => piece,
        None => {
            answer.broken();
            return Err(Failure::Broken);
        }
    };
    // What the gateway added to the first chunk: from the provider producing it to now, when
    // the response starts.
    let added_us = match &first {
        Piece::Chunk(c) => c.produced_at.elapsed().as_micros() as u64,
        Piece::End(_) => 0,
    };
    Ok(Begun {
        answer,
        first,
        added_us,
        model,
    })
}

/// `POST /v1/chat/completions`
#[utoipa::path(
    post,
    path = "/v1/chat/completions",
    operation_id = "create_chat_completion",
    tag = "v1",
    summary = "OpenAI's chat completions, on any configured provider",
    description = "Fields the gateway does not know reach OpenAI-compatible upstreams unchanged; other upstreams refuse them by name (400 with `param`). A streamed answer carries its stream id in the `x-gateway-stream-id` header, to resume it with `GET /v1/chat/completions/{stream_id}/events`.",
    security(("bearer" = []), ("x_api_key" = [])),
    request_body = CompletionRequest,
    responses(
        crate::routes::openapi::OpenAiErrors,
        (status = 200, description = "A `chat.completion`, or with `stream: true` a stream of `chat.completion.chunk` events ending `data: [DONE]`", content(
            (Completion = "application/json"),
            (String = "text/event-stream"),
        )),
        (status = 400, description = "Invalid request (`param` names the field)", body = crate::routes::openapi::OpenAiErrorBody),
        (status = 404, description = "Unknown model", body = crate::routes::openapi::OpenAiErrorBody),
        (status = 413, description = "Body too large", body = crate::routes::openapi::OpenAiErrorBody),
        (status = 429, description = "Too many requests (the caller's, or the upstream's); see Retry-After", body = crate::routes::openapi::OpenAiErrorBody),
        (status = 500, description = "The stream ended early", body = crate::routes::openapi::OpenAiErrorBody),
        (status = 502, description = "The upstream failed", body = crate::routes::openapi::OpenAiErrorBody),
        (status = 503, description = "No upstream available, or the gateway is shutting down", body = crate::routes::openapi::OpenAiErrorBody),
        (status = 504, description = "The upstream timed out", body = crate::routes::openapi::OpenAiErrorBody),
    ),
)]
pub async fn completions(
    req: HttpRequest,
    state: web::Data<AppState>,
    caller: Caller,
    body: web::Json<CompletionRequest>,
) -> Result<HttpResponse, OpenAiError> {
    let body = body.into_inner();
    let principal = caller.0;
    let stream = body.stream;
    let include_usage = body
        .stream_options
        .as_ref()
        .is_some_and(|o| o.include_usage);
    let provider_request = body.into_request()?;
    let Begun {
        mut answer,
        first,
        added_us,
        model,
    } = begin(&req, &state, principal, provider_request)
        .await
        .map_err(OpenAiError::from)?;
    if stream {
        let answers = state.session_env.answers.clone();
        let journal = answers.open(answer.request.user_id(), &model, None);
        let writer = SseWriter::new(journal.stream_id.clone(), model, journal.created);
        let stream_id = journal.stream_id.to_string();
        let live = Journaled {
            answer: Some(answer),
            journal,
            answers,
            metrics: state.session_env.metrics.clone(),
        };
        let stream = SseStream {
            inner: Box::pin(sse_events(live, first, writer, include_usage)),
        };
        return Ok(HttpResponse::Ok()
            .content_type("text/event-stream")
            .insert_header(("Cache-Control", "no-cache"))
            .insert_header((ADDED_LATENCY_HEADER, added_us.to_string()))
            .insert_header((STREAM_ID_HEADER, stream_id))
            .streaming(stream));
    }
    let id = format!("chatcmpl-{}", uuid::Uuid::new_v4().simple());
    let created = now_unix_secs();

    let (mut content, mut reasoning) = (String::new(), String::new());
    let mut calls: Vec<(ToolCallDelta, String)> = Vec::new();
    let mut next = Some(first);
    loop {
        match next {
            Some(Piece::Chunk(chunk)) if chunk.is_seal() => {}
            Some(Piece::Chunk(chunk)) => {
                answer.request.chunk(&chunk);
                match chunk.kind {
                    ChunkKind::Text => content.push_str(&chunk.text),
                    ChunkKind::Reasoning => reasoning.push_str(&chunk.text),
                    ChunkKind::ToolCall => {
                        if let Some(d) = chunk.tool_call {
                            calls.push((*d, chunk.text));
                        }
                    }
                }
            }
            Some(Piece::End(end)) => {
                let Finish { reason, usage } = answer.end(end)?;
                let calls = joined_tool_calls(&calls);
                let message = CompletionMessage {
                    role: "assistant",
                    // Null when the answer is only tool calls.
                    content: (!content.is_empty() || calls.is_empty()).then_some(content),
                    reasoning_content: (!reasoning.is_empty()).then_some(reasoning),
                    tool_calls: calls
                        .into_iter()
                        .map(|c| OutToolCall {
                            id: c.id,
                            kind: "function",
                            function: OutFunctionCall {
                                name: c.name,
                                arguments: c.arguments,
                            },
                        })
                        .collect(),
                };
                return Ok(HttpResponse::Ok()
                    .insert_header((ADDED_LATENCY_HEADER, added_us.to_string()))
                    .json(Completion {
                        id,
                        object: "chat.completion",
                        created,
                        model,
                        choices: vec![CompletionChoice {
                            index: 0,
                            message,
                            finish_reason: finish_reason_str(reason),
                        }],
                        usage,
                    }));
            }
            None => {
                answer.broken();
                return Err(Failure::Broken.into());
            }
        }
        next = answer.next().await;
    }
}

/// `POST /v1/chat/completions`'s answer when not streamed: a `chat.completion`.
#[derive(Serialize, utoipa::ToSchema)]
pub struct Completion {
    id: String,
    /// Always `chat.completion`.
    object: &'static str,
    /// Unix seconds.
    created: u64,
    model: String,
    /// Always one.
    choices: Vec<CompletionChoice>,
    usage: Usage,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct CompletionChoice {
    /// Always 0.
    index: u32,
    message: CompletionMessage,
    /// `stop`, `length`, `tool_calls` or `content_filter`.
    finish_reason: &'static str,
}

/// The answer, as an assistant message.
#[derive(Serialize, utoipa::ToSchema)]
pub struct CompletionMessage {
    /// Always `assistant`.
    role: &'static str,
    /// Null when the answer is only tool calls.
    content: Option<String>,
    /// The model's reasoning, where its provider shows it; absent when there is none.
    #[serde(skip_serializing_if = "Option::is_none")]
    reasoning_content: Option<String>,
    /// Absent when the model called no tool.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tool_calls: Vec<OutToolCall>,
}

/// A tool the model called.
#[derive(Serialize, utoipa::ToSchema)]
pub struct OutToolCall {
    id: String,
    /// Always `function`.
    #[serde(rename = "type")]
    kind: &'static str,
    function: OutFunctionCall,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct OutFunctionCall {
    name: String,
    /// The arguments, as the JSON text the model wrote.
    arguments: String,
}

/// Events already waiting are written together, up to this many bytes: one socket write
/// instead of one per event, and no waiting for events that have not come.
pub(super) const SSE_BATCH_BYTES: usize = 16 * 1024;

/// Appends `v` as one SSE `data:` event, serialized straight into `out`.
pub(super) fn push_sse(out: &mut BytesMut, v: &impl Serialize) {
    use bytes::BufMut as _;
    out.extend_from_slice(b"data: ");
    serde_json::to_writer(out.writer(), v).expect("events serialize");
    out.extend_from_slice(b"\n\n");
}

/// A `chat.completion.chunk` event, borrowed from the writer: no JSON tree built per event.
#[derive(Serialize)]
struct ChunkEvent<'a, D> {
    id: &'a str,
    object: &'static str,
    created: u64,
    model: &'a str,
    choices: [ChoiceDelta<'a, D>; 1],
}

#[derive(Serialize)]
struct ChoiceDelta<'a, D> {
    index: u32,
    delta: D,
    finish_reason: Option<&'a str>,
}

#[derive(Serialize)]
struct ContentDelta<'a> {
    content: &'a str,
}

#[derive(Serialize)]
struct ReasoningDelta<'a> {
    reasoning_content: &'a str,
}

/// Writes a streamed completion's events. A chunk's event carries `id: <stream_id>:<seq>`, which
/// a client gives back (`Last-Event-ID`) to resume after it.
struct SseWriter {
    id: String,
    created: u64,
    model: String,
    stream_id: Arc<str>,
    out: BytesMut,
}

impl SseWriter {
    /// `created`: the answer's start, in unix seconds (the same in every resume).
    fn new(stream_id: Arc<str>, model: String, created: u64) -> Self {
        SseWriter {
            id: format!("chatcmpl-{stream_id}"),
            created,
            model,
            stream_id,
            out: BytesMut::new(),
        }
    }

    fn event(&mut self, seq: Option<u64>, delta: impl Serialize, finish: Option<&str>) {
        if let Some(seq) = seq {
            use std::fmt::Write as _;
            let _ = writeln!(self.out, "id: {}:{seq}", self.stream_id);
        }
        let event = ChunkEvent {
            id: &self.id,
            object: "chat.completion.chunk",
            created: self.created,
            model: &self.model,
            choices: [ChoiceDelta {
                index: 0,
                delta,
                finish_reason: finish,
            }],
        };
        push_sse(&mut self.out, &event);
    }

    /// The first event, before any chunk.
    fn role(&mut self) {
        self.event(None, json!({"role": "assistant", "content": ""}), None);
    }

    fn chunk(&mut self, seq: u64, kind: ChunkKind, text: &str, call: Option<&ToolCallDelta>) {
        match kind {
            ChunkKind::Text => self.event(Some(seq), ContentDelta { content: text }, None),
            ChunkKind::Reasoning => self.event(
                Some(seq),
                ReasoningDelta {
                    reasoning_content: text,
                },
                None,
            ),
            ChunkKind::ToolCall => self.event(Some(seq), tool_call_delta(text, call), None),
        }
    }

    /// The answer's end: its finish reason (and usage when asked), then `[DONE]`; or an error
    /// event, never a quiet end (OpenAI SDKs raise on an error event).
    fn end(&mut self, ending: &Ending, include_usage: bool, error: Option<OpenAiError>) {
        if let Some((reason, message)) = &ending.error {
            let error = error.unwrap_or_else(|| OpenAiError::new(*reason, message.clone()));
            return push_sse(&mut self.out, &error.body());
        }
        self.event(
            None,
            json!({}),
            Some(finish_reason_str(ending.finish_reason)),
        );
        if include_usage {
            push_sse(
                &mut self.out,
                &json!({
                    "id": self.id, "object": "chat.completion.chunk", "created": self.created,
                    "model": self.model, "choices": [], "usage": ending.usage,
                }),
            );
        }
        self.out.extend_from_slice(b"data: [DONE]\n\n");
    }

    fn lost(&mut self, why: &str) {
        let error = OpenAiError::new(ErrorReason::ResumeUnavailable, why);
        push_sse(&mut self.out, &error.body());
    }

    fn take(&mut self) -> Bytes {
        self.out.split().freeze()
    }
}

/// Accounts for a chunk of `request` and keeps it in `journal`; answers its `seq`.
fn journaled_chunk(request: &mut ChatRequest, journal: &Journal, c: &Chunk) -> u64 {
    let seq = request.chunk(c);
    let call = c.tool_call.as_deref();
    journal.append(std::iter::once((c.kind, c.text.as_str(), call)));
    seq
}

/// A streamed answer and its journal. What reaches the response is journaled first; when the
/// client goes before the end, the answer runs on without it ([`relay::run_detached`]) for the
/// resume grace time, so that it can be resumed.
struct Journaled {
    answer: Option<Answer>,
    journal: Arc<Journal>,
    answers: Arc<AnswerHub>,
    metrics: Arc<ai_gateway_actors::Metrics>,
}

impl Journaled {
    fn request(&mut self) -> &mut ChatRequest {
        &mut self.answer.as_mut().expect("held until the end").request
    }

    /// Accounts for a chunk and journals it; answers its `seq`.
    fn chunk(&mut self, c: &Chunk) -> u64 {
        let journal = self.journal.clone();
        journaled_chunk(self.request(), &journal, c)
    }

    /// The answer ended as its stream said: recorded and journaled.
    fn end(&mut self, end: Result<Finish, ProviderError>) -> Ending {
        let ending = ending(self.request(), end);
        self.journal.end(ending.clone());
        self.answer = None;
        ending
    }

    /// The stream stopped without saying how it ended.
    fn broken(&mut self) -> Ending {
        self.request().finish(FinishReason::Error, Usage::default());
        let ending = Ending {
            finish_reason: FinishReason::Error,
            usage: Usage::default(),
            error: Some((ErrorReason::Internal, "the stream ended early".to_owned())),
        };
        self.journal.end(ending.clone());
        self.answer = None;
        ending
    }
}

impl Drop for Journaled {
    fn drop(&mut self) {
        let Some(answer) = self.answer.take() else {
            return;
        };
        let (mut request, events, flow, ready) = answer.detach();
        for piece in ready {
            match piece {
                Piece::Chunk(c) if c.is_seal() => {}
                Piece::Chunk(c) => {
                    journaled_chunk(&mut request, &self.journal, &c);
                }
                Piece::End(end) => return self.journal.end(ending(&mut request, end)),
            }
        }
        relay::run_detached(
            request,
            events,
            self.journal.clone(),
            flow,
            self.metrics.clone(),
            self.answers.shared().cloned(),
            self.answers.settings().grace,
        );
    }
}

/// The SSE body of a streamed completion. When the client drops it, the answer runs on for the
/// resume grace time (then is cancelled upstream).
fn sse_events(
    mut live: Journaled,
    first: Piece,
    mut w: SseWriter,
    include_usage: bool,
) -> impl Stream<Item = Bytes> {
    async_stream::stream! {
        w.role();
        let mut next = Some(first);
        loop {
            match next {
                // Seals of reasoning are for the Anthropic-compatible front only.
                Some(Piece::Chunk(c)) if c.is_seal() => {}
                Some(Piece::Chunk(c)) => {
                    let seq = live.chunk(&c);
                    w.chunk(seq, c.kind, &c.text, c.tool_call.as_deref());
                }
                Some(Piece::End(end)) => {
                    let error = end.as_ref().err().map(OpenAiError::of_provider);
                    let ending = live.end(end);
                    w.end(&ending, include_usage, error);
                    yield w.take();
                    break;
                }
                None => {
                    let ending = live.broken();
                    w.end(&ending, include_usage, None);
                    yield w.take();
                    break;
                }
            }
            let answer = live.answer.as_mut().expect("held until the end");
            next = match answer.next_ready() {
                Some(piece) if w.out.len() < SSE_BATCH_BYTES => Some(piece),
                ready => {
                    yield w.take();
                    match ready {
                        Some(piece) => Some(piece),
                        None => live.answer.as_mut().expect("held until the end").next().await,
                    }
                }
            };
        }
    }
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct EventsQuery {
    /// Resume after this event (`Last-Event-ID` wins when both are given).
    after_seq: Option<u64>,
}

/// Where a resumed stream starts: after `Last-Event-ID` (`<stream_id>:<seq>`, or a bare seq),
/// else after `?after_seq=`, else from the start.
fn resume_point(
    req: &HttpRequest,
    stream_id: &str,
    query: &EventsQuery,
) -> Result<Option<u64>, OpenAiError> {
    let Some(last) = req.headers().get("last-event-id") else {
        return Ok(query.after_seq);
    };
    let bad_id = || {
        OpenAiError::new(
            ErrorReason::InvalidPayload,
            "Last-Event-ID must be <stream_id>:<seq> of this stream",
        )
        .with_param("Last-Event-ID")
    };
    let last = last.to_str().map_err(|_| bad_id())?.trim();
    let seq = match last.rsplit_once(':') {
        Some((id, seq)) if id == stream_id => seq,
        Some(_) => return Err(bad_id()),
        None => last,
    };
    seq.parse().map(Some).map_err(|_| bad_id())
}

/// `GET /v1/chat/completions/{stream_id}/events` (an extension of OpenAI's API): resumes a
/// streamed completion of the caller's after the last event it got, on any node, while the
/// answer runs and for the retention time after.
#[utoipa::path(
    get,
    path = "/v1/chat/completions/{stream_id}/events",
    operation_id = "resume_chat_completion",
    tag = "v1",
    security(("bearer" = []), ("x_api_key" = [])),
    params(
        ("stream_id" = String, Path, description = "The `x-gateway-stream-id` of a streamed completion"),
        ("Last-Event-ID" = Option<String>, Header, description = "`<stream_id>:<seq>` (or a bare seq) of the last event received"),
        EventsQuery,
    ),
    responses(
        crate::routes::openapi::OpenAiErrors,
        (status = 200, description = "The rest of the stream, as `chat.completion.chunk` events", body = String, content_type = "text/event-stream"),
        (status = 400, description = "Bad Last-Event-ID", body = crate::routes::openapi::OpenAiErrorBody),
        (status = 404, description = "No answer to resume: unknown, expired or not the caller's", body = crate::routes::openapi::OpenAiErrorBody),
    ),
)]
pub async fn events(
    req: HttpRequest,
    state: web::Data<AppState>,
    caller: Caller,
    stream_id: web::Path<String>,
    query: web::Query<EventsQuery>,
) -> Result<HttpResponse, OpenAiError> {
    let stream_id = stream_id.into_inner();
    let after_seq = resume_point(&req, &stream_id, &query)?;
    let user = caller.0.user_id;
    let env = &state.session_env;
    let unavailable = || {
        env.metrics.resumes_unavailable.inc();
        OpenAiError::new(
            ErrorReason::ResumeUnavailable,
            format!("no answer {stream_id:?} to resume: unknown, expired or not yours"),
        )
        .with_param("stream_id")
    };
    let (model, created, mut pieces) = match env.answers.find(&stream_id, &user) {
        Some(journal) => (
            journal.model.clone(),
            journal.created,
            relay::follow_local(journal, env.answers.settings().grace, after_seq),
        ),
        None => {
            let shared = env.answers.shared().ok_or_else(unavailable)?;
            let remote = shared
                .follow(&stream_id, &user, after_seq)
                .await
                .ok_or_else(unavailable)?;
            (remote.model, remote.created, remote.pieces)
        }
    };
    env.metrics.resumes.inc();
    let mut w = SseWriter::new(stream_id.into(), model, created);
    let body = async_stream::stream! {
        use futures_util::{FutureExt, StreamExt};
        if after_seq.is_none() {
            w.role();
        }
        let mut next = pieces.next().await;
        loop {
            match next {
                Some(Remote::Chunk(seq, kind, text, call)) => {
                    w.chunk(seq, kind, &text, call.as_ref());
                }
                Some(Remote::End(ending, _)) => {
                    w.end(&ending, true, None);
                    yield w.take();
                    break;
                }
                Some(Remote::Lost(why)) => {
                    w.lost(&why);
                    yield w.take();
                    break;
                }
                None => {
                    w.lost("the answer can no longer be followed");
                    yield w.take();
                    break;
                }
            }
            next = match pieces.next().now_or_never() {
                Some(piece) if w.out.len() < SSE_BATCH_BYTES => piece,
                ready => {
                    yield w.take();
                    match ready {
                        Some(piece) => piece,
                        None => pieces.next().await,
                    }
                }
            };
        }
    };
    Ok(HttpResponse::Ok()
        .content_type("text/event-stream")
        .insert_header(("Cache-Control", "no-cache"))
        .streaming(SseStream {
            inner: Box::pin(body),
        }))
}

pub(super) struct SseStream<S> {
    pub inner: Pin<Box<S>>,
}

impl<S: Stream<Item = Bytes>> Stream for SseStream<S> {
    type Item = Result<Bytes, actix_web::Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.inner.as_mut().poll_next(cx).map(|o| o.map(Ok))
    }
}
