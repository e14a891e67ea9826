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
                },
            );
        }
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
    let res = post(json!({"model": "gpt", "messages": [{"role": "tool", "content": "x"}]}))
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
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
async fn a_client_that_drops_the_stream_cancels_the_upstream_call() {
    let fake = FakeUpstream::start().await.unwrap();
    let t = front(&fake).await;
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
