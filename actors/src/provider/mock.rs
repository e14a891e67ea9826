//! The mock provider: the Go seed's mock answer, with configurable pacing for tests and
//! benchmarks.

use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use ai_gateway_proto::{ChunkKind, FinishReason, Usage};
use futures_util::future::LocalBoxFuture;
use rand::Rng;
use serde::{Deserialize, Serialize};

use super::{ChunkSink, Finish, Message, Provider, ProviderError, ProviderRequest, Role};

/// The text part of the seed's mock answer.
pub const MOCK_ANSWER: &str = "\nOkay, here is the answer: [Mock Output]";

/// The reasoning part of the seed's mock answer for `input`.
pub fn mock_reasoning(input: &str) -> String {
    format!("Hmm... let me think about {input}...")
}

/// Pacing and size of the mock answer. The defaults are the seed's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MockSettings {
    /// Pause before the first chunk.
    pub first_chunk_delay_ms: u64,
    /// Pause between reasoning chunks, drawn uniformly from `[min, max]`.
    pub reasoning_delay_ms: [u64; 2],
    /// Pause between text chunks, drawn uniformly from `[min, max]`.
    pub text_delay_ms: [u64; 2],
    /// Characters per chunk.
    pub chunk_chars: usize,
    /// How many times the text part is repeated (longer answers for load tests).
    pub text_repeat: usize,
}

impl Default for MockSettings {
    fn default() -> Self {
        MockSettings {
            first_chunk_delay_ms: 500,
            reasoning_delay_ms: [10, 39],
            text_delay_ms: [30, 79],
            chunk_chars: 1,
            text_repeat: 1,
        }
    }
}

impl MockSettings {
    /// No pauses at all: for benchmarks and fast tests.
    pub fn instant() -> Self {
        MockSettings {
            first_chunk_delay_ms: 0,
            reasoning_delay_ms: [0, 0],
            text_delay_ms: [0, 0],
            ..Default::default()
        }
    }

    pub fn validate(&self) -> Result<(), String> {
        if self.chunk_chars == 0 {
            return Err("mock.chunk_chars must be at least 1".into());
        }
        for (name, [lo, hi]) in [
            ("mock.reasoning_delay_ms", self.reasoning_delay_ms),
            ("mock.text_delay_ms", self.text_delay_ms),
        ] {
            if lo > hi {
                return Err(format!("{name} must be [min, max] with min <= max"));
            }
        }
        Ok(())
    }
}

/// Streams the seed's mock answer.
pub struct MockProvider {
    settings: MockSettings,
    chunks_produced: AtomicU64,
}

impl MockProvider {
    pub fn new(settings: MockSettings) -> Arc<Self> {
        Arc::new(MockProvider {
            settings,
            chunks_produced: AtomicU64::new(0),
        })
    }

    /// Chunks produced since start, counted where they are made (tests use it to prove that
    /// nothing is produced after a cancel or a disconnect).
    pub fn chunks_produced(&self) -> u64 {
        self.chunks_produced.load(Ordering::Relaxed)
    }
}

async fn pause(range_ms: [u64; 2]) {
    let ms = if range_ms[1] == 0 {
        return;
    } else {
        rand::rng().random_range(range_ms[0]..=range_ms[1])
    };
    actix_rt::time::sleep(Duration::from_millis(ms)).await;
}

fn pieces(text: &str, chars: usize) -> impl Iterator<Item = &str> {
    let mut rest = text;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let end = rest
            .char_indices()
            .nth(chars)
            .map_or(rest.len(), |(i, _)| i);
        let (head, tail) = rest.split_at(end);
        rest = tail;
        Some(head)
    })
}

/// Mock "tokens" are words of the prompt and chunks of the answer.
fn prompt_tokens(request: &ProviderRequest) -> u64 {
    let words = |s: &str| s.split_whitespace().count() as u64;
    request.system.as_deref().map_or(0, words)
        + request
            .messages
            .iter()
            .map(|m| words(&m.text_content()))
            .sum::<u64>()
}

impl Provider for MockProvider {
    fn name(&self) -> &'static str {
        "mock"
    }

    fn supported_params(&self) -> &'static [&'static str] {
        &[]
    }

    fn stream(
        self: Arc<Self>,
        request: ProviderRequest,
        sink: ChunkSink,
    ) -> LocalBoxFuture<'static, Result<Finish, ProviderError>> {
        Box::pin(async move {
            request.refuse_unsupported("mock", &[])?;
            let s = &self.settings;
            let input = request
                .messages
                .iter()
                .rev()
                .find(|m| m.role == Role::User)
                .map(Message::text_content)
                .unwrap_or_default();
            let reasoning = mock_reasoning(&input);
            let text = MOCK_ANSWER.repeat(s.text_repeat);
            let limit = request.max_tokens.map_or(u64::MAX, u64::from);
            let mut usage = Usage {
                prompt_tokens: prompt_tokens(&request),
                ..Usage::default()
            };
            if s.first_chunk_delay_ms > 0 {
                actix_rt::time::sleep(Duration::from_millis(s.first_chunk_delay_ms)).await;
            }
            let phases = [
                (
                    ChunkKind::Reasoning,
                    reasoning.as_str(),
                    s.reasoning_delay_ms,
                ),
                (ChunkKind::Text, text.as_str(), s.text_delay_ms),
            ];
            let mut reason = FinishReason::Stop;
            'phases: for (kind, body, delay) in phases {
                for (i, piece) in pieces(body, s.chunk_chars).enumerate() {
                    if usage.completion_tokens == limit {
                        reason = FinishReason::Length;
                        break 'phases;
                    }
                    if i > 0 && delay[1] > 0 {
                        // What is ready goes before the pause, not after it.
                        sink.flush().await?;
                        pause(delay).await;
                    }
                    sink.chunk(kind, piece.to_owned()).await?;
                    self.chunks_produced.fetch_add(1, Ordering::Relaxed);
                    usage.completion_tokens += 1;
                }
            }
            usage.total_tokens = usage.prompt_tokens + usage.completion_tokens;
            Ok(Finish { reason, usage })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_split_on_characters() {
        assert_eq!(pieces("héllo", 2).collect::<Vec<_>>(), ["hé", "ll", "o"]);
        assert_eq!(pieces("ab", 1).collect::<Vec<_>>(), ["a", "b"]);
        assert_eq!(pieces("", 3).count(), 0);
    }

    #[test]
    fn defaults_are_the_seeds_pacing() {
        let s = MockSettings::default();
        assert_eq!(s.first_chunk_delay_ms, 500);
        assert_eq!(s.reasoning_delay_ms, [10, 39]);
        assert_eq!(s.text_delay_ms, [30, 79]);
        assert!(s.validate().is_ok());
        assert!(MockSettings {
            chunk_chars: 0,
            ..s
        }
        .validate()
        .is_err());
    }
}
