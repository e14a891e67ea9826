//! Rate limits shared through Redis (or held per node without it), and what happens when
//! PostgreSQL or Redis go away and come back.

use std::time::Duration;

use ai_gateway::limits::RateLimitSettings;
use ai_gateway_actors::MockSettings;
use futures_util::future::join_all;
use serde_json::{json, Value};

use crate::{proxy::Proxy, support::*};

/// Limits that tests can reach quickly; each test lowers the one it checks.
fn roomy_limits() -> RateLimitSettings {
    RateLimitSettings {
        handshakes_per_ip_per_min: 1000,
        handshake_burst: 1000,
        logins_per_ip_per_min: 1000,
        login_burst: 1000,
        chat_requests_per_user_per_min: 1000,
        chat_request_burst: 1000,
        concurrent_streams_per_user: 100,
        tokens_per_user_per_day: 0,
        ..RateLimitSettings::default()
    }
}

async fn login_statuses(nodes: &[&TestGateway], name: &str, n: usize) -> Vec<u16> {
    let attempts = (0..n).map(|i| {
        let node = nodes[i % nodes.len()];
        async move {
            let res = node
                .http
                .post(node.url("/login"))
                .json(&json!({"username": name, "password": PASSWORD}))
                .send()
                .await
                .unwrap();
            if res.status() == 429 {
                let retry: u64 = res.headers()["retry-after"]
                    .to_str()
                    .unwrap()
                    .parse()
                    .unwrap();
                assert!(retry >= 1);
                let body: Value = res.json().await.unwrap();
                assert!(body["error"].as_str().unwrap().contains("Too many logins"));
                return 429;
            }
            res.status().as_u16()
        }
    });
    join_all(attempts).await
}

#[actix_rt::test]
async fn login_limit_is_atomic_across_nodes() {
    let db = TestDatabase::create().await;
    let prefix = redis_prefix();
    let limits = RateLimitSettings {
        logins_per_ip_per_min: 1,
        login_burst: 5,
        ..roomy_limits()
    };
    let a = start_with(|c| {
        shared(c, &db, &prefix);
        c.rate_limits = limits.clone();
    })
    .await;
    let b = start_with(|c| {
        shared(c, &db, &prefix);
        c.rate_limits = limits.clone();
    })
    .await;
    let name = "limited";
    assert_eq!(
        a.post("/register", json!({"username": name, "password": PASSWORD}))
            .await
            .0,
        200
    );
    let statuses = login_statuses(&[&a, &b], name, 24).await;
    let ok = statuses.iter().filter(|s| **s == 200).count();
    let limited = statuses.iter().filter(|s| **s == 429).count();
    assert_eq!((ok, limited), (5, 19), "{statuses:?}");
}

#[actix_rt::test]
async fn without_redis_limits_hold_per_node() {
    let limits = RateLimitSettings {
        logins_per_ip_per_min: 1,
        login_burst: 3,
        handshakes_per_ip_per_min: 1,
        handshake_burst: 4,
        ..roomy_limits()
    };
    let a = start_with(|c| c.rate_limits = limits.clone()).await;
    let (name, token) = a.new_user().await; // one login
    let statuses = login_statuses(&[&a], &name, 3).await;
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        2,
        "{statuses:?}"
    );

    let mut open = Vec::new();
    for _ in 0..4 {
        open.push(a.connect(&token).await);
    }
    let refused = try_connect(&a.ws_url(&format!("?token={token}")), &[]).await;
    assert_eq!(refused.expect_err("limited").0, 429);
}

#[actix_rt::test]
async fn chat_limits_answer_with_error_frames() {
    let db = TestDatabase::create().await;
    let prefix = redis_prefix();
    let limits = RateLimitSettings {
        chat_requests_per_user_per_min: 1,
        chat_request_burst: 2,
        concurrent_streams_per_user: 1,
        ..roomy_limits()
    };
    let slow = MockSettings {
        text_delay_ms: [5, 5],
        text_repeat: 50,
        ..MockSettings::instant()
    };
    let a = start_with(|c| {
        shared(c, &db, &prefix);
        c.rate_limits = limits.clone();
        c.mock = slow.clone();
    })
    .await;
    let b = start_with(|c| {
        shared(c, &db, &prefix);
        c.rate_limits = limits.clone();
        c.mock = slow.clone();
    })
    .await;
    let (_, token) = a.new_user().await;
    let mut on_a = a.connect(&token).await;
    let mut on_b = b.connect(&token).await;

    // One stream at a time for this user, across nodes.
    on_a.send_json(json!({"type": "chat", "id": "long", "payload": {"content": "x"}}))
        .await;
    assert_eq!(on_a.next_json().await["type"], "chat");
    on_b.send_json(json!({"type": "chat", "id": "second", "payload": {"content": "y"}}))
        .await;
    let f = on_b.next_json().await;
    assert_eq!(
        (f["id"].as_str(), f["payload"]["reason"].as_str()),
        (Some("second"), Some("rate_limited"))
    );
    assert_eq!(f["payload"]["code"], 429);
    on_a.send_json(json!({"type": "cancel", "id": "long"}))
        .await;
    while on_a.next_json().await["type"] != "done" {}

    // The slot frees (asynchronously) once the cancel lands; refusals for want of a slot do not
    // spend the per-minute rate, which (burst 2) then runs out.
    let mut third = None;
    for i in 0..100 {
        let id = format!("third{i}");
        on_b.send_json(
            json!({"type": "chat", "id": id, "payload": {"content": "z", "max_tokens": 2}}),
        )
        .await;
        let f = on_b.next_json().await;
        if f["type"] == "error" {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        }
        let mut answer = on_b.answer(&id).await;
        answer.chunks.insert(0, f);
        third = Some(answer);
        break;
    }
    assert_eq!(third.expect("the slot came free").finish_reason(), "length");
    // The third's slot also frees asynchronously; then the per-minute rate refuses.
    let mut refusal = Value::Null;
    for i in 0..100 {
        let id = format!("fourth{i}");
        on_b.send_json(json!({"type": "chat", "id": id, "payload": {"content": "z"}}))
            .await;
        refusal = on_b.next_json().await;
        assert_eq!(refusal["payload"]["reason"], "rate_limited", "{refusal}");
        if !refusal["payload"]["message"]
            .as_str()
            .unwrap()
            .contains("at once")
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        refusal["payload"]["message"]
            .as_str()
            .unwrap()
            .contains("per minute"),
        "{refusal}"
    );
}

#[actix_rt::test]
async fn the_daily_token_budget_is_enforced() {
    let db = TestDatabase::create().await;
    let prefix = redis_prefix();
    let a = start_with(|c| {
        shared(c, &db, &prefix);
        c.rate_limits = RateLimitSettings {
            tokens_per_user_per_day: 10,
            ..roomy_limits()
        };
    })
    .await;
    let mut ws = a.client().await;
    let first = ws.chat("spend", "use up the budget").await;
    assert!(first.chunks.len() > 10);
    // Spending is counted when the request ends, asynchronously.
    let mut refused = None;
    for i in 0..50 {
        ws.send_json(json!({"type": "chat", "id": format!("again{i}"), "payload": {"content": "more", "max_tokens": 1}}))
            .await;
        let f = ws.next_json().await;
        if f["type"] == "error" {
            refused = Some(f);
            break;
        }
        while ws.next_json().await["type"] != "done" {}
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let f = refused.expect("the budget ran out");
    assert_eq!(f["payload"]["reason"], "rate_limited");
    assert!(
        f["payload"]["message"].as_str().unwrap().contains("budget"),
        "{f}"
    );
}

/// Prompt tokens count too: a 60-word prompt with a one-token answer spends the budget of 10.
#[actix_rt::test]
async fn the_daily_budget_counts_prompt_tokens() {
    let a = start_with(|c| {
        c.rate_limits = RateLimitSettings {
            tokens_per_user_per_day: 10,
            ..roomy_limits()
        };
    })
    .await;
    let mut ws = a.client().await;
    let long_prompt = "word ".repeat(60);
    ws.send_json(
        json!({"type": "chat", "id": "long", "payload": {"content": long_prompt, "max_tokens": 1}}),
    )
    .await;
    let answer = ws.answer("long").await;
    assert_eq!(answer.chunks.len(), 1);
    let mut refused = None;
    // Counted asynchronously when the request ends: within a few tries, not after ten answers.
    for i in 0..3 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        ws.send_json(json!({"type": "chat", "id": format!("next{i}"), "payload": {"content": "x", "max_tokens": 1}}))
            .await;
        let f = ws.next_json().await;
        if f["type"] == "error" {
            refused = Some(f);
            break;
        }
        while ws.next_json().await["type"] != "done" {}
    }
    let f = refused.expect("the prompt spent the budget");
    assert_eq!(f["payload"]["reason"], "rate_limited", "{f}");
}

#[actix_rt::test]
async fn redis_outage_keeps_streams_and_local_limits_then_recovers() {
    let db = TestDatabase::create().await;
    let prefix = redis_prefix();
    let redis = Proxy::start(REDIS_HOST).await;
    let limits = RateLimitSettings {
        logins_per_ip_per_min: 1,
        login_burst: 3,
        ..roomy_limits()
    };
    let via_proxy = |c: &mut ai_gateway::Config| {
        shared(c, &db, &prefix);
        c.redis_url = format!("redis://{}/", redis.addr);
        c.rate_limits = limits.clone();
    };
    let a = start_with(via_proxy).await;
    let b = start_with(via_proxy).await;
    let (name, token) = a.new_user().await; // spends one login in Redis
    let mut live = b.connect(&token).await;

    redis.cut();
    assert_eq!(
        live.chat("during", "still streaming?")
            .await
            .finish_reason(),
        "stop"
    );
    // The login limit falls back to this node's memory: a fresh burst of 3, then 429.
    let statuses = login_statuses(&[&a], &name, 4).await;
    assert_eq!(
        statuses.iter().filter(|s| **s == 429).count(),
        1,
        "{statuses:?}"
    );

    redis.restore();
    // Pub/sub reconnects: a logout on A closes the session on B again.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let res = a
        .http
        .post(a.url("/logout"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let closed = tokio::time::timeout(Duration::from_secs(2), live.close_code())
        .await
        .expect("the revocation crossed nodes after Redis returned");
    assert_eq!(closed.0, 1008);
}

#[actix_rt::test]
async fn postgres_outage_keeps_sessions_and_loses_no_usage() {
    let db = TestDatabase::create().await;
    let pg = Proxy::start(PG_HOST).await;
    let t = start_with(|c| c.database_url = db.url_via(&pg.addr.to_string())).await;
    let (_, token) = t.new_user().await;
    let mut ws = t.connect(&token).await;

    pg.cut();
    // Live sessions keep streaming, and the known user reconnects from the cache.
    assert_eq!(ws.chat("a", "one").await.finish_reason(), "stop");
    let mut again = t.connect(&token).await;
    assert_eq!(again.chat("b", "two").await.finish_reason(), "stop");
    // What needs the database says so clearly.
    let (status, body) = t
        .post(
            "/register",
            json!({"username": "newcomer", "password": PASSWORD}),
        )
        .await;
    assert_eq!((status, body), (503, json!({"error": "Store unavailable"})));
    let conversation = uuid::Uuid::new_v4().to_string();
    ws.send_json(json!({"type": "chat", "id": "c", "payload": {"content": "x", "conversation_id": conversation}}))
        .await;
    let f = ws.next_json().await;
    assert_eq!(f["payload"]["reason"], "storage_unavailable", "{f}");
    assert_eq!(f["payload"]["code"], 503);

    pg.restore();
    tokio::time::timeout(Duration::from_secs(20), t.gw.flush_writes())
        .await
        .expect("queued writes land once PostgreSQL is back");
    let stored: i64 = db
        .client()
        .await
        .query_one("SELECT count(*) FROM usage_records", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        stored, 2,
        "both usage records written during the outage were kept"
    );
    let (status, _) = t
        .post(
            "/register",
            json!({"username": "newcomer", "password": PASSWORD}),
        )
        .await;
    assert_eq!(status, 200, "recovered by itself");
}

#[actix_rt::test]
async fn startup_waits_for_postgres() {
    let db = TestDatabase::create().await;
    let pg = Proxy::start(PG_HOST).await;
    pg.cut();
    let url = db.url_via(&pg.addr.to_string());
    let starting = actix_rt::spawn(async move {
        let mut c = test_config();
        c.database_url = url;
        ai_gateway::Gateway::start(c).await.map(|g| g.local_addr())
    });
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(!starting.is_finished(), "started without its database");
    pg.restore();
    let addr = tokio::time::timeout(Duration::from_secs(15), starting)
        .await
        .expect("starts once the database is back")
        .unwrap()
        .unwrap();
    assert_ne!(addr.port(), 0);
}

#[actix_rt::test]
async fn behind_a_trusted_proxy_limits_apply_per_client() {
    let limits = RateLimitSettings {
        logins_per_ip_per_min: 1,
        login_burst: 2,
        ..roomy_limits()
    };
    let trusting = start_with(|c| {
        c.rate_limits = limits.clone();
        c.trusted_proxies = vec!["127.0.0.0/8".into()];
    })
    .await;
    let trusting_nobody = start_with(|c| c.rate_limits = limits.clone()).await;
    for t in [&trusting, &trusting_nobody] {
        let name = format!("proxied{}", t.gw.local_addr().port());
        t.post("/register", json!({"username": name, "password": PASSWORD}))
            .await;
    }
    let login_from = |t: &TestGateway, client: &'static str| {
        let name = format!("proxied{}", t.gw.local_addr().port());
        t.http
            .post(t.url("/login"))
            .header("X-Forwarded-For", format!("{client}, 127.0.0.9"))
            .json(&json!({"username": name, "password": PASSWORD}))
            .send()
    };
    let mut statuses = Vec::new();
    for client in ["203.0.113.1", "203.0.113.1", "203.0.113.1", "203.0.113.2"] {
        statuses.push(
            login_from(&trusting, client)
                .await
                .unwrap()
                .status()
                .as_u16(),
        );
    }
    assert_eq!(
        statuses,
        [200, 200, 429, 200],
        "each client has its own budget"
    );
    let mut statuses = Vec::new();
    for client in ["203.0.113.1", "203.0.113.2", "203.0.113.3"] {
        statuses.push(
            login_from(&trusting_nobody, client)
                .await
                .unwrap()
                .status()
                .as_u16(),
        );
    }
    assert_eq!(
        statuses,
        [200, 200, 429],
        "an untrusted peer's header is ignored"
    );
}
