//! Extension points of a chat request, named after the moment they run. The gateway binary
//! implements them with its rate limits, conversation store and usage records; the actors only
//! call them.

use std::any::Any;

use ai_gateway_proto::{ErrorReason, FinishReason, Usage};
use futures_util::future::LocalBoxFuture;

use crate::{provider::ProviderRequest, SessionInfo};

/// A request about to be admitted.
pub struct RequestStart {
    pub session: SessionInfo,
    pub request_id: String,
    pub request: ProviderRequest,
    pub conversation_id: Option<String>,
}

/// Permission to run a request. `lease` is held while the request runs and dropped when it
/// ends, however it ends (a concurrency slot releases itself in its `Drop`).
pub struct Admission {
    /// The request to send, with any stored history put in front.
    pub request: ProviderRequest,
    pub lease: Option<Box<dyn Any + Send>>,
}

/// Why a request was not admitted; it reaches the client as an `error` frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Refusal {
    pub reason: ErrorReason,
    pub message: String,
}

impl Refusal {
    pub fn new(reason: ErrorReason, message: impl Into<String>) -> Self {
        Refusal {
            reason,
            message: message.into(),
        }
    }
}

/// How an admitted request ended, for usage records and stored conversations.
#[derive(Debug, Clone)]
pub struct RequestOutcome {
    pub session: SessionInfo,
    pub request_id: String,
    pub model: String,
    /// The configured name of the upstream that answered (`unknown` when none did).
    pub provider: String,
    pub conversation_id: Option<String>,
    /// The user's new message, when a conversation is stored.
    pub question: Option<String>,
    /// The answer's text (without reasoning), when a conversation is stored.
    pub answer: String,
    pub usage: Usage,
    pub finish_reason: FinishReason,
    pub first_chunk_ms: Option<u64>,
    pub duration_ms: u64,
}

pub trait RequestHooks: Send + Sync + 'static {
    /// Runs before the provider is called: limits, stored history.
    fn admit(&self, start: RequestStart) -> LocalBoxFuture<'static, Result<Admission, Refusal>>;

    /// Runs once for every request that reached a provider, when it ends.
    fn finished(&self, outcome: RequestOutcome);
}

/// Where the registry publishes the node's live sessions for other nodes to see.
pub trait SessionDirectory: Send + Sync + 'static {
    fn joined(&self, session: &SessionInfo);
    fn left(&self, session_id: &str);
    /// Called every refresh interval with every live session, so entries of a dead node expire.
    fn refresh(&self, sessions: Vec<SessionInfo>);
}

/// Keeps nothing: a single node without shared state.
pub struct NoDirectory;

impl SessionDirectory for NoDirectory {
    fn joined(&self, _: &SessionInfo) {}
    fn left(&self, _: &str) {}
    fn refresh(&self, _: Vec<SessionInfo>) {}
}
