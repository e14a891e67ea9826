//! The Gemini format (`POST /v1beta/models/{model}:streamGenerateContent?alt=sse`).

use actix_web::{http::StatusCode, web, HttpRequest, HttpResponse};
use serde_json::{json, Value};

use crate::{
    body::{event_stream, Step},
    plan::{plan, prompt_tokens, sample, Ask, Beat, Counts, End, Shape},
    record::State,
    scenario::Scenario,
};

/// Gemini ends each event with CRLF pairs; clients must accept them.
const EOL: &str = "\r\n";

/// Google's canonical status name for each HTTP status.
fn status_name(status: u16) -> &'static str {
    match status {
        400 => "INVALID_ARGUMENT",
        401 => "UNAUTHENTICATED",
        403 => "PERMISSION_DENIED",
        404 => "NOT_FOUND",
        429 => "RESOURCE_EXHAUSTED",
        499 => "CANCELLED",
        503 => "UNAVAILABLE",
        504 => "DEADLINE_EXCEEDED",
        _ => "INTERNAL",
    }
}

fn error_body(status: u16, message: &str) -> Value {
    let mut error = json!({"code": status, "message": message, "status": status_name(status)});
    if status == 429 {
        // Gemini says when to retry in the body, not in a header.
        error["details"] = json!([{
            "@type": "type.googleapis.com/google.rpc.RetryInfo",
            "retryDelay": "1s",
        }]);
    }
    json!({"error": error})
}

fn error(status: u16, message: &str) -> HttpResponse {
    let code = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    HttpResponse::build(code).json(error_body(status, message))
}

fn scenario_error(status: u16) -> HttpResponse {
    let message = match status {
        401 => "Request had invalid authentication credentials.",
        429 => "Resource has been exhausted (e.g. check quota).",
        500 => "An internal error has occurred. Please retry or report in https://developers.generativeai.google/guide/troubleshooting",
        503 => "The model is overloaded. Please try again later.",
        _ => "Fake failure.",
    };
    error(status, message)
}

fn api_key(req: &HttpRequest) -> Option<String> {
    if let Some(key) = req.headers().get("x-goog-api-key") {
        return key.to_str().ok().map(str::to_owned);
    }
    web::Query::<std::collections::HashMap<String, String>>::from_query(req.query_string())
        .ok()?
        .get("key")
        .cloned()
}

pub async fn call(
    req: HttpRequest,
    path: web::Path<String>,
    body: web::Bytes,
    state: web::Data<State>,
) -> HttpResponse {
    let recorded = state.record(&req, &body);
    let Some((model, method)) = path.split_once(':') else {
        return error(404, "Method not found.");
    };
    if method != "streamGenerateContent" {
        return error(
            404,
            &format!("this fake serves only streamGenerateContent, not {method}"),
        );
    }
    if !recorded.query.split('&').any(|p| p == "alt=sse") {
        return error(400, "this fake serves only alt=sse");
    }
    if api_key(&req).is_none_or(|k| k.is_empty()) {
        return error(403, "Method doesn't allow unregistered callers (callers without established identity). Please use API Key or other form of API consumer identity to call this API.");
    }
    let body = recorded.body;
    let Some(contents) = body["contents"].as_array() else {
        return error(
            400,
            "* GenerateContentRequest.contents: contents is not specified",
        );
    };
    for (i, c) in contents.iter().enumerate() {
        let role = c["role"].as_str().unwrap_or("user");
        if !matches!(role, "user" | "model") {
            return error(400, &format!("* GenerateContentRequest.contents[{i}].role: Please use a valid role: user, model."));
        }
        if !c["parts"].is_array() {
            return error(400, &format!("* GenerateContentRequest.contents[{i}].parts: contents.parts must not be empty."));
        }
    }
    let shape = match shape(&body) {
        Ok(shape) => shape,
        Err(message) => return error(400, &message),
    };
    let Some(scenario) = Scenario::from_model(model) else {
        return error(404, &format!("models/{model} is not found for API version v1beta, or is not supported for generateContent."));
    };
    let scenario = match scenario {
        Scenario::Fail { status } => return scenario_error(status),
        Scenario::Flaky { failures } if state.next_flaky() < failures => {
            return scenario_error(503)
        }
        Scenario::Flaky { .. } => Scenario::Ok {
            text_pieces: crate::DEFAULT_TEXT_PIECES,
        },
        s => s,
    };
    let config = &body["generationConfig"];
    let beats = plan(&Ask {
        scenario,
        reasoning: config["thinkingConfig"]["includeThoughts"] == true,
        max_tokens: config["maxOutputTokens"].as_u64(),
        options: &state.options,
        text: shape.text,
        tool_calls: shape.tool_calls,
    });
    let steps = stream(model, prompt_tokens(&body), &beats);
    event_stream(state.into_inner(), steps)
}

/// The thought signature the fake attaches to its function calls, and wants back with them (as
/// Gemini 3 does).
pub const FAKE_THOUGHT_SIGNATURE: &str = "fake-thought-signature";

/// Checks `functionDeclarations`, `functionCall`/`functionResponse`, `inlineData` and
/// `responseSchema` as the API documents them, and says what the answer holds: a call of the
/// allowed (or first) function while the last turn holds no function response; what a function
/// said; a sample of the response schema; how many images it saw.
fn shape(body: &Value) -> Result<Shape, String> {
    let contents = body["contents"].as_array().cloned().unwrap_or_default();
    let mut images = 0;
    let mut last_response = None;
    for (i, c) in contents.iter().enumerate() {
        for (j, p) in c["parts"].as_array().into_iter().flatten().enumerate() {
            let at = format!("* GenerateContentRequest.contents[{i}].parts[{j}]");
            if let Some(data) = p.get("inlineData") {
                if !data["mimeType"].is_string() || !data["data"].is_string() {
                    return Err(format!("{at}.inline_data: mime_type and data are required"));
                }
                images += 1;
            } else if let Some(call) = p.get("functionCall") {
                if c["role"] != "model" || !call["name"].is_string() {
                    return Err(format!(
                        "{at}.function_call: must be a named call in a model turn"
                    ));
                }
                if p["thoughtSignature"] != FAKE_THOUGHT_SIGNATURE {
                    return Err(format!(
                        "Function call is missing a thought_signature in functionCall parts. {at}"
                    ));
                }
            } else if let Some(response) = p.get("functionResponse") {
                let name = response["name"].as_str().unwrap_or("");
                let called = i > 0
                    && contents[i - 1]["parts"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .any(|q| q["functionCall"]["name"] == name);
                if !called || !response["response"].is_object() {
                    return Err(format!("{at}.function_response: must answer a function call of the turn before, with a response object"));
                }
                if i == contents.len() - 1 {
                    let r = &response["response"];
                    let said = r["result"]
                        .as_str()
                        .map_or_else(|| r.to_string(), str::to_owned);
                    last_response = Some((name.to_owned(), said));
                }
            } else if !p["text"].is_string() {
                return Err(format!("{at}: unknown part"));
            }
        }
    }
    let declarations: Vec<Value> = body["tools"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|t| {
            t["functionDeclarations"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
        .collect();
    let config = &body["toolConfig"]["functionCallingConfig"];
    if !declarations.is_empty() && config["mode"] != "NONE" && last_response.is_none() {
        let allowed = config["allowedFunctionNames"][0].as_str();
        let d = match allowed {
            Some(name) => declarations
                .iter()
                .find(|d| d["name"] == name)
                .ok_or_else(|| format!("* allowedFunctionNames: no function {name}"))?,
            None => &declarations[0],
        };
        return Ok(Shape {
            text: None,
            tool_calls: vec![(
                d["name"].as_str().unwrap_or("").to_owned(),
                sample(&d["parameters"]),
            )],
        });
    }
    let gen = &body["generationConfig"];
    let text = match (gen["responseMimeType"].as_str(), gen.get("responseSchema")) {
        (Some("application/json"), Some(schema)) => Some(sample(schema).to_string()),
        (Some("application/json"), None) => Some(r#"{"answer":"fake"}"#.to_owned()),
        (None, Some(_)) => {
            return Err(
                "* GenerationConfig.response_schema: responseMimeType must be application/json"
                    .into(),
            )
        }
        _ => None,
    };
    let text = text.or(match last_response {
        Some((name, said)) => Some(format!("Tool {name} said: {said}")),
        None if images > 0 => Some(format!("I see {images} image(s).")),
        None => None,
    });
    Ok(Shape {
        text,
        tool_calls: vec![],
    })
}

/// The streamed answer: one `GenerateContentResponse` per event, the last with `finishReason`.
fn stream(model: &str, prompt_tokens: u64, beats: &[Beat]) -> Vec<Step> {
    let counts = Counts::of(beats);
    let usage = |final_: bool| {
        let mut u = json!({"promptTokenCount": prompt_tokens});
        if final_ {
            u["candidatesTokenCount"] = json!(counts.text);
            u["thoughtsTokenCount"] = json!(counts.reasoning);
            u["totalTokenCount"] = json!(prompt_tokens + counts.completion());
        } else {
            u["totalTokenCount"] = json!(prompt_tokens);
        }
        u
    };
    let response = |parts: Value, finish: Option<&str>| {
        let mut candidate = json!({"content": {"parts": parts, "role": "model"}, "index": 0});
        if let Some(reason) = finish {
            candidate["finishReason"] = json!(reason);
        }
        let data = json!({
            "candidates": [candidate],
            "usageMetadata": usage(finish.is_some()),
            "modelVersion": model,
            "responseId": "fake-response",
        });
        Step::event(None, &data.to_string(), EOL)
    };
    let mut steps = Vec::new();
    // Gemini sends a function call whole, in one part: its arguments are gathered first.
    let mut call: Option<(String, String)> = None;
    let flush_call = |steps: &mut Vec<Step>, call: &mut Option<(String, String)>| {
        if let Some((name, args)) = call.take() {
            let args: Value = serde_json::from_str(&args).unwrap_or(json!({}));
            steps.push(response(
                json!([{"functionCall": {"name": name, "args": args},
                    "thoughtSignature": FAKE_THOUGHT_SIGNATURE}]),
                None,
            ));
        }
    };
    for beat in beats {
        if !matches!(beat, Beat::ToolArgs { .. }) {
            flush_call(&mut steps, &mut call);
        }
        match beat {
            Beat::Reasoning(t) => steps.push(response(json!([{"text": t, "thought": true}]), None)),
            Beat::Text(t) => steps.push(response(json!([{"text": t}]), None)),
            Beat::Pause(d) => steps.push(Step::Pause(*d)),
            Beat::ToolCall { name, .. } => call = Some((name.clone(), String::new())),
            Beat::ToolArgs { piece, .. } => {
                if let Some((_, args)) = &mut call {
                    args.push_str(piece);
                }
            }
            Beat::Finish(end) => {
                let reason = match end {
                    End::Stop | End::ToolCalls => "STOP",
                    End::Length => "MAX_TOKENS",
                    End::Filtered => "SAFETY",
                };
                steps.push(response(json!([{"text": ""}]), Some(reason)));
            }
            Beat::Error => {
                let error = error_body(503, "The model is overloaded. Please try again later.");
                steps.push(Step::event(None, &error.to_string(), EOL));
            }
            Beat::Malformed => steps.push(Step::event(
                None,
                r#"{"candidates":[{"content":{"parts":[{"text":"oo"#,
                EOL,
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
