//! The answer a scenario produces, before it is dressed in a provider's wire format.

use std::time::Duration;

use crate::{scenario::Scenario, server::FakeOptions, SLOW_DRIP_TEXT_PIECES};

/// The reasoning pieces of every answer, when the request asked for reasoning.
pub const REASONING_PIECES: [&str; 3] = ["Let me think. ", "The user wants words. ", "Sure."];

/// Pieces before a `midstream-error`, `malformed`, `cut` or `filtered` stream misbehaves.
const PIECES_BEFORE_TROUBLE: usize = 3;
/// Pause before a `cut`, so the pieces before it reach the client first.
const FLUSH_BEFORE_CUT: Duration = Duration::from_millis(50);

/// The `i`-th text piece (from 0) of every answer.
pub fn text_piece(i: usize) -> String {
    format!("word{i} ")
}

/// How an answer ends when it ends well.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    Stop,
    Length,
    Filtered,
}

/// One beat of a streamed answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Beat {
    Reasoning(String),
    Text(String),
    Pause(Duration),
    Finish(End),
    /// The provider's in-stream error event.
    Error,
    /// A line of invalid JSON.
    Malformed,
    /// Silence, forever.
    Stall,
    /// Close the connection without the stream's terminator.
    Cut,
}

/// What a request asked for that shapes its answer.
pub struct Ask<'a> {
    pub scenario: Scenario,
    pub reasoning: bool,
    pub max_tokens: Option<u64>,
    pub options: &'a FakeOptions,
}

/// Counts of what an answer holds, for its usage report.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub reasoning: u64,
    pub text: u64,
}

impl Counts {
    pub fn of(beats: &[Beat]) -> Counts {
        let mut c = Counts::default();
        for beat in beats {
            match beat {
                Beat::Reasoning(_) => c.reasoning += 1,
                Beat::Text(_) => c.text += 1,
                _ => {}
            }
        }
        c
    }

    pub fn completion(&self) -> u64 {
        self.reasoning + self.text
    }
}

/// The beats of a streamed answer. HTTP-level failures (`fail-*`, `flaky-*`) never get here.
pub fn plan(ask: &Ask) -> Vec<Beat> {
    let delay = Duration::from_millis(ask.options.chunk_delay_ms);
    let drip = Duration::from_millis(ask.options.slow_drip_delay_ms);
    let (text_pieces, delay) = match ask.scenario {
        Scenario::Ok { text_pieces } => (text_pieces, delay),
        Scenario::SlowDrip => (SLOW_DRIP_TEXT_PIECES, drip),
        Scenario::StallAfter { pieces } => (pieces, delay),
        _ => (crate::DEFAULT_TEXT_PIECES, delay),
    };
    let mut pieces: Vec<Beat> = Vec::new();
    if ask.reasoning {
        pieces.extend(
            REASONING_PIECES
                .iter()
                .map(|p| Beat::Reasoning(p.to_string())),
        );
    }
    pieces.extend((0..text_pieces).map(|i| Beat::Text(text_piece(i))));
    let mut end = End::Stop;
    if let Some(max) = ask.max_tokens {
        if pieces.len() as u64 > max {
            pieces.truncate(max as usize);
            end = End::Length;
        }
    }
    let (keep, tail) = match ask.scenario {
        Scenario::Stall => (0, vec![Beat::Stall]),
        Scenario::StallAfter { pieces } => (pieces, vec![Beat::Stall]),
        Scenario::MidstreamError => (PIECES_BEFORE_TROUBLE, vec![Beat::Error]),
        Scenario::Cut => (
            PIECES_BEFORE_TROUBLE,
            vec![Beat::Pause(FLUSH_BEFORE_CUT), Beat::Cut],
        ),
        Scenario::Filtered => (PIECES_BEFORE_TROUBLE, vec![Beat::Finish(End::Filtered)]),
        Scenario::Malformed => {
            let rest = pieces.split_off(PIECES_BEFORE_TROUBLE.min(pieces.len()));
            let mut tail = vec![Beat::Malformed];
            tail.extend(rest);
            tail.push(Beat::Finish(end));
            (PIECES_BEFORE_TROUBLE, tail)
        }
        _ => (pieces.len(), vec![Beat::Finish(end)]),
    };
    pieces.truncate(keep);
    let mut beats = Vec::new();
    for (i, piece) in pieces.into_iter().enumerate() {
        if i > 0 && !delay.is_zero() {
            beats.push(Beat::Pause(delay));
        }
        beats.push(piece);
    }
    beats.extend(tail);
    beats
}

/// Prompt "tokens": the words of every `content`, `text` and `system` string in the request.
pub fn prompt_tokens(body: &serde_json::Value) -> u64 {
    use serde_json::Value;
    fn walk(v: &Value, counted: bool) -> u64 {
        match v {
            Value::String(s) if counted => s.split_whitespace().count() as u64,
            Value::Array(a) => a.iter().map(|v| walk(v, counted)).sum(),
            Value::Object(o) => o
                .iter()
                .map(|(k, v)| walk(v, matches!(k.as_str(), "content" | "text" | "system")))
                .sum(),
            _ => 0,
        }
    }
    walk(body, false)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ask(scenario: Scenario) -> Vec<Beat> {
        plan(&Ask {
            scenario,
            reasoning: true,
            max_tokens: None,
            options: &FakeOptions::default(),
        })
    }

    #[test]
    fn ok_is_reasoning_then_text_then_stop() {
        let beats = ask(Scenario::Ok { text_pieces: 2 });
        assert_eq!(
            beats,
            [
                Beat::Reasoning(REASONING_PIECES[0].into()),
                Beat::Reasoning(REASONING_PIECES[1].into()),
                Beat::Reasoning(REASONING_PIECES[2].into()),
                Beat::Text("word0 ".into()),
                Beat::Text("word1 ".into()),
                Beat::Finish(End::Stop),
            ]
        );
    }

    #[test]
    fn max_tokens_truncates_with_length() {
        let beats = plan(&Ask {
            scenario: Scenario::Ok { text_pieces: 20 },
            reasoning: false,
            max_tokens: Some(4),
            options: &FakeOptions::default(),
        });
        assert_eq!(Counts::of(&beats).text, 4);
        assert_eq!(beats.last(), Some(&Beat::Finish(End::Length)));
    }

    #[test]
    fn stall_after_n_sends_n_pieces() {
        let beats = ask(Scenario::StallAfter { pieces: 4 });
        assert_eq!(Counts::of(&beats).completion(), 4);
        assert_eq!(beats.last(), Some(&Beat::Stall));
    }

    #[test]
    fn prompt_tokens_count_words() {
        let body = serde_json::json!({
            "model": "ok", "system": "be brief",
            "messages": [{"role": "user", "content": "hello there you"}]
        });
        assert_eq!(prompt_tokens(&body), 5);
    }
}
