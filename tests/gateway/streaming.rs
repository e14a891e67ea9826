//! Requests on one connection: ids, order, cancel, limits.

use std::{collections::HashMap, time::Duration};

use ai_gateway_actors::{provider::mock::MOCK_ANSWER, MockSettings};
use serde_json::{json, Value};

use crate::support::*;

/// A mock slow enough that a request is still running when the test acts on it.
fn slow_mock() -> MockSettings {
    MockSettings {
        text_delay_ms: [5, 5],
        reasoning_delay_ms: [5, 5],
        text_repeat: 200,
        ..MockSettings::instant()
    }
}

fn chat(id: &str, content: &str) -> Value {
    json!({"type": "chat", "id": id, "payload": {"content": content, "model": "mock"}})
}

#[actix_rt::test]
async fn concurrent_requests_on_one_connection_do_not_mix() {
    let t = start_with(|c| c.mock.text_repeat = 30).await;
    let mut ws = t.client().await;
    let ids = ["a", "b", "c", "d"];
    for id in ids {
        ws.send_json(chat(id, &format!("question {id}"))).await;
    }
    let mut frames: HashMap<String, Vec<Value>> = HashMap::new();
    let mut done = 0;
    while done < ids.len() {
        let f = ws.next_json().await;
        let id = f["id"].as_str().unwrap().to_owned();
        let seen = frames.entry(id.clone()).or_default();
        assert!(
            seen.last().is_none_or(|l| l["type"] != "done"),
            "frame after done for {id}: {f}"
        );
        if f["type"] == "done" {
            done += 1;
        }
        seen.push(f);
    }
    for id in ids {
        let mut all = frames.remove(id).unwrap();
        let done = all.pop().unwrap();
        let answer = Answer {
            chunks: all,
            errors: vec![],
            done,
        };
        answer.assert_in_order();
        assert_eq!(
            answer.text_of("reasoning"),
            format!("Hmm... let me think about question {id}...")
        );
        assert_eq!(answer.text_of("text"), MOCK_ANSWER.repeat(30));
        assert_eq!(answer.finish_reason(), "stop");
    }
}

#[actix_rt::test]
async fn cancel_ends_the_request_and_stops_the_provider() {
    let t = start_with(|c| c.mock = slow_mock()).await;
    let mut ws = t.client().await;
    ws.send_json(chat("long", "go on")).await;
    for _ in 0..5 {
        assert_eq!(ws.next_json().await["type"], "chat");
    }
    ws.send_json(json!({"type": "cancel", "id": "long"})).await;
    let done = loop {
        let f = ws.next_json().await;
        if f["type"] == "done" {
            break f;
        }
        assert_eq!(f["type"], "chat", "{f}");
    };
    assert_eq!(done["id"], "long");
    assert_eq!(done["payload"]["finish_reason"], "cancelled");

    let produced = t.gw.mock().chunks_produced();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        t.gw.mock().chunks_produced(),
        produced,
        "chunks produced after cancel"
    );

    // Nothing more arrives for the cancelled request; the connection serves the next one.
    ws.send_json(json!({"type": "ping", "id": "after"})).await;
    assert_eq!(ws.next_json().await["type"], "pong");
    ws.send_json(json!({"type": "cancel", "id": "long"})).await;
    let f = ws.next_json().await;
    assert_eq!(
        (f["type"].as_str(), f["payload"]["reason"].as_str()),
        (Some("error"), Some("unknown_request"))
    );
}

#[actix_rt::test]
async fn disconnect_stops_the_provider_without_resume_grace() {
    let t = start_with(|c| {
        c.mock = slow_mock();
        c.resume.grace_ms = 0;
    })
    .await;
    let mut ws = t.client().await;
    ws.send_json(chat("x", "talk")).await;
    for _ in 0..3 {
        ws.next_json().await;
    }
    drop(ws);
    t.wait_sessions(0, Duration::from_secs(5)).await;
    let produced = t.gw.mock().chunks_produced();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        t.gw.mock().chunks_produced(),
        produced,
        "chunks produced after disconnect"
    );
}

#[actix_rt::test]
async fn limits_and_refusals_name_the_request() {
    let t = start_with(|c| {
        c.mock = slow_mock();
        c.session.max_concurrent_requests = 2;
    })
    .await;
    let mut ws = t.client().await;
    ws.send_json(chat("one", "a")).await;
    ws.send_json(chat("one", "a")).await;
    ws.send_json(chat("two", "b")).await;
    ws.send_json(chat("three", "c")).await;
    ws.send_json(json!({"type": "chat", "id": "m", "payload": {"content": "x", "model": "gpt-9"}}))
        .await;
    let mut errors = HashMap::new();
    while errors.len() < 3 {
        let f = ws.next_json().await;
        if f["type"] == "error" {
            errors.insert(f["id"].as_str().unwrap().to_owned(), f);
        }
    }
    let reason = |id: &str| errors[id]["payload"]["reason"].as_str().unwrap().to_owned();
    // "one" is refused as a duplicate; "three" and "m" hit the limit of two.
    assert_eq!(reason("one"), "duplicate_request_id");
    assert_eq!(errors["one"]["payload"]["code"], 409);
    assert_eq!(reason("three"), "too_many_requests");
    assert_eq!(errors["three"]["payload"]["code"], 429);
    assert_eq!(reason("m"), "too_many_requests");

    ws.send_json(json!({"type": "cancel", "id": "one"})).await;
    ws.send_json(json!({"type": "cancel", "payload": {"id": "two"}}))
        .await;
    let mut cancelled = 0;
    while cancelled < 2 {
        let f = ws.next_json().await;
        if f["type"] == "done" {
            assert_eq!(f["payload"]["finish_reason"], "cancelled");
            cancelled += 1;
        }
    }
    ws.send_json(json!({"type": "chat", "id": "m", "payload": {"content": "x", "model": "gpt-9"}}))
        .await;
    let f = ws.next_json().await;
    assert_eq!(f["payload"]["reason"], "unknown_model", "{f}");
    assert_eq!(f["payload"]["code"], 404);
    assert!(
        f["payload"]["message"].as_str().unwrap().contains("mock"),
        "{f}"
    );
}

#[actix_rt::test]
async fn max_tokens_ends_with_length() {
    let t = start().await;
    let mut ws = t.client().await;
    ws.send_json(
        json!({"type": "chat", "id": "short", "payload": {"content": "hi", "max_tokens": 5}}),
    )
    .await;
    let answer = ws.answer("short").await;
    assert_eq!(answer.chunks.len(), 5);
    assert_eq!(answer.finish_reason(), "length");
    answer.assert_in_order();
}
