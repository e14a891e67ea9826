//! The gateway's JSON wire protocol.
//!
//! Every WebSocket text frame carries one envelope `{"type", "id"?, "payload", "metadata"?}`.
//! The Go seed's messages (`chat`, `ping`, `pong`, `error`) keep their exact shape; everything
//! added (`id`, `seq`, `done`, `cancel`, `system`, the error `reason`) is an extra field or a new
//! type, so the seed's clients keep working.
//!
//! Decoding is two-step ([`decode_client_frame`]): the envelope first, then the payload for its
//! type, so a client learns whether its JSON, its type or its payload was wrong.

mod client;
mod server;

pub use client::{
    decode_client_frame, AuthPayload, CancelPayload, ChatMessage, ChatPayload, ClientFrame,
    ClientMessage, ContentPart, DecodeError, ImageUrl, JsonSchemaSpec, MessageContent, MessageRole,
    ResponseFormatSpec, ResumePayload, Role, ToolCallSpec, ToolChoiceMode, ToolChoiceSpec,
    ToolSpec, MAX_REQUEST_ID_BYTES,
};
pub use server::{
    ChunkKind, ChunkPayload, DoneMetadata, DonePayload, ErrorPayload, ErrorReason, FinishReason,
    ServerMessage, SessionLimits, SystemEvent, SystemPayload, ToolCallPiece, Usage,
};

/// Protocol revision announced in the `system` welcome frame.
pub const PROTOCOL_VERSION: u32 = 1;

/// JSON Schema of every client → server message, generated from the Rust types.
pub fn client_schema() -> serde_json::Value {
    serde_json::to_value(schemars::schema_for!(ClientMessage)).expect("schema serializes")
}

/// JSON Schema of every server → client message, generated from the Rust types.
pub fn server_schema() -> serde_json::Value {
    serde_json::to_value(schemars::schema_for!(ServerMessage<'static>)).expect("schema serializes")
}
