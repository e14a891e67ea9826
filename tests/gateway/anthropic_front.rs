//! The Anthropic-compatible front, `POST /v1/messages`, driven by the official `anthropic`
//! Python package (tests/python/requirements.txt) and by a raw HTTP client, routed to every
//! provider of the fake upstream.

use ai_gateway::config::{ModelSettings, ProviderSettings};
use ai_gateway_actors::{provider::ApiKey, AnthropicSettings, GeminiSettings, OpenAiSettings};
use fake_upstream::{text_piece, FakeUpstream};
use serde_json::{json, Value};

use crate::support::*;

/// Models `gpt`, `sonnet` and `flash`, on the fake's OpenAI, Anthropic and Gemini APIs.
async fn gateway(fake: &FakeUpstream) -> TestGateway {
    let openai = OpenAiSettings::new(fake.openai_base_url(), Some(ApiKey::new("sk-test")));
    let anthropic = AnthropicSettings::new(fake.base_url(), ApiKey::new("sk-ant-test"));
    let mut gemini = GeminiSettings::new(fake.base_url(), ApiKey::new("gem-test"));
    gemini.include_thoughts = false;
    start_with(move |c| {
        c.providers
            .insert("fake".into(), ProviderSettings::Openai(openai));
        c.providers
            .insert("claude".into(), ProviderSettings::Anthropic(anthropic));
        c.providers
            .insert("gem".into(), ProviderSettings::Gemini(gemini));
        for (name, provider) in [("gpt", "fake"), ("sonnet", "claude"), ("flash", "gem")] {
            c.models.insert(
                name.into(),
                ModelSettings {
                    provider: provider.into(),
                    upstream_model: "ok-5".into(),
                    fallback: vec![],
                    max_retries: Some(0),
                    drop_params: false,
                },
            );
        }
    })
    .await
}

async fn api_key(t: &TestGateway) -> String {
    let (_, token) = t.new_user().await;
    let res = t
        .http
        .post(t.url("/v1/keys"))
        .bearer_auth(&token)
        .json(&json!({"name": "sdk"}))
        .send()
        .await
        .unwrap();
    res.json::<Value>().await.unwrap()["key"]
        .as_str()
        .unwrap()
        .to_owned()
}

#[actix_rt::test]
async fn the_official_anthropic_client_works_on_every_provider() {
    let fake = FakeUpstream::start().await.unwrap();
    let t = gateway(&fake).await;
    let key = api_key(&t).await;
    let out = tokio::process::Command::new("python3")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/python/anthropic_client.py"
        ))
        .arg(format!("http://{}", t.gw.local_addr()))
        .arg(&key)
        .args(["gpt", "sonnet", "flash"])
        .env("THINKING_MODELS", "sonnet")
        .output()
        .await
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "the anthropic client failed (scripts/test installs tests/python/requirements.txt):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let seen: Value = serde_json::from_slice(&out.stdout).unwrap();
    let words: String = (0..5).map(text_piece).collect();
    for model in ["gpt", "sonnet", "flash"] {
        let m = &seen[model];
        assert_eq!(m["stream"]["text"], words.as_str(), "{model}: {seen}");
        assert_eq!(m["stream"]["stop_reason"], "end_turn", "{model}");
        assert!(
            m["stream"]["output_tokens"].as_u64().unwrap() > 0,
            "{model}"
        );
        assert_eq!(
            m["tool_call"],
            json!({"stop_reason": "tool_use", "name": "get_weather", "input": {"city": "fake"}}),
            "{model}"
        );
        assert!(
            m["round_trip"]["text"]
                .as_str()
                .unwrap()
                .ends_with("said: sunny"),
            "{model}: {seen}"
        );
        assert_eq!(m["round_trip"]["stop_reason"], "end_turn");
        assert_eq!(m["image"], "I see 1 image(s).", "{model}");
    }
    // Claude's signed thinking survives the tool round trip (the fake, like the API, refuses
    // the second turn unless it starts with the thinking block and its signature).
    let thinking = &seen["sonnet"]["thinking_round_trip"];
    assert_eq!(
        thinking["blocks"],
        json!(["thinking", "tool_use"]),
        "{thinking}"
    );
    assert_eq!(thinking["signature"], "RmFrZVNpZ25hdHVyZQ==", "{thinking}");
    assert_eq!(thinking["stop_reason"], "end_turn", "{thinking}");
    assert_eq!(thinking["answer_blocks"][0], "thinking", "{thinking}");
    assert_eq!(
        thinking["answer_signature"], "RmFrZVNpZ25hdHVyZQ==",
        "a plain response carries the signature too"
    );
    assert_eq!(
        seen["bad_key"],
        json!({"status": 401, "type": "authentication_error"})
    );
    assert_eq!(
        seen["unknown_model"],
        json!({"status": 404, "type": "not_found_error"})
    );
    assert_eq!(seen["server_tool"]["status"], 400, "{seen}");
    assert!(seen["server_tool"]["message"]
        .as_str()
        .unwrap()
        .contains("tools.0.type"));
    assert_eq!(seen["bearer"], "end_turn");
}

#[actix_rt::test]
async fn streamed_events_follow_anthropics_order() {
    let fake = FakeUpstream::start().await.unwrap();
    let t = gateway(&fake).await;
    let key = api_key(&t).await;
    let res = t
        .http
        .post(t.url("/v1/messages"))
        .header("x-api-key", &key)
        .json(&json!({"model": "gpt", "max_tokens": 50, "stream": true,
            "tools": [{"name": "get_weather", "input_schema": {"type": "object",
                "properties": {"city": {"type": "string"}}}}],
            "messages": [{"role": "user", "content": "weather?"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let text = res.text().await.unwrap();
    let events: Vec<(String, Value)> = text
        .split("\n\n")
        .filter(|e| !e.is_empty())
        .map(|e| {
            let mut lines = e.lines();
            let name = lines.next().unwrap().strip_prefix("event: ").unwrap();
            let data = lines.next().unwrap().strip_prefix("data: ").unwrap();
            let data: Value = serde_json::from_str(data).unwrap();
            assert_eq!(data["type"], name);
            (name.to_owned(), data)
        })
        .collect();
    let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names.first(), Some(&"message_start"));
    assert_eq!(&names[names.len() - 2..], ["message_delta", "message_stop"]);
    let start = events
        .iter()
        .find(|(n, _)| n == "content_block_start")
        .unwrap();
    assert_eq!(start.1["content_block"]["type"], "tool_use");
    assert_eq!(start.1["content_block"]["name"], "get_weather");
    let json: String = events
        .iter()
        .filter(|(n, _)| n == "content_block_delta")
        .map(|(_, d)| d["delta"]["partial_json"].as_str().unwrap())
        .collect();
    assert_eq!(json, r#"{"city":"fake"}"#);
    let delta = &events[events.len() - 2].1;
    assert_eq!(delta["delta"]["stop_reason"], "tool_use");
    assert!(delta["usage"]["output_tokens"].as_u64().unwrap() > 0);
}

#[actix_rt::test]
async fn errors_on_v1_messages_are_in_anthropics_shape() {
    let fake = FakeUpstream::start().await.unwrap();
    let t = gateway(&fake).await;
    let key = api_key(&t).await;
    let post = |body: Value, key: Option<&str>| {
        let mut req = t.http.post(t.url("/v1/messages")).json(&body);
        if let Some(key) = key {
            req = req.header("x-api-key", key);
        }
        req.send()
    };
    let ask = json!({"model": "gpt", "max_tokens": 10,
        "messages": [{"role": "user", "content": "hi"}]});
    for (body, key, status, kind) in [
        (ask.clone(), None, 401, "authentication_error"),
        (
            json!({"model": "gpt", "messages": []}),
            Some(key.as_str()),
            400,
            "invalid_request_error",
        ),
        (
            json!({"model": "nope", "max_tokens": 10, "messages": [{"role": "user", "content": "x"}]}),
            Some(key.as_str()),
            404,
            "not_found_error",
        ),
        (
            json!({"model": "gpt", "max_tokens": 10, "top_k": 5,
                "messages": [{"role": "user", "content": "x"}]}),
            Some(key.as_str()),
            400,
            "invalid_request_error",
        ),
    ] {
        let res = post(body.clone(), key).await.unwrap();
        assert_eq!(res.status(), status, "{body}");
        let got: Value = res.json().await.unwrap();
        assert_eq!(got["type"], "error", "{got}");
        assert_eq!(got["error"]["type"], kind, "{got}");
        assert!(got["error"]["message"].is_string(), "{got}");
    }
    // A parameter the provider cannot take is named (Anthropic: seed has no equivalent, but
    // here the model is on Gemini, which refuses `user`).
    let res = post(
        json!({"model": "flash", "max_tokens": 10, "metadata": {"user_id": "u"},
            "messages": [{"role": "user", "content": "x"}]}),
        Some(&key),
    )
    .await
    .unwrap();
    assert_eq!(res.status(), 400);
    let got: Value = res.json().await.unwrap();
    assert!(
        got["error"]["message"].as_str().unwrap().contains("user"),
        "{got}"
    );
}
