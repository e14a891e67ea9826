//! Token counts the gateway makes itself when an upstream reports none (an OpenAI-compatible
//! server without `stream_options.include_usage`, a stream without usage metadata), so that
//! usage is never silently zero: budgets, usage records and `/v1/usage` count what was used,
//! and `usage.estimated` says the figure is the gateway's.
//!
//! OpenAI-family models (`gpt-…`, `o1`, `o3`, ...) are counted with their own tokenizer, by
//! `tiktoken-rs` (OpenAI's BPE tables, well kept and widely used); other models with an
//! approximation of one token per four bytes of UTF-8, which is close for English text on
//! the common tokenizers.

use ai_gateway_proto::Usage;

use super::{Message, Part, ProviderRequest};

/// Tokens an image is charged when the gateway estimates (OpenAI's base charge per image).
const IMAGE_TOKENS: u64 = 85;
/// Tokens around each message (role and separators), as OpenAI's cookbook counts them.
const MESSAGE_OVERHEAD_TOKENS: u64 = 3;

/// Tokens of `text` for `model`.
pub fn count(model: &str, text: &str) -> u64 {
    if text.is_empty() {
        return 0;
    }
    match tiktoken_rs::bpe_for_model(model) {
        Ok(bpe) => bpe.count_ordinary(text) as u64,
        Err(_) => (text.len() as u64).div_ceil(4),
    }
}

fn message_tokens(model: &str, m: &Message) -> u64 {
    let parts: u64 = m
        .content
        .iter()
        .map(|p| match p {
            Part::Text(t) | Part::Thinking { text: t, .. } => count(model, t),
            Part::Image { .. } => IMAGE_TOKENS,
            Part::RedactedThinking { data } => (data.len() as u64).div_ceil(4),
        })
        .sum();
    let calls: u64 = m
        .tool_calls
        .iter()
        .map(|c| count(model, &c.name) + count(model, &c.arguments))
        .sum();
    MESSAGE_OVERHEAD_TOKENS + parts + calls
}

/// The prompt's tokens for `model`: the system prompt, every message, the tools' definitions.
pub fn prompt_tokens(request: &ProviderRequest, model: &str) -> u64 {
    let system = request
        .system
        .as_deref()
        .map_or(0, |s| MESSAGE_OVERHEAD_TOKENS + count(model, s));
    let messages: u64 = request
        .messages
        .iter()
        .map(|m| message_tokens(model, m))
        .sum();
    let tools: u64 = request
        .tools
        .iter()
        .map(|t| {
            count(model, &t.name)
                + count(model, t.description.as_deref().unwrap_or(""))
                + count(model, &t.parameters.to_string())
        })
        .sum();
    system + messages + tools
}

/// Fills in what `usage` lacks for `model`: the prompt's tokens when the upstream gave none,
/// the answer's (`answer`: every piece of text, reasoning and tool arguments it sent) when it
/// gave none; marks the figure estimated when it did either.
pub fn complete(usage: Usage, request: &ProviderRequest, model: &str, answer: &str) -> Usage {
    let mut u = usage;
    if u.prompt_tokens == 0 {
        u.prompt_tokens = prompt_tokens(request, model);
        u.estimated = u.prompt_tokens > 0;
    }
    if u.completion_tokens == 0 && !answer.is_empty() {
        u.completion_tokens = count(model, answer);
        u.estimated = true;
    }
    if u.estimated || u.total_tokens == 0 {
        u.total_tokens = u.prompt_tokens + u.completion_tokens;
    }
    u
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::provider::Role;

    #[test]
    fn openai_models_use_their_tokenizer() {
        // "hello world" is two tokens on cl100k and o200k alike.
        assert_eq!(count("gpt-4o-mini", "hello world"), 2);
        assert_eq!(count("gpt-4", "hello world"), 2);
        // Others: a token per four bytes.
        assert_eq!(count("claude-sonnet-4-5", "hello world"), 3);
        assert_eq!(count("x", ""), 0);
    }

    #[test]
    fn only_what_is_missing_is_estimated() {
        let request = ProviderRequest {
            messages: vec![Message::text(Role::User, "hello world")],
            ..ProviderRequest::default()
        };
        let reported = Usage {
            prompt_tokens: 10,
            completion_tokens: 5,
            total_tokens: 15,
            estimated: false,
        };
        assert_eq!(complete(reported, &request, "gpt-4o", "whatever"), reported);
        let none = complete(Usage::default(), &request, "gpt-4o", "hello world");
        assert_eq!(
            none,
            Usage {
                prompt_tokens: 5,
                completion_tokens: 2,
                total_tokens: 7,
                estimated: true
            }
        );
    }
}
