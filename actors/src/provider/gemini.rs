//! Gemini API (`POST {base_url}/v1beta/models/{model}:streamGenerateContent?alt=sse`).

use std::sync::Arc;

use ai_gateway_proto::{ChunkKind, FinishReason, Role, Usage};
use serde::{Deserialize, Serialize};

use super::{
    http::{self, ErrorDetails, InvalidSettings},
    ApiKey, ChunkSink, Finish, ProviderError, ProviderRequest,
};

const NAME: &str = "gemini";
pub const DEFAULT_BASE_URL: &str = "https://generativelanguage.googleapis.com";
/// The `@type` of the error detail that says when to retry.
const RETRY_INFO: &str = "type.googleapis.com/google.rpc.RetryInfo";

/// `[providers.NAME]` settings of the Gemini API.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GeminiSettings {
    /// Without the API version path: `https://generativelanguage.googleapis.com`.
    #[serde(default = "default_base_url")]
    pub base_url: String,
    /// Sent as `x-goog-api-key` (never in the URL, which may be logged).
    pub api_key: ApiKey,
    /// Ask for thought summaries (`thinkingConfig.includeThoughts`); turn off for models that
    /// do not think.
    #[serde(default = "yes")]
    pub include_thoughts: bool,
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

impl GeminiSettings {
    /// Settings with every default but the URL and key.
    pub fn new(base_url: impl Into<String>, api_key: ApiKey) -> Self {
        GeminiSettings {
            base_url: base_url.into(),
            api_key,
            include_thoughts: true,
            connect_timeout_ms: http::DEFAULT_CONNECT_TIMEOUT_MS,
            first_chunk_timeout_ms: http::DEFAULT_FIRST_CHUNK_TIMEOUT_MS,
            idle_chunk_timeout_ms: http::DEFAULT_IDLE_CHUNK_TIMEOUT_MS,
            total_timeout_ms: http::DEFAULT_TOTAL_TIMEOUT_MS,
        }
    }
}

/// Streams answers from the Gemini API.
pub struct GeminiProvider {
    base_url: String,
    settings: GeminiSettings,
    client: reqwest::Client,
}

impl GeminiProvider {
    pub fn new(settings: GeminiSettings) -> Result<Arc<Self>, InvalidSettings> {
        if settings.api_key.is_empty() {
            return Err(InvalidSettings("providers.gemini.api_key is empty".into()));
        }
        let base_url = http::base_url(NAME, &settings.base_url)?;
        let client = http::client(NAME, &settings.timeouts())?;
        Ok(Arc::new(GeminiProvider {
            base_url,
            settings,
            client,
        }))
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct GenerateRequest<'a> {
    contents: Vec<Content<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    system_instruction: Option<Content<'a>>,
    generation_config: GenerationConfig,
}

#[derive(Serialize)]
struct Content<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    role: Option<&'static str>,
    parts: Vec<TextPart<'a>>,
}

#[derive(Serialize)]
struct TextPart<'a> {
    text: &'a str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct GenerationConfig {
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_output_tokens: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    thinking_config: Option<ThinkingConfig>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ThinkingConfig {
    include_thoughts: bool,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct GenerateResponse {
    #[serde(default)]
    candidates: Vec<Candidate>,
    usage_metadata: Option<UsageMetadata>,
    prompt_feedback: Option<PromptFeedback>,
    error: Option<WireError>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Candidate {
    content: Option<CandidateContent>,
    finish_reason: Option<String>,
}

#[derive(Deserialize)]
struct CandidateContent {
    #[serde(default)]
    parts: Vec<Part>,
}

#[derive(Deserialize)]
struct Part {
    text: Option<String>,
    #[serde(default)]
    thought: bool,
}

#[derive(Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
struct UsageMetadata {
    prompt_token_count: u64,
    candidates_token_count: u64,
    thoughts_token_count: u64,
    total_token_count: u64,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct PromptFeedback {
    block_reason: Option<String>,
}

#[derive(Deserialize)]
struct WireError {
    #[serde(default)]
    code: u16,
    #[serde(default)]
    message: String,
    #[serde(default)]
    status: String,
    #[serde(default)]
    details: Vec<serde_json::Value>,
}

impl WireError {
    fn text(&self) -> String {
        if self.status.is_empty() {
            self.message.clone()
        } else {
            format!("{}: {}", self.status, self.message)
        }
    }

    /// `retryDelay` of a `RetryInfo` detail.
    fn retry_after_ms(&self) -> Option<u64> {
        self.details
            .iter()
            .find(|d| d["@type"] == RETRY_INFO)
            .and_then(|d| http::duration_ms(d["retryDelay"].as_str()?))
    }
}

fn read_error(body: &serde_json::Value) -> ErrorDetails {
    // Some proxies wrap the error in a one-element array.
    let body = body.get(0).unwrap_or(body);
    match serde_json::from_value::<WireError>(body["error"].clone()) {
        Ok(e) => ErrorDetails {
            message: Some(e.text()),
            retry_after_ms: e.retry_after_ms(),
        },
        Err(_) => ErrorDetails::default(),
    }
}

fn stream_error(error: &WireError) -> ProviderError {
    if error.code == 429 || error.status == "RESOURCE_EXHAUSTED" {
        return ProviderError::RateLimited {
            provider: NAME,
            retry_after_ms: error.retry_after_ms(),
            message: error.text(),
        };
    }
    ProviderError::Upstream {
        provider: NAME,
        status: if (400..600).contains(&error.code) {
            error.code
        } else {
            500
        },
        message: error.text(),
    }
}

fn finish_reason(reason: &str) -> Result<FinishReason, ProviderError> {
    match reason {
        "MAX_TOKENS" => Ok(FinishReason::Length),
        "SAFETY" | "RECITATION" | "LANGUAGE" | "BLOCKLIST" | "PROHIBITED_CONTENT" | "SPII"
        | "IMAGE_SAFETY" => Err(ProviderError::Filtered {
            provider: NAME,
            reason: format!("finishReason {reason}"),
        }),
        // STOP, and the tool-call reasons the gateway never asks for.
        _ => Ok(FinishReason::Stop),
    }
}

impl GeminiProvider {
    fn url(&self, model: &str) -> String {
        let model = model.strip_prefix("models/").unwrap_or(model);
        format!(
            "{}/v1beta/models/{model}:streamGenerateContent?alt=sse",
            self.base_url
        )
    }

    fn body<'a>(&self, request: &'a ProviderRequest) -> GenerateRequest<'a> {
        // Gemini takes the system prompt apart from the turns; system turns join it.
        let system: Vec<TextPart> = request
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
            .map(|text| TextPart { text })
            .collect();
        let contents = request
            .messages
            .iter()
            .filter_map(|m| {
                let role = match m.role {
                    Role::User => "user",
                    Role::Assistant => "model",
                    Role::System => return None,
                };
                Some(Content {
                    role: Some(role),
                    parts: vec![TextPart { text: &m.content }],
                })
            })
            .collect();
        GenerateRequest {
            contents,
            system_instruction: (!system.is_empty()).then_some(Content {
                role: None,
                parts: system,
            }),
            generation_config: GenerationConfig {
                temperature: request.temperature,
                max_output_tokens: request.max_tokens,
                thinking_config: self.settings.include_thoughts.then_some(ThinkingConfig {
                    include_thoughts: true,
                }),
            },
        }
    }

    async fn answer(
        &self,
        request: ProviderRequest,
        sink: ChunkSink,
    ) -> Result<Finish, ProviderError> {
        let http = self
            .client
            .post(self.url(&request.upstream_model))
            .header("x-goog-api-key", self.settings.api_key.expose())
            .json(&self.body(&request));
        let mut events =
            http::open_events(NAME, self.settings.timeouts(), http, read_error).await?;
        let mut usage = UsageMetadata::default();
        let mut reason = None;
        while let Some(event) = events.next(&sink).await? {
            let response: GenerateResponse = events.parse(&event)?;
            if let Some(error) = response.error {
                return Err(stream_error(&error));
            }
            if let Some(blocked) = response.prompt_feedback.and_then(|f| f.block_reason) {
                return Err(ProviderError::Filtered {
                    provider: NAME,
                    reason: format!("prompt blocked: {blocked}"),
                });
            }
            if let Some(u) = response.usage_metadata {
                usage = u;
            }
            // The gateway asks for one candidate, so the first is the answer.
            if let Some(candidate) = response.candidates.into_iter().next() {
                for part in candidate.content.map(|c| c.parts).unwrap_or_default() {
                    let kind = if part.thought {
                        ChunkKind::Reasoning
                    } else {
                        ChunkKind::Text
                    };
                    events.emit(&sink, kind, part.text).await?;
                }
                if let Some(r) = candidate.finish_reason {
                    reason = Some(finish_reason(&r)?);
                }
            }
        }
        // Gemini has no end-of-stream event: a finishReason is how a whole answer ends.
        let Some(reason) = reason else {
            return Err(ProviderError::Protocol {
                provider: NAME,
                message: "the stream ended without a finishReason".into(),
            });
        };
        let completion = usage.candidates_token_count + usage.thoughts_token_count;
        Ok(Finish {
            reason,
            usage: Usage {
                prompt_tokens: usage.prompt_token_count,
                completion_tokens: completion,
                total_tokens: usage
                    .total_token_count
                    .max(usage.prompt_token_count + completion),
            },
        })
    }
}

http::http_provider!(GeminiProvider, GeminiSettings);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_info_gives_the_delay() {
        let body = serde_json::json!({"error": {"code": 429, "message": "slow down",
            "status": "RESOURCE_EXHAUSTED",
            "details": [{"@type": RETRY_INFO, "retryDelay": "2s"}]}});
        let details = read_error(&body);
        assert_eq!(details.retry_after_ms, Some(2000));
        assert_eq!(
            details.message.as_deref(),
            Some("RESOURCE_EXHAUSTED: slow down")
        );
    }

    #[test]
    fn model_prefix_is_optional() {
        let p = GeminiProvider::new(GeminiSettings::new("http://h/", ApiKey::new("k"))).unwrap();
        assert_eq!(
            p.url("models/gemini-2.5-flash"),
            "http://h/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse"
        );
    }
}
