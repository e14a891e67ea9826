//! The Anthropic messages format (`POST /v1/messages`).

use actix_web::{http::StatusCode, web, HttpRequest, HttpResponse};
use serde_json::{json, Value};

use crate::{
    body::{event_stream, Step},
    plan::{plan, prompt_tokens, sample, Ask, Beat, Counts, End, Shape},
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
    let shape = match shape(&body) {
        Ok(shape) => shape,
        Err(message) => return invalid(&message),
    };
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
        if let Err(message) = thinking_kept(messages) {
            return invalid(&message);
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
        text: shape.text,
        tool_calls: shape.tool_calls,
    });
    let steps = stream(model, prompt_tokens(&body), &beats);
    event_stream(state.into_inner(), steps)
}

/// With thinking on, the API wants the last assistant turn that called tools to start with its
/// thinking (or redacted thinking) block, signature unchanged, as it documents for tool use with
/// extended thinking.
fn thinking_kept(messages: &[Value]) -> Result<(), String> {
    let Some((i, last)) = messages
        .iter()
        .enumerate()
        .rev()
        .find(|(_, m)| m["role"] == "assistant")
    else {
        return Ok(());
    };
    let blocks = last["content"].as_array().cloned().unwrap_or_default();
    if !blocks.iter().any(|b| b["type"] == "tool_use") {
        return Ok(());
    }
    match blocks.first() {
        Some(b) if b["type"] == "thinking" && b["signature"] == FAKE_SIGNATURE => Ok(()),
        Some(b) if b["type"] == "thinking" => Err(format!(
            "messages.{i}.content.0.signature: Invalid `signature` in `thinking` block"
        )),
        Some(b) if b["type"] == "redacted_thinking" => Ok(()),
        _ => {
            Err(format!(
            "messages.{i}.content.0.type: Expected `thinking` or `redacted_thinking`, but found \
             `{}`. When `thinking` is enabled, a final `assistant` message must start with a \
             thinking block.",
            blocks.first().and_then(|b| b["type"].as_str()).unwrap_or("none")
        ))
        }
    }
}

/// Checks tools, `tool_use`/`tool_result` and image blocks as the API documents them, and says
/// what the answer holds: a call of the chosen (or first) tool while the last turn holds no
/// tool result; what a tool said; how many images it saw.
fn shape(body: &Value) -> Result<Shape, String> {
    let messages = body["messages"].as_array().cloned().unwrap_or_default();
    let mut images = 0;
    let mut last_result = None;
    for (i, m) in messages.iter().enumerate() {
        let blocks = m["content"].as_array().cloned().unwrap_or_default();
        for (j, b) in blocks.iter().enumerate() {
            let at = format!("messages.{i}.content.{j}");
            match b["type"].as_str() {
                Some("text") => {
                    if b["text"].as_str().is_none_or(str::is_empty) {
                        return Err(format!("{at}.text: text content blocks must be non-empty"));
                    }
                }
                Some("image") => {
                    let src = &b["source"];
                    let ok = match src["type"].as_str() {
                        Some("base64") => {
                            src["media_type"]
                                .as_str()
                                .is_some_and(|t| t.starts_with("image/"))
                                && src["data"].is_string()
                        }
                        Some("url") => src["url"].as_str().is_some_and(|u| u.starts_with("http")),
                        _ => false,
                    };
                    if !ok {
                        return Err(format!("{at}.source: invalid image source"));
                    }
                    images += 1;
                }
                Some("tool_use") if m["role"] == "assistant" => {
                    if b["id"].as_str().is_none()
                        || b["name"].as_str().is_none()
                        || !b["input"].is_object()
                    {
                        return Err(format!("{at}: tool_use needs id, name and an input object"));
                    }
                }
                Some("thinking") if m["role"] == "assistant" => {
                    if b["thinking"].as_str().is_none() || b["signature"].as_str().is_none() {
                        return Err(format!("{at}: thinking needs thinking and signature"));
                    }
                }
                Some("redacted_thinking") if m["role"] == "assistant" => {
                    if b["data"].as_str().is_none() {
                        return Err(format!("{at}.data: Field required"));
                    }
                }
                Some("tool_result") if m["role"] == "user" => {
                    let id = b["tool_use_id"].as_str().unwrap_or("");
                    let asked = i > 0
                        && messages[i - 1]["content"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .any(|p| p["type"] == "tool_use" && p["id"] == id);
                    if !asked {
                        return Err(format!("{at}: unexpected `tool_use_id` found in `tool_result` blocks: {id}. Each `tool_result` block must have a corresponding `tool_use` block in the previous message."));
                    }
                    if i == messages.len() - 1 {
                        let text: String = match &b["content"] {
                            Value::String(s) => s.clone(),
                            Value::Array(parts) => {
                                parts.iter().filter_map(|p| p["text"].as_str()).collect()
                            }
                            _ => String::new(),
                        };
                        last_result = Some((id.to_owned(), text));
                    }
                }
                other => return Err(format!("{at}.type: unexpected block type {other:?}")),
            }
        }
    }
    let tools = body["tools"].as_array().cloned().unwrap_or_default();
    for (i, t) in tools.iter().enumerate() {
        if t["name"].as_str().is_none() || t["input_schema"]["type"] != "object" {
            return Err(format!(
                "tools.{i}: a tool needs a name and an input_schema of type object"
            ));
        }
    }
    let choice = &body["tool_choice"];
    if !tools.is_empty() && choice["type"] != "none" && last_result.is_none() {
        let tool = match choice["type"].as_str() {
            Some("tool") => {
                let name = choice["name"].as_str().unwrap_or("");
                tools
                    .iter()
                    .find(|t| t["name"] == name)
                    .ok_or_else(|| format!("tool_choice: no tool named {name}"))?
            }
            _ => &tools[0],
        };
        return Ok(Shape {
            text: None,
            tool_calls: vec![(
                tool["name"].as_str().unwrap_or("").to_owned(),
                sample(&tool["input_schema"]),
            )],
        });
    }
    let text = match last_result {
        Some((id, said)) => Some(format!("Tool {id} said: {said}")),
        None if images > 0 => Some(format!("I see {images} image(s).")),
        None => None,
    };
    Ok(Shape {
        text,
        tool_calls: vec![],
    })
}

fn event(steps: &mut Vec<Step>, data: Value) {
    let kind = data["type"].as_str().unwrap_or("").to_owned();
    steps.push(Step::event(Some(&kind), &data.to_string(), "\n"));
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Block {
    Thinking,
    Text,
    ToolUse,
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
                        _ => json!({"type": "text", "text": ""}),
                    };
                    event(&mut steps, json!({"type": "content_block_start", "index": next_index, "content_block": start}));
                    open = Some((next_index, block));
                    next_index += 1;
                }
                let index = open.map_or(0, |(i, _)| i);
                event(&mut steps, json!({"type": "content_block_delta", "index": index, "delta": delta}));
            }
            Beat::Pause(d) => steps.push(Step::Pause(*d)),
            Beat::ToolCall { id, name, .. } => {
                close(&mut steps, &mut open);
                let id = id.replace("call_fake", "toolu_fake");
                event(&mut steps, json!({"type": "content_block_start", "index": next_index,
                    "content_block": {"type": "tool_use", "id": id, "name": name, "input": {}}}));
                open = Some((next_index, Block::ToolUse));
                next_index += 1;
            }
            Beat::ToolArgs { piece, .. } => {
                let index = open.map_or(0, |(i, _)| i);
                event(&mut steps, json!({"type": "content_block_delta", "index": index,
                    "delta": {"type": "input_json_delta", "partial_json": piece}}));
            }
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
