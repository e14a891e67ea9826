//! Abuse resistance: each test plays an attack from the adversarial review (issue 13) against a
//! real node and checks it is refused.

use ai_gateway::limits::RateLimitSettings;
use futures_util::{future::join_all, SinkExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

use crate::{proxy::Proxy, support::*};

/// Every limit on but far away; each test lowers the one it checks.
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
        registrations_per_ip_per_hour: 1000,
        registration_burst: 1000,
        failed_logins_per_account_per_hour: 1000,
        failed_login_account_burst: 1000,
        failed_auth_per_ip_per_min: 1000,
        failed_auth_burst: 1000,
        ..RateLimitSettings::default()
    }
}

/// A status, its `Retry-After` (when there is one) and its JSON body.
async fn answer(res: reqwest::Response) -> (u16, Option<u64>, Value) {
    let status = res.status().as_u16();
    let retry = res
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().parse().unwrap());
    (status, retry, res.json().await.unwrap_or(Value::Null))
}

/// POSTs `body` as JSON, as if from `client` (behind a trusted proxy on loopback).
async fn post_from(
    t: &TestGateway,
    client: &str,
    path: &str,
    body: Value,
) -> (u16, Option<u64>, Value) {
    let res = t
        .http
        .post(t.url(path))
        .header("X-Forwarded-For", client)
        .json(&body)
        .send()
        .await
        .unwrap();
    answer(res).await
}

async fn get_with(
    t: &TestGateway,
    path: &str,
    bearer: &str,
    client: &str,
) -> (u16, Option<u64>, Value) {
    let res = t
        .http
        .get(t.url(path))
        .bearer_auth(bearer)
        .header("X-Forwarded-For", client)
        .send()
        .await
        .unwrap();
    answer(res).await
}

fn assert_refused(got: &(u16, Option<u64>, Value), status: u16, what: &str) {
    assert_eq!(got.0, status, "{what}: {got:?}");
    assert!(
        error_message(&got.2).is_some(),
        "{what}: a JSON error: {got:?}"
    );
    if status == 429 || status == 503 {
        assert!(
            got.1.is_some_and(|s| s >= 1),
            "{what}: Retry-After: {got:?}"
        );
    }
}

fn signup(name: &str) -> Value {
    json!({"username": name, "password": PASSWORD})
}

// --- 1. sign-ups ---------------------------------------------------------------------------

#[actix_rt::test]
async fn sign_ups_are_limited_per_address() {
    let db = TestDatabase::create().await;
    let prefix = redis_prefix();
    let limits = RateLimitSettings {
        registrations_per_ip_per_hour: 1,
        registration_burst: 2,
        ..roomy_limits()
    };
    let with_redis = start_with(|c| {
        shared(c, &db, &prefix);
        c.rate_limits = limits.clone();
        c.trusted_proxies = vec!["127.0.0.0/8".into()];
    })
    .await;
    let in_memory = start_with(|c| {
        c.rate_limits = limits.clone();
        c.trusted_proxies = vec!["127.0.0.0/8".into()];
    })
    .await;
    for (n, t) in [&with_redis, &in_memory].into_iter().enumerate() {
        for i in 0..2 {
            let got = post_from(
                t,
                "203.0.113.7",
                "/register",
                signup(&format!("bot{n}_{i}")),
            )
            .await;
            assert_eq!(got.0, 200, "{got:?}");
        }
        let got = post_from(t, "203.0.113.7", "/register", signup(&format!("bot{n}_x"))).await;
        assert_refused(&got, 429, "third sign-up from one address");
        let got = post_from(t, "198.51.100.1", "/register", signup(&format!("human{n}"))).await;
        assert_eq!(got.0, 200, "another address has its own allowance: {got:?}");
    }
}

#[actix_rt::test]
async fn closed_registration_refuses_sign_ups_but_not_admins() {
    let token = format!("admin-{}", uuid::Uuid::new_v4().simple());
    let t = start_with(|c| {
        c.open_registration = false;
        c.admin_token = token.clone();
    })
    .await;
    let (status, body) = t.post("/register", signup("walk_in")).await;
    assert_eq!(status, 403, "{body}");
    assert!(body["error"].as_str().unwrap().contains("closed"), "{body}");
    let res = t
        .http
        .post(t.url("/admin/users"))
        .bearer_auth(&token)
        .json(&signup("invited"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    let (status, body) = t.post("/login", signup("invited")).await;
    assert_eq!(status, 200, "{body}");
}

#[actix_rt::test]
async fn password_hashing_runs_in_a_bounded_number_of_slots() {
    // One slot and no waiting: of many sign-ups arriving together, those that find the slot
    // taken are refused with 503 + Retry-After instead of each taking 19 MiB and a thread.
    let t = start_with(|c| {
        c.password_hash_concurrency = 1;
        c.password_hash_wait_ms = 0;
    })
    .await;
    let names: Vec<String> = (0..32).map(|i| format!("rush{i}")).collect();
    let got = join_all(names.iter().map(|name| async {
        let res = t
            .http
            .post(t.url("/register"))
            .json(&signup(name))
            .send()
            .await
            .unwrap();
        answer(res).await
    }))
    .await;
    let busy: Vec<_> = got.iter().filter(|g| g.0 == 503).collect();
    assert!(
        got.iter().all(|g| g.0 == 200 || g.0 == 503),
        "only created or busy: {got:?}"
    );
    assert!(
        !busy.is_empty(),
        "32 hashes at once with one slot: some must wait: {got:?}"
    );
    for b in &busy {
        assert_refused(b, 503, "busy hashing");
    }
    // Busy is not broken: one at a time, everyone gets in, and logins verify in the same slots.
    for (name, g) in names.iter().zip(&got) {
        if g.0 == 503 {
            assert_eq!(t.post("/register", signup(name)).await.0, 200);
        }
    }
    assert_eq!(t.post("/login", signup("rush0")).await.0, 200);
}

// --- 2. API keys ---------------------------------------------------------------------------

async fn create_key(t: &TestGateway, token: &str, body: Value) -> (u16, Option<u64>, Value) {
    let res = t
        .http
        .post(t.url("/v1/keys"))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .unwrap();
    answer(res).await
}

#[actix_rt::test]
async fn key_lifetimes_that_overflow_time_are_400_not_a_panic() {
    let db = TestDatabase::create().await;
    let t = start_with(|c| c.database_url = db.url()).await;
    let (_, token) = t.new_user().await;
    for secs in [
        json!(18446744073709551615u64),
        json!(0),
        json!(9_000_000_000u64),
    ] {
        let got = create_key(&t, &token, json!({"name": "k", "expires_in_secs": secs})).await;
        assert_refused(&got, 400, &format!("expires_in_secs {secs}"));
    }
    for secs in [json!(-1), json!(1e30), json!("soon")] {
        let got = create_key(&t, &token, json!({"name": "k", "expires_in_secs": secs})).await;
        assert_refused(&got, 400, &format!("expires_in_secs {secs}"));
    }
    let got = create_key(&t, &token, json!({"name": "k", "expires_in_secs": 3600})).await;
    assert_eq!(got.0, 201, "the node still serves: {got:?}");
    let days = get_with(&t, "/v1/usage?days=18446744073709551615", &token, "").await;
    assert_eq!(days.0, 200, "{days:?}");
}

#[actix_rt::test]
async fn api_keys_per_user_are_capped() {
    let db = TestDatabase::create().await;
    let with_pg = start_with(|c| {
        c.database_url = db.url();
        c.max_api_keys_per_user = 3;
    })
    .await;
    let in_memory = start_with(|c| c.max_api_keys_per_user = 3).await;
    for t in [&with_pg, &in_memory] {
        let (_, token) = t.new_user().await;
        let made =
            join_all((0..6).map(|i| create_key(t, &token, json!({"name": format!("k{i}")})))).await;
        let created: Vec<_> = made.iter().filter(|g| g.0 == 201).collect();
        assert_eq!(created.len(), 3, "at once, still only 3: {made:?}");
        for refused in made.iter().filter(|g| g.0 != 201) {
            assert_refused(refused, 409, "a fourth key");
            assert!(
                error_message(&refused.2).unwrap().contains("at most 3"),
                "{refused:?}"
            );
        }
        // Revoking one frees its place.
        let id = created[0].2["id"].as_str().unwrap();
        let res = t
            .http
            .delete(t.url(&format!("/v1/keys/{id}")))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        assert_eq!(create_key(t, &token, json!({"name": "again"})).await.0, 201);
        assert_eq!(create_key(t, &token, json!({"name": "over"})).await.0, 409);
    }
}

#[actix_rt::test]
async fn the_key_list_pages() {
    let db = TestDatabase::create().await;
    let with_pg = start_with(|c| c.database_url = db.url()).await;
    let in_memory = start().await;
    for t in [&with_pg, &in_memory] {
        let (_, token) = t.new_user().await;
        let mut ids = Vec::new();
        for i in 0..5 {
            let got = create_key(t, &token, json!({"name": format!("k{i}")})).await;
            ids.push(got.2["id"].as_str().unwrap().to_owned());
        }
        let ids_of = |v: &Value| -> Vec<String> {
            v["keys"]
                .as_array()
                .unwrap()
                .iter()
                .map(|k| k["id"].as_str().unwrap().to_owned())
                .collect()
        };
        // A client that does not page still gets `{"keys": [...]}`.
        let all = get_with(t, "/v1/keys", &token, "").await;
        assert_eq!(all.0, 200);
        assert_eq!(ids_of(&all.2), ids);
        assert_eq!(all.2["next_offset"], Value::Null);
        let first = get_with(t, "/v1/keys?limit=2", &token, "").await.2;
        assert_eq!(ids_of(&first), ids[..2]);
        assert_eq!(first["next_offset"], 2);
        let last = get_with(t, "/v1/keys?offset=4&limit=2", &token, "").await.2;
        assert_eq!(ids_of(&last), ids[4..]);
        assert_eq!(last["next_offset"], Value::Null);
        let far = get_with(t, "/v1/keys?offset=18446744073709551615", &token, "").await;
        assert_eq!((far.0, ids_of(&far.2).len()), (200, 0), "{far:?}");
        let bad = get_with(t, "/v1/keys?limit=lots", &token, "").await;
        assert_refused(&bad, 400, "a limit that is not a number");
    }
}

#[actix_rt::test]
async fn an_unknown_key_costs_one_store_lookup_not_one_per_try() {
    let db = TestDatabase::create().await;
    let pg = Proxy::start(PG_HOST).await;
    let t = start_with(|c| c.database_url = db.url_via(&pg.addr.to_string())).await;
    let unknown = "agw_00000000_00000000000000000000000000000000";
    assert_eq!(get_with(&t, "/v1/keys", unknown, "").await.0, 401);
    pg.cut();
    // Answered from memory: the store is not asked again.
    assert_eq!(get_with(&t, "/v1/keys", unknown, "").await.0, 401);
    // A key never seen does need the store, which is down.
    let other = "agw_11111111_11111111111111111111111111111111";
    assert_eq!(get_with(&t, "/v1/keys", other, "").await.0, 503);
}

#[actix_rt::test]
async fn failed_key_lookups_are_limited_per_address() {
    let db = TestDatabase::create().await;
    let prefix = redis_prefix();
    let limits = RateLimitSettings {
        failed_auth_per_ip_per_min: 1,
        failed_auth_burst: 3,
        ..roomy_limits()
    };
    let with_redis = start_with(|c| {
        shared(c, &db, &prefix);
        c.rate_limits = limits.clone();
        c.trusted_proxies = vec!["127.0.0.0/8".into()];
    })
    .await;
    let in_memory = start_with(|c| {
        c.rate_limits = limits.clone();
        c.trusted_proxies = vec!["127.0.0.0/8".into()];
    })
    .await;
    for t in [&with_redis, &in_memory] {
        let (_, token) = t.new_user().await;
        let guess = |i: u32| format!("agw_{i:08x}_{:032x}", i);
        for i in 0..3 {
            let got = get_with(t, "/v1/keys", &guess(i), "203.0.113.9").await;
            assert_eq!(got.0, 401, "{got:?}");
        }
        let got = get_with(t, "/v1/keys", &guess(99), "203.0.113.9").await;
        assert_refused(&got, 429, "a fourth guess");
        let ws = try_connect(
            &t.ws_url(&format!("?token={}", guess(100))),
            &[("X-Forwarded-For", "203.0.113.9")],
        )
        .await;
        assert_eq!(
            ws.err().map(|e| e.0),
            Some(429),
            "the handshake is limited too"
        );
        // Others are not held back, and neither are session tokens (no lookup to guess with).
        assert_eq!(
            get_with(t, "/v1/keys", &guess(0), "198.51.100.9").await.0,
            401
        );
        assert_eq!(get_with(t, "/v1/keys", &token, "203.0.113.9").await.0, 200);
    }
}

// --- 3. bodies -----------------------------------------------------------------------------

#[actix_rt::test]
async fn oversized_bodies_are_413_with_a_json_error() {
    let t = start_with(|c| c.max_body_bytes = 2048).await;
    let (_, token) = t.new_user().await;
    let big = json!({"username": "x".repeat(4096), "password": PASSWORD});
    for path in [
        "/register",
        "/login",
        "/v1/keys",
        "/v1/chat/completions",
        "/admin/users",
    ] {
        let res = t
            .http
            .post(t.url(path))
            .bearer_auth(&token)
            .json(&big)
            .send()
            .await
            .unwrap();
        let got = answer(res).await;
        if path == "/admin/users" {
            assert_eq!(got.0, 403, "not an admin: refused before the body is read");
            continue;
        }
        assert_refused(&got, 413, path);
    }
    // Without a Content-Length (chunked), the limit holds while reading.
    let chunks: Vec<Result<String, std::io::Error>> = vec![
        Ok("{\"username\":\"".into()),
        Ok("y".repeat(4096)),
        Ok("\"}".into()),
    ];
    let res = t
        .http
        .post(t.url("/login"))
        .header("content-type", "application/json")
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            chunks,
        )))
        .send()
        .await
        .unwrap();
    assert_refused(&answer(res).await, 413, "a chunked body");
    // Bodies under the limit still work, and bad JSON is still 400.
    assert_eq!(t.post("/login", signup("nobody")).await.0, 401);
    let res = t
        .http
        .post(t.url("/login"))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_refused(&answer(res).await, 400, "bad JSON");
}

#[actix_rt::test]
async fn credential_endpoints_take_small_bodies_only() {
    // The default max_body_bytes (20 MiB) is for chat requests; a login has no use for it.
    let t = start().await;
    let (_, token) = t.new_user().await;
    let padding = "p".repeat(100 * 1024);
    for path in ["/register", "/login", "/v1/keys"] {
        let res = t
            .http
            .post(t.url(path))
            .bearer_auth(&token)
            .json(&json!({"username": "someone", "password": padding, "name": padding}))
            .send()
            .await
            .unwrap();
        assert_refused(&answer(res).await, 413, path);
    }
    let res = t
        .http
        .post(t.url("/v1/chat/completions"))
        .bearer_auth(&token)
        .json(&json!({"model": "mock", "messages": [{"role": "user", "content": padding}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200, "a long prompt fits max_body_bytes");
}

// --- 4. browsers ---------------------------------------------------------------------------

#[actix_rt::test]
async fn pages_and_answers_carry_security_headers() {
    let t = start().await;
    for path in ["/", "/admin", "/healthz", "/v1/keys", "/nowhere"] {
        let res = t.http.get(t.url(path)).send().await.unwrap();
        let h = res.headers();
        let get = |name: &str| h.get(name).map(|v| v.to_str().unwrap().to_owned());
        assert_eq!(
            get("x-content-type-options").as_deref(),
            Some("nosniff"),
            "{path}"
        );
        assert_eq!(get("x-frame-options").as_deref(), Some("DENY"), "{path}");
        assert_eq!(
            get("referrer-policy").as_deref(),
            Some("no-referrer"),
            "{path}"
        );
        let csp = get("content-security-policy").unwrap_or_default();
        assert!(csp.contains("frame-ancestors 'none'"), "{path}: {csp}");
        assert!(csp.starts_with("default-src 'none'"), "{path}: {csp}");
        assert!(!csp.contains("unsafe"), "{path}: {csp}");
        if path == "/" || path == "/admin" {
            // Scripts are files of the gateway's own (no inline script); styles by hash.
            assert!(csp.contains("script-src 'self';"), "{path}: {csp}");
            assert!(csp.contains("style-src 'sha256-"), "{path}: {csp}");
            assert!(csp.contains("connect-src 'self'"), "{path}: {csp}");
        }
    }
}

#[actix_rt::test]
async fn cors_answers_allowed_origins_only() {
    let app = "https://app.example.com";
    let t = start_with(|c| c.allowed_origins = vec![app.into()]).await;
    let (name, token) = t.new_user().await;
    let preflight = |origin: &'static str, path: &'static str, headers: &'static str| {
        t.http
            .request(reqwest::Method::OPTIONS, t.url(path))
            .header("Origin", origin)
            .header("Access-Control-Request-Method", "POST")
            .header("Access-Control-Request-Headers", headers)
            .send()
    };
    let allow = |res: &reqwest::Response| {
        res.headers()
            .get("access-control-allow-origin")
            .map(|v| v.to_str().unwrap().to_owned())
    };

    let res = preflight(app, "/login", "content-type").await.unwrap();
    assert!(res.status().is_success(), "{}", res.status());
    assert_eq!(allow(&res).as_deref(), Some(app));
    let methods = res.headers()["access-control-allow-methods"]
        .to_str()
        .unwrap();
    assert!(methods.contains("POST"), "{methods}");
    let res = preflight(app, "/v1/keys", "authorization, content-type")
        .await
        .unwrap();
    assert!(res.status().is_success(), "{}", res.status());
    let res = t
        .http
        .post(t.url("/login"))
        .header("Origin", app)
        .json(&signup(&name))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(allow(&res).as_deref(), Some(app));
    let res = t
        .http
        .get(t.url("/v1/keys"))
        .header("Origin", app)
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(
        (res.status().as_u16(), allow(&res).as_deref()),
        (200, Some(app))
    );

    let evil = "https://evil.example.net";
    let res = preflight(evil, "/login", "content-type").await.unwrap();
    assert_eq!(allow(&res), None, "no CORS for another origin");
    let res = t
        .http
        .post(t.url("/login"))
        .header("Origin", evil)
        .json(&signup(&name))
        .send()
        .await
        .unwrap();
    assert_eq!(allow(&res), None, "no CORS for another origin");
    // The gateway's own page (same origin) is unaffected.
    let own = t.url("").trim_end_matches('/').to_owned();
    let res = t
        .http
        .post(t.url("/login"))
        .header("Origin", own)
        .json(&signup(&name))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
}

// --- 5. logins -----------------------------------------------------------------------------

#[actix_rt::test]
async fn failed_logins_lock_the_account_from_every_address() {
    let db = TestDatabase::create().await;
    let prefix = redis_prefix();
    let limits = RateLimitSettings {
        failed_logins_per_account_per_hour: 1,
        failed_login_account_burst: 3,
        ..roomy_limits()
    };
    let with_redis = start_with(|c| {
        shared(c, &db, &prefix);
        c.rate_limits = limits.clone();
        c.trusted_proxies = vec!["127.0.0.0/8".into()];
    })
    .await;
    let in_memory = start_with(|c| {
        c.rate_limits = limits.clone();
        c.trusted_proxies = vec!["127.0.0.0/8".into()];
    })
    .await;
    for t in [&with_redis, &in_memory] {
        let (victim, _) = t.new_user().await;
        let (bystander, _) = t.new_user().await;
        let wrong = json!({"username": victim, "password": "not the password"});
        // A botnet: every guess from another address, so per-address limits never trip.
        for i in 1..=3 {
            let got = post_from(t, &format!("203.0.113.{i}"), "/login", wrong.clone()).await;
            assert_eq!(got.0, 401, "{got:?}");
        }
        let got = post_from(t, "203.0.113.4", "/login", wrong.clone()).await;
        assert_refused(&got, 429, "a fourth guess at one account");
        let got = post_from(t, "198.51.100.1", "/login", signup(&victim)).await;
        assert_refused(&got, 429, "even the right password, until the lock passes");
        let got = post_from(t, "203.0.113.1", "/login", signup(&bystander)).await;
        assert_eq!(got.0, 200, "other accounts are not locked: {got:?}");
        let long = json!({"username": "n".repeat(5000), "password": "whatever"});
        let got = post_from(t, "203.0.113.5", "/login", long).await;
        assert_eq!(
            got.0, 401,
            "a name no one can have is simply refused: {got:?}"
        );
    }
}

#[actix_rt::test]
async fn ipv6_clients_are_limited_by_their_64() {
    let db = TestDatabase::create().await;
    let prefix = redis_prefix();
    let limits = RateLimitSettings {
        logins_per_ip_per_min: 1,
        login_burst: 2,
        handshakes_per_ip_per_min: 1,
        handshake_burst: 2,
        ..roomy_limits()
    };
    let with_redis = start_with(|c| {
        shared(c, &db, &prefix);
        c.rate_limits = limits.clone();
        c.trusted_proxies = vec!["127.0.0.0/8".into()];
    })
    .await;
    let in_memory = start_with(|c| {
        c.rate_limits = limits.clone();
        c.trusted_proxies = vec!["127.0.0.0/8".into()];
    })
    .await;
    for t in [&with_redis, &in_memory] {
        let (name, token) = t.new_user().await;
        let mut statuses = Vec::new();
        for client in [
            "2001:db8:1:2::1",
            "2001:db8:1:2::2",
            "2001:db8:1:2:ffff:ffff:ffff:3",
            "2001:db8:1:3::1",
            "::ffff:192.0.2.1",
            "192.0.2.1",
            "192.0.2.1",
        ] {
            statuses.push(post_from(t, client, "/login", signup(&name)).await.0);
        }
        assert_eq!(
            statuses,
            [200, 200, 429, 200, 200, 200, 429],
            "one /64 shares one budget; an IPv4-mapped address is its IPv4 address"
        );
        let url = t.ws_url(&format!("?token={token}"));
        let mut statuses = Vec::new();
        for client in ["2001:db8:9:9::1", "2001:db8:9:9::2", "2001:db8:9:9::3"] {
            let got = try_connect(&url, &[("X-Forwarded-For", client)]).await;
            statuses.push(got.map_or_else(|e| e.0, |_| 101));
        }
        assert_eq!(statuses, [101, 101, 429], "handshakes count by /64 too");
    }
}

// --- 6. WebSocket origin -------------------------------------------------------------------

#[actix_rt::test]
async fn forwarded_host_headers_count_only_from_trusted_proxies() {
    let direct = start().await;
    let (_, token) = direct.new_user().await;
    let url = direct.ws_url(&format!("?token={token}"));
    let spoofed = [
        ("Origin", "http://evil.example.net"),
        ("X-Forwarded-Host", "evil.example.net"),
    ];
    let got = try_connect(&url, &spoofed).await;
    assert_eq!(
        got.err().map(|e| e.0),
        Some(403),
        "a client cannot name its own host"
    );
    let forwarded = [
        ("Origin", "http://evil.example.net"),
        ("Forwarded", "host=evil.example.net"),
    ];
    assert_eq!(
        try_connect(&url, &forwarded).await.err().map(|e| e.0),
        Some(403)
    );

    let behind_proxy = start_with(|c| c.trusted_proxies = vec!["127.0.0.0/8".into()]).await;
    let (_, token) = behind_proxy.new_user().await;
    let url = behind_proxy.ws_url(&format!("?token={token}"));
    let proxied = [
        ("Origin", "https://chat.example.com"),
        ("X-Forwarded-Host", "chat.example.com"),
    ];
    assert!(
        try_connect(&url, &proxied).await.is_ok(),
        "a trusted proxy names the public host"
    );
}

#[actix_rt::test]
async fn websocket_sessions_per_user_are_capped() {
    let t = start_with(|c| {
        c.rate_limits = RateLimitSettings {
            sessions_per_user_per_node: 2,
            ..roomy_limits()
        }
    })
    .await;
    let (_, token) = t.new_user().await;
    let first = t.connect(&token).await;
    let _second = t.connect(&token).await;
    let url = t.ws_url(&format!("?token={token}"));
    let (status, body) = try_connect(&url, &[])
        .await
        .expect_err("a third is refused");
    assert_eq!(status, 429, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("Too many open connections"),
        "{body}"
    );
    // Another user is not affected.
    let (_, other) = t.new_user().await;
    let _theirs = t.connect(&other).await;
    // Closing one frees its place (once the server has let the connection go).
    drop(first);
    let deadline = tokio::time::Instant::now() + FRAME_TIMEOUT;
    loop {
        match try_connect(&url, &[]).await {
            Ok(ws) => {
                Ws::after_welcome(ws).await;
                break;
            }
            Err((429, _)) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            Err(other) => panic!("the freed place was not given back: {other:?}"),
        }
    }
}

/// A long conversation no longer goes to the model whole, nor comes back in one response: the
/// newest turns within `conversation_history_messages` go with a new message, and reads page.
#[actix_rt::test]
async fn conversation_history_is_capped_per_request_and_read_in_pages() {
    let t = start_with(|c| c.conversation_history_messages = 2).await;
    let (_, token) = t.new_user().await;
    let conversation = uuid::Uuid::new_v4().to_string();
    let mut ws = t.connect(&token).await;
    let mut prompts = Vec::new();
    for (id, content) in [("q1", "a a a a a"), ("q2", "b"), ("q3", "c")] {
        ws.send_json(json!({"type": "chat", "id": id, "payload": {"content": content, "conversation_id": conversation}}))
            .await;
        let done = ws.answer(id).await.done;
        prompts.push(done["payload"]["usage"]["prompt_tokens"].as_u64().unwrap());
        t.gw.flush_writes().await;
    }
    // The mock counts words. q2: q1 (5) + its answer (7) + "b"; q3: only q2 and its answer
    // (1 + 7) + "c", not the 21 words of the whole history.
    assert_eq!(prompts, [5, 13, 9], "the history sent with each question");

    let page = |query: &str| {
        t.http
            .get(t.url(&format!("/v1/conversations/{conversation}{query}")))
            .bearer_auth(&token)
            .send()
    };
    let all: Value = page("").await.unwrap().json().await.unwrap();
    assert_eq!(all["total"], 6, "{all}");
    assert_eq!(all["messages"].as_array().unwrap().len(), 6);
    let second: Value = page("?offset=2&limit=2")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let contents: Vec<&str> = second["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["content"].as_str().unwrap())
        .collect();
    assert_eq!(contents[0], "b", "{second}");
    assert_eq!(contents.len(), 2);
    assert_eq!(second["total"], 6);
}

/// Opens `/chat` without a token: the upgrade succeeds and the socket waits for `auth`.
async fn unauthenticated(t: &TestGateway) -> WsStream {
    try_connect(&t.ws_url(""), &[])
        .await
        .expect("a connection without a token is upgraded to wait for auth")
}

/// The error frame and the close code that end a connection refused before it authenticated.
async fn refusal_of(ws: WsStream) -> (Value, u16) {
    let mut ws = Ws {
        inner: ws,
        session_id: String::new(),
    };
    let error = ws.next_json().await;
    let (code, _) = ws.close_code().await;
    (error, code)
}

/// The token may come in the first message instead of the URL, so that it stays out of the
/// access logs of proxies; the session is then the same as with `?token=`.
#[actix_rt::test]
async fn the_token_may_come_in_the_first_message() {
    let t = start().await;
    let (_, token) = t.new_user().await;
    let mut ws = unauthenticated(&t).await;
    ws.send(Message::text(
        json!({"type": "auth", "payload": {"token": token}}).to_string(),
    ))
    .await
    .unwrap();
    let mut ws = Ws::after_welcome(ws).await;
    let answer = ws.chat("r1", "Hello AI").await;
    assert_eq!(answer.finish_reason(), "stop");
    // Once authenticated, another auth is an error and the connection stays open.
    ws.send_json(json!({"type": "auth", "payload": {"token": token}}))
        .await;
    let error = ws.next_json().await;
    assert_eq!(error["payload"]["reason"], "invalid_payload", "{error}");
    assert_eq!(ws.chat("r2", "again").await.finish_reason(), "stop");
}

#[actix_rt::test]
async fn a_connection_without_a_token_must_authenticate_first() {
    let t = start_with(|c| c.session.auth_timeout_ms = 300).await;
    let (_, token) = t.new_user().await;
    let refused = [
        json!({"type": "chat", "payload": {"content": "Hello AI"}}).to_string(),
        json!({"type": "auth", "payload": {"token": "not-a-token"}}).to_string(),
        json!({"type": "auth", "payload": {"token": format!("{token}x")}}).to_string(),
        json!({"type": "auth", "payload": {}}).to_string(),
        "{nope".to_owned(),
    ];
    for first in refused {
        let mut ws = unauthenticated(&t).await;
        ws.send(Message::text(first.clone())).await.unwrap();
        let (error, code) = refusal_of(ws).await;
        assert_eq!(error["type"], "error", "{first}: {error}");
        assert_eq!(
            error["payload"]["reason"], "unauthorized",
            "{first}: {error}"
        );
        assert_eq!(error["payload"]["code"], 401, "{error}");
        assert_eq!(code, 1008, "{first}");
    }
    // A binary frame is not auth either.
    let mut ws = unauthenticated(&t).await;
    ws.send(Message::binary(token.clone().into_bytes()))
        .await
        .unwrap();
    assert_eq!(refusal_of(ws).await.1, 1008);
    // Saying nothing ends the same way once auth_timeout_ms has passed.
    let (error, code) = refusal_of(unauthenticated(&t).await).await;
    assert_eq!(error["payload"]["reason"], "unauthorized", "{error}");
    assert!(
        error["payload"]["message"]
            .as_str()
            .unwrap()
            .contains("no auth message within 300 ms"),
        "{error}"
    );
    assert_eq!(code, 1008);
    assert_eq!(t.gw.session_count().await, 0, "no session was opened");
}

#[actix_rt::test]
async fn connections_waiting_for_auth_are_capped_per_address() {
    let t = start_with(|c| {
        c.rate_limits = RateLimitSettings {
            unauthenticated_sockets_per_ip: 2,
            ..roomy_limits()
        }
    })
    .await;
    let (_, token) = t.new_user().await;
    let first = unauthenticated(&t).await;
    let _second = unauthenticated(&t).await;
    let (status, body) = try_connect(&t.ws_url(""), &[])
        .await
        .expect_err("a third waiting connection is refused");
    assert_eq!(status, 429, "{body}");
    assert!(
        error_message(&body)
            .unwrap()
            .contains("waiting to authenticate"),
        "{body}"
    );
    // A connection with a token in its handshake does not wait, so it is not counted.
    let _with_token = t.connect(&token).await;
    // Once the first authenticates it no longer waits, and its place is free again.
    let mut first = first;
    first
        .send(Message::text(
            json!({"type": "auth", "payload": {"token": token}}).to_string(),
        ))
        .await
        .unwrap();
    let _first = Ws::after_welcome(first).await;
    let _third = unauthenticated(&t).await;
}

/// Sends `questions` in one new conversation, each stored before the next, and answers the
/// conversation's id.
async fn converse(t: &TestGateway, token: &str, questions: &[&str]) -> String {
    let conversation = uuid::Uuid::new_v4().to_string();
    let mut ws = t.connect(token).await;
    for (n, content) in questions.iter().enumerate() {
        let id = format!("q{n}");
        ws.send_json(json!({"type": "chat", "id": id, "payload": {"content": content, "conversation_id": conversation}}))
            .await;
        assert_eq!(ws.answer(&id).await.finish_reason(), "stop");
        t.gw.flush_writes().await;
    }
    conversation
}

/// The stored questions of a conversation (a page of up to 1,000 messages) and its total.
async fn stored_questions(t: &TestGateway, token: &str, conversation: &str) -> (Vec<String>, u64) {
    let body: Value = t
        .http
        .get(t.url(&format!("/v1/conversations/{conversation}?limit=1000")))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let questions = body["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["role"] == "user")
        .map(|m| m["content"].as_str().unwrap().to_owned())
        .collect();
    (questions, body["total"].as_u64().unwrap())
}

/// One conversation's storage is bounded in messages and bytes: its oldest turns are deleted
/// (not only hidden) as new ones are stored, the newest exchange always kept. On both stores.
async fn conversation_storage_is_capped(db: Option<&TestDatabase>) {
    let by_count = start_with(|c| {
        c.conversation_max_messages = 4;
        if let Some(db) = db {
            c.database_url = db.url();
        }
    })
    .await;
    let (_, token) = by_count.new_user().await;
    let conversation = converse(&by_count, &token, &["one", "two", "three", "four"]).await;
    assert_eq!(
        stored_questions(&by_count, &token, &conversation).await,
        (vec!["three".to_owned(), "four".to_owned()], 4)
    );
    if let Some(db) = db {
        let rows: i64 = db
            .client()
            .await
            .query_one("SELECT count(*) FROM messages", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(rows, 4, "the dropped turns are deleted from PostgreSQL");
    }
    drop(by_count);

    // A byte cap smaller than any exchange keeps the newest exchange alone.
    let by_bytes = start_with(|c| {
        c.conversation_max_bytes = 10;
        if let Some(db) = db {
            c.database_url = db.url();
        }
    })
    .await;
    let (_, token) = by_bytes.new_user().await;
    let conversation = converse(&by_bytes, &token, &["one", "two", "three"]).await;
    assert_eq!(
        stored_questions(&by_bytes, &token, &conversation).await,
        (vec!["three".to_owned()], 2)
    );
}

#[actix_rt::test]
async fn conversation_storage_is_capped_in_memory() {
    conversation_storage_is_capped(None).await;
}

#[actix_rt::test]
async fn conversation_storage_is_capped_in_postgres() {
    let db = TestDatabase::create().await;
    conversation_storage_is_capped(Some(&db)).await;
}
