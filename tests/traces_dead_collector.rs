//! A collector that accepts connections and never answers must not slow or break a chat: spans
//! leave through a bounded batch queue on a thread of their own.
//!
//! A test binary of its own: it installs the process-wide tracing subscriber.

use std::time::Duration;

use ai_gateway::{config::LogFormat, limits::RateLimitSettings, Config, Gateway};
use ai_gateway_actors::MockSettings;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

#[actix_rt::test]
async fn a_dead_collector_never_slows_a_chat() {
    // Accepts, then holds every connection without reading or answering.
    let collector = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = collector.local_addr().unwrap();
    let _holder = std::thread::spawn(move || {
        let held: Vec<_> = collector.incoming().take(64).collect();
        std::thread::sleep(Duration::from_secs(120));
        drop(held);
    });
    // SAFETY (set_var): the test is alone in its binary and sets these before any thread reads them.
    unsafe {
        std::env::set_var("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://{addr}"));
        std::env::set_var("OTEL_BSP_SCHEDULE_DELAY", "10");
        std::env::set_var("OTEL_BSP_MAX_QUEUE_SIZE", "64");
    }
    let _telemetry = ai_gateway::telemetry::init(LogFormat::Pretty);

    let gw = Gateway::start(Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        workers: 1,
        jwt_secret: "dead-collector-secret-dead-collector".into(),
        mock: MockSettings::instant(),
        rate_limits: RateLimitSettings::off(),
        ..Config::default()
    })
    .await
    .unwrap();
    let base = format!("http://{}", gw.local_addr());
    let http = reqwest::Client::new();
    let creds = json!({"username": "nobody-listens", "password": "long enough password"});
    http.post(format!("{base}/register"))
        .json(&creds)
        .send()
        .await
        .unwrap();
    let login: Value = http
        .post(format!("{base}/login"))
        .json(&creds)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let url = format!(
        "ws://{}/chat?token={}",
        gw.local_addr(),
        login["token"].as_str().unwrap()
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();

    // Many requests, many spans: every answer still arrives whole, each within the frame timeout.
    for i in 0..200 {
        let chat = json!({"type": "chat", "id": format!("r{i}"), "payload": {"content": "x", "max_tokens": 5}});
        ws.send(Message::text(chat.to_string())).await.unwrap();
        let mut chunks = 0;
        loop {
            let msg = tokio::time::timeout(Duration::from_secs(5), ws.next())
                .await
                .expect("a frame in time despite the dead collector")
                .unwrap()
                .unwrap();
            let Message::Text(t) = msg else { continue };
            let f: Value = serde_json::from_str(t.as_str()).unwrap();
            match f["type"].as_str().unwrap() {
                "chat" => chunks += 1,
                "done" => {
                    assert_eq!(f["payload"]["finish_reason"], "length");
                    break;
                }
                "system" => {}
                other => panic!("unexpected {other}: {f}"),
            }
        }
        assert_eq!(chunks, 5);
    }
}
