//! The provider-neutral chat model: what every front builds and every provider translates.
//!
//! It carries what real applications send (content parts with images, assistant tool calls,
//! tool results, tools with JSON Schema parameters, structured output, sampling parameters)
//! so that nothing a client asked for is dropped on the way. Fronts parse their own wire
//! format into it; providers write it in their upstream's format, or refuse what their
//! upstream cannot take ([`super::ProviderError::Unsupported`]), never dropping it quietly.

use ai_gateway_proto::{
    ChatMessage, ChatPayload, ContentPart, MessageContent, MessageRole, ResponseFormatSpec,
    ToolChoiceMode, ToolChoiceSpec,
};
use serde_json::{json, Map, Value};

/// Who wrote a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    System,
    User,
    Assistant,
    /// The result of a tool call, answering the assistant's call `tool_call_id`.
    Tool,
}

impl From<ai_gateway_proto::Role> for Role {
    fn from(role: ai_gateway_proto::Role) -> Self {
        match role {
            ai_gateway_proto::Role::System => Role::System,
            ai_gateway_proto::Role::User => Role::User,
            ai_gateway_proto::Role::Assistant => Role::Assistant,
        }
    }
}

/// Where an image comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageSource {
    /// An `http(s)` URL the upstream fetches.
    Url(String),
    /// The image itself, base64-encoded (from a `data:` URL or a base64 block).
    Base64 { media_type: String, data: String },
}

impl ImageSource {
    /// Reads a URL, turning a `data:<type>;base64,<data>` URL into its parts.
    pub fn from_url(url: &str) -> ImageSource {
        if let Some(rest) = url.strip_prefix("data:") {
            if let Some((meta, data)) = rest.split_once(',') {
                if let Some(media_type) = meta.strip_suffix(";base64") {
                    return ImageSource::Base64 {
                        media_type: media_type.to_owned(),
                        data: data.to_owned(),
                    };
                }
            }
        }
        ImageSource::Url(url.to_owned())
    }

    /// As a URL: a `data:` URL for base64 images.
    pub fn to_url(&self) -> String {
        match self {
            ImageSource::Url(u) => u.clone(),
            ImageSource::Base64 { media_type, data } => format!("data:{media_type};base64,{data}"),
        }
    }
}

/// One piece of a message's content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Part {
    Text(String),
    Image {
        source: ImageSource,
        /// OpenAI's `detail` (`low`, `high`, `auto`).
        detail: Option<String>,
    },
    /// An assistant's earlier reasoning, sealed by its provider (Anthropic's signed `thinking`
    /// block), which that provider wants back unchanged in a tool round trip. Only Anthropic
    /// takes it; other APIs have no place for it and leave it out.
    Thinking {
        text: String,
        signature: String,
    },
    /// Reasoning the provider sent encrypted (Anthropic's `redacted_thinking`), kept the same way.
    RedactedThinking {
        data: String,
    },
}

impl Part {
    /// An assistant's sealed reasoning, which only its own provider reads back.
    pub fn is_thinking(&self) -> bool {
        matches!(self, Part::Thinking { .. } | Part::RedactedThinking { .. })
    }
}

/// A call of a tool the assistant made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolCall {
    pub id: String,
    pub name: String,
    /// The arguments, a JSON object as text (as the model wrote it).
    pub arguments: String,
}

/// One message of a conversation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub role: Role,
    pub content: Vec<Part>,
    /// The assistant's tool calls (role `Assistant` only).
    pub tool_calls: Vec<ToolCall>,
    /// The call a `Tool` message answers.
    pub tool_call_id: Option<String>,
    /// An optional participant name (OpenAI's `name`).
    pub name: Option<String>,
}

impl Message {
    /// A message of plain text.
    pub fn text(role: Role, text: impl Into<String>) -> Message {
        Message {
            role,
            content: vec![Part::Text(text.into())],
            tool_calls: Vec::new(),
            tool_call_id: None,
            name: None,
        }
    }

    /// Its text parts, joined.
    pub fn text_content(&self) -> String {
        self.content
            .iter()
            .filter_map(|p| match p {
                Part::Text(t) => Some(t.as_str()),
                _ => None,
            })
            .collect()
    }

    /// Whether any part is an image.
    pub fn has_images(&self) -> bool {
        self.content.iter().any(|p| matches!(p, Part::Image { .. }))
    }
}

impl From<ChatMessage> for Message {
    fn from(m: ChatMessage) -> Self {
        let role = match m.role {
            MessageRole::System => Role::System,
            MessageRole::User => Role::User,
            MessageRole::Assistant => Role::Assistant,
            MessageRole::Tool => Role::Tool,
        };
        let content = match m.content {
            MessageContent::Text(t) if t.is_empty() => Vec::new(),
            MessageContent::Text(t) => vec![Part::Text(t)],
            MessageContent::Parts(parts) => parts
                .into_iter()
                .map(|p| match p {
                    ContentPart::Text { text } => Part::Text(text),
                    ContentPart::ImageUrl { image_url } => Part::Image {
                        source: ImageSource::from_url(&image_url.url),
                        detail: image_url.detail,
                    },
                })
                .collect(),
        };
        Message {
            role,
            content,
            tool_calls: m
                .tool_calls
                .into_iter()
                .map(|c| ToolCall {
                    id: c.id,
                    name: c.name,
                    arguments: c.arguments,
                })
                .collect(),
            tool_call_id: m.tool_call_id,
            name: None,
        }
    }
}

/// What a WebSocket `chat` payload asks beyond its messages, in the neutral model: the
/// sampling parameters, tools and response format, written into `request`.
pub fn apply_payload_options(request: &mut super::ProviderRequest, p: &ChatPayload) {
    request.temperature = p.temperature;
    request.max_tokens = p.max_tokens;
    request.top_p = p.top_p;
    request.seed = p.seed;
    request.stop.clone_from(&p.stop);
    request.presence_penalty = p.presence_penalty;
    request.frequency_penalty = p.frequency_penalty;
    request.reasoning_effort.clone_from(&p.reasoning_effort);
    request.user.clone_from(&p.user);
    request.tools = p
        .tools
        .iter()
        .map(|t| Tool {
            name: t.name.clone(),
            description: t.description.clone(),
            parameters: t
                .parameters
                .clone()
                .unwrap_or_else(|| json!({"type": "object", "properties": {}})),
            strict: None,
        })
        .collect();
    request.tool_choice = p.tool_choice.as_ref().map(|c| match c {
        ToolChoiceSpec::Mode(ToolChoiceMode::Auto) => ToolChoice::Auto,
        ToolChoiceSpec::Mode(ToolChoiceMode::None) => ToolChoice::None,
        ToolChoiceSpec::Mode(ToolChoiceMode::Required) => ToolChoice::Required,
        ToolChoiceSpec::Tool { name } => ToolChoice::Tool(name.clone()),
    });
    request.parallel_tool_calls = p.parallel_tool_calls;
    request.response_format = p.response_format.as_ref().map(|f| match f {
        ResponseFormatSpec::Text => ResponseFormat::Text,
        ResponseFormatSpec::JsonObject => ResponseFormat::JsonObject,
        ResponseFormatSpec::JsonSchema { json_schema: s } => ResponseFormat::JsonSchema {
            name: s.name.clone(),
            description: s.description.clone(),
            schema: s.schema.clone(),
            strict: s.strict,
        },
    });
}

/// A function the model may call.
#[derive(Debug, Clone, PartialEq)]
pub struct Tool {
    pub name: String,
    pub description: Option<String>,
    /// A JSON Schema object; `{"type":"object","properties":{}}` when the client gave none.
    pub parameters: Value,
    /// OpenAI's strict schema adherence.
    pub strict: Option<bool>,
}

/// Whether and which tool the model must call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToolChoice {
    Auto,
    None,
    /// Some tool, the model picks.
    Required,
    /// This tool.
    Tool(String),
}

/// The shape the answer must have.
#[derive(Debug, Clone, PartialEq)]
pub enum ResponseFormat {
    Text,
    /// Any JSON object.
    JsonObject,
    /// JSON matching `schema`.
    JsonSchema {
        name: String,
        description: Option<String>,
        schema: Value,
        strict: Option<bool>,
    },
}

/// A piece of a streamed tool call. The first piece of a call has its `id` and `name`; the
/// arguments come as text pieces (the chunk's `text`), to be joined in order by `index`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolCallDelta {
    /// Which call of this answer (from 0), when the model makes several.
    pub index: u32,
    pub id: Option<String>,
    pub name: Option<String>,
}

/// Request fields a front did not understand, passed on to upstreams that speak the same
/// format (`"logprobs": true` reaches an OpenAI-compatible upstream unchanged).
pub type Extra = Map<String, Value>;

/// Joins streamed tool-call pieces into whole calls, ordered by index.
pub fn joined_tool_calls(deltas: &[(ToolCallDelta, String)]) -> Vec<ToolCall> {
    let mut calls: Vec<(u32, ToolCall)> = Vec::new();
    for (d, piece) in deltas {
        match calls.iter_mut().find(|(i, _)| *i == d.index) {
            Some((_, call)) => {
                if let Some(id) = &d.id {
                    call.id.clone_from(id);
                }
                if let Some(name) = &d.name {
                    call.name.push_str(name);
                }
                call.arguments.push_str(piece);
            }
            None => calls.push((
                d.index,
                ToolCall {
                    id: d.id.clone().unwrap_or_default(),
                    name: d.name.clone().unwrap_or_default(),
                    arguments: piece.clone(),
                },
            )),
        }
    }
    calls.sort_by_key(|(i, _)| *i);
    calls.into_iter().map(|(_, c)| c).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_urls_split_into_type_and_data() {
        let s = ImageSource::from_url("data:image/png;base64,iVBORw0KGgo=");
        assert_eq!(
            s,
            ImageSource::Base64 {
                media_type: "image/png".into(),
                data: "iVBORw0KGgo=".into()
            }
        );
        assert_eq!(s.to_url(), "data:image/png;base64,iVBORw0KGgo=");
        assert_eq!(
            ImageSource::from_url("https://x/y.png"),
            ImageSource::Url("https://x/y.png".into())
        );
    }

    #[test]
    fn tool_call_pieces_join_by_index() {
        let d = |index, id: Option<&str>, name: Option<&str>| ToolCallDelta {
            index,
            id: id.map(Into::into),
            name: name.map(Into::into),
        };
        let calls = joined_tool_calls(&[
            (d(0, Some("a"), Some("f")), String::new()),
            (d(1, Some("b"), Some("g")), "{}".into()),
            (d(0, None, None), "{\"x\"".into()),
            (d(0, None, None), ":1}".into()),
        ]);
        assert_eq!(calls.len(), 2);
        assert_eq!(calls[0].arguments, "{\"x\":1}");
        assert_eq!(calls[1].name, "g");
    }
}
