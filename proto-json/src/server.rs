//! Server → client messages.

use std::borrow::Cow;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Every message the server sends, as documented in `docs/PROTOCOL.md`.
///
/// Borrowed fields let the session encode a chunk without copying its text.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerMessage<'a> {
    /// One streamed piece of an answer (the seed's frame, plus `id` and `payload.seq`).
    Chat {
        id: Cow<'a, str>,
        payload: ChunkPayload<'a>,
    },
    /// The last frame of every request, whatever ended it.
    Done {
        id: Cow<'a, str>,
        payload: DonePayload<'a>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        metadata: Option<DoneMetadata>,
    },
    /// Something went wrong; `id` names the request when the error belongs to one.
    Error {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<Cow<'a, str>>,
        payload: ErrorPayload<'a>,
    },
    /// Answer to a client `ping`; the payload is always `null` (the seed's shape).
    Pong {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<Cow<'a, str>>,
        payload: (),
    },
    /// Session-level news: the welcome after the handshake, or a drain notice.
    System { payload: SystemPayload<'a> },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ChunkPayload<'a> {
    pub content: Cow<'a, str>,
    #[serde(rename = "type")]
    pub kind: ChunkKind,
    pub model: Cow<'a, str>,
    /// 0 for the first chunk of a request, then +1 for each chunk.
    pub seq: u64,
    /// The answer's id for `resume`: on its first frame (`seq` 0) only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream_id: Option<Cow<'a, str>>,
    /// Which tool call a `tool_call` chunk belongs to; its `content` is the next piece of that
    /// call's arguments (JSON text, to be joined in order).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_call: Option<ToolCallPiece<'a>>,
}

/// The call a `tool_call` chunk continues. Its first chunk carries `id` and `name`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ToolCallPiece<'a> {
    /// Which call of this answer, from 0.
    pub index: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<Cow<'a, str>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<Cow<'a, str>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ChunkKind {
    Reasoning,
    Text,
    /// A piece of a tool call (see `tool_call`).
    ToolCall,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct DonePayload<'a> {
    pub finish_reason: FinishReason,
    pub model: Cow<'a, str>,
    pub usage: Usage,
    /// How many `chat` frames this request produced.
    pub chunks: u64,
    /// The stored conversation this exchange was added to, when the request named one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conversation_id: Option<Cow<'a, str>>,
    /// The answer's id for `resume`, when it had one (every answer that reached a provider).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream_id: Option<Cow<'a, str>>,
}

/// What the gateway itself added to this request: from a provider producing a chunk to the
/// chunk's frame being queued for the socket, in microseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct DoneMetadata {
    pub gateway_first_chunk_us: Option<u64>,
    pub gateway_mean_chunk_us: u64,
    pub gateway_max_chunk_us: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// The model finished its answer.
    Stop,
    /// The answer hit `max_tokens` or the provider's length limit.
    Length,
    /// The model stopped to have its tool calls run; answer them with `tool` messages.
    ToolCalls,
    /// The provider stopped the answer for its content (a safety filter, a refusal).
    ContentFilter,
    /// The client sent `cancel`.
    Cancelled,
    /// An `error` frame for this request came just before.
    Error,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
pub struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub total_tokens: u64,
    /// The upstream reported no usage (or only part of it): the gateway counted the tokens
    /// itself. Absent when the figures are the upstream's.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub estimated: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ErrorPayload<'a> {
    /// The seed's numeric code (HTTP-like: 400, 404, 429, 500, ...).
    pub code: u16,
    /// Stable machine-readable reason; match on this, not on `message`.
    pub reason: ErrorReason,
    pub message: Cow<'a, str>,
}

/// Stable error reasons. New ones may be added; existing ones never change meaning.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorReason {
    InvalidJson,
    InvalidPayload,
    UnknownType,
    BinaryNotSupported,
    UnknownModel,
    TooManyRequests,
    DuplicateRequestId,
    UnknownRequest,
    UnknownConversation,
    RateLimited,
    ProviderError,
    ProviderTimeout,
    ProviderUnavailable,
    ShuttingDown,
    StorageUnavailable,
    /// `resume` named a stream that is unknown, expired, too large to keep, or not the user's.
    ResumeUnavailable,
    /// A connection opened without a credential did not send a valid `auth` message first.
    Unauthorized,
    /// The credential is valid but its user may not connect (disabled).
    Forbidden,
    Internal,
}

impl ErrorReason {
    /// The numeric code that goes with this reason.
    pub fn status_code(self) -> u16 {
        use ErrorReason::*;
        match self {
            InvalidJson | InvalidPayload => 400,
            Unauthorized => 401,
            Forbidden => 403,
            UnknownType | UnknownModel | UnknownRequest | UnknownConversation
            | ResumeUnavailable => 404,
            DuplicateRequestId => 409,
            BinaryNotSupported => 415,
            TooManyRequests | RateLimited => 429,
            Internal => 500,
            ProviderError => 502,
            ProviderUnavailable | ShuttingDown | StorageUnavailable => 503,
            ProviderTimeout => 504,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct SystemPayload<'a> {
    pub event: SystemEvent,
    pub session_id: Cow<'a, str>,
    pub node_id: Cow<'a, str>,
    pub protocol_version: u32,
    pub limits: SessionLimits,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum SystemEvent {
    /// First frame after the handshake.
    Welcome,
    /// The node is shutting down: running requests finish, new ones are refused, then the
    /// connection closes with code 1012 and the client should reconnect.
    Draining,
}

/// The limits that apply to this session, so a client can stay within them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct SessionLimits {
    pub max_frame_bytes: u64,
    pub max_concurrent_requests: u32,
    pub heartbeat_interval_ms: u64,
    pub idle_timeout_ms: u64,
}

impl ServerMessage<'_> {
    /// Encodes the message as the text of one WebSocket frame.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("server messages always serialize")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_keeps_the_seed_shape() {
        let m = ServerMessage::Chat {
            id: "r1".into(),
            payload: ChunkPayload {
                content: "H".into(),
                kind: ChunkKind::Reasoning,
                model: "mock".into(),
                seq: 0,
                stream_id: None,
                tool_call: None,
            },
        };
        assert_eq!(
            m.to_json(),
            r#"{"type":"chat","id":"r1","payload":{"content":"H","type":"reasoning","model":"mock","seq":0}}"#
        );
    }

    #[test]
    fn pong_payload_is_null() {
        assert_eq!(
            ServerMessage::Pong {
                id: None,
                payload: ()
            }
            .to_json(),
            r#"{"type":"pong","payload":null}"#
        );
    }

    #[test]
    fn error_keeps_numeric_code_and_adds_reason() {
        let m = ServerMessage::Error {
            id: None,
            payload: ErrorPayload {
                code: ErrorReason::InvalidJson.status_code(),
                reason: ErrorReason::InvalidJson,
                message: "Invalid JSON format".into(),
            },
        };
        assert_eq!(
            m.to_json(),
            r#"{"type":"error","payload":{"code":400,"reason":"invalid_json","message":"Invalid JSON format"}}"#
        );
        let back: ServerMessage = serde_json::from_str(&m.to_json()).unwrap();
        assert_eq!(back, m);
    }
}
