//! The admin API: three nodes sharing PostgreSQL and Redis list and kill each other's sessions;
//! only admins (or the static token) get in; every change is audited.

use std::time::Duration;

use reqwest::Method;
use serde_json::{json, Value};

use crate::support::*;

const ADMIN_TOKEN: &str = "static-admin-token-for-tests";

async fn call(
    t: &TestGateway,
    method: Method,
    path: &str,
    bearer: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut req = t.http.request(method, t.url(path));
    if !bearer.is_empty() {
        req = req.bearer_auth(bearer);
    }
    if let Some(body) = body {
        req = req.json(&body);
    }
    let res = req.send().await.unwrap();
    let status = res.status().as_u16();
    (status, res.json().await.unwrap_or(Value::Null))
}

async fn get(t: &TestGateway, path: &str, bearer: &str) -> (u16, Value) {
    call(t, Method::GET, path, bearer, None).await
}

/// Creates an admin through the static token and logs them in; returns (user id, token).
async fn new_admin(t: &TestGateway) -> (String, String) {
    let name = format!("admin_{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let (status, user) = call(
        t,
        Method::POST,
        "/admin/users",
        ADMIN_TOKEN,
        Some(json!({"username": name, "password": PASSWORD, "role": "admin"})),
    )
    .await;
    assert_eq!(status, 201, "{user}");
    assert_eq!(user["role"], "admin");
    assert!(user.get("password_hash").is_none());
    let (status, body) = t
        .post("/login", json!({"username": name, "password": PASSWORD}))
        .await;
    assert_eq!(status, 200, "{body}");
    (
        user["id"].as_str().unwrap().to_owned(),
        body["token"].as_str().unwrap().to_owned(),
    )
}

async fn user_id(t: &TestGateway, name: &str) -> String {
    t.gw.stores()
        .identity
        .user_by_name(name)
        .await
        .unwrap()
        .unwrap()
        .id
}

fn session_ids(list: &Value) -> Vec<String> {
    let mut ids: Vec<String> = list["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["session_id"].as_str().unwrap().to_owned())
        .collect();
    ids.sort();
    ids
}

/// Polls `GET path` on `t` until `ok` holds, failing after `within`.
async fn until(
    t: &TestGateway,
    path: &str,
    bearer: &str,
    within: Duration,
    ok: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let (status, body) = get(t, path, bearer).await;
        assert_eq!(status, 200, "{path}: {body}");
        if ok(&body) {
            return body;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{path} never matched: {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `n` nodes on one database and Redis prefix, with the static admin token, each config also
/// given `tweak`.
async fn admin_nodes(
    db: &TestDatabase,
    prefix: &str,
    n: usize,
    tweak: impl Fn(&mut ai_gateway::Config),
) -> Vec<TestGateway> {
    let mut nodes = Vec::new();
    for _ in 0..n {
        nodes.push(
            start_with(|c| {
                shared(c, db, prefix);
                c.admin_token = ADMIN_TOKEN.into();
                tweak(c);
            })
            .await,
        );
    }
    nodes
}

#[actix_rt::test]
async fn three_nodes_list_and_kill_each_others_sessions() {
    let db = TestDatabase::create().await;
    let prefix = redis_prefix();
    let nodes = admin_nodes(&db, &prefix, 3, |_| {}).await;
    let (a, b, c) = (&nodes[0], &nodes[1], &nodes[2]);
    let (_, admin) = new_admin(a).await;

    let (alice, alice_token) = a.new_user().await;
    let mut on_a = a.connect(&alice_token).await;
    let mut alice_on_b = b.connect(&alice_token).await;
    let (_, bob_token) = c.new_user().await;
    let on_c = c.connect(&bob_token).await;
    let mut expected = vec![
        on_a.session_id.clone(),
        alice_on_b.session_id.clone(),
        on_c.session_id.clone(),
    ];
    expected.sort();

    // Any node lists every node's sessions.
    for node in &nodes {
        let list = until(
            node,
            "/admin/sessions",
            &admin,
            Duration::from_secs(3),
            |l| session_ids(l) == expected,
        )
        .await;
        assert_eq!(list["total"], 3);
    }
    let (_, nodes_list) = get(b, "/admin/nodes", &admin).await;
    let mut node_ids: Vec<&str> = nodes_list["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["node_id"].as_str().unwrap())
        .collect();
    node_ids.sort();
    let mut want: Vec<&str> = nodes.iter().map(|n| n.gw.node_id()).collect();
    want.sort();
    assert_eq!(node_ids, want);

    // Filters and paging.
    let (_, by_node) = get(
        a,
        &format!("/admin/sessions?node={}", c.gw.node_id()),
        &admin,
    )
    .await;
    assert_eq!(session_ids(&by_node), vec![on_c.session_id.clone()]);
    let (_, by_user) = get(c, &format!("/admin/sessions?user={alice}"), &admin).await;
    assert_eq!(by_user["total"], 2);
    let (_, page) = get(c, "/admin/sessions?offset=1&limit=1", &admin).await;
    assert_eq!(
        (
            page["total"].clone(),
            page["sessions"].as_array().unwrap().len()
        ),
        (json!(3), 1)
    );
    // The model filter matches the model of a session's latest request.
    assert_eq!(
        on_a.chat("m1", "which model?").await.finish_reason(),
        "stop"
    );
    let mut by_model = Value::Null;
    for _ in 0..60 {
        let (_, v) = get(c, "/admin/sessions?model=mock", &admin).await;
        if v["total"] == 1 {
            by_model = v;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(session_ids(&by_model), vec![on_a.session_id.clone()]);
    assert_eq!(by_model["sessions"][0]["last_model"], "mock");
    let (_, none) = get(c, "/admin/sessions?model=gpt-9", &admin).await;
    assert_eq!(none["total"], 0);
    let (status, one) = get(b, &format!("/admin/sessions/{}", on_a.session_id), &admin).await;
    assert_eq!(
        (status, one["node_id"].as_str()),
        (200, Some(a.gw.node_id()))
    );

    // A kill asked of C closes the session held by A within a second, with the reason.
    let started = std::time::Instant::now();
    let path = format!(
        "/admin/sessions/{}?reason=maintenance%20window",
        on_a.session_id
    );
    let (status, body) = call(c, Method::DELETE, &path, &admin, None).await;
    assert_eq!(status, 200, "{body}");
    let closed = tokio::time::timeout(Duration::from_secs(1), on_a.close_code())
        .await
        .expect("closed within one second");
    assert_eq!(closed, (1008, "maintenance window".to_owned()));
    assert!(started.elapsed() < Duration::from_secs(1));

    // Killing a user's sessions reaches every node (here B, asked of C).
    let alice_id = user_id(a, &alice).await;
    let mut again_on_a = a.connect(&alice_token).await;
    let (status, body) = call(
        c,
        Method::DELETE,
        &format!("/admin/users/{alice_id}/sessions?reason=bye"),
        ADMIN_TOKEN,
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    for ws in [&mut alice_on_b, &mut again_on_a] {
        let closed = tokio::time::timeout(Duration::from_secs(1), ws.close_code())
            .await
            .expect("closed within one second");
        assert_eq!(closed, (1008, "bye".to_owned()));
    }
    until(a, "/admin/sessions", &admin, Duration::from_secs(3), |l| {
        session_ids(l) == vec![on_c.session_id.clone()]
    })
    .await;

    // Every change is in the audit table: who, what, when.
    let rows = db
        .client()
        .await
        .query(
            "SELECT actor, action, target FROM admin_audit ORDER BY id",
            &[],
        )
        .await
        .unwrap();
    let actions: Vec<(String, String)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(
        actions[0],
        ("static-token".to_owned(), "create_user".to_owned())
    );
    assert_eq!(actions[1].1, "kill_session");
    assert!(actions[1].0.starts_with("admin_"), "{actions:?}");
    assert_eq!(rows[1].get::<_, String>(2), on_a.session_id);
    assert_eq!(
        actions[2],
        ("static-token".to_owned(), "kill_user_sessions".to_owned())
    );
    let (_, audit) = get(b, "/admin/audit", &admin).await;
    assert_eq!(audit["entries"][0]["action"], "kill_user_sessions");
    assert!(audit["entries"][0]["at"].as_u64().unwrap() > 0);
}

#[actix_rt::test]
async fn only_admins_and_the_static_token_get_in() {
    let t = start_with(|c| c.admin_token = ADMIN_TOKEN.into()).await;
    let (_, user_token) = t.new_user().await;
    let routes = [
        (Method::GET, "/admin/sessions"),
        (Method::GET, "/admin/sessions/x"),
        (Method::DELETE, "/admin/sessions/x"),
        (Method::DELETE, "/admin/users/x/sessions"),
        (Method::GET, "/admin/nodes"),
        (Method::GET, "/admin/users"),
        (Method::POST, "/admin/users"),
        (Method::GET, "/admin/users/x"),
        (Method::PATCH, "/admin/users/x"),
        (Method::GET, "/admin/users/x/keys"),
        (Method::DELETE, "/admin/keys/x"),
        (Method::POST, "/admin/tokens/revoke"),
        (Method::GET, "/admin/providers"),
        (Method::GET, "/admin/audit"),
        (Method::GET, "/admin/usage"),
    ];
    for (method, path) in &routes {
        let (status, body) = call(&t, method.clone(), path, &user_token, Some(json!({}))).await;
        assert_eq!(
            (status, body),
            (403, json!({"error": "Admin only"})),
            "{method} {path}"
        );
        let (status, _) = call(&t, method.clone(), path, "", Some(json!({}))).await;
        assert_eq!(status, 401, "{method} {path} without a credential");
        let (status, _) = call(
            &t,
            method.clone(),
            path,
            "static-admin-token-for-test",
            None,
        )
        .await;
        assert_eq!(status, 401, "{method} {path} with a wrong static token");
    }
    // The page and the document are public; the data behind them is not.
    assert_eq!(
        t.http.get(t.url("/admin")).send().await.unwrap().status(),
        200
    );

    // Single node: the list comes from the local registry.
    let mut ws = t.connect(&user_token).await;
    let (status, list) = get(&t, "/admin/sessions", ADMIN_TOKEN).await;
    assert_eq!(status, 200);
    assert_eq!(session_ids(&list), vec![ws.session_id.clone()]);
    let (_, nodes) = get(&t, "/admin/nodes", ADMIN_TOKEN).await;
    assert_eq!(nodes["nodes"][0]["sessions"], 1);
    let (_, providers) = get(&t, "/admin/providers", ADMIN_TOKEN).await;
    assert_eq!(
        providers["models"][0],
        json!({"model": "mock", "provider": "mock", "kind": "mock", "upstream_model": "mock",
               "targets": [{"provider": "mock", "kind": "mock", "upstream_model": "mock", "breaker": "closed",
                            "recent": {"calls": 0, "failures": 0}}]})
    );

    // A reason longer than a close frame carries is cut to 123 bytes.
    let long = "x".repeat(300);
    let (status, _) = call(
        &t,
        Method::DELETE,
        &format!("/admin/sessions/{}?reason={long}", ws.session_id),
        ADMIN_TOKEN,
        None,
    )
    .await;
    assert_eq!(status, 200);
    let (code, reason) = ws.close_code().await;
    assert_eq!((code, reason.len()), (1008, 123));
    assert_eq!(
        call(
            &t,
            Method::DELETE,
            "/admin/sessions/gone",
            ADMIN_TOKEN,
            None
        )
        .await
        .0,
        404
    );

    // Users: promote, disable (closes sessions, refuses login), enable.
    let (name, token) = t.new_user().await;
    let id = user_id(&t, &name).await;
    let (_, listed) = get(&t, "/admin/users?limit=1000", ADMIN_TOKEN).await;
    assert!(listed["users"]
        .as_array()
        .unwrap()
        .iter()
        .any(|u| u["id"] == id.as_str()));
    assert_eq!(get(&t, "/admin/users", &token).await.0, 403);
    let user_path = format!("/admin/users/{id}");
    let patch = |body: Value| call(&t, Method::PATCH, &user_path, ADMIN_TOKEN, Some(body));
    assert_eq!(patch(json!({"role": "admin"})).await.1["role"], "admin");
    assert_eq!(
        get(&t, "/admin/users", &token).await.0,
        200,
        "promotion applies at once"
    );
    assert_eq!(patch(json!({"role": "root"})).await.0, 400);
    let mut session = t.connect(&token).await;
    let (status, body) = patch(json!({"disabled": true})).await;
    assert_eq!((status, body["disabled"].clone()), (200, json!(true)));
    assert_eq!(
        session.close_code().await,
        (1008, "user disabled".to_owned())
    );
    assert_eq!(
        t.post("/login", json!({"username": name, "password": PASSWORD}))
            .await
            .0,
        403
    );
    assert_eq!(
        patch(json!({"disabled": false, "role": "user"})).await.0,
        200
    );
    assert_eq!(
        t.post("/login", json!({"username": name, "password": PASSWORD}))
            .await
            .0,
        200
    );
    assert_eq!(
        get(&t, "/admin/users", &token).await.0,
        403,
        "demotion applies at once"
    );

    // Tokens and keys.
    let (_, key) = call(
        &t,
        Method::POST,
        "/v1/keys",
        &token,
        Some(json!({"name": "k"})),
    )
    .await;
    let (_, keys) = get(&t, &format!("/admin/users/{id}/keys"), ADMIN_TOKEN).await;
    assert_eq!(keys["keys"][0]["id"], key["id"]);
    let (status, _) = call(
        &t,
        Method::DELETE,
        &format!("/admin/keys/{}", key["id"].as_str().unwrap()),
        ADMIN_TOKEN,
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        get(&t, "/v1/keys", key["key"].as_str().unwrap()).await.0,
        401
    );
    let (status, _) = call(
        &t,
        Method::POST,
        "/admin/tokens/revoke",
        ADMIN_TOKEN,
        Some(json!({"token": token})),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(get(&t, "/v1/keys", &token).await.0, 401);

    let (_, audit) = get(&t, "/admin/audit", ADMIN_TOKEN).await;
    let actions: Vec<&str> = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions,
        [
            "revoke_token",
            "revoke_api_key",
            "update_user",
            "update_user",
            "update_user",
            "kill_session"
        ]
    );
    assert!(audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .all(|e| e["actor"] == "static-token"));
}

#[actix_rt::test]
async fn a_node_killed_with_sigkill_leaves_the_admin_list() {
    let db = TestDatabase::create().await;
    let prefix = redis_prefix();
    let a = start_with(|c| {
        shared(c, &db, &prefix);
        c.admin_token = ADMIN_TOKEN.into();
    })
    .await;
    let (_, token) = a.new_user().await;
    let ttl = Duration::from_millis(1500);
    let (mut child, base) = spawn_node(&db, &prefix, "doomed", ttl.as_millis() as u64).await;
    let (ws, _) = tokio_tungstenite::connect_async(format!("ws://{base}/chat?token={token}"))
        .await
        .unwrap();
    let doomed = Ws::after_welcome(ws).await;
    let has_doomed = |l: &Value| {
        l["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n["node_id"] == "doomed")
    };
    until(
        &a,
        "/admin/nodes",
        ADMIN_TOKEN,
        Duration::from_secs(3),
        has_doomed,
    )
    .await;
    let listed = until(
        &a,
        "/admin/sessions",
        ADMIN_TOKEN,
        Duration::from_secs(3),
        |l| session_ids(l).contains(&doomed.session_id),
    )
    .await;
    assert_eq!(listed["sessions"][0]["node_id"], "doomed");

    child.start_kill().unwrap(); // SIGKILL: no draining, no goodbye.
    child.wait().await.unwrap();
    let killed_at = std::time::Instant::now();
    until(
        &a,
        "/admin/nodes",
        ADMIN_TOKEN,
        ttl + Duration::from_secs(1),
        |l| !has_doomed(l),
    )
    .await;
    until(
        &a,
        "/admin/sessions",
        ADMIN_TOKEN,
        ttl + Duration::from_secs(1),
        |l| l["total"] == 0,
    )
    .await;
    assert!(killed_at.elapsed() < ttl + Duration::from_secs(1));
}

/// A model on the fake upstream that always fails (503), without retries.
fn broken_model(c: &mut ai_gateway::Config, fake: &fake_upstream::FakeUpstream) {
    use ai_gateway::config::{ModelSettings, ProviderSettings};
    use ai_gateway_actors::{provider::ApiKey, OpenAiSettings};
    let openai = OpenAiSettings::new(fake.openai_base_url(), Some(ApiKey::new("sk-test")));
    c.providers
        .insert("fake".into(), ProviderSettings::Openai(openai));
    c.models.insert(
        "broken".into(),
        ModelSettings {
            provider: "fake".into(),
            upstream_model: "fail-503".into(),
            fallback: vec![],
            max_retries: Some(0),
            drop_params: false,
        },
    );
}

#[actix_rt::test]
async fn any_node_shows_every_nodes_figures_usage_by_day_and_provider_health() {
    let db = TestDatabase::create().await;
    let prefix = redis_prefix();
    let fake = fake_upstream::FakeUpstream::start().await.unwrap();
    let nodes = admin_nodes(&db, &prefix, 2, |c| broken_model(c, &fake)).await;
    let (a, b) = (&nodes[0], &nodes[1]);

    // A session and an answer on B.
    let (alice, alice_token) = b.new_user().await;
    let mut on_b = b.connect(&alice_token).await;
    assert_eq!(on_b.chat("r1", "hello").await.finish_reason(), "stop");
    let (bob, bob_token) = a.new_user().await;
    let mut on_a = a.connect(&bob_token).await;
    assert_eq!(on_a.chat("r1", "hi").await.finish_reason(), "stop");
    on_a.send_json(
        json!({"type": "chat", "id": "r2", "payload": {"content": "x", "model": "broken"}}),
    )
    .await;
    assert_eq!(on_a.answer("r2").await.finish_reason(), "error");

    // A sees B's figures (published through Redis) next to its own.
    let list = until(
        a,
        "/admin/nodes",
        ADMIN_TOKEN,
        Duration::from_secs(5),
        |l| {
            l["nodes"]
                .as_array()
                .unwrap()
                .iter()
                .any(|n| n["node_id"] == b.gw.node_id() && n["figures"]["sessions"] == 1)
        },
    )
    .await;
    let nodes_seen = list["nodes"].as_array().unwrap();
    assert_eq!(nodes_seen.len(), 2, "{list}");
    for n in nodes_seen {
        let f = &n["figures"];
        assert_eq!(f["node_id"], n["node_id"], "{list}");
        assert_eq!(f["version"], env!("CARGO_PKG_VERSION"), "{list}");
        assert!(f["rss_bytes"].as_u64().unwrap() > 0, "{list}");
        assert!(f["started_at"].as_u64().unwrap() > 0, "{list}");
        assert_eq!(f["draining"], false, "{list}");
        assert_eq!(f["sessions"], 1, "{list}");
        assert!(f["chunks_relayed"].as_u64().unwrap() > 0, "{list}");
    }

    // Usage by day, user and model, from every node's records.
    a.gw.flush_writes().await;
    b.gw.flush_writes().await;
    let (status, usage) = get(b, "/admin/usage?days=7", ADMIN_TOKEN).await;
    assert_eq!(status, 200, "{usage}");
    assert_eq!(usage["days"], 7);
    let today = ai_gateway::store::utc_day(std::time::SystemTime::now());
    for name in [&alice, &bob] {
        let rows: Vec<&Value> = usage["totals"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|t| t["username"] == name.as_str() && t["model"] == "mock")
            .collect();
        assert_eq!(rows.len(), 1, "{usage}");
        assert_eq!(rows[0]["day"], today.as_str());
        assert_eq!(rows[0]["requests"], 1);
        assert!(rows[0]["completion_tokens"].as_u64().unwrap() > 0);
    }
    let (status, _) = get(b, "/admin/usage", &alice_token).await;
    assert_eq!(status, 403, "admins only");

    // The broken upstream's breaker and error rate, on the node that called it.
    let (_, providers) = get(a, "/admin/providers", ADMIN_TOKEN).await;
    let broken = providers["models"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["model"] == "broken")
        .unwrap();
    assert_eq!(broken["targets"][0]["breaker"], "closed", "{providers}");
    assert_eq!(
        broken["targets"][0]["recent"],
        json!({"calls": 1, "failures": 1}),
        "{providers}"
    );
    fake.stop().await;
}

fn unix_ms_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// A directory entry of `node` for one session of `user_id`.
fn ghost_entry(id: &str, node: &str, user_id: &str, now: u64) -> Value {
    json!({
        "session_id": id, "user_id": user_id, "username": "ghost", "role": "user",
        "node_id": node, "remote_addr": "127.0.0.1:40000", "started_at": now,
        "running": 0, "last_model": null,
    })
}

/// Writes `n` directory entries of a node that holds no connection (`ghost`), as a node of
/// 100,000 sessions would have them (its hash, its entry), expiring after two minutes.
async fn seed_directory(prefix: &str, n: usize) {
    let client = redis::Client::open(format!("redis://{REDIS_HOST}/")).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let now = unix_ms_now();
    let hash = format!("{prefix}node-sessions:ghost");
    for chunk in (0..n).collect::<Vec<_>>().chunks(5000) {
        let fields: Vec<(String, String)> = chunk
            .iter()
            .map(|i| {
                let id = format!("ghost-session-{i:06}");
                let entry = ghost_entry(&id, "ghost", "ghost-user", now);
                (id, entry.to_string())
            })
            .collect();
        redis::pipe()
            .hset_multiple(&hash, &fields)
            .ignore()
            .query_async::<()>(&mut conn)
            .await
            .unwrap();
    }
    let node = json!({"node_id": "ghost", "sessions": n, "refreshed_at": now});
    redis::pipe()
        .pexpire(&hash, 120_000)
        .ignore()
        .cmd("SET")
        .arg(format!("{prefix}node:ghost"))
        .arg(node.to_string())
        .arg("PX")
        .arg(120_000)
        .ignore()
        .zadd(format!("{prefix}nodes"), "ghost", now + 120_000)
        .ignore()
        .query_async::<()>(&mut conn)
        .await
        .unwrap();
}

/// A node from before the per-node hash, as it wrote the directory: `session:{id}` and the
/// `sessions` index. It ignores `user_sessions` events; it hears `kill_session` ones.
#[actix_rt::test]
async fn during_a_rolling_upgrade_older_nodes_sessions_are_listed_and_killed_one_by_one() {
    use futures_util::StreamExt;
    let db = TestDatabase::create().await;
    let prefix = redis_prefix();
    let nodes = admin_nodes(&db, &prefix, 1, |_| {}).await;
    let a = &nodes[0];
    let (alice, alice_token) = a.new_user().await;
    let alice_id = user_id(a, &alice).await;
    let mut alice_on_a = a.connect(&alice_token).await;
    let client = redis::Client::open(format!("redis://{REDIS_HOST}/")).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let now = unix_ms_now();
    let old_sessions = [("old-1", alice_id.as_str()), ("old-2", "someone-else")];
    for (id, user) in old_sessions {
        redis::pipe()
            .cmd("SET")
            .arg(format!("{prefix}session:{id}"))
            .arg(ghost_entry(id, "old-node", user, now).to_string())
            .arg("PX")
            .arg(60_000)
            .ignore()
            .zadd(format!("{prefix}sessions"), id, now + 60_000)
            .ignore()
            .query_async::<()>(&mut conn)
            .await
            .unwrap();
    }
    let listed = until(
        a,
        "/admin/sessions",
        ADMIN_TOKEN,
        Duration::from_secs(5),
        |l| l["total"] == 3,
    )
    .await;
    let mut ids = session_ids(&listed);
    ids.sort();
    let mut expected = vec![
        "old-1".to_owned(),
        "old-2".to_owned(),
        alice_on_a.session_id.clone(),
    ];
    expected.sort();
    assert_eq!(ids, expected);
    let (status, one) = get(a, "/admin/sessions/old-2", ADMIN_TOKEN).await;
    assert_eq!(
        (status, &one["node_id"]),
        (200, &json!("old-node")),
        "{one}"
    );

    // The old node hears the cluster channel: the kill of Alice's sessions reaches it as a
    // `kill_session` event for her session there, and for no one else's.
    let mut pubsub = client.get_async_pubsub().await.unwrap();
    pubsub.subscribe(format!("{prefix}events")).await.unwrap();
    let mut events = pubsub.into_on_message();
    let path = format!("/admin/users/{alice_id}/sessions?reason=upgrade");
    let (status, body) = call(a, Method::DELETE, &path, ADMIN_TOKEN, None).await;
    assert_eq!(status, 200, "{body}");
    // Counted: her old session (nobody removes it here) and perhaps the one on A, not old-2.
    assert!(matches!(body["sessions"].as_u64(), Some(1 | 2)), "{body}");
    let closed = tokio::time::timeout(Duration::from_secs(5), alice_on_a.close_code()).await;
    assert_eq!(closed.expect("closed"), (1008, "upgrade".to_owned()));
    let mut kills = Vec::new();
    while let Ok(Some(msg)) = tokio::time::timeout(Duration::from_millis(500), events.next()).await
    {
        let event: Value = serde_json::from_str(&msg.get_payload::<String>().unwrap()).unwrap();
        if event["event"] == "kill_session" {
            kills.push(event);
        }
    }
    assert_eq!(
        kills,
        vec![json!({"event": "kill_session", "session_id": "old-1", "reason": "upgrade"})]
    );
}

/// Two admin nodes, A and B, and two new users, each with a session on B.
struct AliceAndBob {
    prefix: String,
    nodes: Vec<TestGateway>,
    alice_id: String,
    alice_on_b: Ws,
    bob_token: String,
    bob_on_b: Ws,
}

async fn alice_and_bob_on_b(db: &TestDatabase) -> AliceAndBob {
    let prefix = redis_prefix();
    let nodes = admin_nodes(db, &prefix, 2, |_| {}).await;
    let (a, b) = (&nodes[0], &nodes[1]);
    let (alice, alice_token) = a.new_user().await;
    let alice_id = user_id(a, &alice).await;
    let alice_on_b = b.connect(&alice_token).await;
    let (_, bob_token) = a.new_user().await;
    let bob_on_b = b.connect(&bob_token).await;
    AliceAndBob {
        prefix,
        nodes,
        alice_id,
        alice_on_b,
        bob_token,
        bob_on_b,
    }
}

/// With 100,000 sessions in the directory, every one is listed page by page, a session and a
/// user are killed across nodes, and the kill of a user does not wait for the directory to be
/// read: it is one event every node applies.
#[actix_rt::test]
async fn a_directory_of_100000_sessions_is_paged_and_killed_across_nodes() {
    let db = TestDatabase::create().await;
    let AliceAndBob {
        prefix,
        nodes,
        alice_id,
        mut alice_on_b,
        mut bob_on_b,
        ..
    } = alice_and_bob_on_b(&db).await;
    let a = &nodes[0];
    seed_directory(&prefix, 100_000).await;
    until(
        a,
        "/admin/sessions?limit=1",
        ADMIN_TOKEN,
        Duration::from_secs(5),
        |l| l["total"] == 100_002,
    )
    .await;

    // Every session, 1,000 a page: one directory read for the first page, the rest cut from it.
    let mut seen = std::collections::HashSet::new();
    let mut pages = 0;
    let walk = std::time::Instant::now();
    loop {
        let path = format!("/admin/sessions?offset={}&limit=1000", seen.len());
        let (status, page) = get(a, &path, ADMIN_TOKEN).await;
        assert_eq!(status, 200, "{path}: {page}");
        pages += 1;
        let ids = session_ids(&page);
        if ids.is_empty() {
            break;
        }
        seen.extend(ids);
    }
    assert_eq!((seen.len(), pages), (100_002, 102));
    // Read once, the directory takes about a second here (debug build); read once a page, it
    // took 100 s.
    let walked = walk.elapsed();
    assert!(
        walked < Duration::from_secs(30),
        "102 pages took {walked:?}: is the directory read once a page?"
    );
    assert!(seen.contains(&alice_on_b.session_id) && seen.contains(&bob_on_b.session_id));

    // One session on B, killed through A: found with one read, not a listing.
    let path = format!("/admin/sessions/{}?reason=one", bob_on_b.session_id);
    let (status, body) = call(a, Method::DELETE, &path, ADMIN_TOKEN, None).await;
    assert_eq!(status, 200, "{body}");
    let closed = tokio::time::timeout(Duration::from_secs(5), bob_on_b.close_code()).await;
    assert_eq!(closed.expect("closed"), (1008, "one".to_owned()));

    // Alice's sessions, killed through A: B closes hers on one broadcast, before A has read the
    // directory of 100,000 (which it does only to count them for its answer).
    let path = format!("/admin/users/{alice_id}/sessions?reason=bye");
    let kill = call(a, Method::DELETE, &path, ADMIN_TOKEN, None);
    tokio::pin!(kill);
    let closed = tokio::select! {
        closed = tokio::time::timeout(Duration::from_secs(5), alice_on_b.close_code()) => closed,
        (status, body) = &mut kill => panic!(
            "the kill answered ({status} {body}) before the session closed: it waited for the listing"
        ),
    };
    assert_eq!(closed.expect("closed"), (1008, "bye".to_owned()));
    let (status, body) = kill.await;
    assert_eq!(status, 200, "{body}");
    // How many the directory still listed when read, alongside the closes: a count, not a
    // promise (hers may already be gone from it).
    assert!(body["sessions"].as_u64().is_some_and(|n| n <= 1), "{body}");
}

/// Kills and revokes close their sessions while the audit row waits for a slow store (here the
/// audit table is locked by another transaction), and answer once the row is written: the store
/// delays the answer, never the closes.
#[actix_rt::test]
async fn kills_and_revokes_close_sessions_without_waiting_for_the_audit_row() {
    let db = TestDatabase::create().await;
    let AliceAndBob {
        nodes,
        alice_id,
        mut alice_on_b,
        bob_token,
        mut bob_on_b,
        ..
    } = alice_and_bob_on_b(&db).await;
    let a = &nodes[0];

    let mut locker = db.client().await;
    let lock = locker.transaction().await.unwrap();
    lock.batch_execute("LOCK TABLE admin_audit IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();

    let path = format!("/admin/users/{alice_id}/sessions?reason=now");
    let kill = call(a, Method::DELETE, &path, ADMIN_TOKEN, None);
    let revoke = call(
        a,
        Method::POST,
        "/admin/tokens/revoke",
        ADMIN_TOKEN,
        Some(json!({"token": bob_token})),
    );
    let answers = async { futures_util::join!(kill, revoke) };
    tokio::pin!(answers);
    let closes = async {
        let alice = tokio::time::timeout(Duration::from_secs(5), alice_on_b.close_code()).await;
        let bob = tokio::time::timeout(Duration::from_secs(5), bob_on_b.close_code()).await;
        (alice, bob)
    };
    let (alice_closed, bob_closed) = tokio::select! {
        closed = closes => closed,
        (kill, revoke) = &mut answers => panic!(
            "answered ({kill:?}, {revoke:?}) while the audit table was locked"
        ),
    };
    assert_eq!(alice_closed.expect("closed"), (1008, "now".to_owned()));
    assert_eq!(
        bob_closed.expect("closed"),
        (1008, "token revoked".to_owned())
    );

    // The rows are written once the lock goes, and then the answers come.
    lock.rollback().await.unwrap();
    let ((kill_status, kill_body), (revoke_status, revoke_body)) =
        tokio::time::timeout(Duration::from_secs(5), answers)
            .await
            .expect("answered after the lock");
    assert_eq!(kill_status, 200, "{kill_body}");
    assert_eq!(revoke_status, 200, "{revoke_body}");
    let (_, audit) = get(a, "/admin/audit", ADMIN_TOKEN).await;
    let mut actions: Vec<&str> = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    actions.sort();
    assert_eq!(actions, ["kill_user_sessions", "revoke_token"]);
}
