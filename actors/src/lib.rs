//! The gateway's actors: one [`SessionActor`] per WebSocket connection, the [`Registry`] (a
//! [`SessionRegistry`] shard per worker thread) that knows every live session and forwards chat
//! requests, and the provider streams that answer them. `docs/ARCHITECTURE.md` shows how they fit.

pub mod answer;
mod flow;
pub mod frames;
pub mod hooks;
pub mod metrics;
mod outbox;
pub mod provider;
pub mod registry;
pub mod relay;
pub mod request;
pub mod session;
pub mod trace;
pub mod unix_time;

pub use answer::{AnswerHub, ResumeSettings};
pub use flow::FlowControl;
pub use frames::close_code;
pub use hooks::{
    Admission, NoDirectory, Refusal, RequestHooks, RequestOutcome, RequestStart, SessionDirectory,
};
pub use metrics::{Front, Metrics};
pub use outbox::{Outbound, OutboxBody};
pub use provider::{
    anthropic::{AnthropicProvider, AnthropicSettings},
    gemini::{GeminiProvider, GeminiSettings},
    mock::{MockProvider, MockSettings},
    openai::{OpenAiProvider, OpenAiSettings},
    ApiKey, Chunk, ChunkSink, InvalidSettings, Provider, ProviderError, ProviderRequest, Router,
    StreamEvent, StreamHandle, Timeouts,
};
pub use registry::{
    CloseSession, DrainSession, KillSession, Registry, Revoked, SessionInfo, SessionRegistry,
};
pub use request::{ChatRequest, Engine};
pub use session::{ConnectionAbort, SessionActor, SessionConfig, SessionEnv};
