//! A client that stops reading costs bounded memory and is closed within a bound.

use std::time::{Duration, Instant};

use ai_gateway_actors::MockSettings;
use futures_util::StreamExt;
use serde_json::json;
use tokio::net::TcpSocket;
use tokio_tungstenite::{tungstenite::Message, MaybeTlsStream};

use crate::support::*;

/// A connection whose client socket buffers almost nothing, so the server feels a stalled reader.
async fn tight_client(t: &TestGateway) -> Ws {
    let (_, token) = t.new_user().await;
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let tcp = socket.connect(t.gw.local_addr()).await.unwrap();
    let (ws, _) = tokio_tungstenite::client_async(
        t.ws_url(&format!("?token={token}")),
        MaybeTlsStream::Plain(tcp),
    )
    .await
    .unwrap();
    Ws::after_welcome(ws).await
}

#[actix_rt::test]
async fn stalled_reader_is_closed_and_the_provider_held_back() {
    let t = start_with(|c| {
        c.mock = MockSettings {
            text_repeat: 100_000, // a 4 MB answer
            ..MockSettings::instant()
        };
        c.session.heartbeat_interval_ms = 100;
        c.session.idle_timeout_ms = 800;
        c.session.close_grace_ms = 300;
        c.session.outbox_high_watermark_bytes = 16 * 1024;
        c.session.outbox_max_bytes = 64 * 1024;
        // Without a grace time for resume, closing the session cancels its answer.
        c.resume.grace_ms = 0;
    })
    .await;
    let mut ws = tight_client(&t).await;
    ws.send_json(json!({"type": "chat", "id": "flood", "payload": {"content": "all of it"}}))
        .await;
    let stalled_at = Instant::now();
    // Stop reading. Heartbeats go unanswered, the idle timeout fires, the close frame cannot be
    // delivered, and the connection is cut after the grace period.
    t.wait_sessions(0, Duration::from_secs(5)).await;
    let closed_after = stalled_at.elapsed();
    assert!(
        closed_after >= Duration::from_millis(700),
        "closed too early: {closed_after:?}"
    );

    // The server let go of the connection itself, though the client still reads nothing.
    eventually(Duration::from_secs(2), "the connection to be cut", || {
        t.gw.open_connections() == 0
    })
    .await;

    let produced = t.gw.mock().chunks_produced();
    assert!(
        produced < 100_000,
        "the provider ran ahead of the client: {produced} chunks"
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(t.gw.mock().chunks_produced(), produced);

    // The client, reading again, finds the connection over.
    ws.ending().await;
}

#[actix_rt::test]
async fn pong_flood_without_reading_closes_a_slow_consumer() {
    let t = start_with(|c| {
        c.session.close_grace_ms = 200;
        c.session.outbox_high_watermark_bytes = 8 * 1024;
        c.session.outbox_max_bytes = 32 * 1024;
    })
    .await;
    let mut ws = tight_client(&t).await;
    let ping = json!({"type": "ping", "id": "p".repeat(120)}).to_string();
    // Each ping queues a pong the client never reads. Sending stops mattering once the server
    // gives up on the connection.
    let flood = async {
        for _ in 0..200_000 {
            if futures_util::SinkExt::send(&mut ws.inner, Message::text(ping.clone()))
                .await
                .is_err()
            {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(10), flood).await;
    t.wait_all_closed(Duration::from_secs(5)).await;
}

#[actix_rt::test]
async fn heartbeats_keep_a_reading_client_alive() {
    let t = start_with(|c| {
        c.session.heartbeat_interval_ms = 100;
        c.session.idle_timeout_ms = 400;
    })
    .await;
    let mut ws = t.client().await;
    let mut pings = 0;
    let until = tokio::time::Instant::now() + Duration::from_millis(1500);
    while let Ok(Some(msg)) = tokio::time::timeout_at(until, ws.inner.next()).await {
        if let Message::Ping(_) = msg.unwrap() {
            pings += 1;
        }
    }
    assert!(
        pings >= 8,
        "only {pings} heartbeat pings in 1.5 s at 100 ms"
    );
    // The client answered each ping (tungstenite does), so the idle timeout never fired.
    assert_eq!(ws.chat("alive", "still?").await.finish_reason(), "stop");
}

/// RFC 6455 control frames from a client that reads nothing: every ping used to queue a pong
/// (uncounted) and reset the idle timer, so the connection lived and its memory grew. Now only
/// the latest ping is answered, and a writer stuck on a client that reads nothing closes it.
#[actix_rt::test]
async fn a_ping_flood_from_a_client_that_never_reads_is_closed() {
    let t = start_with(|c| {
        c.session.close_grace_ms = 200;
        c.session.write_timeout_ms = 300;
    })
    .await;
    let mut ws = tight_client(&t).await;
    // Pings until the gateway cuts the connection: once the pongs fill the socket's buffers
    // (a few MB; slower on a busy machine), the write timeout closes it.
    let flood = async {
        loop {
            let ping = Message::Ping(vec![7u8; 125].into());
            if futures_util::SinkExt::send(&mut ws.inner, ping)
                .await
                .is_err()
            {
                break;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(60), flood)
        .await
        .expect("the gateway cut the flooding connection");
    t.wait_all_closed(Duration::from_secs(5)).await;
}

/// A client that stops reading mid-answer but pings now and then: the provider pauses at the
/// watermark, so the outbox never overflows, and pings keep the idle timer from firing. The
/// write timeout closes it and frees its stream.
#[actix_rt::test]
async fn a_reader_that_stalls_mid_answer_but_pings_is_closed_and_its_stream_freed() {
    let t = start_with(|c| {
        c.mock = MockSettings {
            text_repeat: 100_000,
            ..MockSettings::instant()
        };
        c.session.close_grace_ms = 200;
        c.session.write_timeout_ms = 400;
        c.session.outbox_high_watermark_bytes = 16 * 1024;
        c.resume.grace_ms = 0;
    })
    .await;
    let mut ws = tight_client(&t).await;
    ws.send_json(json!({"type": "chat", "id": "big", "payload": {"content": "all of it"}}))
        .await;
    let pinging = async {
        loop {
            tokio::time::sleep(Duration::from_millis(50)).await;
            let ping = Message::Ping(vec![1u8; 8].into());
            if futures_util::SinkExt::send(&mut ws.inner, ping)
                .await
                .is_err()
            {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(3), pinging).await;
    t.wait_sessions(0, Duration::from_secs(5)).await;
    let produced = t.gw.mock().chunks_produced();
    assert!(produced < 100_000, "the answer ran ahead: {produced}");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        t.gw.mock().chunks_produced(),
        produced,
        "its stream was freed"
    );
}

/// Answers cancelled with batches still on their way to the session: those batches' bytes
/// leave the session's count (else its later answers would wait at the watermark for bytes
/// nobody writes), and the node's queued bytes are back at zero once every session is gone.
#[actix_rt::test]
async fn batches_of_a_cancelled_answer_leave_the_queue_count() {
    let t = start_with(|c| {
        c.mock = MockSettings {
            text_repeat: 100_000,
            ..MockSettings::instant()
        };
        c.session.outbox_high_watermark_bytes = 64 * 1024;
        c.resume.grace_ms = 0;
    })
    .await;
    let mut ws = t.client().await;
    for i in 0..=20 {
        let id = format!("c{i}");
        ws.send_json(
            json!({"type": "chat", "id": id, "payload": {"content": "go", "model": "mock"}}),
        )
        .await;
        // A fast answer: batches keep coming while the cancel is on its way.
        let first = ws.next_json().await;
        assert_eq!(first["id"], id.as_str(), "{first}");
        ws.send_json(json!({"type": "cancel", "id": id})).await;
        let rest = ws.answer(&id).await;
        assert_eq!(rest.finish_reason(), "cancelled");
    }
    drop(ws);
    t.wait_sessions(0, Duration::from_secs(5)).await;
    let mut queued = f64::NAN;
    for _ in 0..50 {
        queued = sample(&scrape(&t).await, "gateway_outbound_queue_bytes");
        if queued == 0.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(queued, 0.0, "bytes left counted with no session open");
}
