//! Gemini API (`POST {base_url}/v1beta/models/{model}:streamGenerateContent?alt=sse`).

use std::sync::Arc;

use ai_gateway_proto::{ChunkKind, FinishReason, Usage};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::{
    http::{self, ErrorDetails, InvalidSettings},
    ApiKey, ChunkSink, Finish, ImageSource, Message, Part, ProviderError, ProviderRequest,
    ResponseFormat, Role, ToolCallDelta, ToolChoice,
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
struct GenerateRequest {
    contents: Vec<Content>,
    #[serde(skip_serializing_if = "Option::is_none")]
    system_instruction: Option<Content>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tools: Vec<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_config: Option<Value>,
    generation_config: GenerationConfig,
}

#[derive(Serialize)]
struct Content {
    #[serde(skip_serializing_if = "Option::is_none")]
    role: Option<&'static str>,
    /// `text`, `inlineData`, `functionCall`, `functionResponse` parts.
    parts: Vec<Value>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct GenerationConfig {
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    top_p: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    seed: Option<i64>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    stop_sequences: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_output_tokens: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    presence_penalty: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    frequency_penalty: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    response_mime_type: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    response_schema: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    thinking_config: Option<ThinkingConfig>,
}

/// What this API takes of [`super::PARAMS`]; the rest is refused by name.
pub const SUPPORTED: &[&str] = &[
    "top_p",
    "seed",
    "stop",
    "presence_penalty",
    "frequency_penalty",
    "tools",
    "tool_choice",
    "response_format",
    "image_url",
    "tool_messages",
];

/// Joins a call id and the thought signature Gemini attached to the call, so that the
/// signature (which Gemini requires back with the call) travels through clients inside the id.
const SIGNATURE_MARK: &str = "~sig~";

/// A JSON Schema as Gemini's `Schema` (an OpenAPI subset) takes it: the keywords it does not
/// know (`additionalProperties`, `$schema`, `strict`, ...) are left out, at every depth, and
/// types are written as its `Type` enum (`OBJECT`, `STRING`, ...); a `["string", "null"]` type
/// becomes `STRING` with `nullable`.
pub fn gemini_schema(schema: &Value) -> Value {
    const KEEP: [&str; 15] = [
        "type",
        "format",
        "description",
        "nullable",
        "enum",
        "properties",
        "required",
        "items",
        "minItems",
        "maxItems",
        "minimum",
        "maximum",
        "anyOf",
        "propertyOrdering",
        "title",
    ];
    match schema {
        Value::Object(o) => Value::Object(
            o.iter()
                .filter(|(k, _)| KEEP.contains(&k.as_str()))
                .map(|(k, v)| {
                    let v = match k.as_str() {
                        "properties" => Value::Object(
                            v.as_object()
                                .map(|p| {
                                    p.iter()
                                        .map(|(name, s)| (name.clone(), gemini_schema(s)))
                                        .collect()
                                })
                                .unwrap_or_default(),
                        ),
                        "items" => gemini_schema(v),
                        "anyOf" => Value::Array(
                            v.as_array()
                                .map(|a| a.iter().map(gemini_schema).collect())
                                .unwrap_or_default(),
                        ),
                        "type" => match v {
                            Value::String(t) => json!(t.to_ascii_uppercase()),
                            Value::Array(types) => json!(types
                                .iter()
                                .filter_map(Value::as_str)
                                .find(|t| *t != "null")
                                .unwrap_or("null")
                                .to_ascii_uppercase()),
                            other => other.clone(),
                        },
                        _ => v.clone(),
                    };
                    (k.clone(), v)
                })
                .chain(
                    o.get("type")
                        .and_then(Value::as_array)
                        .filter(|t| t.iter().any(|t| t == "null"))
                        .map(|_| ("nullable".to_owned(), json!(true))),
                )
                .collect(),
        ),
        other => other.clone(),
    }
}

/// The turns in Gemini's form: roles `user` and `model`; images as `inlineData` (Gemini fetches
/// no URLs, so an image URL is refused); an assistant's calls as `functionCall` parts (with the
/// thought signature carried in the id); tool results as `functionResponse` parts of a user
/// turn, named after the call they answer; consecutive turns of one role merged.
fn contents(messages: &[Message]) -> Result<Vec<Content>, ProviderError> {
    let mut out: Vec<Content> = Vec::new();
    for (i, m) in messages.iter().enumerate() {
        let mut parts = Vec::new();
        for (j, p) in m.content.iter().enumerate() {
            match p {
                Part::Text(t) if t.is_empty() => {}
                Part::Text(t) => parts.push(json!({"text": t})),
                // Another provider's sealed reasoning has no place here.
                Part::Thinking { .. } | Part::RedactedThinking { .. } => {}
                Part::Image {
                    source: ImageSource::Base64 { media_type, data },
                    ..
                } => parts.push(json!({"inlineData": {"mimeType": media_type, "data": data}})),
                Part::Image { .. } => {
                    return Err(ProviderError::Unsupported {
                        provider: NAME,
                        param: format!("messages[{i}].content[{j}]"),
                        message: "Gemini takes images as base64 data: URLs only".into(),
                    })
                }
            }
        }
        let role = match m.role {
            Role::System => continue,
            Role::User => "user",
            Role::Assistant => {
                for (j, call) in m.tool_calls.iter().enumerate() {
                    let args: Value = if call.arguments.trim().is_empty() {
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
                    let mut part = json!({"functionCall": {"name": call.name, "args": args}});
                    if let Some((_, signature)) = call.id.split_once(SIGNATURE_MARK) {
                        part["thoughtSignature"] = json!(signature);
                    }
                    parts.push(part);
                }
                "model"
            }
            Role::Tool => {
                let id = m.tool_call_id.as_deref().unwrap_or("");
                let name = messages[..i]
                    .iter()
                    .flat_map(|m| &m.tool_calls)
                    .find(|c| c.id == id)
                    .map(|c| c.name.clone())
                    .ok_or_else(|| ProviderError::Unsupported {
                        provider: NAME,
                        param: format!("messages[{i}].tool_call_id"),
                        message: format!(
                            "Gemini needs the function's name: no earlier tool call has id {id:?}"
                        ),
                    })?;
                let text = m.text_content();
                // The response must be an object: a JSON object result as it is, else wrapped.
                let response = match serde_json::from_str::<Value>(&text) {
                    Ok(v @ Value::Object(_)) => v,
                    _ => json!({"result": text}),
                };
                parts = vec![json!({"functionResponse": {"name": name, "response": response}})];
                "user"
            }
        };
        match out.last_mut() {
            Some(last) if last.role == Some(role) => last.parts.extend(parts),
            _ => out.push(Content {
                role: Some(role),
                parts,
            }),
        }
    }
    Ok(out)
}

fn tool_config(choice: &ToolChoice) -> Value {
    let config = match choice {
        ToolChoice::Auto => json!({"mode": "AUTO"}),
        ToolChoice::None => json!({"mode": "NONE"}),
        ToolChoice::Required => json!({"mode": "ANY"}),
        ToolChoice::Tool(name) => json!({"mode": "ANY", "allowedFunctionNames": [name]}),
    };
    json!({"functionCallingConfig": config})
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
    parts: Vec<WirePart>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WirePart {
    text: Option<String>,
    #[serde(default)]
    thought: bool,
    function_call: Option<FunctionCall>,
    thought_signature: Option<String>,
}

#[derive(Deserialize)]
struct FunctionCall {
    /// Newer models give calls an id; older ones do not.
    id: Option<String>,
    name: String,
    #[serde(default)]
    args: Value,
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
        | "IMAGE_SAFETY" => Ok(FinishReason::ContentFilter),
        // STOP (also after function calls: the caller tells), and anything new.
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

    fn body(&self, request: &ProviderRequest) -> Result<GenerateRequest, ProviderError> {
        // Gemini takes the system prompt apart from the turns; system turns join it.
        let system: Vec<Value> = request
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
            .map(|text| json!({"text": text}))
            .collect();
        let (response_mime_type, response_schema) = match &request.response_format {
            None | Some(ResponseFormat::Text) => (None, None),
            Some(ResponseFormat::JsonObject) => (Some("application/json"), None),
            Some(ResponseFormat::JsonSchema { schema, .. }) => {
                (Some("application/json"), Some(gemini_schema(schema)))
            }
        };
        let declarations: Vec<Value> = request
            .tools
            .iter()
            .map(|t| {
                let mut d = json!({"name": t.name, "parameters": gemini_schema(&t.parameters)});
                if let Some(desc) = &t.description {
                    d["description"] = json!(desc);
                }
                d
            })
            .collect();
        Ok(GenerateRequest {
            contents: contents(&request.messages)?,
            system_instruction: (!system.is_empty()).then_some(Content {
                role: None,
                parts: system,
            }),
            tools: if declarations.is_empty() {
                Vec::new()
            } else {
                vec![json!({"functionDeclarations": declarations})]
            },
            tool_config: request.tool_choice.as_ref().map(tool_config),
            generation_config: GenerationConfig {
                temperature: request.temperature,
                top_p: request.top_p,
                seed: request.seed,
                stop_sequences: request.stop.clone(),
                max_output_tokens: request.max_tokens,
                presence_penalty: request.presence_penalty,
                frequency_penalty: request.frequency_penalty,
                response_mime_type,
                response_schema,
                thinking_config: self.settings.include_thoughts.then_some(ThinkingConfig {
                    include_thoughts: true,
                }),
            },
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
            .post(self.url(&request.upstream_model))
            .header("x-goog-api-key", self.settings.api_key.expose())
            .json(&body);
        let mut events =
            http::open_events(NAME, self.settings.timeouts(), http, read_error).await?;
        let mut usage = UsageMetadata::default();
        let mut reason = None;
        let mut calls = 0u32;
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
                    if let Some(call) = part.function_call {
                        // A whole call comes in one part: its id (or one made up), its name,
                        // its arguments in one piece.
                        let mut id = call.id.unwrap_or_else(|| format!("call_{calls}"));
                        if let Some(signature) = part.thought_signature {
                            id = format!("{id}{SIGNATURE_MARK}{signature}");
                        }
                        let delta = ToolCallDelta {
                            index: calls,
                            id: Some(id),
                            name: Some(call.name),
                        };
                        let args = if call.args.is_null() {
                            "{}".to_owned()
                        } else {
                            call.args.to_string()
                        };
                        events.emit_tool_call(&sink, delta, args).await?;
                        calls += 1;
                        continue;
                    }
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
        let Some(mut reason) = reason else {
            return Err(ProviderError::Protocol {
                provider: NAME,
                message: "the stream ended without a finishReason".into(),
            });
        };
        // Gemini says STOP after function calls; its callers need to know it wants them run.
        if calls > 0 && reason == FinishReason::Stop {
            reason = FinishReason::ToolCalls;
        }
        let completion = usage.candidates_token_count + usage.thoughts_token_count;
        Ok(Finish {
            reason,
            usage: Usage {
                prompt_tokens: usage.prompt_token_count,
                completion_tokens: completion,
                total_tokens: usage
                    .total_token_count
                    .max(usage.prompt_token_count + completion),
                estimated: false,
            },
        })
    }
}

http::http_provider!(GeminiProvider, GeminiSettings, supported: SUPPORTED);

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
