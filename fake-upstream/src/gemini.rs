//! The Gemini format (`POST /v1beta/models/{model}:streamGenerateContent?alt=sse`).

use actix_web::{http::StatusCode, web, HttpRequest, HttpResponse};
use serde_json::{json, Value};

use crate::{
    body::{event_stream, Step},
    plan::{plan, prompt_tokens, Ask, Beat, Counts, End},
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
        text: None,
        tool_calls: vec![],
    });
    let steps = stream(model, prompt_tokens(&body), &beats);
    event_stream(state.into_inner(), steps)
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
    for beat in beats {
        match beat {
            Beat::Reasoning(t) => steps.push(response(json!([{"text": t, "thought": true}]), None)),
            Beat::Text(t) => steps.push(response(json!([{"text": t}]), None)),
            Beat::Pause(d) => steps.push(Step::Pause(*d)),
            // Not asked of this API's fake yet.
            Beat::ToolCall { .. } | Beat::ToolArgs { .. } => {}
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
