//! Sessions come and go: the registry forgets the dead, kills reach the client, shutdown drains.

use std::{process::Stdio, time::Duration};

use ai_gateway_actors::{KillSession, MockSettings};
use serde_json::json;
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::support::*;

#[actix_rt::test]
async fn registry_never_keeps_a_dead_session() {
    let t = start().await;
    let (_, token) = t.new_user().await;
    let mut clients = Vec::new();
    for _ in 0..150 {
        clients.push(t.connect(&token).await);
    }
    t.wait_sessions(150, Duration::from_secs(5)).await;
    // Half leave politely, half just vanish.
    for (i, mut ws) in clients.into_iter().enumerate() {
        if i % 2 == 0 {
            let _ = ws.inner.close(None).await;
        }
    }
    t.wait_all_closed(Duration::from_secs(5)).await;
}

#[actix_rt::test]
async fn a_killed_session_sees_the_reason() {
    let t = start().await;
    let mut ws = t.client().await;
    let mut bystander = t.client().await;
    let killed =
        t.gw.registry()
            .kill(KillSession {
                session_id: ws.session_id.clone(),
                code: 1008,
                reason: "killed by test".into(),
            })
            .await;
    assert!(killed);
    assert_eq!(ws.close_code().await, (1008, "killed by test".to_owned()));
    assert_eq!(bystander.chat("b", "ok?").await.finish_reason(), "stop");
    t.wait_sessions(1, Duration::from_secs(5)).await;
}

#[actix_rt::test]
async fn sessions_on_every_worker_are_listed_killed_and_drained() {
    let t = start_with(|c| c.workers = 3).await;
    let (_, token) = t.new_user().await;
    let mut clients = Vec::new();
    for _ in 0..9 {
        clients.push(t.connect(&token).await);
    }
    t.wait_sessions(9, Duration::from_secs(5)).await;
    let registry = t.gw.registry().clone();
    assert_eq!(
        registry.shard_count(),
        3,
        "connections spread over the workers, a registry shard on each"
    );
    assert_eq!(registry.sessions().await.len(), 9);
    for (i, ws) in clients.iter_mut().enumerate() {
        assert_eq!(
            ws.chat(&format!("r{i}"), "hi").await.finish_reason(),
            "stop"
        );
    }

    let mut killed = clients.split_off(6);
    for ws in &killed {
        let kill = KillSession {
            session_id: ws.session_id.clone(),
            code: 1008,
            reason: "killed by test".into(),
        };
        assert!(registry.kill(kill).await, "{} was live", ws.session_id);
    }
    for ws in &mut killed {
        assert_eq!(ws.close_code().await, (1008, "killed by test".to_owned()));
    }
    t.wait_sessions(6, Duration::from_secs(5)).await;

    let stopping = actix_rt::spawn(t.gw.shutdown());
    for ws in &mut clients {
        let f = ws.next_json().await;
        assert_eq!(f["payload"]["event"], "draining", "{f}");
        assert_eq!(ws.close_code().await.0, 1012);
    }
    tokio::time::timeout(Duration::from_secs(10), stopping)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(registry.count(), 0);
}

#[actix_rt::test]
async fn shutdown_lets_streams_finish_then_closes_with_1012() {
    let t = start_with(|c| {
        c.mock = MockSettings {
            text_delay_ms: [5, 5],
            text_repeat: 3,
            ..MockSettings::instant()
        };
    })
    .await;
    let mut ws = t.client().await;
    ws.send_json(json!({"type": "chat", "id": "last", "payload": {"content": "finish me"}}))
        .await;
    for _ in 0..3 {
        assert_eq!(ws.next_json().await["type"], "chat");
    }
    let addr = t.gw.local_addr();
    let stopping = actix_rt::spawn(t.gw.shutdown());

    let mut saw_draining = false;
    let done = loop {
        let f = ws.next_json().await;
        match f["type"].as_str().unwrap() {
            "system" => saw_draining = f["payload"]["event"] == "draining",
            "chat" => {}
            "done" => break f,
            _ => panic!("unexpected {f}"),
        }
    };
    assert!(saw_draining);
    assert_eq!(
        done["payload"]["finish_reason"], "stop",
        "the stream finished"
    );
    assert_eq!(ws.close_code().await.0, 1012);
    tokio::time::timeout(Duration::from_secs(10), stopping)
        .await
        .unwrap()
        .unwrap();
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "still accepting"
    );
}

#[actix_rt::test]
async fn drain_timeout_ends_long_streams() {
    let t = start_with(|c| {
        c.mock = MockSettings {
            text_delay_ms: [20, 20],
            text_repeat: 100,
            ..MockSettings::instant()
        };
        c.shutdown.drain_timeout_ms = 300;
    })
    .await;
    let mut ws = t.client().await;
    ws.send_json(json!({"type": "chat", "id": "endless", "payload": {"content": "x"}}))
        .await;
    ws.next_json().await;
    let stopping = actix_rt::spawn(t.gw.shutdown());
    let error = loop {
        let f = ws.next_json().await;
        if f["type"] == "error" {
            break f;
        }
    };
    assert_eq!(error["payload"]["reason"], "shutting_down");
    let done = ws.next_json().await;
    assert_eq!(done["payload"]["finish_reason"], "error");
    assert_eq!(ws.close_code().await.0, 1012);
    tokio::time::timeout(Duration::from_secs(10), stopping)
        .await
        .unwrap()
        .unwrap();
}

#[actix_rt::test]
async fn the_binary_serves_logs_no_token_and_stops_on_sigterm() {
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_ai-gateway"))
        .args(["--listen", "127.0.0.1:0"])
        .env("RUST_LOG", "trace")
        .env("GATEWAY_LOG_FORMAT", "json")
        .env("GATEWAY_MOCK__FIRST_CHUNK_DELAY_MS", "0")
        .env("GATEWAY_MOCK__REASONING_DELAY_MS", "[0, 0]")
        .env("GATEWAY_MOCK__TEXT_DELAY_MS", "[0, 0]")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let line = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let base = line
        .strip_prefix("ai-gateway listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_owned();
    let mut stderr = child.stderr.take().unwrap();
    let logs = actix_rt::spawn(async move {
        let mut all = String::new();
        tokio::io::AsyncReadExt::read_to_string(&mut stderr, &mut all)
            .await
            .unwrap();
        all
    });

    let http = reqwest::Client::new();
    let creds = json!({"username": "erin", "password": PASSWORD});
    let res = http
        .post(format!("{base}/register"))
        .json(&creds)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let res = http
        .post(format!("{base}/login"))
        .json(&creds)
        .send()
        .await
        .unwrap();
    let token = res.json::<serde_json::Value>().await.unwrap()["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let ws_base = base.replacen("http://", "ws://", 1);
    let trace = "5bf92f3577b34da6a3ce929d0e0e4736";
    let mut request =
        tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(format!(
            "{ws_base}/chat?token={token}"
        ))
        .unwrap();
    request.headers_mut().insert(
        "traceparent",
        format!("00-{trace}-00f067aa0ba902b7-01").parse().unwrap(),
    );
    let (ws, _) = tokio_tungstenite::connect_async(request).await.unwrap();
    let mut ws = Ws::after_welcome(ws).await;
    assert_eq!(ws.chat("r", "hello").await.finish_reason(), "stop");

    let pid = child.id().unwrap().to_string();
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(killed.success());
    assert_eq!(
        ws.close_code().await.0,
        1012,
        "sessions close with the restart code"
    );
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .expect("exits after SIGTERM")
        .unwrap();
    assert!(status.success(), "{status:?}");

    let logs = logs.await.unwrap();
    assert!(logs.contains("/chat"), "the handshake was logged");
    let in_trace: Vec<serde_json::Value> = logs
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .filter(|l: &serde_json::Value| l["span"]["trace_id"] == trace)
        .collect();
    assert!(
        !in_trace.is_empty(),
        "JSON log lines inside the session name its trace"
    );
    assert!(!logs.contains(&token), "a token reached the log");
    assert!(!logs.contains(PASSWORD), "a password reached the log");
}

#[actix_rt::test]
async fn the_binary_names_a_bad_setting() {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_ai-gateway"))
        .env("GATEWAY_SESSION__MAX_FRAME_BYTES", "plenty")
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("max_frame_bytes"), "{stderr}");
}
