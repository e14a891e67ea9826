//! The OpenAI chat completions format (`POST /v1/chat/completions`, `GET /v1/models`).

use std::time::{SystemTime, UNIX_EPOCH};

use actix_web::{http::StatusCode, web, HttpRequest, HttpResponse};
use serde_json::{json, Value};

use crate::{
    body::{event_stream, Step},
    plan::{plan, prompt_tokens, sample, Ask, Beat, Counts, End, Shape},
    record::State,
    scenario::Scenario,
};

/// Every model name the fake serves by default, for `GET /v1/models`.
const LISTED_MODELS: [&str; 7] = [
    "ok",
    "fail-429",
    "fail-500",
    "midstream-error",
    "stall",
    "malformed",
    "cut",
];

fn error(status: u16, kind: &str, code: Option<&str>, message: &str) -> HttpResponse {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut res = HttpResponse::build(status);
    if status == StatusCode::TOO_MANY_REQUESTS {
        res.insert_header(("retry-after", "1"));
    }
    res.json(json!({
        "error": {"message": message, "type": kind, "param": null, "code": code}
    }))
}

/// OpenAI's error for each status, as its API documents them.
fn scenario_error(status: u16, model: &str) -> HttpResponse {
    match status {
        401 => error(
            401,
            "invalid_request_error",
            Some("invalid_api_key"),
            "Incorrect API key provided: sk-fake***. You can find your API key at https://platform.openai.com/account/api-keys.",
        ),
        404 => model_not_found(model),
        429 => error(
            429,
            "requests",
            Some("rate_limit_exceeded"),
            &format!("Rate limit reached for {model} on requests per min (RPM): Limit 3, Used 3, Requested 1. Please try again in 1s."),
        ),
        503 => error(
            503,
            "server_error",
            None,
            "The engine is currently overloaded, please try again later.",
        ),
        s if s >= 500 => error(
            s,
            "server_error",
            None,
            "The server had an error while processing your request. Sorry about that!",
        ),
        s => error(s, "invalid_request_error", None, "Fake failure."),
    }
}

fn model_not_found(model: &str) -> HttpResponse {
    error(
        404,
        "invalid_request_error",
        Some("model_not_found"),
        &format!("The model `{model}` does not exist or you do not have access to it."),
    )
}

fn invalid(message: &str) -> HttpResponse {
    error(400, "invalid_request_error", None, message)
}

pub async fn models(req: HttpRequest, state: web::Data<State>) -> HttpResponse {
    state.record(&req, &[]);
    if bearer(&req).is_none() {
        return missing_key();
    }
    let data: Vec<Value> = LISTED_MODELS
        .iter()
        .map(|id| json!({"id": id, "object": "model", "created": 0, "owned_by": "fake-upstream"}))
        .collect();
    HttpResponse::Ok().json(json!({"object": "list", "data": data}))
}

fn bearer(req: &HttpRequest) -> Option<&str> {
    let value = req.headers().get("authorization")?.to_str().ok()?;
    value.strip_prefix("Bearer ").filter(|k| !k.is_empty())
}

fn missing_key() -> HttpResponse {
    error(
        401,
        "invalid_request_error",
        None,
        "You didn't provide an API key. You need to provide your API key in an Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
    )
}

pub async fn chat_completions(
    req: HttpRequest,
    body: web::Bytes,
    state: web::Data<State>,
) -> HttpResponse {
    let recorded = state.record(&req, &body);
    if bearer(&req).is_none() {
        return missing_key();
    }
    let body = recorded.body;
    let Some(model) = body["model"].as_str() else {
        return invalid("you must provide a model parameter");
    };
    let Some(messages) = body["messages"].as_array() else {
        return invalid("Missing required parameter: 'messages'.");
    };
    for m in messages {
        let role = m["role"].as_str().unwrap_or("");
        if !matches!(role, "system" | "developer" | "user" | "assistant" | "tool") {
            return invalid(&format!("Invalid value: '{role}'. Supported values are: 'system', 'assistant', 'user', 'tool', 'developer'."));
        }
    }
    let shape = match shape(&body) {
        Ok(shape) => shape,
        Err(message) => return invalid(&message),
    };
    let Some(scenario) = Scenario::from_model(model) else {
        return model_not_found(model);
    };
    let scenario = match scenario {
        Scenario::Fail { status } => return scenario_error(status, model),
        Scenario::Flaky { failures } if state.next_flaky() < failures => {
            return scenario_error(503, model)
        }
        Scenario::Flaky { .. } => Scenario::Ok {
            text_pieces: crate::DEFAULT_TEXT_PIECES,
        },
        s => s,
    };
    let mut shape = shape;
    if scenario == Scenario::Echo && shape.text.is_none() && shape.tool_calls.is_empty() {
        shape.text = last_user_text(messages);
    }
    let max_tokens = body["max_completion_tokens"]
        .as_u64()
        .or(body["max_tokens"].as_u64());
    let beats = plan(&Ask {
        scenario,
        reasoning: true,
        max_tokens,
        options: &state.options,
        text: shape.text,
        tool_calls: shape.tool_calls,
    });
    let answer = Answer {
        id: "chatcmpl-fake".into(),
        model: model.to_owned(),
        created: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        prompt_tokens: prompt_tokens(&body),
        counts: Counts::of(&beats),
    };
    if body["stream"].as_bool() == Some(true) {
        let include_usage = body["stream_options"]["include_usage"].as_bool() == Some(true);
        event_stream(state.into_inner(), answer.stream(&beats, include_usage))
    } else if matches!(scenario, Scenario::Stall | Scenario::StallAfter { .. }) {
        std::future::pending().await
    } else {
        HttpResponse::Ok().json(answer.whole(&beats))
    }
}

/// Checks tools, tool messages, images and `response_format` as OpenAI documents them, and
/// says what the answer holds: a call of the chosen (or first) tool while the last message is
/// not a tool result; what a tool said; a sample of the JSON schema; how many images it saw.
fn shape(body: &Value) -> Result<Shape, String> {
    let messages = body["messages"].as_array().cloned().unwrap_or_default();
    let mut called = Vec::new();
    let mut images = 0;
    for (i, m) in messages.iter().enumerate() {
        for call in m["tool_calls"].as_array().into_iter().flatten() {
            if call["type"] != "function" || call["function"]["name"].as_str().is_none() {
                return Err(format!("Invalid 'messages[{i}].tool_calls': each needs type 'function' and function.name."));
            }
            called.push(call["id"].as_str().unwrap_or("").to_owned());
        }
        if m["role"] == "tool" {
            let id = m["tool_call_id"].as_str().unwrap_or("");
            if !called.iter().any(|c| c == id) {
                return Err(format!("Invalid parameter: messages with role 'tool' must be a response to a preceeding message with 'tool_calls' (messages[{i}], tool_call_id '{id}')."));
            }
        }
        for part in m["content"].as_array().into_iter().flatten() {
            match part["type"].as_str() {
                Some("text") => {}
                Some("image_url") => {
                    let url = part["image_url"]["url"].as_str().unwrap_or("");
                    let ok = url.starts_with("https://")
                        || url.starts_with("http://")
                        || (url.starts_with("data:image/") && url.contains(";base64,"));
                    if !ok {
                        return Err(format!("Invalid 'messages[{i}].content': image_url.url must be a URL or a base64 data URL."));
                    }
                    images += 1;
                }
                other => {
                    return Err(format!(
                        "Invalid 'messages[{i}].content': unknown part type {other:?}."
                    ))
                }
            }
        }
    }
    let tools = body["tools"].as_array().cloned().unwrap_or_default();
    for (i, t) in tools.iter().enumerate() {
        if t["type"] != "function" || t["function"]["name"].as_str().is_none() {
            return Err(format!(
                "Missing required parameter: 'tools[{i}].function.name'."
            ));
        }
    }
    let last = messages.last();
    let choice = &body["tool_choice"];
    if !tools.is_empty() && choice != "none" && last.is_some_and(|m| m["role"] != "tool") {
        let tool = match choice["function"]["name"].as_str() {
            Some(name) => tools
                .iter()
                .find(|t| t["function"]["name"] == name)
                .ok_or_else(|| format!("Invalid 'tool_choice': no tool named '{name}'."))?,
            None => &tools[0],
        };
        let name = tool["function"]["name"].as_str().unwrap_or("").to_owned();
        let args = sample(&tool["function"]["parameters"]);
        return Ok(Shape {
            text: None,
            tool_calls: vec![(name, args)],
        });
    }
    let format = &body["response_format"];
    let text = match format["type"].as_str() {
        None | Some("text") => None,
        Some("json_object") => Some(r#"{"answer":"fake"}"#.to_owned()),
        Some("json_schema") => {
            let s = &format["json_schema"];
            if s["name"].as_str().is_none() {
                return Err(
                    "Missing required parameter: 'response_format.json_schema.name'.".into(),
                );
            }
            Some(sample(&s["schema"]).to_string())
        }
        Some(other) => return Err(format!("Invalid 'response_format.type': '{other}'.")),
    };
    let text = text.or_else(|| match last {
        Some(m) if m["role"] == "tool" => Some(format!(
            "Tool {} said: {}",
            m["tool_call_id"].as_str().unwrap_or(""),
            m["content"].as_str().unwrap_or("")
        )),
        _ if images > 0 => Some(format!("I see {images} image(s).")),
        _ => None,
    });
    Ok(Shape {
        text,
        tool_calls: vec![],
    })
}

/// The text of the last user message (its text parts joined), for the `echo` scenario.
fn last_user_text(messages: &[Value]) -> Option<String> {
    let m = messages.iter().rev().find(|m| m["role"] == "user")?;
    match &m["content"] {
        Value::String(s) => Some(s.clone()),
        Value::Array(parts) => Some(
            parts
                .iter()
                .filter_map(|p| p["text"].as_str())
                .collect::<Vec<_>>()
                .join(""),
        ),
        _ => None,
    }
}

struct Answer {
    id: String,
    model: String,
    created: u64,
    prompt_tokens: u64,
    counts: Counts,
}

fn finish_reason(end: End) -> &'static str {
    match end {
        End::Stop => "stop",
        End::Length => "length",
        End::Filtered => "content_filter",
        End::ToolCalls => "tool_calls",
    }
}

impl Answer {
    fn usage(&self) -> Value {
        let completion = self.counts.completion();
        json!({
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": completion,
            "total_tokens": self.prompt_tokens + completion,
            "completion_tokens_details": {"reasoning_tokens": self.counts.reasoning},
        })
    }

    fn chunk(&self, choices: Value, usage: Option<Value>, include_usage: bool) -> Step {
        let mut chunk = json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "system_fingerprint": "fp_fake",
            "choices": choices,
        });
        if include_usage {
            chunk["usage"] = usage.unwrap_or(Value::Null);
        }
        Step::event(None, &chunk.to_string(), "\n")
    }

    fn delta(&self, delta: Value, finish: Option<&str>, include_usage: bool) -> Step {
        let choices =
            json!([{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}]);
        self.chunk(choices, None, include_usage)
    }

    /// The `stream: true` answer: `data:` lines of `chat.completion.chunk`, then `[DONE]`.
    fn stream(&self, beats: &[Beat], include_usage: bool) -> Vec<Step> {
        let mut steps = vec![self.delta(
            json!({"role": "assistant", "content": ""}),
            None,
            include_usage,
        )];
        for beat in beats {
            match beat {
                Beat::Reasoning(t) => {
                    steps.push(self.delta(json!({"reasoning_content": t}), None, include_usage))
                }
                Beat::Text(t) => steps.push(self.delta(json!({"content": t}), None, include_usage)),
                Beat::ToolCall { index, id, name } => steps.push(self.delta(
                    json!({"tool_calls": [{"index": index, "id": id, "type": "function",
                        "function": {"name": name, "arguments": ""}}]}),
                    None,
                    include_usage,
                )),
                Beat::ToolArgs { index, piece } => steps.push(self.delta(
                    json!({"tool_calls": [{"index": index, "function": {"arguments": piece}}]}),
                    None,
                    include_usage,
                )),
                Beat::Pause(d) => steps.push(Step::Pause(*d)),
                Beat::Finish(end) => {
                    steps.push(self.delta(json!({}), Some(finish_reason(*end)), include_usage));
                    if include_usage {
                        steps.push(self.chunk(json!([]), Some(self.usage()), true));
                    }
                    steps.push(Step::event(None, "[DONE]", "\n"));
                }
                Beat::Error => {
                    let error = json!({"error": {
                        "message": "The server had an error while processing your request. Sorry about that!",
                        "type": "server_error", "param": null, "code": null,
                    }});
                    steps.push(Step::event(None, &error.to_string(), "\n"));
                }
                Beat::Malformed => steps.push(Step::event(
                    None,
                    r#"{"id":"chatcmpl-fake","object":"chat.completion.chunk","choices":[{"delta":{"content":"oo"#,
                    "\n",
                )),
                Beat::Stall => steps.push(Step::Stall),
                Beat::Cut => steps.push(Step::Cut),
            }
        }
        // A stall or cut never reaches what follows; leave it out of the script.
        if let Some(i) = steps
            .iter()
            .position(|s| matches!(s, Step::Stall | Step::Cut))
        {
            steps.truncate(i + 1);
        }
        steps
    }

    /// The `stream: false` answer: one `chat.completion` object.
    fn whole(&self, beats: &[Beat]) -> Value {
        let mut reasoning = String::new();
        let mut content = String::new();
        let mut calls: Vec<Value> = Vec::new();
        let mut end = End::Stop;
        for beat in beats {
            match beat {
                Beat::Reasoning(t) => reasoning.push_str(t),
                Beat::Text(t) => content.push_str(t),
                Beat::ToolCall { id, name, .. } => calls.push(json!({"id": id, "type": "function",
                    "function": {"name": name, "arguments": ""}})),
                Beat::ToolArgs { index, piece } => {
                    if let Some(call) = calls.get_mut(*index as usize) {
                        let args = call["function"]["arguments"]
                            .as_str()
                            .unwrap_or("")
                            .to_owned();
                        call["function"]["arguments"] = json!(args + piece);
                    }
                }
                Beat::Finish(e) => end = *e,
                _ => {}
            }
        }
        let mut message = json!({"role": "assistant", "content": content, "reasoning_content": reasoning, "refusal": null});
        if !calls.is_empty() {
            message["content"] = Value::Null;
            message["tool_calls"] = Value::Array(calls);
        }
        json!({
            "id": self.id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.model,
            "system_fingerprint": "fp_fake",
            "choices": [{
                "index": 0,
                "message": message,
                "logprobs": null,
                "finish_reason": finish_reason(end),
            }],
            "usage": self.usage(),
        })
    }
}
