//! The Anthropic-compatible HTTP front: `POST /v1/messages`, streamed (`message_start` to
//! `message_stop`) and not, so that Anthropic SDKs and the tools built on them work by pointing
//! their base URL at the gateway. Any model of any provider answers; requests go through the
//! same engine, limits and usage records as every other front.

use actix_web::{http::StatusCode, web, HttpRequest, HttpResponse, ResponseError};
use ai_gateway_actors::{
    provider::{
        chat::joined_tool_calls, Finish, ImageSource, Message, Part, Role, Seal, Tool, ToolCall,
        ToolCallDelta, ToolChoice,
    },
    ProviderError, ProviderRequest,
};
use ai_gateway_proto::{ChunkKind, ErrorReason, FinishReason};
use bytes::{Bytes, BytesMut};
use futures_util::Stream;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use super::{
    openai::{begin, Answer, Failure, Piece, SseStream, SSE_BATCH_BYTES},
    AppState, Caller,
};

/// An error in Anthropic's shape: `{"type": "error", "error": {"type", "message"}}`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct AnthropicError {
    status: StatusCode,
    message: String,
    retry_after_secs: Option<u64>,
}

/// Anthropic's error `type` for an HTTP status.
pub fn error_type(status: u16) -> &'static str {
    match status {
        400 | 409 | 415 | 422 => "invalid_request_error",
        401 => "authentication_error",
        402 => "billing_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        504 => "timeout_error",
        503 | 529 => "overloaded_error",
        _ => "api_error",
    }
}

/// Anthropic's error body.
pub fn error_body(status: StatusCode, message: &str) -> Value {
    json!({"type": "error", "error": {"type": error_type(status.as_u16()), "message": message}})
}

impl AnthropicError {
    fn new(reason: ErrorReason, message: impl Into<String>) -> Self {
        AnthropicError {
            status: StatusCode::from_u16(reason.status_code())
                .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            message: message.into(),
            retry_after_secs: None,
        }
    }

    fn bad(message: impl Into<String>) -> Self {
        AnthropicError::new(ErrorReason::InvalidPayload, message)
    }

    fn body(&self) -> Value {
        error_body(self.status, &self.message)
    }
}

impl From<Failure> for AnthropicError {
    fn from(f: Failure) -> Self {
        match f {
            Failure::Refused(r) => AnthropicError::new(r.reason, r.message),
            Failure::Provider(e) => AnthropicError::of_provider(&e),
            Failure::Broken => AnthropicError::new(ErrorReason::Internal, "the stream ended early"),
        }
    }
}

impl AnthropicError {
    fn of_provider(e: &ProviderError) -> Self {
        let mut err = AnthropicError::new(e.reason(), e.to_string());
        if let ProviderError::RateLimited {
            retry_after_ms: Some(ms),
            ..
        } = e
        {
            err.retry_after_secs = Some(ms.div_ceil(1000).max(1));
        }
        err
    }
}

impl ResponseError for AnthropicError {
    fn status_code(&self) -> StatusCode {
        self.status
    }

    fn error_response(&self) -> HttpResponse {
        super::error_json(self.status, self.retry_after_secs, self.body())
    }
}

/// Anthropic's messages request. Fields the gateway cannot carry to every provider are refused
/// by name rather than ignored.
#[derive(Deserialize, utoipa::ToSchema)]
pub struct MessagesRequest {
    model: String,
    max_tokens: u32,
    messages: Vec<InMessage>,
    /// A string or a list of text blocks.
    #[schema(value_type = Option<Value>)]
    system: Option<Value>,
    #[serde(default)]
    stream: bool,
    temperature: Option<f32>,
    top_p: Option<f32>,
    #[serde(default)]
    stop_sequences: Vec<String>,
    #[serde(default)]
    #[schema(value_type = Vec<Object>)]
    tools: Vec<Value>,
    #[schema(value_type = Option<Object>)]
    tool_choice: Option<Value>,
    #[schema(value_type = Option<Object>)]
    metadata: Option<Value>,
    #[schema(value_type = Option<Object>)]
    thinking: Option<Value>,
    #[serde(flatten)]
    #[schema(ignore)]
    other: Map<String, Value>,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[schema(as = AnthropicMessage)]
struct InMessage {
    role: String,
    /// A string or a list of content blocks.
    #[schema(value_type = Value)]
    content: Value,
}

/// The text of a `system` (a string or text blocks).
fn system_text(v: &Value) -> Result<String, AnthropicError> {
    match v {
        Value::String(s) => Ok(s.clone()),
        Value::Array(blocks) => blocks
            .iter()
            .map(|b| match b["text"].as_str() {
                Some(t) if b["type"] == "text" => Ok(t),
                _ => Err(AnthropicError::bad(
                    "system: only text blocks are supported",
                )),
            })
            .collect::<Result<Vec<_>, _>>()
            .map(|t| t.join("\n\n")),
        _ => Err(AnthropicError::bad(
            "system: Input should be a string or a list of text blocks",
        )),
    }
}

fn image(at: &str, b: &Value) -> Result<Part, AnthropicError> {
    let src = &b["source"];
    let source = match src["type"].as_str() {
        Some("base64") => ImageSource::Base64 {
            media_type: src["media_type"].as_str().unwrap_or("").to_owned(),
            data: src["data"].as_str().unwrap_or("").to_owned(),
        },
        Some("url") => ImageSource::Url(src["url"].as_str().unwrap_or("").to_owned()),
        _ => {
            return Err(AnthropicError::bad(format!(
                "{at}.source: an image needs a base64 or url source"
            )))
        }
    };
    Ok(Part::Image {
        source,
        detail: None,
    })
}

/// The text of a `tool_result`'s content (a string, or text blocks).
fn result_text(at: &str, content: &Value) -> Result<Vec<Part>, AnthropicError> {
    match content {
        Value::Null => Ok(Vec::new()),
        Value::String(s) => Ok(vec![Part::Text(s.clone())]),
        Value::Array(blocks) => blocks
            .iter()
            .enumerate()
            .map(|(k, b)| match b["type"].as_str() {
                Some("text") => Ok(Part::Text(b["text"].as_str().unwrap_or("").to_owned())),
                Some("image") => image(&format!("{at}.content.{k}"), b),
                other => Err(AnthropicError::bad(format!(
                    "{at}.content.{k}.type: {other:?} is not supported in tool results"
                ))),
            })
            .collect(),
        _ => Err(AnthropicError::bad(format!("{at}.content: invalid"))),
    }
}

/// Anthropic's turns as neutral messages: `tool_result` blocks become tool messages (before
/// the rest of their user turn), `tool_use` blocks the assistant's tool calls. Earlier
/// `thinking` and `redacted_thinking` blocks are kept with their signatures: Anthropic wants
/// them back in a tool round trip; other upstreams leave them out.
fn to_messages(input: Vec<InMessage>) -> Result<Vec<Message>, AnthropicError> {
    let mut out = Vec::new();
    for (i, m) in input.into_iter().enumerate() {
        let role = match m.role.as_str() {
            "user" => Role::User,
            "assistant" => Role::Assistant,
            other => {
                return Err(AnthropicError::bad(format!(
                    "messages.{i}.role: Input should be 'user' or 'assistant', got {other:?}"
                )))
            }
        };
        let blocks = match m.content {
            Value::String(s) => vec![json!({"type": "text", "text": s})],
            Value::Array(b) => b,
            _ => {
                return Err(AnthropicError::bad(format!(
                    "messages.{i}.content: Input should be a string or a list of blocks"
                )))
            }
        };
        let mut message = Message {
            content: Vec::new(),
            ..Message::text(role, "")
        };
        for (j, b) in blocks.iter().enumerate() {
            let at = format!("messages.{i}.content.{j}");
            match (b["type"].as_str(), role) {
                (Some("text"), _) => {
                    message
                        .content
                        .push(Part::Text(b["text"].as_str().unwrap_or("").to_owned()));
                }
                (Some("image"), Role::User) => message.content.push(image(&at, b)?),
                (Some("tool_use"), Role::Assistant) => message.tool_calls.push(ToolCall {
                    id: b["id"].as_str().unwrap_or("").to_owned(),
                    name: b["name"].as_str().unwrap_or("").to_owned(),
                    arguments: b.get("input").map_or("{}".to_owned(), Value::to_string),
                }),
                (Some("tool_result"), Role::User) => out.push(Message {
                    content: result_text(&at, &b["content"])?,
                    tool_call_id: b["tool_use_id"].as_str().map(str::to_owned),
                    ..Message::text(Role::Tool, "")
                }),
                (Some("thinking"), Role::Assistant) => message.content.push(Part::Thinking {
                    text: b["thinking"].as_str().unwrap_or("").to_owned(),
                    signature: b["signature"].as_str().unwrap_or("").to_owned(),
                }),
                (Some("redacted_thinking"), Role::Assistant) => {
                    message.content.push(Part::RedactedThinking {
                        data: b["data"].as_str().unwrap_or("").to_owned(),
                    })
                }
                (other, _) => {
                    return Err(AnthropicError::bad(format!(
                        "{at}.type: {other:?} blocks are not supported here"
                    )))
                }
            }
        }
        if !message.content.is_empty() || !message.tool_calls.is_empty() {
            out.push(message);
        }
    }
    Ok(out)
}

fn to_tools(tools: Vec<Value>) -> Result<Vec<Tool>, AnthropicError> {
    tools
        .into_iter()
        .enumerate()
        .map(|(i, t)| {
            // Client tools have no type, or `custom`; server tools (`web_search_…`, ...) are
            // run by Anthropic itself, which other providers cannot do.
            if let Some(kind) = t["type"].as_str().filter(|k| *k != "custom") {
                return Err(AnthropicError::bad(format!(
                    "tools.{i}.type: server tool {kind:?} is not supported"
                )));
            }
            let Some(name) = t["name"].as_str() else {
                return Err(AnthropicError::bad(format!(
                    "tools.{i}.name: Field required"
                )));
            };
            Ok(Tool {
                name: name.to_owned(),
                description: t["description"].as_str().map(str::to_owned),
                parameters: t
                    .get("input_schema")
                    .cloned()
                    .unwrap_or_else(|| json!({"type": "object", "properties": {}})),
                strict: None,
            })
        })
        .collect()
}

/// `tool_choice`, and `parallel_tool_calls: false` from `disable_parallel_tool_use`.
fn to_tool_choice(v: &Value) -> Result<(ToolChoice, Option<bool>), AnthropicError> {
    let choice = match v["type"].as_str() {
        Some("auto") => ToolChoice::Auto,
        Some("any") => ToolChoice::Required,
        Some("none") => ToolChoice::None,
        Some("tool") => match v["name"].as_str() {
            Some(name) => ToolChoice::Tool(name.to_owned()),
            None => return Err(AnthropicError::bad("tool_choice.name: Field required")),
        },
        other => {
            return Err(AnthropicError::bad(format!(
                "tool_choice.type: {other:?} is not one of auto, any, tool, none"
            )))
        }
    };
    let parallel = (v["disable_parallel_tool_use"] == true).then_some(false);
    Ok((choice, parallel))
}

/// Extended thinking as a reasoning effort, by its budget.
fn effort(thinking: &Value) -> Option<String> {
    if thinking["type"] != "enabled" {
        return None;
    }
    let budget = thinking["budget_tokens"].as_u64().unwrap_or(0);
    Some(
        match budget {
            0..4096 => "low",
            4096..16384 => "medium",
            _ => "high",
        }
        .to_owned(),
    )
}

/// Request fields that change nothing about the answer: prompt-caching hints, the service
/// tier, container and MCP settings the gateway does not offer are refused; these are not.
const HARMLESS: [&str; 1] = ["service_tier"];

impl MessagesRequest {
    fn into_request(self) -> Result<(ProviderRequest, bool), AnthropicError> {
        if let Some(field) = self.other.keys().find(|k| !HARMLESS.contains(&k.as_str())) {
            return Err(AnthropicError::bad(format!(
                "{field}: this field is not supported by the gateway"
            )));
        }
        let messages = to_messages(self.messages)?;
        if messages.is_empty() {
            return Err(AnthropicError::bad(
                "messages: at least one message is required",
            ));
        }
        let (tool_choice, parallel_tool_calls) = match &self.tool_choice {
            Some(v) => {
                let (c, p) = to_tool_choice(v)?;
                (Some(c), p)
            }
            None => (None, None),
        };
        let thinking = self
            .thinking
            .as_ref()
            .is_some_and(|t| t["type"] == "enabled");
        let request = ProviderRequest {
            model: self.model,
            system: self.system.as_ref().map(system_text).transpose()?,
            messages,
            temperature: self.temperature,
            top_p: self.top_p,
            stop: self.stop_sequences,
            max_tokens: Some(self.max_tokens),
            user: self
                .metadata
                .as_ref()
                .and_then(|m| m["user_id"].as_str())
                .map(str::to_owned),
            tools: to_tools(self.tools)?,
            tool_choice,
            parallel_tool_calls,
            reasoning_effort: self.thinking.as_ref().and_then(effort),
            ..ProviderRequest::default()
        };
        Ok((request, thinking))
    }
}

fn stop_reason(r: FinishReason) -> &'static str {
    match r {
        FinishReason::Length => "max_tokens",
        FinishReason::ToolCalls => "tool_use",
        FinishReason::ContentFilter => "refusal",
        _ => "end_turn",
    }
}

/// `POST /v1/messages`'s answer when not streamed: a `message`.
#[derive(Serialize, utoipa::ToSchema)]
pub struct MessageAnswer {
    id: String,
    /// Always `message`.
    #[serde(rename = "type")]
    kind: &'static str,
    /// Always `assistant`.
    role: &'static str,
    model: String,
    content: Vec<ContentBlock>,
    /// `end_turn`, `max_tokens`, `tool_use` or `refusal`.
    stop_reason: &'static str,
    /// Always null.
    stop_sequence: Option<String>,
    usage: MessageUsage,
}

/// A block of the answer. Reasoning (`thinking`, `redacted_thinking`) only when the request
/// asked for it.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ContentBlock {
    Thinking {
        thinking: String,
        signature: String,
    },
    /// Reasoning the provider sent encrypted.
    RedactedThinking {
        data: String,
    },
    Text {
        text: String,
    },
    ToolUse {
        id: String,
        name: String,
        /// The tool's arguments.
        #[schema(value_type = Object)]
        input: Value,
    },
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct MessageUsage {
    input_tokens: u64,
    output_tokens: u64,
}

/// `POST /v1/messages`
#[utoipa::path(
    post,
    path = "/v1/messages",
    operation_id = "create_message",
    tag = "v1",
    summary = "Anthropic's messages API, on any configured provider",
    description = "Fields the gateway cannot carry to every provider are refused by name rather than ignored.",
    security(("bearer" = []), ("x_api_key" = [])),
    request_body = MessagesRequest,
    responses(
        crate::routes::openapi::AnthropicErrors,
        (status = 200, description = "A `message`, or with `stream: true` Anthropic's stream of events", content(
            (MessageAnswer = "application/json"),
            (String = "text/event-stream"),
        )),
        (status = 400, description = "Invalid request", body = crate::routes::openapi::AnthropicErrorBody),
        (status = 404, description = "Unknown model", body = crate::routes::openapi::AnthropicErrorBody),
        (status = 413, description = "Body too large", body = crate::routes::openapi::AnthropicErrorBody),
        (status = 429, description = "Too many requests (the caller's, or the upstream's); see Retry-After", body = crate::routes::openapi::AnthropicErrorBody),
        (status = 500, description = "The stream ended early", body = crate::routes::openapi::AnthropicErrorBody),
        (status = 502, description = "The upstream failed", body = crate::routes::openapi::AnthropicErrorBody),
        (status = 503, description = "No upstream available, or the gateway is shutting down", body = crate::routes::openapi::AnthropicErrorBody),
        (status = 504, description = "The upstream timed out", body = crate::routes::openapi::AnthropicErrorBody),
    ),
)]
pub async fn messages(
    req: HttpRequest,
    state: web::Data<AppState>,
    caller: Caller,
    body: web::Json<MessagesRequest>,
) -> Result<HttpResponse, AnthropicError> {
    let body = body.into_inner();
    let stream = body.stream;
    let (request, thinking) = body.into_request()?;
    let begun = begin(&req, &state, caller.0, request)
        .await
        .map_err(AnthropicError::from)?;
    let id = format!("msg_{}", uuid::Uuid::new_v4().simple());
    if stream {
        let events = sse_events(begun.answer, begun.first, id, begun.model, thinking);
        return Ok(HttpResponse::Ok()
            .content_type("text/event-stream")
            .insert_header(("Cache-Control", "no-cache"))
            .insert_header((
                super::openai::ADDED_LATENCY_HEADER,
                begun.added_us.to_string(),
            ))
            .streaming(SseStream {
                inner: Box::pin(events),
            }));
    }
    let mut answer = begun.answer;
    let (mut text, mut reasoning, mut signature) = (String::new(), String::new(), String::new());
    let mut redacted = Vec::new();
    let mut calls: Vec<(ToolCallDelta, String)> = Vec::new();
    let mut next = Some(begun.first);
    loop {
        match next {
            Some(Piece::Chunk(chunk)) if chunk.is_seal() => match chunk.seal.as_deref() {
                Some(Seal::Signature(s)) => signature.push_str(s),
                Some(Seal::Redacted(data)) => {
                    redacted.push(ContentBlock::RedactedThinking { data: data.clone() })
                }
                None => {}
            },
            Some(Piece::Chunk(chunk)) => {
                answer.request.chunk(&chunk);
                match chunk.kind {
                    ChunkKind::Text => text.push_str(&chunk.text),
                    ChunkKind::Reasoning => reasoning.push_str(&chunk.text),
                    ChunkKind::ToolCall => {
                        if let Some(d) = chunk.tool_call {
                            calls.push((*d, chunk.text));
                        }
                    }
                }
            }
            Some(Piece::End(end)) => {
                let Finish { reason, usage } = answer
                    .finish(end)
                    .map_err(|e| AnthropicError::of_provider(&e))?;
                let mut content = Vec::new();
                if thinking && !reasoning.is_empty() {
                    content.push(ContentBlock::Thinking {
                        thinking: reasoning,
                        signature,
                    });
                }
                if thinking {
                    content.extend(redacted);
                }
                if !text.is_empty() {
                    content.push(ContentBlock::Text { text });
                }
                for call in joined_tool_calls(&calls) {
                    let input: Value = serde_json::from_str(&call.arguments).unwrap_or(json!({}));
                    content.push(ContentBlock::ToolUse {
                        id: call.id,
                        name: call.name,
                        input,
                    });
                }
                return Ok(HttpResponse::Ok()
                    .insert_header((
                        super::openai::ADDED_LATENCY_HEADER,
                        begun.added_us.to_string(),
                    ))
                    .json(MessageAnswer {
                        id,
                        kind: "message",
                        role: "assistant",
                        model: begun.model,
                        content,
                        stop_reason: stop_reason(reason),
                        stop_sequence: None,
                        usage: MessageUsage {
                            input_tokens: usage.prompt_tokens,
                            output_tokens: usage.completion_tokens,
                        },
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

fn push_event(out: &mut BytesMut, data: &Value) {
    out.extend_from_slice(b"event: ");
    out.extend_from_slice(data["type"].as_str().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\ndata: ");
    out.extend_from_slice(data.to_string().as_bytes());
    out.extend_from_slice(b"\n\n");
}

/// The content block being streamed.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Open {
    Thinking,
    /// A `redacted_thinking` block: opened and closed at once.
    Redacted,
    Text,
    /// A tool call, by its index among the answer's calls.
    ToolUse(u32),
}

/// Writes the content blocks of a streamed answer: opens a block when the kind of piece
/// changes, closes the one before.
struct Blocks {
    open: Option<(usize, Open)>,
    next: usize,
    thinking: bool,
    /// The open thinking block got its signature.
    signed: bool,
}

impl Blocks {
    fn new(thinking: bool) -> Self {
        Blocks {
            open: None,
            next: 0,
            thinking,
            signed: false,
        }
    }

    fn close(&mut self, out: &mut BytesMut) {
        if let Some((index, kind)) = self.open.take() {
            // Reasoning of a provider that seals none still gets the (empty) signature
            // Anthropic's clients expect.
            if kind == Open::Thinking && !std::mem::take(&mut self.signed) {
                push_event(
                    out,
                    &json!({"type": "content_block_delta", "index": index,
                    "delta": {"type": "signature_delta", "signature": ""}}),
                );
            }
            push_event(out, &json!({"type": "content_block_stop", "index": index}));
        }
    }

    fn open(&mut self, out: &mut BytesMut, kind: Open, block: Value) -> usize {
        self.close(out);
        let index = self.next;
        self.next += 1;
        push_event(
            out,
            &json!({"type": "content_block_start", "index": index,
            "content_block": block}),
        );
        self.open = Some((index, kind));
        index
    }

    /// The seal of the reasoning streamed last: its signature, or a block of encrypted reasoning.
    fn seal(&mut self, out: &mut BytesMut, seal: &Seal) {
        if !self.thinking {
            return;
        }
        match seal {
            Seal::Signature(signature) => {
                if let Some((index, Open::Thinking)) = self.open {
                    push_event(
                        out,
                        &json!({"type": "content_block_delta", "index": index,
                        "delta": {"type": "signature_delta", "signature": signature}}),
                    );
                    self.signed = true;
                }
            }
            Seal::Redacted(data) => {
                let block = json!({"type": "redacted_thinking", "data": data});
                self.open(out, Open::Redacted, block);
                self.close(out);
            }
        }
    }

    fn piece(&mut self, out: &mut BytesMut, c: &ai_gateway_actors::Chunk) {
        if let Some(seal) = &c.seal {
            return self.seal(out, seal);
        }
        let (kind, delta) = match c.kind {
            ChunkKind::Reasoning if !self.thinking => return,
            ChunkKind::Reasoning => (
                Open::Thinking,
                json!({"type": "thinking_delta", "thinking": c.text}),
            ),
            ChunkKind::Text => (Open::Text, json!({"type": "text_delta", "text": c.text})),
            ChunkKind::ToolCall => {
                let d = c.tool_call.as_deref();
                let call = d.map_or(0, |d| d.index);
                (
                    Open::ToolUse(call),
                    json!({"type": "input_json_delta", "partial_json": c.text}),
                )
            }
        };
        let starts_call = c.tool_call.as_ref().is_some_and(|d| d.id.is_some());
        let index = match self.open {
            Some((index, open)) if open == kind && !starts_call => index,
            _ => {
                let block = match kind {
                    Open::Thinking | Open::Redacted => json!({"type": "thinking", "thinking": ""}),
                    Open::Text => json!({"type": "text", "text": ""}),
                    Open::ToolUse(_) => {
                        let d = c.tool_call.as_deref();
                        json!({"type": "tool_use",
                            "id": d.and_then(|d| d.id.clone()).unwrap_or_default(),
                            "name": d.and_then(|d| d.name.clone()).unwrap_or_default(),
                            "input": {}})
                    }
                };
                self.open(out, kind, block)
            }
        };
        if matches!(kind, Open::ToolUse(_)) && c.text.is_empty() {
            return;
        }
        push_event(
            out,
            &json!({"type": "content_block_delta", "index": index, "delta": delta}),
        );
    }
}

/// The SSE body: `message_start`, the content blocks, `message_delta` with the stop reason and
/// usage, `message_stop`; an `error` event if the answer fails part way.
fn sse_events(
    mut answer: Answer,
    first: Piece,
    id: String,
    model: String,
    thinking: bool,
) -> impl Stream<Item = Bytes> {
    async_stream::stream! {
        let mut out = BytesMut::new();
        push_event(&mut out, &json!({"type": "message_start", "message": {
            "id": id, "type": "message", "role": "assistant", "model": model, "content": [],
            "stop_reason": null, "stop_sequence": null,
            "usage": {"input_tokens": 0, "output_tokens": 0}}}));
        let mut blocks = Blocks::new(thinking);
        let mut next = Some(first);
        loop {
            match next {
                Some(Piece::Chunk(c)) => {
                    if !c.is_seal() {
                        answer.request.chunk(&c);
                    }
                    blocks.piece(&mut out, &c);
                }
                Some(Piece::End(end)) => {
                    match answer.finish(end) {
                        Ok(Finish { reason, usage }) => {
                            blocks.close(&mut out);
                            push_event(&mut out, &json!({"type": "message_delta",
                                "delta": {"stop_reason": stop_reason(reason), "stop_sequence": null},
                                "usage": {"input_tokens": usage.prompt_tokens,
                                    "output_tokens": usage.completion_tokens}}));
                            push_event(&mut out, &json!({"type": "message_stop"}));
                        }
                        // Never a quiet end: Anthropic SDKs raise on an error event.
                        Err(e) => push_event(&mut out, &AnthropicError::of_provider(&e).body()),
                    }
                    yield out.split().freeze();
                    break;
                }
                None => {
                    answer.broken();
                    push_event(&mut out, &AnthropicError::from(Failure::Broken).body());
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
