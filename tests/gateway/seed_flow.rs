//! The Go seed's client flow, byte for byte, against the seed's mock pacing.

use ai_gateway_actors::{provider::mock::MOCK_ANSWER, MockSettings};
use serde_json::json;

use crate::support::*;

#[actix_rt::test]
async fn seed_client_flow_works_unchanged() {
    let t = start_with(|c| c.mock = MockSettings::default()).await;

    let (status, body) = t
        .post(
            "/register",
            json!({"username": "alice", "password": "s3cret-pass"}),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(body["message"], "User created successfully");
    assert!(!body["user_id"].as_str().unwrap().is_empty());

    let (status, body) = t
        .post(
            "/login",
            json!({"username": "alice", "password": "s3cret-pass"}),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(body["username"], "alice");
    assert_eq!(body["role"], "user");
    let token = body["token"].as_str().unwrap();

    let mut ws = t.connect(token).await;
    ws.send_text(r#"{"type":"chat","payload":{"content":"Hello AI","model":"mock"}}"#)
        .await;
    let first = ws.next_json().await;
    let id = first["id"].as_str().unwrap().to_owned();
    let mut answer = ws.answer(&id).await;
    answer.chunks.insert(0, first);

    answer.assert_in_order();
    assert!(answer.errors.is_empty());
    assert_eq!(
        answer.text_of("reasoning"),
        "Hmm... let me think about Hello AI..."
    );
    assert_eq!(answer.text_of("text"), MOCK_ANSWER);
    let kinds: Vec<&str> = answer
        .chunks
        .iter()
        .map(|c| c["payload"]["type"].as_str().unwrap())
        .collect();
    let first_text = kinds.iter().position(|k| *k == "text").unwrap();
    assert!(kinds[..first_text].iter().all(|k| *k == "reasoning"));
    assert!(kinds[first_text..].iter().all(|k| *k == "text"));
    for c in &answer.chunks {
        assert_eq!(c["payload"]["model"], "mock");
        assert_eq!(c["payload"]["content"].as_str().unwrap().chars().count(), 1);
    }
    assert_eq!(answer.finish_reason(), "stop");
    assert_eq!(
        answer.done["payload"]["usage"]["completion_tokens"],
        answer.chunks.len() as u64
    );

    ws.send_text(r#"{"type":"ping"}"#).await;
    assert_eq!(
        ws.next_json().await,
        json!({"type": "pong", "payload": null})
    );
}
