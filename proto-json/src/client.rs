//! Client → server messages.

use std::borrow::Cow;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::ErrorReason;

/// Longest request id a client may choose.
pub const MAX_REQUEST_ID_BYTES: usize = 128;

/// Every message a client may send, as documented in `docs/PROTOCOL.md`.
// `chat` is nearly every frame; boxing its payload would add an allocation to each.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientMessage {
    /// Starts a streamed answer. `id` is echoed on every frame of this request; the server picks
    /// one when it is absent.
    Chat {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<String>,
        payload: ChatPayload,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        metadata: Option<serde_json::Map<String, serde_json::Value>>,
    },
    /// Cancels the running request named by `id` (or `payload.id`).
    Cancel {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        payload: Option<CancelPayload>,
    },
    /// Application-level ping; answered by `pong`.
    Ping {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<String>,
    },
    /// Picks up an answer by its `stream_id` (from its first `chat` frame or its `done`), on
    /// this connection or a new one: its `chat` frames after `after_seq` come again with their
    /// own `seq`, under this `id`, then the rest live, then `done`.
    Resume {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<String>,
        payload: ResumePayload,
    },
    /// The credential, as the first message of a connection opened without one (so that it
    /// stays out of URLs and proxies' access logs). Nothing else is read before it.
    Auth { payload: AuthPayload },
}

/// The payload of `auth`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct AuthPayload {
    /// A session token (from `POST /login`) or an API key (`agw_…`).
    pub token: String,
}

/// The payload of `resume`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ResumePayload {
    pub stream_id: String,
    /// The last `seq` the client has; absent: from the start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after_seq: Option<u64>,
}

/// The payload of a `chat` request. `content` alone is the seed's shape; everything else is
/// optional. A request needs `content` or `messages`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ChatPayload {
    /// The user's new message, sent after `messages`.
    #[serde(default)]
    pub content: String,
    /// Model name from `GET /v1/models`; empty or absent means `mock`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// System prompt placed before the history.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system: Option<String>,
    /// Earlier turns of the conversation, oldest first (or the whole conversation, without
    /// `content`): text or content parts, assistant tool calls, tool results.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub messages: Vec<ChatMessage>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<i64>,
    /// Stop sequences.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stop: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub presence_penalty: Option<f32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frequency_penalty: Option<f32>,
    /// `low`, `medium` or `high`, for models that reason.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reasoning_effort: Option<String>,
    /// The end user, for the upstream's abuse monitoring.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Functions the model may call; its calls come as `chat` frames of type `tool_call`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tools: Vec<ToolSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_choice: Option<ToolChoiceSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parallel_tool_calls: Option<bool>,
    /// The shape of the answer: `{"type":"json_object"}` or
    /// `{"type":"json_schema","json_schema":{"name","schema","strict"?}}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_format: Option<ResponseFormatSpec>,
    /// Continue (or start) this stored conversation: its history is sent to the model before
    /// `content`, and both the question and the answer are stored in it. A UUID.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conversation_id: Option<String>,
}

/// One earlier turn of a conversation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ChatMessage {
    pub role: MessageRole,
    /// Text, or content parts (text and images).
    #[serde(default)]
    pub content: MessageContent,
    /// The assistant's tool calls.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<ToolCallSpec>,
    /// The call a `tool` message answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
}

/// Who wrote a message of `messages`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum MessageRole {
    System,
    User,
    Assistant,
    /// The result of a tool call (`tool_call_id`).
    Tool,
}

/// A message's content: text (the seed's shape) or parts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum MessageContent {
    Text(String),
    Parts(Vec<ContentPart>),
}

impl Default for MessageContent {
    fn default() -> Self {
        MessageContent::Text(String::new())
    }
}

/// One part of a message's content.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ContentPart {
    Text {
        text: String,
    },
    /// An image by `http(s)` URL or `data:<type>;base64,<data>` URL.
    ImageUrl {
        image_url: ImageUrl,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ImageUrl {
    pub url: String,
    /// `low`, `high` or `auto` (OpenAI's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// A tool call the assistant made, as an earlier turn gives it back.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ToolCallSpec {
    pub id: String,
    pub name: String,
    /// The arguments as JSON text.
    #[serde(default)]
    pub arguments: String,
}

/// A function the model may call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ToolSpec {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// A JSON Schema object for the arguments.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parameters: Option<serde_json::Value>,
}

/// `"auto"`, `"none"`, `"required"`, or `{"name": "..."}` for one tool.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum ToolChoiceSpec {
    Mode(ToolChoiceMode),
    Tool { name: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ToolChoiceMode {
    Auto,
    None,
    Required,
}

/// The shape the answer must have (OpenAI's `response_format`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ResponseFormatSpec {
    Text,
    JsonObject,
    JsonSchema { json_schema: JsonSchemaSpec },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct JsonSchemaSpec {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    pub schema: serde_json::Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strict: Option<bool>,
}

/// A stored conversation's roles (the history kept with `conversation_id`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[cfg_attr(feature = "utoipa", schema(as = MessageRole))]
#[serde(rename_all = "snake_case")]
pub enum Role {
    System,
    User,
    Assistant,
}

/// Optional payload of `cancel`, for clients that prefer the id inside the payload.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct CancelPayload {
    pub id: String,
}

/// A decoded client frame, ready for the session to act on.
// As for `ClientMessage`: the chat variant is the common one.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum ClientFrame {
    Chat {
        id: Option<String>,
        payload: ChatPayload,
        /// W3C trace context from `metadata.traceparent`, to join the client's trace.
        traceparent: Option<String>,
    },
    Cancel {
        id: String,
    },
    Ping {
        id: Option<String>,
    },
    Resume {
        id: Option<String>,
        stream_id: String,
        after_seq: Option<u64>,
    },
    Auth {
        token: String,
    },
}

/// Why a text frame could not be decoded. Each maps to one stable error reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodeError {
    /// Not JSON, or not an object with a string `type`.
    InvalidJson,
    /// A `type` this server does not know.
    UnknownType(String),
    /// The payload (or id) does not fit the type; the text says what is wrong.
    InvalidPayload(String),
}

impl DecodeError {
    /// The stable reason sent in the error frame.
    pub fn reason(&self) -> ErrorReason {
        match self {
            DecodeError::InvalidJson => ErrorReason::InvalidJson,
            DecodeError::UnknownType(_) => ErrorReason::UnknownType,
            DecodeError::InvalidPayload(_) => ErrorReason::InvalidPayload,
        }
    }

    /// The human message; the first words are the seed's, so its clients see the same text.
    pub fn message(&self) -> String {
        match self {
            DecodeError::InvalidJson => "Invalid JSON format".to_owned(),
            DecodeError::UnknownType(t) => format!("Unknown message type: {t}"),
            DecodeError::InvalidPayload(why) => format!("Invalid chat payload: {why}"),
        }
    }

    /// The seed's numeric code for this error.
    pub fn status_code(&self) -> u16 {
        self.reason().status_code()
    }
}

#[derive(Deserialize)]
struct RawEnvelope<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(default)]
    id: Option<String>,
    #[serde(default, borrow)]
    payload: Option<&'a RawValue>,
    #[serde(default, borrow)]
    metadata: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct TraceMetadata {
    #[serde(default)]
    traceparent: Option<String>,
}

/// Decodes one client text frame. Returns the request id (when readable) with any error, so the
/// error frame can name the request it refers to.
pub fn decode_client_frame(text: &str) -> Result<ClientFrame, (Option<String>, DecodeError)> {
    let env: RawEnvelope<'_> =
        serde_json::from_str(text).map_err(|_| (None, DecodeError::InvalidJson))?;
    let id = env.id;
    if let Some(bad) = id.as_deref().filter(|i| i.len() > MAX_REQUEST_ID_BYTES) {
        let why = format!("id is {} bytes, at most {MAX_REQUEST_ID_BYTES}", bad.len());
        return Err((None, DecodeError::InvalidPayload(why)));
    }
    let payload = env.payload.map(RawValue::get).filter(|p| *p != "null");
    match env.kind.as_ref() {
        "chat" => {
            let Some(raw) = payload else {
                return Err((id, DecodeError::InvalidPayload("payload is missing".into())));
            };
            match serde_json::from_str::<ChatPayload>(raw) {
                Ok(p) if p.content.is_empty() && p.messages.is_empty() => {
                    Err((id, DecodeError::InvalidPayload("content is empty".into())))
                }
                Ok(payload) => {
                    let traceparent = env
                        .metadata
                        .and_then(|m| serde_json::from_str::<TraceMetadata>(m.get()).ok())
                        .and_then(|m| m.traceparent);
                    Ok(ClientFrame::Chat {
                        id,
                        payload,
                        traceparent,
                    })
                }
                Err(e) => Err((id, DecodeError::InvalidPayload(e.to_string()))),
            }
        }
        "cancel" => {
            let from_payload = match payload {
                Some(raw) => match serde_json::from_str::<CancelPayload>(raw) {
                    Ok(p) => Some(p.id),
                    Err(e) => return Err((id, DecodeError::InvalidPayload(e.to_string()))),
                },
                None => None,
            };
            match id.or(from_payload) {
                Some(id) => Ok(ClientFrame::Cancel { id }),
                None => Err((
                    None,
                    DecodeError::InvalidPayload("cancel needs the request id".into()),
                )),
            }
        }
        "ping" => Ok(ClientFrame::Ping { id }),
        "resume" => {
            let Some(raw) = payload else {
                return Err((id, DecodeError::InvalidPayload("payload is missing".into())));
            };
            match serde_json::from_str::<ResumePayload>(raw) {
                Ok(p) => Ok(ClientFrame::Resume {
                    id,
                    stream_id: p.stream_id,
                    after_seq: p.after_seq,
                }),
                Err(e) => Err((id, DecodeError::InvalidPayload(e.to_string()))),
            }
        }
        "auth" => {
            let Some(raw) = payload else {
                return Err((id, DecodeError::InvalidPayload("payload is missing".into())));
            };
            match serde_json::from_str::<AuthPayload>(raw) {
                Ok(p) if p.token.is_empty() => {
                    Err((id, DecodeError::InvalidPayload("token is empty".into())))
                }
                Ok(p) => Ok(ClientFrame::Auth { token: p.token }),
                Err(e) => Err((id, DecodeError::InvalidPayload(e.to_string()))),
            }
        }
        other => Err((id, DecodeError::UnknownType(other.to_owned()))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resume_decodes() {
        assert_eq!(
            decode_client_frame(
                r#"{"type":"resume","id":"r2","payload":{"stream_id":"ab","after_seq":4}}"#
            ),
            Ok(ClientFrame::Resume {
                id: Some("r2".into()),
                stream_id: "ab".into(),
                after_seq: Some(4),
            })
        );
        let (id, e) =
            decode_client_frame(r#"{"type":"resume","id":"r3","payload":{}}"#).unwrap_err();
        assert_eq!(
            (id.as_deref(), e.reason()),
            (Some("r3"), ErrorReason::InvalidPayload)
        );
    }

    #[test]
    fn auth_decodes() {
        assert_eq!(
            decode_client_frame(r#"{"type":"auth","payload":{"token":"t.k.n"}}"#),
            Ok(ClientFrame::Auth {
                token: "t.k.n".into()
            })
        );
        for bad in [
            r#"{"type":"auth"}"#,
            r#"{"type":"auth","payload":{"token":""}}"#,
            r#"{"type":"auth","payload":{"token":7}}"#,
        ] {
            assert!(matches!(
                decode_client_frame(bad).unwrap_err().1,
                DecodeError::InvalidPayload(_)
            ));
        }
    }

    #[test]
    fn seed_chat_decodes() {
        let f = decode_client_frame(
            r#"{"type":"chat","payload":{"content":"Hello AI","model":"mock"}}"#,
        )
        .unwrap();
        assert_eq!(
            f,
            ClientFrame::Chat {
                id: None,
                payload: ChatPayload {
                    content: "Hello AI".into(),
                    model: Some("mock".into()),
                    ..Default::default()
                },
                traceparent: None,
            }
        );
    }

    #[test]
    fn errors_are_told_apart() {
        assert_eq!(
            decode_client_frame("{nope").unwrap_err().1,
            DecodeError::InvalidJson
        );
        assert_eq!(
            decode_client_frame(r#"{"payload":{}}"#).unwrap_err().1,
            DecodeError::InvalidJson
        );
        let (id, e) = decode_client_frame(r#"{"type":"dance","id":"a"}"#).unwrap_err();
        assert_eq!(
            (id.as_deref(), e),
            (Some("a"), DecodeError::UnknownType("dance".into()))
        );
        let (id, e) =
            decode_client_frame(r#"{"type":"chat","id":"b","payload":{"model":"x"}}"#).unwrap_err();
        assert_eq!(id.as_deref(), Some("b"));
        assert!(matches!(e, DecodeError::InvalidPayload(m) if m.contains("content")));
        assert!(matches!(
            decode_client_frame(r#"{"type":"chat"}"#).unwrap_err().1,
            DecodeError::InvalidPayload(_)
        ));
        assert!(matches!(
            decode_client_frame(r#"{"type":"cancel"}"#).unwrap_err().1,
            DecodeError::InvalidPayload(_)
        ));
    }

    #[test]
    fn cancel_takes_id_from_either_place() {
        assert_eq!(
            decode_client_frame(r#"{"type":"cancel","id":"r1"}"#).unwrap(),
            ClientFrame::Cancel { id: "r1".into() }
        );
        assert_eq!(
            decode_client_frame(r#"{"type":"cancel","payload":{"id":"r2"}}"#).unwrap(),
            ClientFrame::Cancel { id: "r2".into() }
        );
    }

    #[test]
    fn traceparent_comes_from_metadata() {
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let frame = format!(
            r#"{{"type":"chat","payload":{{"content":"x"}},"metadata":{{"traceparent":"{tp}"}}}}"#
        );
        assert!(matches!(
            decode_client_frame(&frame).unwrap(),
            ClientFrame::Chat { traceparent: Some(t), .. } if t == tp
        ));
    }

    #[test]
    fn long_ids_are_refused() {
        let frame = format!(
            r#"{{"type":"ping","id":"{}"}}"#,
            "x".repeat(MAX_REQUEST_ID_BYTES + 1)
        );
        assert!(matches!(
            decode_client_frame(&frame).unwrap_err().1,
            DecodeError::InvalidPayload(_)
        ));
    }

    #[test]
    fn messages_with_parts_and_tools_decode() {
        let f = decode_client_frame(
            r#"{"type":"chat","payload":{"model":"gpt","messages":[
                {"role":"user","content":[{"type":"text","text":"hi"},
                    {"type":"image_url","image_url":{"url":"data:image/png;base64,AA=="}}]},
                {"role":"assistant","tool_calls":[{"id":"c1","name":"f","arguments":"{}"}]},
                {"role":"tool","tool_call_id":"c1","content":"ok"}],
                "tools":[{"name":"f","parameters":{"type":"object"}}],
                "tool_choice":{"name":"f"},"seed":3,"stop":["END"],
                "response_format":{"type":"json_schema","json_schema":{"name":"x","schema":{}}}}}"#,
        )
        .unwrap();
        let ClientFrame::Chat { payload, .. } = f else {
            panic!("a chat frame")
        };
        assert_eq!(payload.messages.len(), 3);
        assert!(matches!(
            &payload.messages[0].content,
            MessageContent::Parts(p) if p.len() == 2
        ));
        assert_eq!(payload.messages[1].tool_calls[0].id, "c1");
        assert_eq!(payload.messages[2].role, MessageRole::Tool);
        assert_eq!(
            payload.tool_choice,
            Some(ToolChoiceSpec::Tool { name: "f".into() })
        );
        assert!(matches!(
            payload.response_format,
            Some(ResponseFormatSpec::JsonSchema { .. })
        ));
        // The seed's message shape still decodes.
        let f = decode_client_frame(
            r#"{"type":"chat","payload":{"content":"x","messages":[{"role":"user","content":"a"}]}}"#,
        )
        .unwrap();
        assert!(matches!(f, ClientFrame::Chat { payload, .. }
            if payload.messages[0].content == MessageContent::Text("a".into())));
    }

    #[test]
    fn client_message_round_trips_through_the_decoder() {
        let msg = ClientMessage::Chat {
            id: Some("r9".into()),
            payload: ChatPayload {
                content: "hi".into(),
                ..Default::default()
            },
            metadata: None,
        };
        let text = serde_json::to_string(&msg).unwrap();
        assert!(
            matches!(decode_client_frame(&text).unwrap(), ClientFrame::Chat { id: Some(i), .. } if i == "r9")
        );
    }
}
