//! The Anthropic messages format (`POST /v1/messages`).

use actix_web::{http::StatusCode, web, HttpRequest, HttpResponse};
use serde_json::{json, Value};

use crate::{
    body::{event_stream, Step},
    plan::{plan, prompt_tokens, Ask, Beat, Counts, End},
    record::State,
    scenario::Scenario,
};

/// A signature as the API sends it at the end of a thinking block (opaque to clients).
const FAKE_SIGNATURE: &str = "RmFrZVNpZ25hdHVyZQ==";

fn error(status: u16, kind: &str, message: &str) -> HttpResponse {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut res = HttpResponse::build(status);
    if status == StatusCode::TOO_MANY_REQUESTS {
        res.insert_header(("retry-after", "1"));
    }
    res.insert_header(("request-id", "req_fake"))
        .json(json!({"type": "error", "error": {"type": kind, "message": message}}))
}

/// Anthropic's error type for each status, as its API documents them.
fn scenario_error(status: u16) -> HttpResponse {
    match status {
        400 => error(400, "invalid_request_error", "Fake invalid request."),
        401 => error(401, "authentication_error", "invalid x-api-key"),
        403 => error(
            403,
            "permission_error",
            "Your API key does not have permission to use the specified resource.",
        ),
        404 => error(
            404,
            "not_found_error",
            "The requested resource could not be found.",
        ),
        413 => error(
            413,
            "request_too_large",
            "Request exceeds the maximum allowed number of bytes.",
        ),
        429 => error(
            429,
            "rate_limit_error",
            "Number of request tokens has exceeded your per-minute rate limit.",
        ),
        529 => error(529, "overloaded_error", "Overloaded"),
        s => error(s, "api_error", "Internal server error"),
    }
}

fn invalid(message: &str) -> HttpResponse {
    error(400, "invalid_request_error", message)
}

pub async fn messages(req: HttpRequest, body: web::Bytes, state: web::Data<State>) -> HttpResponse {
    let recorded = state.record(&req, &body);
    if recorded.header("x-api-key").is_none_or(str::is_empty) {
        return error(401, "authentication_error", "x-api-key header is required");
    }
    if recorded.header("anthropic-version").is_none() {
        return invalid("anthropic-version: header is required");
    }
    let body = recorded.body;
    let Some(model) = body["model"].as_str() else {
        return invalid("model: Field required");
    };
    let Some(max_tokens) = body["max_tokens"].as_u64() else {
        return invalid("max_tokens: Field required");
    };
    let Some(messages) = body["messages"].as_array() else {
        return invalid("messages: Field required");
    };
    for (i, m) in messages.iter().enumerate() {
        let role = m["role"].as_str().unwrap_or("");
        if !matches!(role, "user" | "assistant") {
            return invalid(&format!(
                "messages.{i}.role: Input should be 'user' or 'assistant'"
            ));
        }
    }
    let thinking = body["thinking"]["type"] == "enabled";
    if thinking {
        let budget = body["thinking"]["budget_tokens"].as_u64().unwrap_or(0);
        if budget < 1024 || budget >= max_tokens {
            return invalid(
                "thinking.budget_tokens: must be at least 1024 and less than max_tokens",
            );
        }
        if body["temperature"].as_f64().is_some_and(|t| t != 1.0) {
            return invalid("`temperature` may only be set to 1 when thinking is enabled.");
        }
    }
    let Some(scenario) = Scenario::from_model(model) else {
        return error(404, "not_found_error", &format!("model: {model}"));
    };
    let scenario = match scenario {
        Scenario::Fail { status } => return scenario_error(status),
        Scenario::Flaky { failures } if state.next_flaky() < failures => {
            return scenario_error(529)
        }
        Scenario::Flaky { .. } => Scenario::Ok {
            text_pieces: crate::DEFAULT_TEXT_PIECES,
        },
        s => s,
    };
    if body["stream"].as_bool() != Some(true) {
        return invalid("this fake only serves stream: true");
    }
    let beats = plan(&Ask {
        scenario,
        reasoning: thinking,
        max_tokens: Some(max_tokens),
        options: &state.options,
        text: None,
        tool_calls: vec![],
    });
    let steps = stream(model, prompt_tokens(&body), &beats);
    event_stream(state.into_inner(), steps)
}

fn event(steps: &mut Vec<Step>, data: Value) {
    let kind = data["type"].as_str().unwrap_or("").to_owned();
    steps.push(Step::event(Some(&kind), &data.to_string(), "\n"));
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Block {
    Thinking,
    Text,
}

/// The streamed answer: `message_start`, content blocks, `message_delta`, `message_stop`.
fn stream(model: &str, input_tokens: u64, beats: &[Beat]) -> Vec<Step> {
    let output_tokens = Counts::of(beats).completion();
    let mut steps = Vec::new();
    let mut started = false;
    let mut open: Option<(usize, Block)> = None;
    let mut next_index = 0;
    let close = |steps: &mut Vec<Step>, open: &mut Option<(usize, Block)>| {
        if let Some((index, block)) = open.take() {
            if block == Block::Thinking {
                event(
                    steps,
                    json!({"type": "content_block_delta", "index": index,
                    "delta": {"type": "signature_delta", "signature": FAKE_SIGNATURE}}),
                );
            }
            event(steps, json!({"type": "content_block_stop", "index": index}));
        }
    };
    for beat in beats {
        if !started && !matches!(beat, Beat::Stall | Beat::Pause(_)) {
            started = true;
            event(
                &mut steps,
                json!({"type": "message_start", "message": {
                    "id": "msg_fake", "type": "message", "role": "assistant", "model": model,
                    "content": [], "stop_reason": null, "stop_sequence": null,
                    "usage": {"input_tokens": input_tokens, "cache_creation_input_tokens": 0,
                              "cache_read_input_tokens": 0, "output_tokens": 1},
                }}),
            );
            event(&mut steps, json!({"type": "ping"}));
        }
        match beat {
            Beat::Reasoning(t) | Beat::Text(t) => {
                let (block, delta) = match beat {
                    Beat::Reasoning(_) => (Block::Thinking, json!({"type": "thinking_delta", "thinking": t})),
                    _ => (Block::Text, json!({"type": "text_delta", "text": t})),
                };
                if open.map(|(_, b)| b) != Some(block) {
                    close(&mut steps, &mut open);
                    let start = match block {
                        Block::Thinking => json!({"type": "thinking", "thinking": ""}),
                        Block::Text => json!({"type": "text", "text": ""}),
                    };
                    event(&mut steps, json!({"type": "content_block_start", "index": next_index, "content_block": start}));
                    open = Some((next_index, block));
                    next_index += 1;
                }
                let index = open.map_or(0, |(i, _)| i);
                event(&mut steps, json!({"type": "content_block_delta", "index": index, "delta": delta}));
            }
            Beat::Pause(d) => steps.push(Step::Pause(*d)),
            // Not asked of this API's fake yet.
            Beat::ToolCall { .. } | Beat::ToolArgs { .. } => {}
            Beat::Finish(end) => {
                close(&mut steps, &mut open);
                let reason = match end {
                    End::Stop => "end_turn",
                    End::ToolCalls => "tool_use",
                    End::Length => "max_tokens",
                    End::Filtered => "refusal",
                };
                event(&mut steps, json!({"type": "message_delta",
                    "delta": {"stop_reason": reason, "stop_sequence": null},
                    "usage": {"output_tokens": output_tokens}}));
                event(&mut steps, json!({"type": "message_stop"}));
            }
            Beat::Error => event(&mut steps, json!({"type": "error",
                "error": {"type": "overloaded_error", "message": "Overloaded"}})),
            Beat::Malformed => steps.push(Step::event(
                Some("content_block_delta"),
                r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"oo"#,
                "\n",
            )),
            Beat::Stall => {
                steps.push(Step::Stall);
                break;
            }
            Beat::Cut => {
                steps.push(Step::Cut);
                break;
            }
        }
    }
    steps
}
