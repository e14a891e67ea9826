//! Each format, parsed the way a client would: the fake must send what the providers document.

use eventsource_stream::{Event, Eventsource};
use fake_upstream::{text_piece, FakeUpstream, REASONING_PIECES};
use futures_util::StreamExt;
use serde_json::{json, Value};

async fn read_events(res: reqwest::Response) -> (Vec<Event>, Option<String>) {
    let mut stream = res.bytes_stream().eventsource();
    let mut events = Vec::new();
    while let Some(item) = stream.next().await {
        match item {
            Ok(e) => events.push(e),
            Err(e) => return (events, Some(e.to_string())),
        }
    }
    (events, None)
}

fn client() -> reqwest::Client {
    reqwest::Client::new()
}

async fn openai(fake: &FakeUpstream, body: Value) -> reqwest::Response {
    client()
        .post(format!("{}/chat/completions", fake.openai_base_url()))
        .bearer_auth("sk-test")
        .json(&body)
        .send()
        .await
        .unwrap()
}

async fn anthropic(fake: &FakeUpstream, body: Value) -> reqwest::Response {
    client()
        .post(format!("{}/v1/messages", fake.base_url()))
        .header("x-api-key", "sk-ant-test")
        .header("anthropic-version", "2023-06-01")
        .json(&body)
        .send()
        .await
        .unwrap()
}

async fn gemini(fake: &FakeUpstream, model: &str, body: Value) -> reqwest::Response {
    client()
        .post(format!(
            "{}/v1beta/models/{model}:streamGenerateContent?alt=sse",
            fake.base_url()
        ))
        .header("x-goog-api-key", "AIza-test")
        .json(&body)
        .send()
        .await
        .unwrap()
}

fn json_of(e: &Event) -> Value {
    serde_json::from_str(&e.data).unwrap_or_else(|err| panic!("{err}: {}", e.data))
}

#[actix_rt::test]
async fn openai_stream_is_chunks_usage_and_done() {
    let fake = FakeUpstream::start().await.unwrap();
    let res = openai(
        &fake,
        json!({"model": "ok-4", "stream": true, "stream_options": {"include_usage": true},
               "messages": [{"role": "user", "content": "two words"}]}),
    )
    .await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["content-type"], "text/event-stream");
    let (events, err) = read_events(res).await;
    assert_eq!(err, None);
    let (last, chunks) = events.split_last().unwrap();
    assert_eq!(last.data, "[DONE]");
    let chunks: Vec<Value> = chunks.iter().map(json_of).collect();
    let (usage, chunks) = chunks.split_last().unwrap();
    assert_eq!(usage["choices"], json!([]));
    assert_eq!(
        usage["usage"],
        json!({"prompt_tokens": 2, "completion_tokens": 7, "total_tokens": 9,
               "completion_tokens_details": {"reasoning_tokens": 3}})
    );
    let mut reasoning = String::new();
    let mut text = String::new();
    for c in chunks {
        assert_eq!(c["object"], "chat.completion.chunk");
        assert_eq!(c["model"], "ok-4");
        assert!(c["usage"].is_null());
        let delta = &c["choices"][0]["delta"];
        reasoning.push_str(delta["reasoning_content"].as_str().unwrap_or(""));
        text.push_str(delta["content"].as_str().unwrap_or(""));
    }
    assert_eq!(reasoning, REASONING_PIECES.concat());
    assert_eq!(text, (0..4).map(text_piece).collect::<String>());
    assert_eq!(
        chunks.last().unwrap()["choices"][0]["finish_reason"],
        "stop"
    );
    assert_eq!(
        fake.requests()[0].header("authorization"),
        Some("Bearer sk-test")
    );
}

#[actix_rt::test]
async fn openai_without_include_usage_sends_no_usage_chunk() {
    let fake = FakeUpstream::start().await.unwrap();
    let res = openai(
        &fake,
        json!({"model": "ok-1", "stream": true, "max_tokens": 2,
               "messages": [{"role": "user", "content": "x"}]}),
    )
    .await;
    let (events, _) = read_events(res).await;
    let chunks: Vec<Value> = events[..events.len() - 1].iter().map(json_of).collect();
    assert!(chunks.iter().all(|c| c.get("usage").is_none()));
    assert_eq!(
        chunks.last().unwrap()["choices"][0]["finish_reason"],
        "length"
    );
}

#[actix_rt::test]
async fn openai_plain_completion_and_models() {
    let fake = FakeUpstream::start().await.unwrap();
    let res = openai(
        &fake,
        json!({"model": "ok-2", "messages": [{"role": "user", "content": "x"}]}),
    )
    .await;
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(body["choices"][0]["message"]["content"], "word0 word1 ");
    assert_eq!(body["choices"][0]["finish_reason"], "stop");
    assert_eq!(body["usage"]["completion_tokens"], 5);
    let models: Value = client()
        .get(format!("{}/models", fake.openai_base_url()))
        .bearer_auth("k")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(models["object"], "list");
    assert_eq!(models["data"][0]["id"], "ok");
}

#[actix_rt::test]
async fn openai_errors_have_openai_shape() {
    let fake = FakeUpstream::start().await.unwrap();
    for (model, status) in [
        ("fail-401", 401),
        ("nope", 404),
        ("fail-429", 429),
        ("fail-500", 500),
        ("fail-503", 503),
    ] {
        let res = openai(
            &fake,
            json!({"model": model, "stream": true, "messages": []}),
        )
        .await;
        assert_eq!(res.status(), status, "{model}");
        let retry = res.headers().get("retry-after").cloned();
        assert_eq!(retry.is_some(), status == 429, "{model}");
        let body: Value = res.json().await.unwrap();
        assert!(body["error"]["message"].is_string(), "{body}");
        assert!(body["error"]["type"].is_string(), "{body}");
    }
    let res = client()
        .post(format!("{}/chat/completions", fake.openai_base_url()))
        .json(&json!({"model": "ok", "messages": []}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
}

#[actix_rt::test]
async fn openai_misbehaving_streams() {
    let fake = FakeUpstream::start().await.unwrap();
    let ask = |model: &str| json!({"model": model, "stream": true, "messages": []});
    let (events, err) = read_events(openai(&fake, ask("midstream-error")).await).await;
    assert_eq!(err, None);
    assert_eq!(
        json_of(events.last().unwrap())["error"]["type"],
        "server_error"
    );

    let (events, err) = read_events(openai(&fake, ask("malformed")).await).await;
    assert_eq!(err, None);
    assert!(events
        .iter()
        .any(|e| e.data != "[DONE]" && serde_json::from_str::<Value>(&e.data).is_err()));

    let (events, err) = read_events(openai(&fake, ask("cut")).await).await;
    assert!(err.is_some(), "a cut must fail the body");
    assert!(events.iter().all(|e| e.data != "[DONE]"));

    flaky_then_ok(&fake).await;
}

async fn flaky_then_ok(fake: &FakeUpstream) {
    let ask = json!({"model": "flaky-2", "stream": true, "messages": []});
    assert_eq!(openai(fake, ask.clone()).await.status(), 503);
    assert_eq!(openai(fake, ask.clone()).await.status(), 503);
    assert_eq!(openai(fake, ask).await.status(), 200);
}

#[actix_rt::test]
async fn anthropic_stream_follows_the_event_sequence() {
    let fake = FakeUpstream::start().await.unwrap();
    let res = anthropic(
        &fake,
        json!({"model": "ok-3", "max_tokens": 2048, "stream": true, "system": "be brief",
               "thinking": {"type": "enabled", "budget_tokens": 1024},
               "messages": [{"role": "user", "content": "hi"}]}),
    )
    .await;
    assert_eq!(res.status(), 200);
    let (events, err) = read_events(res).await;
    assert_eq!(err, None);
    let names: Vec<&str> = events.iter().map(|e| e.event.as_str()).collect();
    assert_eq!(names[..2], ["message_start", "ping"]);
    assert_eq!(names[names.len() - 2..], ["message_delta", "message_stop"]);
    let mut thinking = String::new();
    let mut text = String::new();
    let mut blocks = Vec::new();
    for e in &events {
        let data = json_of(e);
        assert_eq!(data["type"], e.event, "event name matches data.type");
        match e.event.as_str() {
            "message_start" => assert_eq!(data["message"]["usage"]["input_tokens"], 3),
            "content_block_start" => blocks.push(data["content_block"]["type"].clone()),
            "content_block_delta" => match data["delta"]["type"].as_str().unwrap() {
                "thinking_delta" => thinking.push_str(data["delta"]["thinking"].as_str().unwrap()),
                "text_delta" => text.push_str(data["delta"]["text"].as_str().unwrap()),
                "signature_delta" => assert!(data["delta"]["signature"].is_string()),
                other => panic!("unexpected delta {other}"),
            },
            "message_delta" => {
                assert_eq!(data["delta"]["stop_reason"], "end_turn");
                assert_eq!(data["usage"]["output_tokens"], 6);
            }
            _ => {}
        }
    }
    assert_eq!(blocks, [json!("thinking"), json!("text")]);
    assert_eq!(thinking, REASONING_PIECES.concat());
    assert_eq!(text, "word0 word1 word2 ");
}

#[actix_rt::test]
async fn anthropic_checks_headers_and_roles() {
    let fake = FakeUpstream::start().await.unwrap();
    let no_version = client()
        .post(format!("{}/v1/messages", fake.base_url()))
        .header("x-api-key", "k")
        .json(&json!({"model": "ok", "max_tokens": 10, "messages": []}))
        .send()
        .await
        .unwrap();
    assert_eq!(no_version.status(), 400);
    let system_in_messages = anthropic(
        &fake,
        json!({"model": "ok", "max_tokens": 10, "stream": true,
               "messages": [{"role": "system", "content": "x"}]}),
    )
    .await;
    assert_eq!(system_in_messages.status(), 400);
    let body: Value = system_in_messages.json().await.unwrap();
    assert_eq!(body["type"], "error");
    assert_eq!(body["error"]["type"], "invalid_request_error");
}

#[actix_rt::test]
async fn anthropic_errors_and_midstream_error() {
    let fake = FakeUpstream::start().await.unwrap();
    let ask =
        |model: &str| json!({"model": model, "max_tokens": 64, "stream": true, "messages": []});
    for (model, status, kind) in [
        ("fail-401", 401, "authentication_error"),
        ("fail-429", 429, "rate_limit_error"),
        ("fail-529", 529, "overloaded_error"),
        ("fail-500", 500, "api_error"),
    ] {
        let res = anthropic(&fake, ask(model)).await;
        assert_eq!(res.status().as_u16(), status);
        assert_eq!(res.headers().contains_key("retry-after"), status == 429);
        let body: Value = res.json().await.unwrap();
        assert_eq!(body["error"]["type"], kind);
    }
    let (events, err) = read_events(anthropic(&fake, ask("midstream-error")).await).await;
    assert_eq!(err, None);
    let last = events.last().unwrap();
    assert_eq!(last.event, "error");
    assert_eq!(json_of(last)["error"]["type"], "overloaded_error");
    assert!(events.iter().all(|e| e.event != "message_stop"));
}

#[actix_rt::test]
async fn gemini_stream_marks_thoughts_and_finishes() {
    let fake = FakeUpstream::start().await.unwrap();
    let res = gemini(
        &fake,
        "ok-2",
        json!({"contents": [{"role": "user", "parts": [{"text": "hello you"}]}],
               "systemInstruction": {"parts": [{"text": "be brief"}]},
               "generationConfig": {"thinkingConfig": {"includeThoughts": true}}}),
    )
    .await;
    assert_eq!(res.status(), 200);
    let (events, err) = read_events(res).await;
    assert_eq!(err, None);
    let mut thoughts = String::new();
    let mut text = String::new();
    for e in &events {
        let data = json_of(e);
        for part in data["candidates"][0]["content"]["parts"]
            .as_array()
            .unwrap()
        {
            let t = part["text"].as_str().unwrap();
            if part["thought"] == true {
                thoughts.push_str(t)
            } else {
                text.push_str(t)
            }
        }
    }
    assert_eq!(thoughts, REASONING_PIECES.concat());
    assert_eq!(text, "word0 word1 ");
    let last = json_of(events.last().unwrap());
    assert_eq!(last["candidates"][0]["finishReason"], "STOP");
    assert_eq!(
        last["usageMetadata"],
        json!({"promptTokenCount": 4, "candidatesTokenCount": 2, "thoughtsTokenCount": 3,
               "totalTokenCount": 9})
    );
}

#[actix_rt::test]
async fn gemini_errors_and_key_check() {
    let fake = FakeUpstream::start().await.unwrap();
    let ask = json!({"contents": []});
    for (model, status, name) in [
        ("fail-429", 429, "RESOURCE_EXHAUSTED"),
        ("fail-500", 500, "INTERNAL"),
        ("fail-503", 503, "UNAVAILABLE"),
    ] {
        let res = gemini(&fake, model, ask.clone()).await;
        assert_eq!(res.status().as_u16(), status);
        let body: Value = res.json().await.unwrap();
        assert_eq!(body["error"]["code"], status);
        assert_eq!(body["error"]["status"], name);
    }
    let no_key = client()
        .post(format!(
            "{}/v1beta/models/ok:streamGenerateContent?alt=sse",
            fake.base_url()
        ))
        .json(&ask)
        .send()
        .await
        .unwrap();
    assert_eq!(no_key.status(), 403);
    let query_key = client()
        .post(format!(
            "{}/v1beta/models/ok-1:streamGenerateContent?alt=sse&key=AIza",
            fake.base_url()
        ))
        .json(&ask)
        .send()
        .await
        .unwrap();
    assert_eq!(query_key.status(), 200);
}

#[actix_rt::test]
async fn dropping_a_stalled_stream_is_seen_by_the_fake() {
    let fake = FakeUpstream::start().await.unwrap();
    let res = openai(
        &fake,
        json!({"model": "stall", "stream": true, "messages": []}),
    )
    .await;
    assert_eq!(res.status(), 200);
    assert_eq!(fake.open_streams(), 1);
    drop(res);
    for _ in 0..100 {
        if fake.open_streams() == 0 {
            break;
        }
        actix_rt::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(fake.open_streams(), 0);
    assert_eq!(fake.abandoned_streams(), 1);
}
