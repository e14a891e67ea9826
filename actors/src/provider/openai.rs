//! OpenAI-compatible chat completions (`POST {base_url}/chat/completions`, `stream: true`):
//! OpenAI itself and the many servers that copy its API (vLLM, DeepSeek, Groq, OpenRouter...).

use std::sync::Arc;

use ai_gateway_proto::{ChunkKind, FinishReason, Role, Usage};
use serde::{Deserialize, Serialize};

use super::{
    http::{self, ErrorDetails, InvalidSettings},
    ApiKey, ChunkSink, Finish, ProviderError, ProviderRequest,
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

#[derive(Serialize)]
struct ChatRequest<'a> {
    model: &'a str,
    messages: Vec<WireMessage<'a>>,
    stream: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    stream_options: Option<StreamOptions>,
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_tokens: Option<u32>,
}

#[derive(Serialize)]
struct WireMessage<'a> {
    role: &'static str,
    content: &'a str,
}

#[derive(Serialize)]
struct StreamOptions {
    include_usage: bool,
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
    /// DeepSeek, vLLM and most reasoning servers.
    reasoning_content: Option<String>,
    /// OpenRouter and some others.
    reasoning: Option<String>,
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
        let mut messages = Vec::with_capacity(request.messages.len() + 1);
        if let Some(system) = request.system.as_deref() {
            messages.push(WireMessage {
                role: "system",
                content: system,
            });
        }
        messages.extend(request.messages.iter().map(|m| WireMessage {
            role: role(m.role),
            content: &m.content,
        }));
        let body = ChatRequest {
            model: &request.upstream_model,
            messages,
            stream: true,
            stream_options: self.settings.include_usage.then_some(StreamOptions {
                include_usage: true,
            }),
            temperature: request.temperature,
            max_tokens: request.max_tokens,
        };
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
                };
            }
            // The gateway asks for one choice (no `n`), so only index 0 is the answer.
            for choice in chunk.choices.into_iter().filter(|c| c.index == 0) {
                let Delta {
                    content,
                    reasoning_content,
                    reasoning,
                } = choice.delta;
                events
                    .emit(&sink, ChunkKind::Reasoning, reasoning_content.or(reasoning))
                    .await?;
                events.emit(&sink, ChunkKind::Text, content).await?;
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
        "content_filter" => Err(ProviderError::Filtered {
            provider: NAME,
            reason: "finish_reason content_filter".into(),
        }),
        // "stop", and "tool_calls"/"function_call", which the gateway never asks for.
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
