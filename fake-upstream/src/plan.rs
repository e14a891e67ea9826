//! The answer a scenario produces, before it is dressed in a provider's wire format.

use std::time::Duration;

use serde_json::Value;

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
    /// The model stopped to have its tool calls run.
    ToolCalls,
}

/// One beat of a streamed answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Beat {
    Reasoning(String),
    Text(String),
    /// A tool call starts: its id and function name.
    ToolCall {
        index: u32,
        id: String,
        name: String,
    },
    /// The next piece of a tool call's arguments (JSON text).
    ToolArgs {
        index: u32,
        piece: String,
    },
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
    /// What the answer says instead of the scenario's words (a structured-output sample, what
    /// a tool result or image was), cut into pieces.
    pub text: Option<String>,
    /// Tool calls to make instead of answering: `(name, arguments)`.
    pub tool_calls: Vec<(String, Value)>,
}

/// What a request asks of the answer beyond its scenario, read from its body by each API's
/// fake: the text to say, or the tools to call.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Shape {
    pub text: Option<String>,
    pub tool_calls: Vec<(String, Value)>,
}

/// Longest piece of an answer's given text or tool arguments.
pub const PIECE_CHARS: usize = 8;

/// `text` cut into pieces of at most [`PIECE_CHARS`] characters.
pub fn pieces(text: &str) -> Vec<String> {
    let chars: Vec<char> = text.chars().collect();
    chars
        .chunks(PIECE_CHARS)
        .map(|c| c.iter().collect())
        .collect()
}

/// A value matching a JSON Schema: what the fakes answer for structured output and pass as
/// tool arguments. Objects get every property, strings their first `enum` value or `"fake"`.
pub fn sample(schema: &Value) -> Value {
    if let Some(first) = schema["enum"].as_array().and_then(|e| e.first()) {
        return first.clone();
    }
    let kind = match &schema["type"] {
        Value::Array(types) => types
            .iter()
            .filter_map(Value::as_str)
            .find(|t| *t != "null")
            .unwrap_or("null")
            .to_ascii_lowercase(),
        Value::String(t) => t.to_ascii_lowercase(),
        _ if schema.get("properties").is_some() => "object".to_owned(),
        _ => "string".to_owned(),
    };
    match kind.as_str() {
        "object" => {
            let mut out = serde_json::Map::new();
            if let Some(props) = schema["properties"].as_object() {
                for (k, v) in props {
                    out.insert(k.clone(), sample(v));
                }
            }
            Value::Object(out)
        }
        "array" => Value::Array(vec![sample(&schema["items"])]),
        "integer" => Value::from(1),
        "number" => Value::from(1.5),
        "boolean" => Value::Bool(true),
        "null" => Value::Null,
        _ => Value::from("fake"),
    }
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
                Beat::Text(_) | Beat::ToolArgs { .. } => c.text += 1,
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
    let mut end = End::Stop;
    if !ask.tool_calls.is_empty() {
        for (i, (name, args)) in ask.tool_calls.iter().enumerate() {
            let index = i as u32;
            pieces.push(Beat::ToolCall {
                index,
                id: format!("call_fake_{i}"),
                name: name.clone(),
            });
            pieces.extend(
                self::pieces(&args.to_string())
                    .into_iter()
                    .map(|piece| Beat::ToolArgs { index, piece }),
            );
        }
        end = End::ToolCalls;
    } else if let Some(text) = &ask.text {
        pieces.extend(self::pieces(text).into_iter().map(Beat::Text));
    } else {
        pieces.extend((0..text_pieces).map(|i| Beat::Text(text_piece(i))));
    }
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
            text: None,
            tool_calls: vec![],
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
            text: None,
            tool_calls: vec![],
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
    fn tool_calls_replace_the_text() {
        let beats = plan(&Ask {
            scenario: Scenario::Ok { text_pieces: 5 },
            reasoning: false,
            max_tokens: None,
            options: &FakeOptions::default(),
            text: None,
            tool_calls: vec![("get_weather".into(), serde_json::json!({"city": "fake"}))],
        });
        assert_eq!(
            beats[0],
            Beat::ToolCall {
                index: 0,
                id: "call_fake_0".into(),
                name: "get_weather".into()
            }
        );
        let args: String = beats
            .iter()
            .filter_map(|b| match b {
                Beat::ToolArgs { piece, .. } => Some(piece.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(args, r#"{"city":"fake"}"#);
        assert_eq!(beats.last(), Some(&Beat::Finish(End::ToolCalls)));
    }

    #[test]
    fn samples_follow_the_schema() {
        let schema = serde_json::json!({"type": "object", "properties": {
            "name": {"type": "string"}, "n": {"type": "integer"},
            "tags": {"type": "array", "items": {"type": "string", "enum": ["a", "b"]}},
        }});
        assert_eq!(
            sample(&schema),
            serde_json::json!({"name": "fake", "n": 1, "tags": ["a"]})
        );
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
