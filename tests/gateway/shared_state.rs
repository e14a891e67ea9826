//! Several nodes sharing the real PostgreSQL and Redis: identity, revocation, API keys, the
//! session directory, conversations and usage.

use std::time::Duration;

use ai_gateway::{
    cluster::{list_nodes, list_sessions},
    revocation::Revocation,
    store::postgres,
};
use serde_json::{json, Value};

use crate::support::*;

/// Two nodes on one database and Redis prefix.
async fn two_nodes() -> (TestDatabase, TestGateway, TestGateway) {
    let db = TestDatabase::create().await;
    let prefix = redis_prefix();
    let a = start_with(|c| shared(c, &db, &prefix)).await;
    let b = start_with(|c| shared(c, &db, &prefix)).await;
    (db, a, b)
}

async fn get(t: &TestGateway, path: &str, token: &str) -> (u16, Value) {
    let res = t
        .http
        .get(t.url(path))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    let status = res.status().as_u16();
    (status, res.json().await.unwrap_or(Value::Null))
}

async fn send(
    t: &TestGateway,
    method: reqwest::Method,
    path: &str,
    token: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut req = t.http.request(method, t.url(path)).bearer_auth(token);
    if let Some(body) = body {
        req = req.json(&body);
    }
    let res = req.send().await.unwrap();
    let status = res.status().as_u16();
    (status, res.json().await.unwrap_or(Value::Null))
}

#[actix_rt::test]
async fn migrations_run_once_when_nodes_start_together() {
    let db = TestDatabase::create().await;
    let url = db.url();
    let (a, b, c) = tokio::join!(
        postgres::migrate(&url, &postgres::PgTls::Plain),
        postgres::migrate(&url, &postgres::PgTls::Plain),
        postgres::migrate(&url, &postgres::PgTls::Plain)
    );
    let applied: usize = [a.unwrap(), b.unwrap(), c.unwrap()]
        .iter()
        .map(Vec::len)
        .sum();
    let migrations = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/sql"))
        .unwrap()
        .filter(|f| {
            let name = f.as_ref().unwrap().file_name();
            name.to_string_lossy().ends_with(".sql")
        })
        .count();
    assert_eq!(
        applied, migrations,
        "exactly one node applies each migration"
    );
    let client = db.client().await;
    let tables: Vec<String> = client
        .query(
            "SELECT tablename::text FROM pg_tables WHERE schemaname = 'public' ORDER BY 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    for t in [
        "admin_audit",
        "api_keys",
        "conversations",
        "messages",
        "revoked_tokens",
        "usage_records",
        "users",
    ] {
        assert!(tables.iter().any(|x| x == t), "{t} missing from {tables:?}");
    }

    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_ai-gateway"))
        .arg("migrate")
        .env("DATABASE_URL", &url)
        .output()
        .await
        .unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "database is up to date"
    );
}

#[actix_rt::test]
async fn users_live_in_postgres_with_argon2id_hashes() {
    let (db, a, b) = two_nodes().await;
    let (name, token_a) = a.new_user().await;
    // Registered on A, logs in on B; A's token opens a session on B.
    let (status, body) = b
        .post("/login", json!({"username": name, "password": PASSWORD}))
        .await;
    assert_eq!(status, 200, "{body}");
    let mut ws = b.connect(&token_a).await;
    assert_eq!(ws.chat("r", "hi").await.finish_reason(), "stop");

    let row = db
        .client()
        .await
        .query_one(
            "SELECT password_hash, role, disabled FROM users WHERE username = $1",
            &[&name],
        )
        .await
        .unwrap();
    let hash: String = row.get(0);
    assert!(hash.starts_with("$argon2id$"), "{hash}");
    assert_eq!(row.get::<_, String>(1), "user");
    assert!(!row.get::<_, bool>(2));
    assert_eq!(
        b.post("/register", json!({"username": name, "password": PASSWORD}))
            .await,
        (409, json!({"error": "Username already exists"}))
    );
}

#[actix_rt::test]
async fn logout_on_one_node_closes_the_session_on_another() {
    let (_db, a, b) = two_nodes().await;
    let (_, token) = a.new_user().await;
    let mut on_b = b.connect(&token).await;

    let (status, body) = send(&a, reqwest::Method::POST, "/logout", &token, None).await;
    assert_eq!((status, body), (200, json!({"message": "Logged out"})));
    let closed = tokio::time::timeout(Duration::from_secs(1), on_b.close_code())
        .await
        .expect("closed within one second");
    assert_eq!(closed, (1008, "token revoked".to_owned()));

    for node in [&a, &b] {
        let refused = try_connect(&node.ws_url(&format!("?token={token}")), &[]).await;
        assert_eq!(
            refused.expect_err("revoked"),
            (401, json!({"error": "Token expired or revoked"}))
        );
    }
    // A fresh login still works.
    assert!(a.new_user().await.1 != token);
}

/// A revocation closes the sessions on every node without waiting for its row to be stored:
/// here the table is locked, so the store write waits until the test lets it go.
#[actix_rt::test]
async fn a_revocation_closes_sessions_before_its_store_write_commits() {
    let (db, a, b) = two_nodes().await;
    let (_, token) = a.new_user().await;
    let mut on_a = a.connect(&token).await;
    let mut on_b = b.connect(&token).await;
    let locker = db.client().await;
    locker
        .batch_execute("BEGIN; LOCK TABLE revoked_tokens IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();

    let logout = send(&a, reqwest::Method::POST, "/logout", &token, None);
    let closes = async {
        let within = Duration::from_secs(5);
        let on_a = tokio::time::timeout(within, on_a.close_code()).await;
        let on_b = tokio::time::timeout(within, on_b.close_code()).await;
        (on_a, on_b)
    };
    tokio::pin!(logout);
    let (on_a, on_b) = tokio::select! {
        closed = closes => closed,
        answer = &mut logout => panic!("the logout answered {answer:?} while its row could not be written"),
    };
    let expected = (1008, "token revoked".to_owned());
    assert_eq!(
        on_a.expect("closed on the node asked while the store waits"),
        expected
    );
    assert_eq!(
        on_b.expect("closed on the other node while the store waits"),
        expected
    );

    locker.batch_execute("COMMIT").await.unwrap();
    let (status, _) = logout.await;
    assert_eq!(status, 200, "the logout answers once its row is stored");
    let rows = locker
        .query("SELECT jti FROM revoked_tokens", &[])
        .await
        .unwrap();
    assert_eq!(rows.len(), 1, "the revocation was stored");
}

#[actix_rt::test]
async fn api_keys_are_shown_once_stored_hashed_and_revocable_everywhere() {
    let (db, a, b) = two_nodes().await;
    let (_, token) = a.new_user().await;
    let (status, created) = send(
        &a,
        reqwest::Method::POST,
        "/v1/keys",
        &token,
        Some(json!({"name": "ci bot"})),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    let key = created["key"].as_str().unwrap().to_owned();
    let id = created["id"].as_str().unwrap().to_owned();
    assert!(key.starts_with(created["prefix"].as_str().unwrap()));

    let (_, listed) = get(&b, "/v1/keys", &token).await;
    assert_eq!(listed["keys"][0]["id"], id.as_str());
    assert!(
        listed["keys"][0].get("key").is_none(),
        "the key is shown only once"
    );
    assert!(!listed.to_string().contains(&key));

    let stored: Vec<u8> = db
        .client()
        .await
        .query_one(
            "SELECT key_hash FROM api_keys WHERE id = $1::text::uuid",
            &[&id],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(stored.len(), 32, "a SHA-256 hash");
    assert!(!String::from_utf8_lossy(&stored).contains(&key));

    // The key opens sessions on any node, by header.
    let ws = try_connect(
        &b.ws_url(""),
        &[("Authorization", &format!("Bearer {key}"))],
    )
    .await
    .expect("key accepted");
    let mut on_b = Ws::after_welcome(ws).await;

    // Someone else cannot revoke it.
    let (_, stranger) = a.new_user().await;
    let path = format!("/v1/keys/{id}");
    assert_eq!(
        send(&a, reqwest::Method::DELETE, &path, &stranger, None)
            .await
            .0,
        404
    );

    assert_eq!(
        send(&a, reqwest::Method::DELETE, &path, &token, None)
            .await
            .0,
        200
    );
    let closed = tokio::time::timeout(Duration::from_secs(1), on_b.close_code())
        .await
        .expect("closed within one second");
    assert_eq!(closed, (1008, "API key revoked".to_owned()));
    let refused = try_connect(
        &a.ws_url(""),
        &[("Authorization", &format!("Bearer {key}"))],
    )
    .await;
    assert_eq!(refused.expect_err("revoked").0, 401);
}

#[actix_rt::test]
async fn a_disabled_user_is_closed_everywhere_and_refused() {
    let (_db, a, b) = two_nodes().await;
    let (name, token) = a.new_user().await;
    let mut on_a = a.connect(&token).await;
    let mut on_b = b.connect(&token).await;
    let user_id =
        a.gw.stores()
            .identity
            .user_by_name(&name)
            .await
            .unwrap()
            .unwrap()
            .id;
    a.gw.access()
        .revoke(Revocation::User { id: user_id })
        .await
        .unwrap();
    for ws in [&mut on_a, &mut on_b] {
        let closed = tokio::time::timeout(Duration::from_secs(1), ws.close_code())
            .await
            .expect("closed within one second");
        assert_eq!(closed, (1008, "user disabled".to_owned()));
    }
    assert_eq!(
        try_connect(&b.ws_url(&format!("?token={token}")), &[])
            .await
            .expect_err("disabled"),
        (403, json!({"error": "User disabled"}))
    );
    assert_eq!(
        b.post("/login", json!({"username": name, "password": PASSWORD}))
            .await,
        (403, json!({"error": "User disabled"}))
    );
}

#[actix_rt::test]
async fn the_directory_lists_every_nodes_sessions_and_forgets_dead_ones() {
    let (db, a, b) = two_nodes().await;
    let (_, token) = a.new_user().await;
    let ws_a = a.connect(&token).await;
    let ws_b = b.connect(&token).await;
    let cluster = a.gw.cluster().unwrap().clone();

    let mut entries = Vec::new();
    for _ in 0..100 {
        entries = list_sessions(&cluster).await.unwrap();
        if entries.len() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut ids: Vec<&str> = entries.iter().map(|e| e.session_id.as_str()).collect();
    ids.sort();
    let mut expected = vec![ws_a.session_id.as_str(), ws_b.session_id.as_str()];
    expected.sort();
    assert_eq!(ids, expected);
    let nodes: Vec<&str> = entries.iter().map(|e| e.node_id.as_str()).collect();
    assert!(nodes.contains(&a.gw.node_id()) && nodes.contains(&b.gw.node_id()));
    drop(ws_a);
    a.wait_sessions(0, Duration::from_secs(5)).await;
    // The directory's writer runs on a thread of its own: the leave reaches Redis a moment after
    // the session is gone from its node.
    until_listed(&cluster, 1).await;
    let after = list_sessions(&cluster).await.unwrap();
    assert_eq!(after[0].session_id, ws_b.session_id, "{after:?}");

    // A node killed with SIGKILL vanishes once its entries expire.
    let (mut child, base) = spawn_node(&db, &cluster.key(""), "doomed", 1500).await;
    let (ws, _) = tokio_tungstenite::connect_async(format!("ws://{base}/chat?token={token}"))
        .await
        .unwrap();
    let doomed = Ws::after_welcome(ws).await;
    let mut seen = false;
    for _ in 0..100 {
        let nodes = list_nodes(&cluster).await.unwrap();
        if nodes.iter().any(|n| n.node_id == "doomed") {
            seen = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(seen, "the new node registered");
    child.start_kill().unwrap();
    child.wait().await.unwrap();
    let killed_at = std::time::Instant::now();
    loop {
        let sessions = list_sessions(&cluster).await.unwrap();
        let gone = !sessions.iter().any(|e| e.session_id == doomed.session_id);
        let node_gone = !list_nodes(&cluster)
            .await
            .unwrap()
            .iter()
            .any(|n| n.node_id == "doomed");
        if gone && node_gone {
            break;
        }
        assert!(
            killed_at.elapsed() < Duration::from_secs(4),
            "a SIGKILLed node's session outlived the directory TTL"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until the directory lists `n` sessions.
async fn until_listed(cluster: &ai_gateway::cluster::Cluster, n: usize) {
    for _ in 0..200 {
        if list_sessions(cluster).await.unwrap().len() == n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!(
        "the directory never listed {n} sessions: {:?}",
        list_sessions(cluster).await.unwrap().len()
    );
}

/// The directory's refresh renews a node's idle sessions as a whole: over five refreshes of a
/// node with 40 idle sessions Redis sees a few commands on the directory, not one or more per
/// session and refresh (watched with `MONITOR`, this test's key prefix only).
#[actix_rt::test]
async fn refreshing_idle_sessions_costs_redis_a_few_commands_not_one_a_session() {
    use futures_util::StreamExt;
    let (_db, a, _b) = two_nodes().await;
    let (_, token) = a.new_user().await;
    let mut sessions = Vec::new();
    for _ in 0..40 {
        sessions.push(a.connect(&token).await);
    }
    let cluster = a.gw.cluster().unwrap().clone();
    until_listed(&cluster, 40).await;

    let client = redis::Client::open(format!("redis://{REDIS_HOST}/")).unwrap();
    // The monitor starts watching as it connects.
    let monitor = client.get_async_monitor().await.unwrap();
    let mut lines = monitor.into_on_message::<String>();
    let prefix = cluster.key("");
    // Node A's hash, and the per-session keys of the previous design.
    let session_keys = [
        format!("\"{prefix}node-sessions:{}\"", a.gw.node_id()),
        format!("\"{prefix}session:"),
    ];
    let mut directory_commands = 0;
    // The nodes refresh every 300 ms: about five refreshes each.
    let watch = tokio::time::sleep(Duration::from_millis(1_600));
    tokio::pin!(watch);
    loop {
        tokio::select! {
            _ = &mut watch => break,
            line = lines.next() => {
                let line = line.expect("monitor open");
                if session_keys.iter().any(|k| line.contains(k.as_str())) {
                    directory_commands += 1;
                }
            }
        }
    }
    // Two a refresh (renew, count), and room for one full write; the previous design wrote
    // each session every refresh (200 here).
    assert!(
        directory_commands < 40,
        "{directory_commands} directory commands in ~5 refreshes of 40 idle sessions"
    );
    // The sessions are still listed, and a change to one reaches the directory.
    until_listed(&cluster, 40).await;
    drop(sessions.pop());
    until_listed(&cluster, 39).await;
}

/// A node writes its whole share of the directory again when Redis lost it (a restart): the
/// refresh finds Redis holding fewer sessions than the node.
#[actix_rt::test]
async fn a_directory_that_redis_lost_is_written_again_at_the_next_refresh() {
    let (_db, a, b) = two_nodes().await;
    let (_, token) = a.new_user().await;
    let _on_a = a.connect(&token).await;
    let _on_b = b.connect(&token).await;
    let cluster = a.gw.cluster().unwrap().clone();
    until_listed(&cluster, 2).await;

    let client = redis::Client::open(format!("redis://{REDIS_HOST}/")).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{}*", cluster.key("")))
        .query_async(&mut conn)
        .await
        .unwrap();
    let _: () = redis::cmd("DEL")
        .arg(&keys)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(list_sessions(&cluster).await.unwrap().is_empty());
    until_listed(&cluster, 2).await;
}

#[actix_rt::test]
async fn conversations_continue_across_nodes_and_stay_private() {
    let (db, a, b) = two_nodes().await;
    let (_, token) = a.new_user().await;
    let conversation = uuid::Uuid::new_v4().to_string();
    let ask = |id: &str, content: &str| json!({"type": "chat", "id": id, "payload": {"content": content, "conversation_id": conversation}});

    let mut ws = a.connect(&token).await;
    ws.send_json(ask("q1", "first question")).await;
    let first = ws.answer("q1").await;
    assert_eq!(
        first.done["payload"]["conversation_id"],
        conversation.as_str()
    );
    let first_prompt = first.done["payload"]["usage"]["prompt_tokens"]
        .as_u64()
        .unwrap();
    drop(ws);
    a.gw.flush_writes().await;

    // Reconnect on the other node: the history comes along.
    let mut ws = b.connect(&token).await;
    ws.send_json(ask("q2", "second question")).await;
    let second = ws.answer("q2").await;
    let second_prompt = second.done["payload"]["usage"]["prompt_tokens"]
        .as_u64()
        .unwrap();
    assert!(
        second_prompt > first_prompt + 2,
        "history was not sent: {first_prompt} then {second_prompt}"
    );
    b.gw.flush_writes().await;

    let (status, shown) = get(&a, &format!("/v1/conversations/{conversation}"), &token).await;
    assert_eq!(status, 200, "{shown}");
    let roles: Vec<&str> = shown["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["role"].as_str().unwrap())
        .collect();
    assert_eq!(roles, ["user", "assistant", "user", "assistant"]);
    assert_eq!(shown["messages"][0]["content"], "first question");
    assert_eq!(
        shown["messages"][1]["content"],
        second.text_of("text").as_str()
    );
    assert_eq!(shown["title"], "first question");
    let (_, list) = get(&b, "/v1/conversations", &token).await;
    assert_eq!(list["conversations"][0]["id"], conversation.as_str());

    // Another user sees nothing and cannot write into it.
    let (_, stranger) = b.new_user().await;
    let path = format!("/v1/conversations/{conversation}");
    assert_eq!(get(&b, &path, &stranger).await.0, 404);
    assert_eq!(
        get(&b, "/v1/conversations", &stranger).await.1["conversations"],
        json!([])
    );
    let mut intruder = b.connect(&stranger).await;
    intruder.send_json(ask("x", "let me in")).await;
    let f = intruder.next_json().await;
    assert_eq!(f["payload"]["reason"], "unknown_conversation", "{f}");
    assert_eq!(
        send(&b, reqwest::Method::DELETE, &path, &stranger, None)
            .await
            .0,
        404
    );

    assert_eq!(
        send(&a, reqwest::Method::DELETE, &path, &token, None)
            .await
            .0,
        204
    );
    assert_eq!(get(&a, &path, &token).await.0, 404);
    let left: i64 = db
        .client()
        .await
        .query_one("SELECT count(*) FROM messages", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(left, 0, "the messages went with the conversation");
}

#[actix_rt::test]
async fn every_request_leaves_a_usage_record() {
    let (db, a, _b) = two_nodes().await;
    let (_, token) = a.new_user().await;
    let mut ws = a.connect(&token).await;
    let one = ws.chat("u1", "count me").await;
    let two = ws.chat("u2", "and me").await;
    ws.send_json(
        json!({"type": "chat", "id": "u3", "payload": {"content": "short", "max_tokens": 3}}),
    )
    .await;
    assert_eq!(ws.answer("u3").await.finish_reason(), "length");
    a.gw.flush_writes().await;

    let rows = db
        .client()
        .await
        .query(
            "SELECT request_id, model, provider, completion_tokens, finish_reason, duration_ms, \
             first_chunk_ms FROM usage_records ORDER BY created_at",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), 3);
    assert_eq!(rows[0].get::<_, String>(0), "u1");
    assert_eq!(rows[0].get::<_, String>(1), "mock");
    assert_eq!(rows[0].get::<_, String>(2), "mock");
    assert_eq!(rows[0].get::<_, i64>(3) as usize, one.chunks.len());
    assert_eq!(rows[0].get::<_, String>(4), "stop");
    assert!(
        rows[0].get::<_, Option<i64>>(6).is_some(),
        "time to first chunk"
    );
    assert_eq!(rows[2].get::<_, String>(4), "length");

    let (status, usage) = get(&a, "/v1/usage", &token).await;
    assert_eq!(status, 200);
    let totals = usage["totals"].as_array().unwrap();
    assert_eq!(totals.len(), 1, "{usage}");
    assert_eq!(totals[0]["model"], "mock");
    assert_eq!(totals[0]["requests"], 3);
    assert_eq!(
        totals[0]["completion_tokens"].as_u64().unwrap() as usize,
        one.chunks.len() + two.chunks.len() + 3
    );
    let (_, stranger) = a.new_user().await;
    assert_eq!(get(&a, "/v1/usage", &stranger).await.1["totals"], json!([]));
}
