//! A fake LLM upstream for tests and benchmarks. It speaks the streaming wire formats of the
//! OpenAI chat completions API, the Anthropic messages API and the Gemini `generateContent` API,
//! and misbehaves on request: the model name picks a [`Scenario`] (`ok`, `fail-429`, `stall`,
//! `cut`, ...). Start it in-process with [`FakeUpstream::start`] or as the `fake-upstream` binary.

mod anthropic;
mod body;
mod gemini;
mod openai;
mod plan;
mod record;
mod scenario;
mod server;

pub use plan::{sample, text_piece, REASONING_PIECES};
pub use record::RecordedRequest;
pub use scenario::{Scenario, DEFAULT_TEXT_PIECES, SLOW_DRIP_TEXT_PIECES};
pub use server::{FakeOptions, FakeUpstream};
