//! OpenAI-compatible chat completions (`POST {base_url}/chat/completions`, `stream: true`):
//! OpenAI itself and the many servers that copy its API (vLLM, DeepSeek, Groq, OpenRouter...).

use std::sync::Arc;

use ai_gateway_proto::{ChunkKind, FinishReason, Usage};
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::{
    http::{self, ErrorDetails, InvalidSettings},
    ApiKey, ChunkSink, Finish, Message, Part, ProviderError, ProviderRequest, ResponseFormat, Role,
    Tool, ToolCallDelta, ToolChoice,
};

const NAME: &str = "openai";
pub const DEFAULT_BASE_URL: &str = "https://api.openai.com/v1";
/// The stream's last event.
const DONE: &str = "[DONE]";

/// `[providers.NAME]` settings of an OpenAI-compatible upstream.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OpenAiSettings {
    /// Up to and including the API version: `https://api.openai.com/v1`.
    #[serde(default = "default_base_url")]
    pub base_url: String,
    /// Sent as `Authorization: Bearer`; local servers may need none.
    #[serde(default)]
    pub api_key: Option<ApiKey>,
    /// Ask for the usage chunk (`stream_options.include_usage`); without it usage is zero.
    #[serde(default = "yes")]
    pub include_usage: bool,
    /// Send the client's token limit as `max_tokens` (for servers that know only the older
    /// name) instead of `max_completion_tokens`, which OpenAI's reasoning models require.
    #[serde(default)]
    pub legacy_max_tokens: bool,
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

fn yes() -> bool {
    true
}

impl OpenAiSettings {
    /// Settings with every default but the URL and key.
    pub fn new(base_url: impl Into<String>, api_key: Option<ApiKey>) -> Self {
        OpenAiSettings {
            base_url: base_url.into(),
            api_key,
            include_usage: true,
            legacy_max_tokens: false,
            connect_timeout_ms: http::DEFAULT_CONNECT_TIMEOUT_MS,
            first_chunk_timeout_ms: http::DEFAULT_FIRST_CHUNK_TIMEOUT_MS,
            idle_chunk_timeout_ms: http::DEFAULT_IDLE_CHUNK_TIMEOUT_MS,
            total_timeout_ms: http::DEFAULT_TOTAL_TIMEOUT_MS,
        }
    }
}

/// Streams chat completions from an OpenAI-compatible API.
pub struct OpenAiProvider {
    url: String,
    settings: OpenAiSettings,
    client: reqwest::Client,
}

impl OpenAiProvider {
    pub fn new(settings: OpenAiSettings) -> Result<Arc<Self>, InvalidSettings> {
        let base = http::base_url(NAME, &settings.base_url)?;
        let client = http::client(NAME, &settings.timeouts())?;
        Ok(Arc::new(OpenAiProvider {
            url: format!("{base}/chat/completions"),
            settings,
            client,
        }))
    }
}

#[derive(Deserialize)]
struct Chunk {
    #[serde(default)]
    choices: Vec<Choice>,
    usage: Option<WireUsage>,
    error: Option<WireError>,
}

#[derive(Deserialize)]
struct Choice {
    #[serde(default)]
    index: u32,
    #[serde(default)]
    delta: Delta,
    finish_reason: Option<String>,
}

#[derive(Default, Deserialize)]
struct Delta {
    content: Option<String>,
    #[serde(default)]
    tool_calls: Vec<WireToolCallDelta>,
    /// DeepSeek, vLLM and most reasoning servers.
    reasoning_content: Option<String>,
    /// OpenRouter and some others.
    reasoning: Option<String>,
}

#[derive(Deserialize)]
struct WireToolCallDelta {
    #[serde(default)]
    index: u32,
    id: Option<String>,
    #[serde(default)]
    function: WireFunctionDelta,
}

#[derive(Default, Deserialize)]
struct WireFunctionDelta {
    name: Option<String>,
    arguments: Option<String>,
}

#[derive(Default, Deserialize)]
#[serde(default)]
struct WireUsage {
    prompt_tokens: u64,
    completion_tokens: u64,
    total_tokens: u64,
}

#[derive(Deserialize)]
struct WireError {
    #[serde(default)]
    message: String,
    #[serde(rename = "type")]
    kind: Option<String>,
    code: Option<serde_json::Value>,
}

impl WireError {
    fn text(&self) -> String {
        match &self.kind {
            Some(kind) if !kind.is_empty() => format!("{kind}: {}", self.message),
            _ => self.message.clone(),
        }
    }
}

fn role(role: Role) -> &'static str {
    match role {
        Role::System => "system",
        Role::User => "user",
        Role::Assistant => "assistant",
        Role::Tool => "tool",
    }
}

/// A message in OpenAI's format: text alone as a string, parts as an array.
pub fn wire_message(m: &Message) -> Value {
    let mut out = Map::new();
    out.insert("role".into(), json!(role(m.role)));
    // Sealed reasoning of another provider's has no place here.
    let parts: Vec<&Part> = m.content.iter().filter(|p| !p.is_thinking()).collect();
    let only_text = parts.iter().all(|p| matches!(p, Part::Text(_)));
    let content = if parts.is_empty() {
        Value::Null
    } else if only_text {
        json!(m.text_content())
    } else {
        Value::Array(
            parts
                .into_iter()
                .filter_map(|p| match p {
                    Part::Text(text) => Some(json!({"type": "text", "text": text})),
                    Part::Image { source, detail } => {
                        let mut image = json!({"url": source.to_url()});
                        if let Some(d) = detail {
                            image["detail"] = json!(d);
                        }
                        Some(json!({"type": "image_url", "image_url": image}))
                    }
                    _ => None,
                })
                .collect(),
        )
    };
    // An assistant message with tool calls may have no content.
    if !content.is_null() || m.tool_calls.is_empty() {
        out.insert("content".into(), content);
    }
    if let Some(name) = &m.name {
        out.insert("name".into(), json!(name));
    }
    if !m.tool_calls.is_empty() {
        let calls: Vec<Value> = m
            .tool_calls
            .iter()
            .map(|c| {
                json!({"id": c.id, "type": "function",
                    "function": {"name": c.name, "arguments": c.arguments}})
            })
            .collect();
        out.insert("tool_calls".into(), Value::Array(calls));
    }
    if let Some(id) = &m.tool_call_id {
        out.insert("tool_call_id".into(), json!(id));
    }
    Value::Object(out)
}

/// A tool in OpenAI's format.
pub fn wire_tool(t: &Tool) -> Value {
    let mut function = json!({"name": t.name, "parameters": t.parameters});
    if let Some(d) = &t.description {
        function["description"] = json!(d);
    }
    if let Some(strict) = t.strict {
        function["strict"] = json!(strict);
    }
    json!({"type": "function", "function": function})
}

/// `tool_choice` in OpenAI's format.
pub fn wire_tool_choice(c: &ToolChoice) -> Value {
    match c {
        ToolChoice::Auto => json!("auto"),
        ToolChoice::None => json!("none"),
        ToolChoice::Required => json!("required"),
        ToolChoice::Tool(name) => json!({"type": "function", "function": {"name": name}}),
    }
}

/// `response_format` in OpenAI's format.
pub fn wire_response_format(f: &ResponseFormat) -> Value {
    match f {
        ResponseFormat::Text => json!({"type": "text"}),
        ResponseFormat::JsonObject => json!({"type": "json_object"}),
        ResponseFormat::JsonSchema {
            name,
            description,
            schema,
            strict,
        } => {
            let mut s = json!({"name": name, "schema": schema});
            if let Some(d) = description {
                s["description"] = json!(d);
            }
            if let Some(strict) = strict {
                s["strict"] = json!(strict);
            }
            json!({"type": "json_schema", "json_schema": s})
        }
    }
}

/// An `f32` as the decimal the client wrote (`0.9`, not `0.8999999761581421`).
fn num(f: f32) -> Value {
    f.to_string()
        .parse::<f64>()
        .ok()
        .and_then(serde_json::Number::from_f64)
        .map_or(Value::Null, Value::Number)
}

impl OpenAiProvider {
    /// The upstream request body: the client's unknown fields first, then everything the
    /// gateway knows written over them.
    fn body(&self, request: &ProviderRequest) -> Value {
        let mut body = request.extra.clone();
        let mut set = |k: &str, v: Value| {
            body.insert(k.to_owned(), v);
        };
        let mut messages = Vec::with_capacity(request.messages.len() + 1);
        if let Some(system) = request.system.as_deref() {
            messages.push(json!({"role": "system", "content": system}));
        }
        messages.extend(request.messages.iter().map(wire_message));
        set("model", json!(request.upstream_model));
        set("messages", Value::Array(messages));
        set("stream", json!(true));
        if self.settings.include_usage {
            set("stream_options", json!({"include_usage": true}));
        }
        let fields = [
            ("temperature", request.temperature.map(num)),
            ("top_p", request.top_p.map(num)),
            ("seed", request.seed.map(|t| json!(t))),
            (
                "stop",
                (!request.stop.is_empty()).then(|| json!(request.stop)),
            ),
            (
                if self.settings.legacy_max_tokens {
                    "max_tokens"
                } else {
                    "max_completion_tokens"
                },
                request.max_tokens.map(|t| json!(t)),
            ),
            ("presence_penalty", request.presence_penalty.map(num)),
            ("frequency_penalty", request.frequency_penalty.map(num)),
            (
                "reasoning_effort",
                request.reasoning_effort.as_ref().map(|t| json!(t)),
            ),
            ("user", request.user.as_ref().map(|t| json!(t))),
            (
                "tools",
                (!request.tools.is_empty())
                    .then(|| Value::Array(request.tools.iter().map(wire_tool).collect())),
            ),
            (
                "tool_choice",
                request.tool_choice.as_ref().map(wire_tool_choice),
            ),
            (
                "parallel_tool_calls",
                request.parallel_tool_calls.map(|t| json!(t)),
            ),
            (
                "response_format",
                request.response_format.as_ref().map(wire_response_format),
            ),
        ];
        for (k, v) in fields {
            if let Some(v) = v {
                set(k, v);
            }
        }
        Value::Object(body)
    }
}

fn read_error(body: &serde_json::Value) -> ErrorDetails {
    let error = serde_json::from_value::<WireError>(body["error"].clone()).ok();
    ErrorDetails {
        message: error.map(|e| e.text()),
        retry_after_ms: None,
    }
}

impl OpenAiProvider {
    async fn answer(
        &self,
        request: ProviderRequest,
        sink: ChunkSink,
    ) -> Result<Finish, ProviderError> {
        let body = self.body(&request);
        let mut http = self.client.post(&self.url).json(&body);
        if let Some(key) = &self.settings.api_key {
            http = http.bearer_auth(key.expose());
        }
        let mut events =
            http::open_events(NAME, self.settings.timeouts(), http, read_error).await?;
        let mut reason = None;
        let mut usage = Usage::default();
        while let Some(event) = events.next(&sink).await? {
            if event.data.trim() == DONE {
                return Ok(Finish {
                    reason: reason.unwrap_or(FinishReason::Stop),
                    usage,
                });
            }
            let chunk: Chunk = events.parse(&event)?;
            if let Some(error) = chunk.error {
                return Err(stream_error(&error));
            }
            if let Some(u) = chunk.usage {
                usage = Usage {
                    prompt_tokens: u.prompt_tokens,
                    completion_tokens: u.completion_tokens,
                    total_tokens: if u.total_tokens > 0 {
                        u.total_tokens
                    } else {
                        u.prompt_tokens + u.completion_tokens
                    },
                    estimated: false,
                };
            }
            // The gateway asks for one choice (no `n`), so only index 0 is the answer.
            for choice in chunk.choices.into_iter().filter(|c| c.index == 0) {
                let Delta {
                    content,
                    tool_calls,
                    reasoning_content,
                    reasoning,
                } = choice.delta;
                events
                    .emit(&sink, ChunkKind::Reasoning, reasoning_content.or(reasoning))
                    .await?;
                events.emit(&sink, ChunkKind::Text, content).await?;
                for call in tool_calls {
                    let delta = ToolCallDelta {
                        index: call.index,
                        id: call.id.filter(|s| !s.is_empty()),
                        name: call.function.name.filter(|s| !s.is_empty()),
                    };
                    events
                        .emit_tool_call(&sink, delta, call.function.arguments.unwrap_or_default())
                        .await?;
                }
                if let Some(r) = choice.finish_reason {
                    reason = Some(finish_reason(&r)?);
                }
            }
        }
        Err(ProviderError::Protocol {
            provider: NAME,
            message: "the stream ended without [DONE]".into(),
        })
    }
}

fn finish_reason(reason: &str) -> Result<FinishReason, ProviderError> {
    match reason {
        "length" => Ok(FinishReason::Length),
        "tool_calls" | "function_call" => Ok(FinishReason::ToolCalls),
        "content_filter" => Ok(FinishReason::ContentFilter),
        // "stop", and anything a server invents.
        _ => Ok(FinishReason::Stop),
    }
}

/// An `{"error": ...}` event inside the stream. Its `code` is the HTTP status when numeric
/// (vLLM and others); OpenAI itself sends such events only for server errors.
fn stream_error(error: &WireError) -> ProviderError {
    let status = error
        .code
        .as_ref()
        .and_then(serde_json::Value::as_u64)
        .filter(|c| (400..600).contains(c))
        .map_or(500, |c| c as u16);
    if status == 429 {
        return ProviderError::RateLimited {
            provider: NAME,
            retry_after_ms: None,
            message: error.text(),
        };
    }
    ProviderError::Upstream {
        provider: NAME,
        status,
        message: error.text(),
    }
}

http::http_provider!(OpenAiProvider, OpenAiSettings);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_default_and_reject_unknown_fields() {
        let s: OpenAiSettings = serde_json::from_str(r#"{"api_key": "sk-1"}"#).unwrap();
        assert_eq!(s.base_url, DEFAULT_BASE_URL);
        assert!(s.include_usage);
        assert_eq!(s.total_timeout_ms, 0);
        assert!(!format!("{s:?}").contains("sk-1"));
        assert!(serde_json::from_str::<OpenAiSettings>(r#"{"apikey": "x"}"#).is_err());
    }
}
