//! Anthropic messages API (`POST {base_url}/v1/messages`, `stream: true`).

use std::sync::Arc;

use ai_gateway_proto::{ChunkKind, FinishReason, Role, Usage};
use serde::{Deserialize, Serialize};

use super::{
    http::{self, ErrorDetails, InvalidSettings},
    ApiKey, ChunkSink, Finish, ProviderError, ProviderRequest,
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
        }))
    }
}

#[derive(Serialize)]
struct MessagesRequest<'a> {
    model: &'a str,
    max_tokens: u32,
    messages: Vec<WireMessage<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    system: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    thinking: Option<Thinking>,
    stream: bool,
}

#[derive(Serialize)]
struct WireMessage<'a> {
    role: &'static str,
    content: &'a str,
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
        content_block: ContentBlock,
    },
    ContentBlockDelta {
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
    /// `signature_delta`, `input_json_delta`, ...: nothing to show.
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
        Some("refusal") => Err(ProviderError::Filtered {
            provider: NAME,
            reason: "stop_reason refusal".into(),
        }),
        // end_turn, stop_sequence, and tool_use / pause_turn, which the gateway never asks for.
        _ => Ok(FinishReason::Stop),
    }
}

impl AnthropicProvider {
    fn body<'a>(&self, request: &'a ProviderRequest) -> MessagesRequest<'a> {
        // The API takes the system prompt apart from the turns; system turns join it.
        let system: Vec<&str> = request
            .system
            .as_deref()
            .into_iter()
            .chain(
                request
                    .messages
                    .iter()
                    .filter(|m| m.role == Role::System)
                    .map(|m| m.content.as_str()),
            )
            .collect();
        let messages = request
            .messages
            .iter()
            .filter_map(|m| {
                let role = match m.role {
                    Role::User => "user",
                    Role::Assistant => "assistant",
                    Role::System => return None,
                };
                Some(WireMessage {
                    role,
                    content: &m.content,
                })
            })
            .collect();
        let budget = self.settings.thinking_budget_tokens;
        let max_tokens = request.max_tokens.unwrap_or(self.settings.max_tokens);
        MessagesRequest {
            model: &request.upstream_model,
            max_tokens: max_tokens.saturating_add(budget.unwrap_or(0)),
            messages,
            system: (!system.is_empty()).then(|| system.join("\n\n")),
            temperature: request.temperature.filter(|_| budget.is_none()),
            thinking: budget.map(|budget_tokens| Thinking {
                kind: "enabled",
                budget_tokens,
            }),
            stream: true,
        }
    }

    async fn answer(
        &self,
        request: ProviderRequest,
        sink: ChunkSink,
    ) -> Result<Finish, ProviderError> {
        let http = self
            .client
            .post(&self.url)
            .header("x-api-key", self.settings.api_key.expose())
            .header("anthropic-version", &self.settings.version)
            .json(&self.body(&request));
        let mut events =
            http::open_events(NAME, self.settings.timeouts(), http, read_error).await?;
        let mut usage = Usage::default();
        let mut stop_reason = None;
        while let Some(event) = events.next(&sink).await? {
            match events.parse::<StreamEvent>(&event)? {
                StreamEvent::MessageStart { message } => {
                    usage.prompt_tokens = message.usage.input().unwrap_or(0);
                    usage.completion_tokens = message.usage.output_tokens.unwrap_or(0);
                }
                StreamEvent::ContentBlockStart { content_block } => match content_block {
                    ContentBlock::Text { text } => {
                        events.emit(&sink, ChunkKind::Text, Some(text)).await?
                    }
                    ContentBlock::Thinking { thinking } => {
                        events
                            .emit(&sink, ChunkKind::Reasoning, Some(thinking))
                            .await?
                    }
                    ContentBlock::Other => {}
                },
                StreamEvent::ContentBlockDelta { delta } => match delta {
                    BlockDelta::TextDelta { text } => {
                        events.emit(&sink, ChunkKind::Text, Some(text)).await?
                    }
                    BlockDelta::ThinkingDelta { thinking } => {
                        events
                            .emit(&sink, ChunkKind::Reasoning, Some(thinking))
                            .await?
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

http::http_provider!(AnthropicProvider, AnthropicSettings);

#[cfg(test)]
mod tests {
    use super::*;
    use ai_gateway_proto::ChatMessage;

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
                ChatMessage {
                    role: Role::System,
                    content: "in French".into(),
                },
                ChatMessage {
                    role: Role::User,
                    content: "hi".into(),
                },
            ],
            temperature: Some(0.5),
            max_tokens: None,
            span: tracing::Span::none(),
        };
        let body = serde_json::to_value(p.body(&request)).unwrap();
        assert_eq!(body["system"], "be brief\n\nin French");
        assert_eq!(
            body["messages"],
            serde_json::json!([{"role": "user", "content": "hi"}])
        );
        assert_eq!(body["max_tokens"], DEFAULT_MAX_TOKENS);
        assert_eq!(body["temperature"], 0.5);
        assert!(body.get("thinking").is_none());
    }
}
