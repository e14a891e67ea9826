//! The OpenAI-compatible HTTP front, driven by the official `openai` Python package
//! (installed by the test set-up) and by a raw HTTP client.

use std::time::{Duration, Instant, SystemTime};

use ai_gateway::config::{ModelSettings, ProviderSettings};
use ai_gateway_actors::{provider::ApiKey, OpenAiSettings};
use fake_upstream::{text_piece, FakeUpstream};
use futures_util::StreamExt;
use serde_json::{json, Value};

use crate::support::*;

async fn front(fake: &FakeUpstream) -> TestGateway {
    let openai = OpenAiSettings::new(fake.openai_base_url(), Some(ApiKey::new("sk-test")));
    start_with(move |c| {
        c.providers
            .insert("fake".into(), ProviderSettings::Openai(openai));
        for (name, upstream) in [
            ("gpt", "ok-5"),
            ("broken", "midstream-error"),
            ("drip", "slow-drip"),
        ] {
            c.models.insert(
                name.into(),
                ModelSettings {
                    provider: "fake".into(),
                    upstream_model: upstream.into(),
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
