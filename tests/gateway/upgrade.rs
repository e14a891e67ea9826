//! The chat WebSocket leaves the HTTP/1 dispatcher at the upgrade (`src/upgrade.rs`): what a
//! client sends with its handshake is read, a refused or non-WebSocket upgrade is answered as
//! plain HTTP and closed, and the connection counts as open exactly as long as it is.

use std::time::Duration;

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

use crate::support::*;

fn handshake(path: &str, auth: Option<&str>) -> String {
    let auth = auth.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    format!(
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{auth}\r\n"
    )
}

/// A client's (masked) text frame of fewer than 126 bytes.
fn masked_text(text: &str) -> Vec<u8> {
    assert!(text.len() < 126);
    let key = [0x12, 0x34, 0x56, 0x78];
    let mut frame = vec![0x81, 0x80 | text.len() as u8];
    frame.extend(key);
    frame.extend(text.bytes().enumerate().map(|(i, b)| b ^ key[i % 4]));
    frame
}

/// Reads until everything read so far contains each of `wanted` (as text; the server's frames
/// are unmasked), or the connection ends; returns what was read and whether it ended.
async fn read_until(tcp: &mut TcpStream, wanted: &[&str]) -> (String, bool) {
    let mut seen = Vec::new();
    let mut piece = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let text = String::from_utf8_lossy(&seen).into_owned();
        if !wanted.is_empty() && wanted.iter().all(|w| text.contains(w)) {
            return (text, false);
        }
        match tokio::time::timeout_at(deadline, tcp.read(&mut piece)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return (text, true),
            Ok(Ok(n)) => seen.extend_from_slice(&piece[..n]),
            Err(_) => panic!("timed out waiting for {wanted:?}; read so far:\n{text}"),
        }
    }
}

#[actix_rt::test]
async fn frames_sent_along_with_the_handshake_are_answered() {
    let t = start().await;
    let (_, token) = t.new_user().await;
    // The handshake and a first frame in one write: the frame sits behind the request head in
    // what the dispatcher had read when it handed the connection over.
    let mut tcp = TcpStream::connect(t.gw.local_addr()).await.unwrap();
    let mut first = handshake("/chat", Some(&token)).into_bytes();
    first.extend(masked_text(r#"{"type":"ping","id":"along"}"#));
    tcp.write_all(&first).await.unwrap();
    let (text, ended) = read_until(&mut tcp, &["\"welcome\"", "\"pong\"", "along"]).await;
    assert!(!ended);
    assert!(text.starts_with("HTTP/1.1 101"), "{text}");
    assert!(
        t.gw.open_connections() >= 1,
        "an upgraded connection counts as open"
    );

    // The same for a connection that authenticates with its first message.
    let mut tcp2 = TcpStream::connect(t.gw.local_addr()).await.unwrap();
    let mut first = handshake("/chat", None).into_bytes();
    let auth = format!(r#"{{"type":"auth","payload":{{"token":"{token}"}}}}"#);
    let mut auth_frame = Vec::new();
    // The token makes this message longer than 125 bytes: a 16-bit length.
    let key = [1u8, 2, 3, 4];
    auth_frame.extend([0x81, 0x80 | 126]);
    auth_frame.extend((auth.len() as u16).to_be_bytes());
    auth_frame.extend(key);
    auth_frame.extend(auth.bytes().enumerate().map(|(i, b)| b ^ key[i % 4]));
    first.extend(auth_frame);
    tcp2.write_all(&first).await.unwrap();
    let (text, ended) = read_until(&mut tcp2, &["\"welcome\""]).await;
    assert!(!ended && text.starts_with("HTTP/1.1 101"), "{text}");
    t.wait_sessions(2, Duration::from_secs(5)).await;

    drop(tcp);
    drop(tcp2);
    t.wait_all_closed(Duration::from_secs(5)).await;
}

#[actix_rt::test]
async fn a_refused_upgrade_is_answered_and_closed() {
    let t = start().await;
    let mut tcp = TcpStream::connect(t.gw.local_addr()).await.unwrap();
    tcp.write_all(handshake("/chat", Some("not-a-token")).as_bytes())
        .await
        .unwrap();
    let (text, ended) = read_until(&mut tcp, &[]).await;
    assert!(ended, "the connection closes after the refusal");
    assert!(text.starts_with("HTTP/1.1 401"), "{text}");
    assert!(
        text.to_ascii_lowercase().contains("connection: close"),
        "{text}"
    );
    let body = text.split("\r\n\r\n").nth(1).unwrap_or_default();
    assert!(body.contains("\"error\""), "a JSON error body: {text}");
}

#[actix_rt::test]
async fn other_routes_asked_to_upgrade_answer_as_plain_http() {
    let t = start().await;
    let mut tcp = TcpStream::connect(t.gw.local_addr()).await.unwrap();
    tcp.write_all(handshake("/healthz", None).as_bytes())
        .await
        .unwrap();
    let (text, ended) = read_until(&mut tcp, &[]).await;
    assert!(ended);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");

    // A request with a body that asks for an upgrade gets no socket to read: it is answered
    // at once instead of waiting for the client to close.
    let mut tcp = TcpStream::connect(t.gw.local_addr()).await.unwrap();
    let body = r#"{"model":"mock","messages":[{"role":"user","content":"hi"}]}"#;
    let request = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    tcp.write_all(request.as_bytes()).await.unwrap();
    let (text, ended) = read_until(&mut tcp, &[]).await;
    assert!(ended);
    assert!(text.starts_with("HTTP/1.1 4"), "{text}");
}
