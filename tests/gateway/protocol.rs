//! Bad input gets a clear error frame or the proper close code; everyone else carries on.

use std::time::Duration;

use futures_util::StreamExt;
use serde_json::json;
use tokio_tungstenite::tungstenite::{
    protocol::frame::{coding::Data, coding::OpCode, Frame},
    Message,
};

use crate::support::*;

fn error(code: u16, reason: &str) -> (u16, String) {
    (code, reason.to_owned())
}

fn code_and_reason(f: &serde_json::Value) -> (u16, String) {
    assert_eq!(f["type"], "error", "{f}");
    (
        f["payload"]["code"].as_u64().unwrap() as u16,
        f["payload"]["reason"].as_str().unwrap().to_owned(),
    )
}

#[actix_rt::test]
async fn bad_messages_get_error_frames_and_the_connection_lives() {
    let t = start().await;
    let mut ws = t.client().await;

    ws.send_text("{not json").await;
    let f = ws.next_json().await;
    assert_eq!(code_and_reason(&f), error(400, "invalid_json"));
    assert_eq!(f["payload"]["message"], "Invalid JSON format");

    ws.send_json(json!({"type": "dance", "id": "d1"})).await;
    let f = ws.next_json().await;
    assert_eq!(code_and_reason(&f), error(404, "unknown_type"));
    assert_eq!(f["id"], "d1");

    ws.send_json(json!({"type": "chat", "id": "c1", "payload": {"model": "mock"}}))
        .await;
    let f = ws.next_json().await;
    assert_eq!(code_and_reason(&f), error(400, "invalid_payload"));
    assert!(
        f["payload"]["message"]
            .as_str()
            .unwrap()
            .contains("content"),
        "{f}"
    );

    ws.send_json(json!({"type": "chat", "id": "c2"})).await;
    assert_eq!(
        code_and_reason(&ws.next_json().await),
        error(400, "invalid_payload")
    );

    ws.send(Message::binary(vec![1u8, 2, 3])).await;
    assert_eq!(
        code_and_reason(&ws.next_json().await),
        error(415, "binary_not_supported")
    );

    // Still fully usable.
    assert_eq!(ws.chat("ok", "still there?").await.finish_reason(), "stop");
}

#[actix_rt::test]
async fn oversized_frame_closes_with_1009_and_others_carry_on() {
    let t = start_with(|c| c.session.max_frame_bytes = 2048).await;
    let mut bystander = t.client().await;
    let mut ws = t.client().await;

    let big = json!({"type": "chat", "payload": {"content": "x".repeat(4096)}});
    ws.send_json(big).await;
    let (code, reason) = ws.close_code().await;
    assert_eq!(code, 1009);
    assert!(reason.contains("max_frame_bytes=2048"), "{reason}");

    assert_eq!(bystander.chat("b", "fine?").await.finish_reason(), "stop");
    t.wait_sessions(1, std::time::Duration::from_secs(5)).await;
}

#[actix_rt::test]
async fn invalid_utf8_closes_with_1007() {
    let t = start().await;
    let mut ws = t.client().await;
    let frame = Frame::message(vec![b'{', 0xff, 0xfe, b'}'], OpCode::Data(Data::Text), true);
    ws.send(Message::Frame(frame)).await;
    assert_eq!(ws.close_code().await.0, 1007);
}

#[actix_rt::test]
async fn reserved_bits_close_with_1002() {
    let t = start().await;
    let mut ws = t.client().await;
    let mut frame = Frame::message(b"{}".to_vec(), OpCode::Data(Data::Text), true);
    frame.header_mut().rsv1 = true;
    ws.send(Message::Frame(frame)).await;
    let (code, reason) = ws.close_code().await;
    assert_eq!(code, 1002, "{reason}");
    assert!(reason.contains("reserved bits"), "{reason}");
}

#[actix_rt::test]
async fn fragmented_message_over_the_limit_closes_with_1009() {
    let t = start_with(|c| c.session.max_frame_bytes = 2048).await;
    let mut ws = t.client().await;
    for (i, opcode) in [Data::Text, Data::Continue, Data::Continue]
        .into_iter()
        .enumerate()
    {
        ws.send(Message::Frame(Frame::message(
            vec![b' '; 1000],
            OpCode::Data(opcode),
            i == 2,
        )))
        .await;
    }
    let (code, reason) = ws.close_code().await;
    assert_eq!(code, 1009);
    assert!(reason.contains("max_frame_bytes=2048"), "{reason}");
}

/// RFC 6455 7.1.1: once the close handshake is done, the server closes TCP first. The gateway
/// does so at once, not after the HTTP layer's linger for the client's FIN (a minute here).
#[actix_rt::test]
async fn the_server_closes_tcp_right_after_the_close_handshake() {
    let t = start_with(|c| c.session.client_disconnect_timeout_ms = 60_000).await;
    let mut ws = t.client().await;
    ws.send(Message::Close(None)).await;
    let reply = tokio::time::timeout(Duration::from_secs(10), ws.inner.next())
        .await
        .expect("a close frame in time");
    assert!(matches!(reply, Some(Ok(Message::Close(_)))), "{reply:?}");
    // Nothing more comes: the server's FIN ends the stream.
    let end = tokio::time::timeout(Duration::from_secs(10), ws.inner.next())
        .await
        .expect("the server closes the connection without waiting for the client");
    assert!(end.is_none() || matches!(end, Some(Err(_))), "{end:?}");
    t.wait_sessions(0, Duration::from_secs(5)).await;
}

#[actix_rt::test]
async fn fragmented_messages_are_joined() {
    let t = start().await;
    let mut ws = t.client().await;
    let text = json!({"type": "ping", "id": "frag"}).to_string();
    let (a, b) = text.split_at(7);
    ws.send(Message::Frame(Frame::message(
        a.as_bytes().to_vec(),
        OpCode::Data(Data::Text),
        false,
    )))
    .await;
    ws.send(Message::Frame(Frame::message(
        b.as_bytes().to_vec(),
        OpCode::Data(Data::Continue),
        true,
    )))
    .await;
    assert_eq!(
        ws.next_json().await,
        json!({"type": "pong", "id": "frag", "payload": null})
    );
}
