//! Anthropic messages API (`POST {base_url}/v1/messages`, `stream: true`).

use std::{
    collections::{HashMap, VecDeque},
    sync::{Arc, Mutex},
};

use ai_gateway_proto::{ChunkKind, FinishReason, Usage};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::{
    http::{self, ErrorDetails, InvalidSettings},
    ApiKey, ChunkSink, Finish, ImageSource, Message, Part, ProviderError, ProviderRequest, Role,
    Seal, Tool, ToolCallDelta, ToolChoice,
};

const NAME: &str = "anthropic";
pub const DEFAULT_BASE_URL: &str = "https://api.anthropic.com";
pub const DEFAULT_VERSION: &str = "2023-06-01";
/// The API requires `max_tokens`; this is sent when the client gives none.
pub const DEFAULT_MAX_TOKENS: u32 = 4096;
/// The API's smallest thinking budget.
pub const MIN_THINKING_BUDGET_TOKENS: u32 = 1024;

/// `[providers.NAME]` settings of the Anthropic API.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AnthropicSettings {
    /// Without the API version path: `https://api.anthropic.com`.
    #[serde(default = "default_base_url")]
    pub base_url: String,
    /// Sent as `x-api-key`.
    pub api_key: ApiKey,
    /// Sent as `anthropic-version`.
    #[serde(default = "default_version")]
    pub version: String,
    /// `max_tokens` when the client gives none.
    #[serde(default = "default_max_tokens")]
    pub max_tokens: u32,
    /// Extended thinking budget; thinking is off when absent. With thinking on, the request's
    /// temperature is not sent (the API accepts only the default) and the budget is added to
    /// `max_tokens`, so the client's limit bounds the answer after the thinking.
    #[serde(default)]
    pub thinking_budget_tokens: Option<u32>,
    #[serde(default = "http::default_connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    #[serde(default = "http::default_first_chunk_timeout_ms")]
    pub first_chunk_timeout_ms: u64,
    #[serde(default = "http::default_idle_chunk_timeout_ms")]
    pub idle_chunk_timeout_ms: u64,
    #[serde(default = "http::default_total_timeout_ms")]
    pub total_timeout_ms: u64,
}

fn default_base_url() -> String {
    DEFAULT_BASE_URL.to_owned()
}
fn default_version() -> String {
    DEFAULT_VERSION.to_owned()
}
fn default_max_tokens() -> u32 {
    DEFAULT_MAX_TOKENS
}

impl AnthropicSettings {
    /// Settings with every default but the URL and key.
    pub fn new(base_url: impl Into<String>, api_key: ApiKey) -> Self {
        AnthropicSettings {
            base_url: base_url.into(),
            api_key,
            version: DEFAULT_VERSION.to_owned(),
            max_tokens: DEFAULT_MAX_TOKENS,
            thinking_budget_tokens: None,
            connect_timeout_ms: http::DEFAULT_CONNECT_TIMEOUT_MS,
            first_chunk_timeout_ms: http::DEFAULT_FIRST_CHUNK_TIMEOUT_MS,
            idle_chunk_timeout_ms: http::DEFAULT_IDLE_CHUNK_TIMEOUT_MS,
            total_timeout_ms: http::DEFAULT_TOTAL_TIMEOUT_MS,
        }
    }

    fn validate(&self) -> Result<(), InvalidSettings> {
        if self.api_key.is_empty() {
            return Err(InvalidSettings(
                "providers.anthropic.api_key is empty".into(),
            ));
        }
        if self.max_tokens == 0 {
            return Err(InvalidSettings(
                "providers.anthropic.max_tokens must be at least 1".into(),
            ));
        }
        if self
            .thinking_budget_tokens
            .is_some_and(|b| b < MIN_THINKING_BUDGET_TOKENS)
        {
            return Err(InvalidSettings(format!(
                "providers.anthropic.thinking_budget_tokens must be at least {MIN_THINKING_BUDGET_TOKENS}"
            )));
        }
        Ok(())
    }
}

/// Streams answers from the Anthropic messages API.
pub struct AnthropicProvider {
    url: String,
    settings: AnthropicSettings,
    client: reqwest::Client,
    thinking: ThinkingMemory,
}

/// Answers with tool calls remembered at most (their signed thinking blocks, a few KiB each).
const REMEMBERED_THINKING: usize = 4096;

/// The signed thinking of recent answers that called tools, by the id of their first call.
/// With thinking on, the API refuses a tool round trip unless the assistant's turn starts with
/// its thinking block, signature unchanged; the Anthropic-compatible front carries the blocks
/// to the client and back, but the WebSocket and the OpenAI-compatible front have no place for
/// them, so the node puts them back itself. Bounded: the oldest go first.
#[derive(Default)]
struct ThinkingMemory {
    kept: Mutex<Remembered>,
}

#[derive(Default)]
struct Remembered {
    by_call: HashMap<String, Vec<Value>>,
    /// Call ids, oldest first.
    order: VecDeque<String>,
}

impl ThinkingMemory {
    fn remember(&self, call_id: String, blocks: Vec<Value>) {
        let mut kept = self.kept.lock().unwrap_or_else(|p| p.into_inner());
        let Remembered { by_call, order } = &mut *kept;
        if by_call.insert(call_id.clone(), blocks).is_none() {
            order.push_back(call_id);
        }
        while order.len() > REMEMBERED_THINKING {
            if let Some(old) = order.pop_front() {
                by_call.remove(&old);
            }
        }
    }

    fn recall(&self, call_id: &str) -> Option<Vec<Value>> {
        let kept = self.kept.lock().unwrap_or_else(|p| p.into_inner());
        kept.by_call.get(call_id).cloned()
    }

    /// Puts remembered thinking back at the start of every assistant turn that called tools
    /// without it; answers whether the last such turn now starts with thinking (else the
    /// request must go without thinking: the API would refuse it).
    fn restore(&self, messages: &mut [WireMessage]) -> bool {
        let mut last_ok = true;
        for m in messages.iter_mut().filter(|m| m.role == "assistant") {
            let Some(first_call) = m
                .content
                .iter()
                .find(|b| b["type"] == "tool_use")
                .and_then(|b| b["id"].as_str())
            else {
                continue;
            };
            let thought = |b: &Value| b["type"] == "thinking" || b["type"] == "redacted_thinking";
            if !m.content.first().is_some_and(thought) {
                if let Some(blocks) = self.recall(first_call) {
                    m.content.retain(|b| !thought(b));
                    m.content.splice(0..0, blocks);
                }
            }
            last_ok = m.content.first().is_some_and(thought);
        }
        last_ok
    }
}

impl AnthropicProvider {
    pub fn new(settings: AnthropicSettings) -> Result<Arc<Self>, InvalidSettings> {
        settings.validate()?;
        let base = http::base_url(NAME, &settings.base_url)?;
        let client = http::client(NAME, &settings.timeouts())?;
        Ok(Arc::new(AnthropicProvider {
            url: format!("{base}/v1/messages"),
            settings,
            client,
            thinking: ThinkingMemory::default(),
        }))
    }
}

#[derive(Serialize)]
struct MessagesRequest<'a> {
    model: &'a str,
    max_tokens: u32,
    messages: Vec<WireMessage>,
    #[serde(skip_serializing_if = "Option::is_none")]
    system: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    top_p: Option<f32>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    stop_sequences: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    metadata: Option<Value>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tools: Vec<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_choice: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    thinking: Option<Thinking>,
    stream: bool,
}

#[derive(Serialize)]
struct WireMessage {
    role: &'static str,
    /// Content blocks: `text`, `image`, `tool_use`, `tool_result`.
    content: Vec<Value>,
}

/// What this API takes of [`super::PARAMS`]; the rest is refused by name.
pub const SUPPORTED: &[&str] = &[
    "top_p",
    "stop",
    "reasoning_effort",
    "user",
    "tools",
    "tool_choice",
    "parallel_tool_calls",
    "image_url",
    "tool_messages",
];

/// An image as a content block: by URL or base64.
fn image_block(source: &ImageSource) -> Value {
    match source {
        ImageSource::Url(url) => json!({"type": "image", "source": {"type": "url", "url": url}}),
        ImageSource::Base64 { media_type, data } => json!({"type": "image",
            "source": {"type": "base64", "media_type": media_type, "data": data}}),
    }
}

/// A message's parts as content blocks; empty text is left out (the API refuses it).
fn blocks(m: &Message) -> Vec<Value> {
    m.content
        .iter()
        .filter_map(|p| match p {
            Part::Text(t) if t.is_empty() => None,
            Part::Text(t) => Some(json!({"type": "text", "text": t})),
            Part::Image { source, .. } => Some(image_block(source)),
            // Reasoning without a signature came from another provider: the API would refuse it.
            Part::Thinking { signature, .. } if signature.is_empty() => None,
            Part::Thinking { text, signature } => {
                Some(json!({"type": "thinking", "thinking": text, "signature": signature}))
            }
            Part::RedactedThinking { data } => {
                Some(json!({"type": "redacted_thinking", "data": data}))
            }
        })
        .collect()
}

/// The messages in this API's form: system turns left out (they join `system`), an assistant's
/// tool calls as `tool_use` blocks, tool results as `tool_result` blocks of a user turn, and
/// consecutive turns of one role merged (the API wants every result of a turn's calls in the
/// one user message after it).
fn wire_messages(messages: &[Message]) -> Result<Vec<WireMessage>, ProviderError> {
    let mut out: Vec<WireMessage> = Vec::new();
    for (i, m) in messages.iter().enumerate() {
        let (role, content) = match m.role {
            Role::System => continue,
            Role::User => ("user", blocks(m)),
            Role::Assistant => {
                let mut content = blocks(m);
                for (j, call) in m.tool_calls.iter().enumerate() {
                    let input: Value = if call.arguments.trim().is_empty() {
                        json!({})
                    } else {
                        serde_json::from_str(&call.arguments).map_err(|e| {
                            ProviderError::Unsupported {
                                provider: NAME,
                                param: format!("messages[{i}].tool_calls[{j}].function.arguments"),
                                message: format!("the arguments are not JSON: {e}"),
                            }
                        })?
                    };
                    content.push(json!({"type": "tool_use", "id": call.id,
                        "name": call.name, "input": input}));
                }
                ("assistant", content)
            }
            Role::Tool => {
                let mut result = json!({"type": "tool_result",
                    "tool_use_id": m.tool_call_id.clone().unwrap_or_default()});
                let content = blocks(m);
                if !content.is_empty() {
                    result["content"] = Value::Array(content);
                }
                ("user", vec![result])
            }
        };
        match out.last_mut() {
            Some(last) if last.role == role => last.content.extend(content),
            _ => out.push(WireMessage { role, content }),
        }
    }
    Ok(out)
}

fn wire_tool(t: &Tool) -> Value {
    let mut tool = json!({"name": t.name, "input_schema": t.parameters});
    if let Some(d) = &t.description {
        tool["description"] = json!(d);
    }
    tool
}

/// `tool_choice`, with `disable_parallel_tool_use` for `parallel_tool_calls: false`.
fn wire_tool_choice(choice: Option<&ToolChoice>, parallel: Option<bool>) -> Option<Value> {
    let mut c = match choice {
        None if parallel != Some(false) => return None,
        None | Some(ToolChoice::Auto) => json!({"type": "auto"}),
        Some(ToolChoice::None) => return Some(json!({"type": "none"})),
        Some(ToolChoice::Required) => json!({"type": "any"}),
        Some(ToolChoice::Tool(name)) => json!({"type": "tool", "name": name}),
    };
    if parallel == Some(false) {
        c["disable_parallel_tool_use"] = json!(true);
    }
    Some(c)
}

#[derive(Serialize)]
struct Thinking {
    #[serde(rename = "type")]
    kind: &'static str,
    budget_tokens: u32,
}

/// One event of the stream, by its `type`. Unknown types are skipped, as the API asks.
#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum StreamEvent {
    MessageStart {
        message: MessageStart,
    },
    ContentBlockStart {
        #[serde(default)]
        index: u32,
        content_block: ContentBlock,
    },
    ContentBlockDelta {
        #[serde(default)]
        index: u32,
        delta: BlockDelta,
    },
    MessageDelta {
        delta: MessageDelta,
        #[serde(default)]
        usage: DeltaUsage,
    },
    MessageStop {},
    Error {
        error: WireError,
    },
    #[serde(other)]
    Other,
}

#[derive(Deserialize)]
struct MessageStart {
    #[serde(default)]
    usage: DeltaUsage,
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum ContentBlock {
    Text {
        #[serde(default)]
        text: String,
    },
    Thinking {
        #[serde(default)]
        thinking: String,
    },
    RedactedThinking {
        #[serde(default)]
        data: String,
    },
    /// A call of one of the client's tools (not `server_tool_use`, which the API runs itself).
    ToolUse { id: String, name: String },
    #[serde(other)]
    Other,
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum BlockDelta {
    TextDelta {
        text: String,
    },
    ThinkingDelta {
        thinking: String,
    },
    /// A piece of a tool call's input (of a `tool_use` block; a `server_tool_use` block's are
    /// not the client's).
    InputJsonDelta {
        #[serde(default)]
        partial_json: String,
    },
    /// The signature that seals the thinking block, so that it can be sent back.
    SignatureDelta {
        signature: String,
    },
    #[serde(other)]
    Other,
}

#[derive(Deserialize)]
struct MessageDelta {
    stop_reason: Option<String>,
}

#[derive(Default, Deserialize)]
#[serde(default)]
struct DeltaUsage {
    input_tokens: Option<u64>,
    cache_creation_input_tokens: Option<u64>,
    cache_read_input_tokens: Option<u64>,
    output_tokens: Option<u64>,
}

impl DeltaUsage {
    /// Every input token, cached or not.
    fn input(&self) -> Option<u64> {
        let parts = [
            self.input_tokens,
            self.cache_creation_input_tokens,
            self.cache_read_input_tokens,
        ];
        parts
            .iter()
            .any(Option::is_some)
            .then(|| parts.iter().flatten().sum())
    }
}

#[derive(Deserialize)]
struct WireError {
    #[serde(rename = "type", default)]
    kind: String,
    #[serde(default)]
    message: String,
}

impl WireError {
    fn text(&self) -> String {
        format!("{}: {}", self.kind, self.message)
    }

    /// The HTTP status the API documents for each error type.
    fn status(&self) -> u16 {
        match self.kind.as_str() {
            "invalid_request_error" => 400,
            "authentication_error" => 401,
            "billing_error" => 402,
            "permission_error" => 403,
            "not_found_error" => 404,
            "request_too_large" => 413,
            "rate_limit_error" => 429,
            "timeout_error" => 504,
            "overloaded_error" => 529,
            _ => 500,
        }
    }
}

fn read_error(body: &serde_json::Value) -> ErrorDetails {
    let error = serde_json::from_value::<WireError>(body["error"].clone()).ok();
    ErrorDetails {
        message: error.map(|e| e.text()),
        retry_after_ms: None,
    }
}

fn stream_error(error: &WireError) -> ProviderError {
    match error.status() {
        429 => ProviderError::RateLimited {
            provider: NAME,
            retry_after_ms: None,
            message: error.text(),
        },
        status => ProviderError::Upstream {
            provider: NAME,
            status,
            message: error.text(),
        },
    }
}

fn finish_reason(reason: Option<&str>) -> Result<FinishReason, ProviderError> {
    match reason {
        Some("max_tokens") => Ok(FinishReason::Length),
        Some("tool_use") => Ok(FinishReason::ToolCalls),
        Some("refusal") => Ok(FinishReason::ContentFilter),
        // end_turn, stop_sequence, pause_turn.
        _ => Ok(FinishReason::Stop),
    }
}

impl AnthropicProvider {
    fn body<'a>(&self, request: &'a ProviderRequest) -> Result<MessagesRequest<'a>, ProviderError> {
        // The API takes the system prompt apart from the turns; system turns join it.
        let system: Vec<String> = request
            .system
            .clone()
            .into_iter()
            .chain(
                request
                    .messages
                    .iter()
                    .filter(|m| m.role == Role::System)
                    .map(|m| m.text_content()),
            )
            .collect();
        let mut messages = wire_messages(&request.messages)?;
        let thinking_kept = self.thinking.restore(&mut messages);
        // The client's reasoning effort, as a thinking budget; else the provider's setting.
        let budget = match request.reasoning_effort.as_deref() {
            Some("low" | "minimal") => Some(MIN_THINKING_BUDGET_TOKENS),
            Some("medium") => Some(4096),
            Some("high") => Some(16384),
            Some(other) => {
                return Err(ProviderError::Unsupported {
                    provider: NAME,
                    param: "reasoning_effort".into(),
                    message: format!("{other:?} is not low, medium or high"),
                })
            }
            None => self.settings.thinking_budget_tokens,
        };
        // A tool round trip whose thinking is lost (another node answered the call, or the
        // client dropped it) goes without thinking rather than be refused.
        let budget = budget.filter(|_| {
            if !thinking_kept {
                tracing::debug!("the thinking of the last tool call is not at hand: this turn goes without thinking");
            }
            thinking_kept
        });
        let max_tokens = request.max_tokens.unwrap_or(self.settings.max_tokens);
        Ok(MessagesRequest {
            model: &request.upstream_model,
            max_tokens: max_tokens.saturating_add(budget.unwrap_or(0)),
            messages,
            system: (!system.is_empty()).then(|| system.join("\n\n")),
            temperature: request.temperature.filter(|_| budget.is_none()),
            top_p: request.top_p,
            stop_sequences: request.stop.clone(),
            metadata: request.user.as_ref().map(|u| json!({"user_id": u})),
            tools: request.tools.iter().map(wire_tool).collect(),
            tool_choice: wire_tool_choice(
                request.tool_choice.as_ref(),
                request.parallel_tool_calls,
            ),
            thinking: budget.map(|budget_tokens| Thinking {
                kind: "enabled",
                budget_tokens,
            }),
            stream: true,
        })
    }

    async fn answer(
        &self,
        request: ProviderRequest,
        sink: ChunkSink,
    ) -> Result<Finish, ProviderError> {
        request.refuse_unsupported(NAME, SUPPORTED)?;
        let body = self.body(&request)?;
        let http = self
            .client
            .post(&self.url)
            .header("x-api-key", self.settings.api_key.expose())
            .header("anthropic-version", &self.settings.version)
            .json(&body);
        let mut events =
            http::open_events(NAME, self.settings.timeouts(), http, read_error).await?;
        let mut usage = Usage::default();
        let mut stop_reason = None;
        // The API's block index of each tool_use block, by its index among the answer's calls.
        let mut calls: Vec<u32> = Vec::new();
        // The answer's signed thinking blocks, and the id of its first tool call.
        let (mut thought, mut blocks, mut first_call) = (String::new(), Vec::new(), None);
        while let Some(event) = events.next(&sink).await? {
            match events.parse::<StreamEvent>(&event)? {
                StreamEvent::MessageStart { message } => {
                    usage.prompt_tokens = message.usage.input().unwrap_or(0);
                    usage.completion_tokens = message.usage.output_tokens.unwrap_or(0);
                }
                StreamEvent::ContentBlockStart {
                    index,
                    content_block,
                } => match content_block {
                    ContentBlock::Text { text } => {
                        events.emit(&sink, ChunkKind::Text, Some(text)).await?
                    }
                    ContentBlock::Thinking { thinking } => {
                        thought = thinking.clone();
                        events
                            .emit(&sink, ChunkKind::Reasoning, Some(thinking))
                            .await?
                    }
                    ContentBlock::RedactedThinking { data } => {
                        blocks.push(json!({"type": "redacted_thinking", "data": data}));
                        sink.seal(Seal::Redacted(data)).await?
                    }
                    ContentBlock::ToolUse { id, name } => {
                        first_call.get_or_insert_with(|| id.clone());
                        let delta = ToolCallDelta {
                            index: calls.len() as u32,
                            id: Some(id),
                            name: Some(name),
                        };
                        calls.push(index);
                        events.emit_tool_call(&sink, delta, String::new()).await?
                    }
                    ContentBlock::Other => {}
                },
                StreamEvent::ContentBlockDelta { index, delta } => match delta {
                    BlockDelta::TextDelta { text } => {
                        events.emit(&sink, ChunkKind::Text, Some(text)).await?
                    }
                    BlockDelta::ThinkingDelta { thinking } => {
                        thought.push_str(&thinking);
                        events
                            .emit(&sink, ChunkKind::Reasoning, Some(thinking))
                            .await?
                    }
                    BlockDelta::InputJsonDelta { partial_json } => {
                        if let Some(call) = calls.iter().position(|b| *b == index) {
                            let delta = ToolCallDelta {
                                index: call as u32,
                                id: None,
                                name: None,
                            };
                            events.emit_tool_call(&sink, delta, partial_json).await?
                        }
                    }
                    BlockDelta::SignatureDelta { signature } => {
                        blocks.push(json!({"type": "thinking",
                            "thinking": std::mem::take(&mut thought), "signature": signature}));
                        sink.seal(Seal::Signature(signature)).await?
                    }
                    BlockDelta::Other => {}
                },
                StreamEvent::MessageDelta { delta, usage: u } => {
                    stop_reason = delta.stop_reason.or(stop_reason);
                    // Counts here are cumulative.
                    if let Some(input) = u.input() {
                        usage.prompt_tokens = input;
                    }
                    if let Some(output) = u.output_tokens {
                        usage.completion_tokens = output;
                    }
                }
                StreamEvent::MessageStop {} => {
                    if let Some(call) = first_call.take().filter(|_| !blocks.is_empty()) {
                        self.thinking.remember(call, std::mem::take(&mut blocks));
                    }
                    usage.total_tokens = usage.prompt_tokens + usage.completion_tokens;
                    let reason = finish_reason(stop_reason.as_deref())?;
                    return Ok(Finish { reason, usage });
                }
                StreamEvent::Error { error } => return Err(stream_error(&error)),
                StreamEvent::Other => {}
            }
        }
        Err(ProviderError::Protocol {
            provider: NAME,
            message: "the stream ended without message_stop".into(),
        })
    }
}

http::http_provider!(AnthropicProvider, AnthropicSettings, supported: SUPPORTED);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::provider::Message;

    #[test]
    fn settings_need_a_key_and_reject_unknown_fields() {
        let s: AnthropicSettings = serde_json::from_str(r#"{"api_key": "sk-ant"}"#).unwrap();
        assert_eq!(s.version, DEFAULT_VERSION);
        assert_eq!(s.max_tokens, DEFAULT_MAX_TOKENS);
        assert!(!format!("{s:?}").contains("sk-ant"));
        assert!(serde_json::from_str::<AnthropicSettings>("{}").is_err());
        assert!(serde_json::from_str::<AnthropicSettings>(r#"{"api_key": "k", "x": 1}"#).is_err());
    }

    #[test]
    fn system_turns_join_the_system_field() {
        let p =
            AnthropicProvider::new(AnthropicSettings::new("http://h", ApiKey::new("k"))).unwrap();
        let request = ProviderRequest {
            model: "m".into(),
            upstream_model: "claude".into(),
            system: Some("be brief".into()),
            messages: vec![
                Message::text(Role::System, "in French"),
                Message::text(Role::User, "hi"),
            ],
            temperature: Some(0.5),
            ..ProviderRequest::default()
        };
        let body = serde_json::to_value(p.body(&request).unwrap()).unwrap();
        assert_eq!(body["system"], "be brief\n\nin French");
        assert_eq!(
            body["messages"],
            serde_json::json!([{"role": "user", "content": [{"type": "text", "text": "hi"}]}])
        );
        assert_eq!(body["max_tokens"], DEFAULT_MAX_TOKENS);
        assert_eq!(body["temperature"], 0.5);
        assert!(body.get("thinking").is_none());
    }
}
