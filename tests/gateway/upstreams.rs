//! Real providers behind the gateway, against the in-process fake upstream: routing, retries,
//! fallback, the circuit breaker, timeouts, errors that are never quiet, and cancellation.

use std::time::{Duration, Instant};

use ai_gateway::config::{ModelSettings, ProviderSettings, ResilienceSettings};
use ai_gateway_actors::{provider::ApiKey, AnthropicSettings, GeminiSettings, OpenAiSettings};
use fake_upstream::FakeUpstream;
use serde_json::{json, Value};

use crate::support::*;

fn model(provider: &str, upstream: &str) -> ModelSettings {
    ModelSettings {
        provider: provider.into(),
        upstream_model: upstream.into(),
        fallback: vec![],
        max_retries: None,
        drop_params: false,
    }
}

/// A gateway with providers `fake` (OpenAI-compatible), `claude` and `gem` on the fake upstream,
/// and `models` on top; quick retries and timeouts.
async fn gateway_on(fake: &FakeUpstream, models: &[(&str, ModelSettings)]) -> TestGateway {
    gateway_with(fake, models, |_| {}).await
}

async fn gateway_with(
    fake: &FakeUpstream,
    models: &[(&str, ModelSettings)],
    tweak: impl FnOnce(&mut ai_gateway::Config),
) -> TestGateway {
    let mut openai = OpenAiSettings::new(fake.openai_base_url(), Some(ApiKey::new("sk-test")));
    openai.first_chunk_timeout_ms = 500;
    openai.idle_chunk_timeout_ms = 500;
    let mut anthropic = AnthropicSettings::new(fake.base_url(), ApiKey::new("sk-ant-test"));
    anthropic.thinking_budget_tokens = Some(1024);
    let gemini = GeminiSettings::new(fake.base_url(), ApiKey::new("gem-test"));
    let models: Vec<(String, ModelSettings)> = models
        .iter()
        .map(|(n, m)| (n.to_string(), m.clone()))
        .collect();
    start_with(move |c| {
        c.providers
            .insert("fake".into(), ProviderSettings::Openai(openai));
        c.providers
            .insert("claude".into(), ProviderSettings::Anthropic(anthropic));
        c.providers
            .insert("gem".into(), ProviderSettings::Gemini(gemini));
        c.models.extend(models);
        c.resilience = ResilienceSettings {
            max_retries: 2,
            retry_backoff_ms: 10,
            max_retry_delay_ms: 5_000,
            breaker_failure_threshold: 100,
            breaker_open_ms: 60_000,
        };
        tweak(c);
    })
    .await
}

fn ask(id: &str, model: &str) -> Value {
    json!({"type": "chat", "id": id, "payload": {"content": "hello", "model": model}})
}

#[actix_rt::test]
async fn each_provider_streams_through_the_gateway() {
    let fake = FakeUpstream::start().await.unwrap();
    let t = gateway_on(
        &fake,
        &[
            ("gpt", model("fake", "ok-5")),
            ("sonnet", model("claude", "ok-5")),
            ("flash", model("gem", "ok-5")),
        ],
    )
    .await;
    let mut ws = t.client().await;
    for name in ["gpt", "sonnet", "flash"] {
        ws.send_json(ask(name, name)).await;
        let a = ws.answer(name).await;
        a.assert_in_order();
        assert!(a.errors.is_empty(), "{name}: {:?}", a.errors);
        assert!(!a.text_of("reasoning").is_empty(), "{name}: no reasoning");
        assert!(!a.text_of("text").is_empty(), "{name}: no text");
        assert_eq!(a.finish_reason(), "stop");
        assert!(
            a.done["payload"]["usage"]["completion_tokens"]
                .as_u64()
                .unwrap()
                > 0,
            "{name}"
        );
        assert_eq!(a.chunks[0]["payload"]["model"], name);
    }
    let paths: Vec<String> = fake.requests().iter().map(|r| r.path.clone()).collect();
    assert_eq!(paths.len(), 3, "{paths:?}");
    assert!(paths[0].ends_with("/chat/completions"));
    assert!(paths[1].ends_with("/v1/messages"));
    assert!(paths[2].contains(":streamGenerateContent"));
}

#[actix_rt::test]
async fn retries_until_the_upstream_recovers() {
    let fake = FakeUpstream::start().await.unwrap();
    let t = gateway_on(&fake, &[("flaky", model("fake", "flaky-2"))]).await;
    let mut ws = t.client().await;
    ws.send_json(ask("f", "flaky")).await;
    let a = ws.answer("f").await;
    assert!(a.errors.is_empty(), "{:?}", a.errors);
    assert_eq!(a.finish_reason(), "stop");
    assert_eq!(fake.requests().len(), 3, "two 503s, then the answer");
}

#[actix_rt::test]
async fn a_fallback_answers_when_the_primary_fails() {
    let fake = FakeUpstream::start().await.unwrap();
    let primary = ModelSettings {
        fallback: vec!["backup".into()],
        max_retries: Some(0),
        ..model("fake", "fail-500")
    };
    let t = gateway_on(
        &fake,
        &[("primary", primary), ("backup", model("claude", "ok-3"))],
    )
    .await;
    let mut ws = t.client().await;
    ws.send_json(ask("p", "primary")).await;
    let a = ws.answer("p").await;
    assert!(a.errors.is_empty(), "{:?}", a.errors);
    assert_eq!(a.finish_reason(), "stop");
    let paths: Vec<String> = fake.requests().iter().map(|r| r.path.clone()).collect();
    assert_eq!(paths.len(), 2);
    assert!(
        paths[1].ends_with("/v1/messages"),
        "the fallback is the Anthropic one: {paths:?}"
    );
}

#[actix_rt::test]
async fn retry_after_is_honoured_then_the_error_is_told() {
    let fake = FakeUpstream::start().await.unwrap();
    let limited = ModelSettings {
        max_retries: Some(1),
        ..model("fake", "fail-429")
    };
    let t = gateway_on(&fake, &[("limited", limited)]).await;
    let mut ws = t.client().await;
    let sent = Instant::now();
    ws.send_json(ask("l", "limited")).await;
    let a = ws.answer("l").await;
    assert!(
        sent.elapsed() >= Duration::from_millis(950),
        "retried before Retry-After"
    );
    assert_eq!(a.errors.len(), 1);
    assert_eq!(a.errors[0]["payload"]["reason"], "rate_limited");
    assert_eq!(a.finish_reason(), "error");
    assert_eq!(fake.requests().len(), 2);
}

#[actix_rt::test]
async fn broken_streams_are_errors_never_quiet_ends() {
    let fake = FakeUpstream::start().await.unwrap();
    let t = gateway_on(
        &fake,
        &[
            ("mid", model("fake", "midstream-error")),
            ("bad", model("fake", "malformed")),
            ("cut", model("claude", "cut")),
            ("stall", model("fake", "stall")),
            ("stall-later", model("fake", "stall-after-2")),
        ],
    )
    .await;
    let mut ws = t.client().await;
    for (name, reason) in [
        ("mid", "provider_error"),
        ("bad", "provider_error"),
        ("cut", "provider_unavailable"),
        ("stall", "provider_timeout"),
        ("stall-later", "provider_timeout"),
    ] {
        ws.send_json(ask(name, name)).await;
        let a = ws.answer(name).await;
        assert_eq!(a.errors.len(), 1, "{name}: {:?}", a.errors);
        assert_eq!(
            a.errors[0]["payload"]["reason"], reason,
            "{name}: {:?}",
            a.errors[0]
        );
        assert!(!a.errors[0]["payload"]["message"]
            .as_str()
            .unwrap()
            .is_empty());
        assert_eq!(a.finish_reason(), "error", "{name}");
    }
    // Chunks had reached the client before each mid-stream failure: none was retried.
    let mid_calls = fake
        .requests()
        .iter()
        .filter(|r| r.body["model"] == "midstream-error")
        .count();
    assert_eq!(mid_calls, 1);
}

#[actix_rt::test]
async fn the_breaker_opens_and_fails_fast() {
    let fake = FakeUpstream::start().await.unwrap();
    let down = ModelSettings {
        max_retries: Some(0),
        ..model("fake", "fail-500")
    };
    let t = gateway_with(&fake, &[("down", down)], |c| {
        c.resilience.breaker_failure_threshold = 2;
    })
    .await;
    let mut ws = t.client().await;
    for i in 0..2 {
        let id = format!("d{i}");
        ws.send_json(ask(&id, "down")).await;
        let a = ws.answer(&id).await;
        assert_eq!(a.errors[0]["payload"]["reason"], "provider_error");
    }
    assert_eq!(fake.requests().len(), 2);
    ws.send_json(ask("fast", "down")).await;
    let a = ws.answer("fast").await;
    assert_eq!(a.errors[0]["payload"]["reason"], "provider_unavailable");
    assert!(
        a.errors[0]["payload"]["message"]
            .as_str()
            .unwrap()
            .contains("circuit open"),
        "{:?}",
        a.errors[0]
    );
    assert_eq!(
        fake.requests().len(),
        2,
        "the open breaker kept the call home"
    );
}

#[actix_rt::test]
async fn cancel_aborts_the_upstream_request() {
    let fake = FakeUpstream::start().await.unwrap();
    let t = gateway_on(&fake, &[("drip", model("fake", "slow-drip"))]).await;
    let mut ws = t.client().await;
    ws.send_json(ask("d", "drip")).await;
    assert_eq!(ws.next_json().await["type"], "chat");
    assert_eq!(fake.open_streams(), 1);
    ws.send_json(json!({"type": "cancel", "id": "d"})).await;
    loop {
        let f = ws.next_json().await;
        if f["type"] == "done" {
            assert_eq!(f["payload"]["finish_reason"], "cancelled");
            break;
        }
    }
    let deadline = Instant::now() + Duration::from_secs(3);
    while fake.open_streams() > 0 {
        assert!(
            Instant::now() < deadline,
            "the upstream stream is still open"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(fake.abandoned_streams(), 1);
}

#[actix_rt::test]
async fn models_are_listed_and_unknown_ones_named() {
    let fake = FakeUpstream::start().await.unwrap();
    let t = gateway_on(&fake, &[("gpt", model("fake", "ok"))]).await;
    let (_, token) = t.new_user().await;
    let res = t
        .http
        .get(t.url("/v1/models"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let body: Value = res.json().await.unwrap();
    let ids: Vec<&str> = body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["gpt", "mock"]);
    assert_eq!(body["data"][0]["owned_by"], "openai");
    assert_eq!(
        t.http
            .get(t.url("/v1/models"))
            .send()
            .await
            .unwrap()
            .status(),
        401
    );

    let mut ws = t.connect(&token).await;
    ws.send_json(ask("x", "nope")).await;
    let f = ws.next_json().await;
    assert_eq!(f["payload"]["reason"], "unknown_model");
    assert!(
        f["payload"]["message"]
            .as_str()
            .unwrap()
            .contains("gpt, mock"),
        "{f}"
    );
}

/// A plain `/v1/chat/completions` answer from `model`.
async fn complete(t: &TestGateway, token: &str, body: Value) -> (u16, Value) {
    let res = t
        .http
        .post(t.url("/v1/chat/completions"))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .unwrap();
    (res.status().as_u16(), res.json().await.unwrap())
}

#[actix_rt::test]
async fn tools_round_trip_on_every_provider_through_the_openai_front() {
    let fake = FakeUpstream::start().await.unwrap();
    let t = gateway_on(
        &fake,
        &[
            ("gpt", model("fake", "ok-5")),
            ("sonnet", model("claude", "ok-5")),
            ("flash", model("gem", "ok-5")),
        ],
    )
    .await;
    let (_, token) = t.new_user().await;
    let tools = json!([{"type": "function", "function": {"name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]);
    for name in ["gpt", "sonnet", "flash"] {
        let ask = json!([{"role": "user", "content": "weather?"}]);
        let (status, first) = complete(
            &t,
            &token,
            json!({"model": name, "messages": ask, "tools": tools}),
        )
        .await;
        assert_eq!(status, 200, "{name}: {first}");
        let choice = &first["choices"][0];
        assert_eq!(choice["finish_reason"], "tool_calls", "{name}: {first}");
        let call = choice["message"]["tool_calls"][0].clone();
        assert_eq!(call["function"]["name"], "get_weather", "{name}");
        assert_eq!(
            call["function"]["arguments"], r#"{"city":"fake"}"#,
            "{name}"
        );
        let (status, second) = complete(
            &t,
            &token,
            json!({"model": name, "tools": tools, "messages": [
                {"role": "user", "content": "weather?"},
                {"role": "assistant", "content": null, "tool_calls": [call]},
                {"role": "tool", "tool_call_id": call["id"], "content": "sunny"},
            ]}),
        )
        .await;
        assert_eq!(status, 200, "{name}: {second}");
        let text = second["choices"][0]["message"]["content"].as_str().unwrap();
        assert!(text.ends_with("said: sunny"), "{name}: {text}");
    }
    // Claude thinks (thinking_budget_tokens): the OpenAI front has no place for its signed
    // thinking, so the node put it back at the start of the assistant's turn, as the API wants.
    let round_trip = fake
        .requests()
        .into_iter()
        .rfind(|r| r.path == "/v1/messages")
        .unwrap()
        .body;
    assert_eq!(round_trip["thinking"]["type"], "enabled", "{round_trip}");
    let turn = &round_trip["messages"][1]["content"];
    assert_eq!(turn[0]["type"], "thinking", "{round_trip}");
    assert_eq!(turn[0]["signature"], "RmFrZVNpZ25hdHVyZQ==", "{round_trip}");
    assert_eq!(turn[1]["type"], "tool_use", "{round_trip}");

    // A call whose thinking the node never saw (another node answered it): the turn goes
    // without thinking instead of being refused.
    let (status, body) = complete(
        &t,
        &token,
        json!({"model": "sonnet", "tools": tools, "messages": [
            {"role": "user", "content": "weather?"},
            {"role": "assistant", "content": null, "tool_calls": [{"id": "toolu_elsewhere",
                "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": "toolu_elsewhere", "content": "rainy"},
        ]}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let sent = fake.requests().into_iter().last().unwrap().body;
    assert!(sent.get("thinking").is_none(), "{sent}");
}

#[actix_rt::test]
async fn a_parameter_a_provider_cannot_take_is_refused_unless_the_model_drops_it() {
    let fake = FakeUpstream::start().await.unwrap();
    let loose = ModelSettings {
        drop_params: true,
        ..model("claude", "ok-5")
    };
    let t = gateway_on(
        &fake,
        &[("strict", model("claude", "ok-5")), ("loose", loose)],
    )
    .await;
    let (_, token) = t.new_user().await;
    let ask = |model: &str| {
        json!({"model": model, "seed": 7, "top_p": 0.5, "logprobs": true,
            "messages": [{"role": "user", "content": "hi"}]})
    };
    let (status, body) = complete(&t, &token, ask("strict")).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["param"], "seed", "{body}");
    assert_eq!(body["error"]["code"], "invalid_payload");
    assert!(
        body["error"]["message"].as_str().unwrap().contains("seed"),
        "{body}"
    );
    assert!(fake.requests().is_empty(), "nothing reached the upstream");

    let (status, body) = complete(&t, &token, ask("loose")).await;
    assert_eq!(status, 200, "{body}");
    let sent = fake.requests()[0].body.clone();
    assert!(sent.get("seed").is_none(), "{sent}");
    assert!(sent.get("logprobs").is_none(), "{sent}");
    assert_eq!(sent["top_p"], 0.5, "what Anthropic takes is kept: {sent}");
}

#[actix_rt::test]
async fn websocket_chat_carries_tools_parts_and_parameters_to_every_provider() {
    let fake = FakeUpstream::start().await.unwrap();
    let t = gateway_on(
        &fake,
        &[
            ("gpt", model("fake", "ok-5")),
            ("sonnet", model("claude", "ok-5")),
            ("flash", model("gem", "ok-5")),
        ],
    )
    .await;
    let mut ws = t.client().await;
    let tools = json!([{"name": "get_weather", "description": "The weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}]);
    for name in ["gpt", "sonnet", "flash"] {
        // The model calls the tool: `tool_call` chunks, then done with tool_calls.
        let id = format!("{name}-call");
        ws.send_json(json!({"type": "chat", "id": id, "payload": {"model": name,
            "content": "weather?", "tools": tools, "tool_choice": {"name": "get_weather"}}}))
            .await;
        let a = ws.answer(&id).await;
        a.assert_in_order();
        assert!(a.errors.is_empty(), "{name}: {:?}", a.errors);
        assert_eq!(a.finish_reason(), "tool_calls", "{name}");
        let calls: Vec<&Value> = a
            .chunks
            .iter()
            .filter(|c| c["payload"]["type"] == "tool_call")
            .collect();
        let first = &calls[0]["payload"]["tool_call"];
        assert_eq!(first["index"], 0, "{name}");
        assert_eq!(first["name"], "get_weather", "{name}");
        let call_id = first["id"].as_str().unwrap().to_owned();
        assert_eq!(a.text_of("tool_call"), r#"{"city":"fake"}"#, "{name}");
        // Text chunks keep the seed's shape: no tool_call field.
        assert!(a
            .chunks
            .iter()
            .filter(|c| c["payload"]["type"] != "tool_call")
            .all(|c| c["payload"].get("tool_call").is_none()));

        // The round trip, as `messages`: the assistant's call and the tool's result.
        let id = format!("{name}-result");
        ws.send_json(
            json!({"type": "chat", "id": id, "payload": {"model": name, "tools": tools,
            "messages": [
                {"role": "user", "content": "weather?"},
                {"role": "assistant", "tool_calls": [{"id": call_id, "name": "get_weather",
                    "arguments": a.text_of("tool_call")}]},
                {"role": "tool", "tool_call_id": call_id, "content": "sunny"},
            ]}}),
        )
        .await;
        let a = ws.answer(&id).await;
        assert!(a.errors.is_empty(), "{name}: {:?}", a.errors);
        assert_eq!(a.finish_reason(), "stop");
        assert!(a.text_of("text").ends_with("said: sunny"), "{name}");

        // An image part.
        let id = format!("{name}-image");
        ws.send_json(json!({"type": "chat", "id": id, "payload": {"model": name,
        "messages": [{"role": "user", "content": [
            {"type": "text", "text": "what is this?"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
        ]}]}}))
        .await;
        let a = ws.answer(&id).await;
        assert!(a.errors.is_empty(), "{name}: {:?}", a.errors);
        assert_eq!(a.text_of("text"), "I see 1 image(s).", "{name}");
    }

    // Structured output and parameters reach the upstream (OpenAI and Gemini take them).
    let schema = json!({"type": "object", "properties": {"ok": {"type": "boolean"}}});
    for name in ["gpt", "flash"] {
        let id = format!("{name}-json");
        ws.send_json(json!({"type": "chat", "id": id, "payload": {"model": name,
            "content": "ok?", "seed": 5, "top_p": 0.5, "stop": ["END"],
            "response_format": {"type": "json_schema",
                "json_schema": {"name": "answer", "schema": schema}}}}))
            .await;
        let a = ws.answer(&id).await;
        assert!(a.errors.is_empty(), "{name}: {:?}", a.errors);
        assert_eq!(a.text_of("text"), r#"{"ok":true}"#, "{name}");
    }
    let requests = fake.requests();
    let openai = &requests
        .iter()
        .rev()
        .find(|r| r.path.ends_with("/chat/completions"))
        .unwrap()
        .body;
    assert_eq!(openai["seed"], 5);
    assert_eq!(openai["top_p"], 0.5);
    assert_eq!(openai["stop"], json!(["END"]));
    assert_eq!(openai["response_format"]["json_schema"]["name"], "answer");
    let gemini = &requests.last().unwrap().body["generationConfig"];
    assert_eq!(gemini["seed"], 5);
    assert_eq!(gemini["responseMimeType"], "application/json");

    // What a provider cannot take is an error frame that names it, never a quiet drop.
    ws.send_json(
        json!({"type": "chat", "id": "seeded", "payload": {"model": "sonnet",
        "content": "hi", "seed": 5}}),
    )
    .await;
    let a = ws.answer("seeded").await;
    assert_eq!(a.finish_reason(), "error");
    assert_eq!(
        a.errors[0]["payload"]["reason"], "invalid_payload",
        "{:?}",
        a.errors
    );
    assert_eq!(a.errors[0]["payload"]["code"], 400);
    assert!(a.errors[0]["payload"]["message"]
        .as_str()
        .unwrap()
        .contains("seed"));
}

#[actix_rt::test]
async fn usage_an_upstream_does_not_report_is_estimated_and_counted() {
    let fake = FakeUpstream::start().await.unwrap();
    // Usage records in PostgreSQL: the estimate is stored with its mark.
    let db = TestDatabase::create().await;
    let t = gateway_with(&fake, &[("quiet", model("fake", "ok-5"))], |c| {
        c.database_url = db.url();
        if let Some(ProviderSettings::Openai(s)) = c.providers.get_mut("fake") {
            // No stream_options.include_usage: the fake then sends no usage chunk.
            s.include_usage = false;
        }
    })
    .await;
    let (_, token) = t.new_user().await;
    let mut ws = t.connect(&token).await;
    ws.send_json(ask("q", "quiet")).await;
    let a = ws.answer("q").await;
    assert!(a.errors.is_empty(), "{:?}", a.errors);
    let usage = &a.done["payload"]["usage"];
    assert_eq!(usage["estimated"], true, "{usage}");
    let answer = a.text_of("reasoning") + &a.text_of("text");
    // Not an OpenAI model name: a token per four bytes.
    assert_eq!(
        usage["completion_tokens"].as_u64().unwrap(),
        (answer.len() as u64).div_ceil(4),
        "{usage}"
    );
    assert!(usage["prompt_tokens"].as_u64().unwrap() > 0, "{usage}");
    assert!(
        fake.requests()[0].body.get("stream_options").is_none(),
        "the upstream was not asked for usage"
    );

    // The same figure reaches the usage records (and so budgets and /v1/usage).
    t.gw.flush_writes().await;
    let res = t
        .http
        .get(t.url("/v1/usage"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    let totals: Value = res.json().await.unwrap();
    let row = &totals["totals"][0];
    assert_eq!(row["model"], "quiet", "{totals}");
    assert_eq!(
        row["completion_tokens"], usage["completion_tokens"],
        "{totals}"
    );
    assert_eq!(row["prompt_tokens"], usage["prompt_tokens"], "{totals}");
    assert_eq!(row["estimated_requests"], 1, "{totals}");
    let stored = db
        .client()
        .await
        .query_one("SELECT estimated FROM usage_records", &[])
        .await
        .unwrap();
    assert!(
        stored.get::<_, bool>(0),
        "the record says it is an estimate"
    );

    // Reported usage is the upstream's, unmarked.
    let t2 = gateway_on(&fake, &[("loud", model("fake", "ok-5"))]).await;
    let mut ws = t2.client().await;
    ws.send_json(ask("l", "loud")).await;
    let a = ws.answer("l").await;
    assert!(
        a.done["payload"]["usage"].get("estimated").is_none(),
        "{}",
        a.done
    );
}

#[actix_rt::test]
async fn a_websocket_message_may_carry_a_large_image_by_default() {
    let fake = FakeUpstream::start().await.unwrap();
    let t = gateway_on(&fake, &[("gpt", model("fake", "ok-5"))]).await;
    let mut ws = t.client().await;
    // 2 MiB: over the seed's frame limit, within the 20 MiB default.
    let image = format!("data:image/png;base64,{}", "A".repeat(2 * 1024 * 1024));
    ws.send_json(
        json!({"type": "chat", "id": "img", "payload": {"model": "gpt",
        "messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": image}}]}]}}),
    )
    .await;
    let a = ws.answer("img").await;
    assert!(a.errors.is_empty(), "{:?}", a.errors);
    assert_eq!(a.text_of("text"), "I see 1 image(s).");
}

#[actix_rt::test]
async fn a_stream_that_fails_part_way_still_counts_what_it_sent() {
    let fake = FakeUpstream::start().await.unwrap();
    let t = gateway_on(&fake, &[("broken", model("fake", "midstream-error"))]).await;
    let (_, token) = t.new_user().await;
    let mut ws = t.connect(&token).await;
    ws.send_json(ask("b", "broken")).await;
    let a = ws.answer("b").await;
    assert_eq!(a.finish_reason(), "error");
    let sent = a.chunks.len() as u64;
    assert!(sent > 0);
    t.gw.flush_writes().await;
    let totals: Value = t
        .http
        .get(t.url("/v1/usage"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        totals["totals"][0]["completion_tokens"], sent,
        "a token per chunk sent: {totals}"
    );
    assert_eq!(totals["totals"][0]["estimated_requests"], 1, "{totals}");
    // The client's `done` says the same, not zero.
    let usage = &a.done["payload"]["usage"];
    assert_eq!(usage["completion_tokens"], sent, "{usage}");
    assert_eq!(usage["estimated"], true, "{usage}");
}
