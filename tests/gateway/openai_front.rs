//! The OpenAI-compatible HTTP front, driven by the official `openai` Python package
//! (installed by the test set-up) and by a raw HTTP client.

use std::time::{Duration, Instant, SystemTime};

use ai_gateway::config::{ModelSettings, ProviderSettings};
use ai_gateway_actors::{provider::ApiKey, OpenAiSettings};
use fake_upstream::{text_piece, FakeUpstream};
use futures_util::StreamExt;
use serde_json::{json, Value};

use crate::support::*;

/// Models `gpt` (a good answer), `broken` (fails mid-stream) and `drip` (slow) on the
/// OpenAI-compatible provider `fake`.
async fn front(fake: &FakeUpstream) -> TestGateway {
    front_with(fake, &[]).await
}

/// [`front`], with more `(model, provider, upstream model)` on OpenAI-compatible providers of
/// the fake upstream.
async fn front_with(fake: &FakeUpstream, more: &[(&str, &str, &str)]) -> TestGateway {
    front_tweaked(fake, more, |_| {}).await
}

/// [`front_with`], with `tweak` applied to the configuration last.
async fn front_tweaked(
    fake: &FakeUpstream,
    more: &[(&str, &str, &str)],
    tweak: impl FnOnce(&mut ai_gateway::Config),
) -> TestGateway {
    let openai = OpenAiSettings::new(fake.openai_base_url(), Some(ApiKey::new("sk-test")));
    let mut models = vec![
        ("gpt", "fake", "ok-5"),
        ("broken", "fake", "midstream-error"),
        ("drip", "fake", "slow-drip"),
    ];
    models.extend_from_slice(more);
    let models: Vec<(String, String, String)> = models
        .into_iter()
        .map(|(m, p, u)| (m.into(), p.into(), u.into()))
        .collect();
    start_with(move |c| {
        for (_, provider, _) in &models {
            c.providers
                .insert(provider.clone(), ProviderSettings::Openai(openai.clone()));
        }
        for (name, provider, upstream) in models {
            c.models.insert(
                name,
                ModelSettings {
                    provider,
                    upstream_model: upstream,
                    fallback: vec![],
                    max_retries: Some(0),
                    drop_params: false,
                },
            );
        }
        tweak(c);
    })
    .await
}

#[actix_rt::test]
async fn the_official_openai_client_works_unchanged() {
    let fake = FakeUpstream::start().await.unwrap();
    let t = front(&fake).await;
    let (_, token) = t.new_user().await;
    let res = t
        .http
        .post(t.url("/v1/keys"))
        .bearer_auth(&token)
        .json(&json!({"name": "sdk"}))
        .send()
        .await
        .unwrap();
    let key = res.json::<Value>().await.unwrap()["key"]
        .as_str()
        .unwrap()
        .to_owned();

    let out = tokio::process::Command::new("python3")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/python/openai_client.py"
        ))
        .arg(format!("http://{}", t.gw.local_addr()))
        .arg(&key)
        .output()
        .await
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "the openai client failed (is the `openai` package installed? .ci/run installs it):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let seen: Value = serde_json::from_slice(&out.stdout).unwrap();
    let expected: String = (0..5).map(text_piece).collect();
    assert_eq!(seen["stream"]["text"], expected.as_str(), "{seen}");
    assert!(
        !seen["stream"]["reasoning"].as_str().unwrap().is_empty(),
        "{seen}"
    );
    assert_eq!(seen["stream"]["finish"], "stop");
    assert!(
        seen["stream"]["usage"]["completion_tokens"]
            .as_u64()
            .unwrap()
            > 0,
        "{seen}"
    );
    assert_eq!(seen["plain"]["finish"], "length", "{seen}");
    assert_eq!(seen["unknown_model"]["status"], 404, "{seen}");
    assert_eq!(seen["unknown_model"]["code"], "unknown_model");
    assert!(
        seen["midstream"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("openai"),
        "a mid-stream failure must raise: {seen}"
    );
    assert_eq!(seen["models"], json!(["broken", "drip", "gpt", "mock"]));

    // The same usage records as WebSocket chat.
    t.gw.flush_writes().await;
    let owner = t.gw.access().authenticate(&key).await.unwrap().user_id;
    let totals =
        t.gw.stores()
            .usage
            .usage_totals(&owner, SystemTime::now() - Duration::from_secs(86_400))
            .await
            .unwrap();
    let requests: u64 = totals.iter().map(|t| t.requests).sum();
    assert_eq!(
        requests, 3,
        "stream, plain and the broken stream: {totals:?}"
    );
}

#[actix_rt::test]
async fn errors_before_the_stream_get_http_statuses() {
    let fake = FakeUpstream::start().await.unwrap();
    let t = front(&fake).await;
    let (_, token) = t.new_user().await;
    let post = |body: Value| {
        t.http
            .post(t.url("/v1/chat/completions"))
            .bearer_auth(&token)
            .json(&body)
            .send()
    };
    let res = post(json!({"model": "nope", "messages": [{"role": "user", "content": "x"}]}))
        .await
        .unwrap();
    assert_eq!(res.status(), 404);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["error"]["type"], "invalid_request_error");
    assert!(body["error"]["message"].as_str().unwrap().contains("gpt"));
    let res = post(json!({"model": "gpt", "messages": [{"role": "function", "content": "x"}]}))
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["error"]["param"], "messages[0].role", "{body}");
    let res = t
        .http
        .post(t.url("/v1/chat/completions"))
        .json(&json!({"model": "gpt", "messages": []}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401, "no anonymous access");
}

#[actix_rt::test]
async fn with_no_resume_grace_a_client_that_drops_the_stream_cancels_the_upstream_call() {
    let fake = FakeUpstream::start().await.unwrap();
    // resume.grace_ms = 0: no waiting for a resume (tests/gateway/http_resume.rs has the rest).
    let t = front_tweaked(&fake, &[], |c| c.resume.grace_ms = 0).await;
    let (_, token) = t.new_user().await;
    let res = t
        .http
        .post(t.url("/v1/chat/completions"))
        .bearer_auth(&token)
        .json(&json!({"model": "drip", "stream": true, "messages": [{"role": "user", "content": "x"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["content-type"], "text/event-stream");
    let mut body = res.bytes_stream();
    let first = body.next().await.unwrap().unwrap();
    assert!(first.starts_with(b"data: {"), "{first:?}");
    assert_eq!(fake.open_streams(), 1);
    drop(body);
    let deadline = Instant::now() + Duration::from_secs(5);
    while fake.open_streams() > 0 {
        assert!(
            Instant::now() < deadline,
            "the upstream call outlived its client"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(fake.abandoned_streams(), 1);
}

#[actix_rt::test]
async fn both_fronts_share_the_request_metrics() {
    let fake = FakeUpstream::start().await.unwrap();
    // Two upstreams of one kind: two `provider` series.
    let t = front_with(&fake, &[("gpt2", "fake2", "ok-3")]).await;
    let (_, token) = t.new_user().await;

    let mut ws = t.connect(&token).await;
    let mut ws_completion = 0;
    for (id, model) in [("a", "gpt"), ("b", "gpt2"), ("c", "broken"), ("d", "nope")] {
        ws.send_json(
            json!({"type": "chat", "id": id, "payload": {"content": "hi", "model": model}}),
        )
        .await;
        let answer = match model {
            // A refused request gets an error frame and no `done`.
            "nope" => {
                let f = ws.next_json().await;
                assert_eq!(f["payload"]["reason"], "unknown_model", "{f}");
                continue;
            }
            _ => ws.answer(id).await,
        };
        if model == "gpt" {
            ws_completion = answer.done["payload"]["usage"]["completion_tokens"]
                .as_u64()
                .unwrap();
        }
    }

    let post = |body: Value| {
        t.http
            .post(t.url("/v1/chat/completions"))
            .bearer_auth(&token)
            .json(&body)
            .send()
    };
    let ask = |model: &str, stream: bool| json!({"model": model, "stream": stream, "messages": [{"role": "user", "content": "hi"}]});
    let plain: Value = post(ask("gpt", false)).await.unwrap().json().await.unwrap();
    let http_completion = plain["usage"]["completion_tokens"].as_u64().unwrap();
    let streamed = post(ask("gpt2", true)).await.unwrap().text().await.unwrap();
    assert!(streamed.ends_with("data: [DONE]\n\n"), "{streamed}");
    let broken = post(ask("broken", true))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(broken.contains("\"error\""), "{broken}");
    assert_eq!(post(ask("nope", false)).await.unwrap().status(), 404);

    let text = scrape(&t).await;
    for front in ["ws", "http"] {
        for (model, provider, outcome) in [
            ("gpt", "fake", "stop"),
            ("gpt2", "fake2", "stop"),
            ("broken", "fake", "error"),
            ("nope", "none", "refused"),
        ] {
            let series = format!(
                "gateway_requests_total{{front=\"{front}\",model=\"{model}\",provider=\"{provider}\",outcome=\"{outcome}\"}}"
            );
            assert_eq!(sample(&text, &series), 1.0, "{series}");
        }
    }
    assert_eq!(
        sample(
            &text,
            "gateway_tokens_total{model=\"gpt\",direction=\"completion\"}"
        ),
        (ws_completion + http_completion) as f64
    );
    assert!(
        sample(
            &text,
            "gateway_tokens_total{model=\"gpt\",direction=\"prompt\"}"
        ) > 0.0
    );
    // Every upstream call that produced a chunk: gpt and broken twice on `fake`, gpt2 twice on
    // `fake2`.
    assert_eq!(
        sample(
            &text,
            "gateway_upstream_ttfb_seconds_count{provider=\"fake\"}"
        ),
        4.0
    );
    assert_eq!(
        sample(
            &text,
            "gateway_upstream_ttfb_seconds_count{provider=\"fake2\"}"
        ),
        2.0
    );
    assert_eq!(
        sample(
            &text,
            "gateway_provider_errors_total{provider=\"fake\",kind=\"provider_error\"}"
        ),
        2.0,
        "the mid-stream failure, counted on both fronts"
    );
    assert_eq!(
        sample(
            &text,
            &format!(
                "gateway_build_info{{version=\"{}\"}}",
                env!("CARGO_PKG_VERSION")
            )
        ),
        1.0
    );
}

/// POSTs `body` to `/v1/chat/completions` with `token`.
async fn complete(t: &TestGateway, token: &str, body: Value) -> reqwest::Response {
    t.http
        .post(t.url("/v1/chat/completions"))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .unwrap()
}

/// The `data:` events of an SSE body, `[DONE]` left out.
fn sse_events(text: &str) -> Vec<Value> {
    text.split("\n\n")
        .filter_map(|e| e.lines().find_map(|l| l.strip_prefix("data: ")))
        .filter(|d| *d != "[DONE]")
        .map(|d| serde_json::from_str(d).unwrap())
        .collect()
}

fn weather_tools() -> Value {
    json!([{"type": "function", "function": {
        "name": "get_weather", "description": "The weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
            "required": ["city"]}}}])
}

#[actix_rt::test]
async fn tool_calls_stream_and_round_trip_through_the_front() {
    let fake = FakeUpstream::start().await.unwrap();
    let t = front(&fake).await;
    let (_, token) = t.new_user().await;
    let ask = json!([{"role": "user", "content": "weather in Paris?"}]);

    // Streamed: tool_calls deltas by index, then finish_reason tool_calls.
    let res = complete(
        &t,
        &token,
        json!({"model": "gpt", "stream": true, "messages": ask, "tools": weather_tools()}),
    )
    .await;
    assert_eq!(res.status(), 200);
    let events = sse_events(&res.text().await.unwrap());
    let mut args = String::new();
    let mut first = None;
    for e in &events {
        for call in e["choices"][0]["delta"]["tool_calls"]
            .as_array()
            .into_iter()
            .flatten()
        {
            assert_eq!(call["index"], 0);
            if call.get("id").is_some() {
                first = Some(call.clone());
            }
            args.push_str(call["function"]["arguments"].as_str().unwrap());
        }
    }
    let first = first.expect("the first piece names the call");
    assert_eq!(first["id"], "call_fake_0");
    assert_eq!(first["type"], "function");
    assert_eq!(first["function"]["name"], "get_weather");
    assert_eq!(args, r#"{"city":"fake"}"#);
    let finish: Vec<&Value> = events
        .iter()
        .map(|e| &e["choices"][0]["finish_reason"])
        .filter(|f| !f.is_null())
        .collect();
    assert_eq!(finish, [&json!("tool_calls")]);

    // Plain: the calls assembled in the message, content null.
    let res = complete(
        &t,
        &token,
        json!({"model": "gpt", "messages": ask, "tools": weather_tools(),
            "tool_choice": {"type": "function", "function": {"name": "get_weather"}}}),
    )
    .await;
    let plain: Value = res.json().await.unwrap();
    let choice = &plain["choices"][0];
    assert_eq!(choice["finish_reason"], "tool_calls", "{plain}");
    assert!(choice["message"]["content"].is_null(), "{plain}");
    let call = &choice["message"]["tool_calls"][0];
    assert_eq!(call["function"]["arguments"], r#"{"city":"fake"}"#);

    // The round trip: the assistant's call and the tool's result go back.
    let res = complete(
        &t,
        &token,
        json!({"model": "gpt", "tools": weather_tools(), "messages": [
            {"role": "user", "content": "weather in Paris?"},
            {"role": "assistant", "content": null, "tool_calls": [call]},
            {"role": "tool", "tool_call_id": call["id"], "content": "sunny"},
        ]}),
    )
    .await;
    let answer: Value = res.json().await.unwrap();
    assert_eq!(
        answer["choices"][0]["message"]["content"], "Tool call_fake_0 said: sunny",
        "{answer}"
    );
    assert_eq!(answer["choices"][0]["finish_reason"], "stop");
    let sent = fake.requests().last().unwrap().body.clone();
    assert_eq!(sent["messages"][1]["tool_calls"][0]["id"], "call_fake_0");
    assert_eq!(sent["messages"][2]["role"], "tool");
    assert_eq!(sent["messages"][2]["tool_call_id"], "call_fake_0");
}

#[actix_rt::test]
async fn images_structured_output_and_parameters_reach_the_upstream() {
    let fake = FakeUpstream::start().await.unwrap();
    let t = front(&fake).await;
    let (_, token) = t.new_user().await;
    // One image larger than the seed's old 64 KiB body limit.
    let image = format!("data:image/png;base64,{}", "A".repeat(200 * 1024));
    let res = complete(
        &t,
        &token,
        json!({"model": "gpt", "messages": [{"role": "user", "content": [
            {"type": "text", "text": "what is this?"},
            {"type": "image_url", "image_url": {"url": image, "detail": "low"}},
        ]}]}),
    )
    .await;
    assert_eq!(res.status(), 200);
    let answer: Value = res.json().await.unwrap();
    assert_eq!(
        answer["choices"][0]["message"]["content"],
        "I see 1 image(s)."
    );
    let sent = fake.requests().last().unwrap().body.clone();
    assert_eq!(
        sent["messages"][0]["content"][1]["image_url"]["url"],
        image.as_str()
    );
    assert_eq!(
        sent["messages"][0]["content"][1]["image_url"]["detail"],
        "low"
    );

    let schema = json!({"type": "object", "properties": {"name": {"type": "string"},
        "age": {"type": "integer"}}, "required": ["name", "age"], "additionalProperties": false});
    let res = complete(
        &t,
        &token,
        json!({"model": "gpt", "stream": true, "messages": [{"role": "user", "content": "who?"}],
            "response_format": {"type": "json_schema",
                "json_schema": {"name": "person", "schema": schema, "strict": true}},
            "temperature": 0.3, "top_p": 0.9, "seed": 7, "stop": "END",
            "presence_penalty": 0.5, "frequency_penalty": -0.5, "user": "u-42",
            "reasoning_effort": "high", "max_tokens": 500,
            "logprobs": true, "top_logprobs": 2, "metadata": {"trace": "x"}}),
    )
    .await;
    let events = sse_events(&res.text().await.unwrap());
    let text: String = events
        .iter()
        .filter_map(|e| e["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(
        serde_json::from_str::<Value>(&text).unwrap(),
        json!({"name": "fake", "age": 1})
    );
    let sent = fake.requests().last().unwrap().body.clone();
    let expected = json!({
        "temperature": 0.3, "top_p": 0.9, "seed": 7, "stop": ["END"],
        "presence_penalty": 0.5, "frequency_penalty": -0.5, "user": "u-42",
        "reasoning_effort": "high", "max_completion_tokens": 500,
        "logprobs": true, "top_logprobs": 2, "metadata": {"trace": "x"},
        "response_format": {"type": "json_schema",
            "json_schema": {"name": "person", "schema": schema, "strict": true}},
    });
    for (k, v) in expected.as_object().unwrap() {
        assert_eq!(&sent[k], v, "{k}: {sent}");
    }
    assert!(sent.get("max_tokens").is_none(), "{sent}");
}

#[actix_rt::test]
async fn every_v1_error_is_in_openai_shape() {
    let fake = FakeUpstream::start().await.unwrap();
    let t = start_with({
        let openai = OpenAiSettings::new(fake.openai_base_url(), Some(ApiKey::new("sk-test")));
        move |c| {
            c.max_body_bytes = 64 * 1024;
            c.rate_limits.enabled = true;
            c.rate_limits.failed_auth_burst = 1;
            c.rate_limits.failed_auth_per_ip_per_min = 1;
            c.providers
                .insert("fake".into(), ProviderSettings::Openai(openai));
            c.models.insert(
                "gpt".into(),
                ModelSettings {
                    provider: "fake".into(),
                    upstream_model: "ok-3".into(),
                    fallback: vec![],
                    max_retries: Some(0),
                    drop_params: false,
                },
            );
        }
    })
    .await;
    let (_, token) = t.new_user().await;
    let shape = |status: u16, body: &Value| {
        let e = &body["error"];
        assert!(
            e["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{status}: {body}"
        );
        assert!(e["type"].is_string(), "{status}: {body}");
        assert!(
            e.get("param").is_some() && e.get("code").is_some(),
            "{status}: {body}"
        );
    };
    let ask = json!({"model": "gpt", "messages": [{"role": "user", "content": "hi"}]});

    // 401: no credential.
    let res = t
        .http
        .post(t.url("/v1/chat/completions"))
        .json(&ask)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
    let body: Value = res.json().await.unwrap();
    shape(401, &body);
    assert_eq!(body["error"]["code"], "invalid_api_key");
    // The scheme is case-insensitive.
    for scheme in ["bearer", "BEARER", "Bearer"] {
        let res = t
            .http
            .post(t.url("/v1/chat/completions"))
            .header("authorization", format!("{scheme} {token}"))
            .json(&ask)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200, "{scheme}");
    }
    // 413: over max_body_bytes.
    let big =
        json!({"model": "gpt", "messages": [{"role": "user", "content": "x".repeat(70_000)}]});
    let res = complete(&t, &token, big).await;
    assert_eq!(res.status(), 413);
    let body: Value = res.json().await.unwrap();
    shape(413, &body);
    assert_eq!(body["error"]["type"], "invalid_request_error");
    // 400: unreadable JSON; a content part the gateway cannot carry, named.
    let res = t
        .http
        .post(t.url("/v1/chat/completions"))
        .bearer_auth(&token)
        .header("content-type", "application/json")
        .body("{nope")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
    shape(400, &res.json().await.unwrap());
    let res = complete(
        &t,
        &token,
        json!({"model": "gpt", "messages": [{"role": "user", "content": [
            {"type": "input_audio", "input_audio": {"data": "", "format": "wav"}}]}]}),
    )
    .await;
    assert_eq!(res.status(), 400);
    let body: Value = res.json().await.unwrap();
    shape(400, &body);
    assert_eq!(body["error"]["param"], "messages[0].content[0].type");
    // 404: a route that does not exist, and the keys API.
    let res = t
        .http
        .get(t.url("/v1/nowhere"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 404);
    shape(404, &res.json().await.unwrap());
    let res = t
        .http
        .delete(t.url("/v1/keys/00000000-0000-0000-0000-000000000000"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert!(res.status().is_client_error());
    shape(404, &res.json().await.unwrap());
    // 429: an address that keeps presenting unknown keys.
    let mut last = None;
    for _ in 0..3 {
        let res = t
            .http
            .get(t.url("/v1/models"))
            .bearer_auth("agw_not-a-real-key")
            .send()
            .await
            .unwrap();
        last = Some(res);
    }
    let res = last.unwrap();
    assert_eq!(res.status(), 429);
    assert!(res.headers().contains_key("retry-after"));
    let body: Value = res.json().await.unwrap();
    shape(429, &body);
    assert_eq!(body["error"]["type"], "rate_limit_error");
    // The seed's endpoints keep their shape.
    let (status, body) = t
        .post("/login", json!({"username": "nobody", "password": "x"}))
        .await;
    assert_eq!(status, 401);
    assert!(body["error"].is_string(), "{body}");
}

/// Runs a script of `tests/python/` against the gateway with an API key of a new user; answers
/// what it printed.
async fn python(t: &TestGateway, script: &str) -> Value {
    let (_, token) = t.new_user().await;
    let res = t
        .http
        .post(t.url("/v1/keys"))
        .bearer_auth(&token)
        .json(&json!({"name": "sdk"}))
        .send()
        .await
        .unwrap();
    let key = res.json::<Value>().await.unwrap()["key"]
        .as_str()
        .unwrap()
        .to_owned();
    let out = tokio::process::Command::new("python3")
        .arg(format!(
            "{}/tests/python/{script}",
            env!("CARGO_MANIFEST_DIR")
        ))
        .arg(format!("http://{}", t.gw.local_addr()))
        .arg(&key)
        .output()
        .await
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "{script} failed (scripts/test installs tests/python/requirements.txt):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[actix_rt::test]
async fn the_openai_sdk_gets_tools_images_structured_output_and_errors() {
    let fake = FakeUpstream::start().await.unwrap();
    let t = front_tweaked(&fake, &[], |c| c.max_body_bytes = 256 * 1024).await;
    let seen = python(&t, "openai_fidelity.py").await;
    assert_eq!(
        seen["streamed_call"],
        json!({"finish": "tool_calls", "id": "call_fake_0", "name": "get_weather",
            "arguments": {"city": "fake"}}),
        "{seen}"
    );
    assert_eq!(
        seen["round_trip"],
        json!({"text": "Tool call_fake_0 said: sunny", "finish": "stop"}),
        "{seen}"
    );
    assert_eq!(seen["image"], "I see 1 image(s).", "{seen}");
    assert_eq!(seen["parsed"], json!({"name": "fake", "age": 1}), "{seen}");
    assert_eq!(
        seen["bad_part"],
        json!({"status": 400, "param": "messages[0].content[0].type", "type": "invalid_request_error"}),
        "{seen}"
    );
    assert_eq!(
        seen["bad_key"],
        json!({"status": 401, "code": "invalid_api_key", "type": "authentication_error"}),
        "{seen}"
    );
    assert_eq!(
        seen["too_large"],
        json!({"status": 413, "code": "request_too_large"}),
        "{seen}"
    );
    // What the SDK sent reached the upstream unchanged.
    let requests = fake.requests();
    let parsed = requests
        .iter()
        .find(|r| r.body["response_format"]["type"] == "json_schema")
        .expect("the structured request");
    let b = &parsed.body;
    assert_eq!(b["response_format"]["json_schema"]["name"], "Person");
    assert_eq!(b["response_format"]["json_schema"]["strict"], true);
    for (k, v) in [
        ("temperature", json!(0.3)),
        ("top_p", json!(0.9)),
        ("seed", json!(7)),
        ("stop", json!(["END"])),
        ("presence_penalty", json!(0.5)),
        ("frequency_penalty", json!(-0.5)),
        ("user", json!("u-42")),
        ("reasoning_effort", json!("low")),
        ("max_completion_tokens", json!(500)),
        ("logprobs", json!(true)),
        ("custom_field", json!({"kept": true})),
    ] {
        assert_eq!(b[k], v, "{k}: {b}");
    }
    let round_trip = requests
        .iter()
        .find(|r| r.body["messages"].as_array().is_some_and(|m| m.len() == 3))
        .expect("the round trip");
    let m = &round_trip.body["messages"];
    assert_eq!(
        m[1]["tool_calls"][0]["function"]["name"], "get_weather",
        "{m}"
    );
    assert_eq!(m[2]["tool_call_id"], "call_fake_0", "{m}");
    let image = requests
        .iter()
        .find(|r| r.body["messages"][0]["content"].is_array())
        .expect("the image request");
    assert_eq!(
        image.body["messages"][0]["content"][1]["image_url"]["url"],
        "data:image/png;base64,iVBORw0KGgo="
    );
}

#[actix_rt::test]
async fn a_content_filter_ends_the_answer_with_its_finish_reason() {
    let fake = FakeUpstream::start().await.unwrap();
    let t = front_with(&fake, &[("filt", "fake", "filtered")]).await;
    let (_, token) = t.new_user().await;
    let res: Value = t
        .http
        .post(t.url("/v1/chat/completions"))
        .bearer_auth(&token)
        .json(&json!({"model": "filt", "messages": [{"role": "user", "content": "x"}]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        res["choices"][0]["finish_reason"], "content_filter",
        "{res}"
    );

    let mut ws = t.connect(&token).await;
    ws.send_json(json!({"type": "chat", "id": "f", "payload": {"content": "x", "model": "filt"}}))
        .await;
    let answer = ws.answer("f").await;
    assert!(answer.errors.is_empty(), "{:?}", answer.errors);
    assert_eq!(answer.finish_reason(), "content_filter");
}
