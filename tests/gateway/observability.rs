//! Prometheus metrics after a scripted session, the per-request added latency, health probes.

use std::time::Duration;

use ai_gateway::limits::RateLimitSettings;
use serde_json::json;

use crate::{proxy::Proxy, support::*};

#[actix_rt::test]
async fn metrics_follow_a_scripted_session() {
    let t = start_with(|c| {
        c.rate_limits = RateLimitSettings {
            logins_per_ip_per_min: 1,
            login_burst: 2,
            ..RateLimitSettings::off()
        };
        c.rate_limits.enabled = true;
        c.rate_limits.handshakes_per_ip_per_min = 1000;
        c.rate_limits.handshake_burst = 1000;
    })
    .await;
    let (name, token) = t.new_user().await; // login 1 of 2
    let mut talker = t.connect(&token).await;
    let leaver = t.connect(&token).await;

    let answer = talker.chat("m", "count this").await;
    let chunks = answer.chunks.len() as f64;
    let meta = &answer.done["metadata"];
    assert!(meta["gateway_first_chunk_us"].is_u64(), "{}", answer.done);
    assert!(
        meta["gateway_max_chunk_us"].as_u64().unwrap()
            >= meta["gateway_mean_chunk_us"].as_u64().unwrap()
    );
    talker.send_text("{broken").await;
    talker.next_json().await;
    drop(leaver);
    t.wait_sessions(1, Duration::from_secs(5)).await;
    // Logins 2 and 3: the third is refused.
    for expected in [200, 429] {
        let (status, _) = t
            .post("/login", json!({"username": name, "password": PASSWORD}))
            .await;
        assert_eq!(status, expected);
    }

    let text = scrape(&t).await;
    assert_eq!(sample(&text, "gateway_sessions_live"), 1.0);
    assert_eq!(sample(&text, "gateway_connects_total"), 2.0);
    assert_eq!(
        sample(&text, "gateway_disconnects_total{reason=\"client_gone\"}"),
        1.0
    );
    assert_eq!(
        sample(&text, "gateway_frames_in_total"),
        2.0,
        "the chat and the broken frame"
    );
    assert_eq!(sample(&text, "gateway_chunks_relayed_total"), chunks);
    // Two welcomes, the chunks, done, the error frame.
    assert_eq!(sample(&text, "gateway_frames_out_total"), chunks + 4.0);
    assert_eq!(
        sample(&text, "gateway_time_to_first_chunk_seconds_count"),
        1.0
    );
    assert_eq!(
        sample(
            &text,
            "gateway_added_latency_seconds_count{stage=\"chunk\"}"
        ),
        chunks
    );
    assert_eq!(
        sample(
            &text,
            "gateway_added_latency_seconds_count{stage=\"first_chunk\"}"
        ),
        1.0
    );
    assert_eq!(sample(&text, "gateway_outbound_queue_bytes"), 0.0);
    assert_eq!(
        sample(
            &text,
            "gateway_rate_limit_rejections_total{limit=\"login\"}"
        ),
        1.0
    );
    assert_eq!(
        sample(
            &text,
            "gateway_circuit_breaker_state{model=\"mock\",provider=\"mock\",upstream_model=\"mock\"}"
        ),
        0.0
    );

    drop(talker);
    t.wait_sessions(0, Duration::from_secs(5)).await;
    let text = scrape(&t).await;
    assert_eq!(sample(&text, "gateway_sessions_live"), 0.0);
    assert_eq!(
        sample(&text, "gateway_disconnects_total{reason=\"client_gone\"}"),
        2.0
    );
}

#[actix_rt::test]
async fn readiness_follows_the_dependencies() {
    let db = TestDatabase::create().await;
    let pg = Proxy::start(PG_HOST).await;
    let t = start_with(|c| c.database_url = db.url_via(&pg.addr.to_string())).await;
    let ready = t.http.get(t.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200);
    let body: serde_json::Value = ready.json().await.unwrap();
    assert_eq!(body["postgres"], "up");
    assert_eq!(body["redis"], serde_json::Value::Null);

    pg.cut();
    let res = t.http.get(t.url("/readyz")).send().await.unwrap();
    assert_eq!(res.status(), 503);
    assert_eq!(
        res.json::<serde_json::Value>().await.unwrap()["postgres"],
        "down"
    );
    assert_eq!(
        t.http.get(t.url("/healthz")).send().await.unwrap().status(),
        200,
        "still alive"
    );
    pg.restore();
    let mut ok = false;
    for _ in 0..50 {
        if t.http.get(t.url("/readyz")).send().await.unwrap().status() == 200 {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ok, "ready again once PostgreSQL is back");
}

#[actix_rt::test]
async fn metrics_can_move_to_an_internal_listener() {
    let t = start_with(|c| c.metrics_listen = Some("127.0.0.1:0".parse().unwrap())).await;
    let public = t.http.get(t.url("/metrics")).send().await.unwrap();
    assert_eq!(public.status(), 404, "not on the public listener");
    let internal = t.gw.metrics_addr().expect("an internal listener");
    let res = t
        .http
        .get(format!("http://{internal}/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert!(res.text().await.unwrap().contains("gateway_build_info"));
    let other = t
        .http
        .get(format!("http://{internal}/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        other.status(),
        404,
        "the internal listener serves /metrics alone"
    );
}
