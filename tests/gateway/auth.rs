//! Sign-in and the handshake's refusals.

use ai_gateway::{auth::Claims, store::Role};
use serde_json::json;

use crate::support::*;

#[actix_rt::test]
async fn register_and_login_refuse_clearly() {
    let t = start().await;
    let creds = json!({"username": "bob", "password": PASSWORD});
    assert_eq!(t.post("/register", creds.clone()).await.0, 200);
    assert_eq!(
        t.post("/register", creds).await,
        (409, json!({"error": "Username already exists"}))
    );
    let (status, body) = t
        .post(
            "/register",
            json!({"username": "carol", "password": "short"}),
        )
        .await;
    assert_eq!(status, 400);
    assert!(
        body["error"].as_str().unwrap().contains("password"),
        "{body}"
    );
    let (status, body) = t
        .post(
            "/register",
            json!({"username": "no spaces", "password": PASSWORD}),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = t.post("/register", json!({"username": "dave"})).await;
    assert_eq!(status, 400);
    assert!(body["error"].is_string(), "{body}");

    let invalid = (401, json!({"error": "Invalid credentials"}));
    assert_eq!(
        t.post(
            "/login",
            json!({"username": "bob", "password": "wrong password"})
        )
        .await,
        invalid
    );
    assert_eq!(
        t.post(
            "/login",
            json!({"username": "nobody", "password": PASSWORD})
        )
        .await,
        invalid
    );
}

#[actix_rt::test]
async fn handshake_answers_the_seeds_401s() {
    let t = start().await;
    let (_, token) = t.new_user().await;

    let err = |r: Result<WsStream, (u16, serde_json::Value)>| r.expect_err("refused");
    // A WebSocket upgrade without a token now waits for an `auth` message (abuse.rs); a plain
    // request without one still gets the seed's 401.
    let plain = t.http.get(t.url("/chat")).send().await.unwrap();
    assert_eq!(plain.status().as_u16(), 401);
    assert_eq!(
        plain.json::<serde_json::Value>().await.unwrap(),
        json!({"error": "Missing token"})
    );
    assert_eq!(
        err(try_connect(&t.ws_url("?token=not-a-jwt"), &[]).await),
        (401, json!({"error": "Invalid token"}))
    );

    let mut claims: Claims = jsonwebtoken_claims(&token);
    claims.exp = 1;
    claims.iat = 0;
    let expired = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(test_config().jwt_secret.as_bytes()),
    )
    .unwrap();
    assert_eq!(
        err(try_connect(&t.ws_url(&format!("?token={expired}")), &[]).await),
        (401, json!({"error": "Token expired or revoked"}))
    );

    // A token signed by someone else is invalid even with a valid shape.
    let forged = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &Claims {
            exp: u64::MAX / 2,
            role: Role::Admin,
            ..claims
        },
        &jsonwebtoken::EncodingKey::from_secret(b"another-secret-another-secret-xx"),
    )
    .unwrap();
    assert_eq!(
        err(try_connect(&t.ws_url(&format!("?token={forged}")), &[]).await).0,
        401
    );
}

fn jsonwebtoken_claims(token: &str) -> Claims {
    let secret = test_config().jwt_secret;
    ai_gateway::auth::TokenIssuer::new(secret.as_bytes(), 60)
        .verify(token)
        .unwrap()
}

#[actix_rt::test]
async fn bearer_header_works_without_a_token_in_the_url() {
    let t = start().await;
    let (_, token) = t.new_user().await;
    let ws = try_connect(
        &t.ws_url(""),
        &[("Authorization", &format!("Bearer {token}"))],
    )
    .await
    .expect("bearer accepted");
    let mut ws = Ws::after_welcome(ws).await;
    let answer = ws.chat("b1", "hi").await;
    assert_eq!(answer.finish_reason(), "stop");
}

#[actix_rt::test]
async fn browser_origins_are_checked() {
    let t = start().await;
    let (_, token) = t.new_user().await;
    let url = t.ws_url(&format!("?token={token}"));
    assert_eq!(
        try_connect(&url, &[("Origin", "http://evil.example")])
            .await
            .err(),
        Some((403, json!({"error": "Origin not allowed"})))
    );
    let own = format!("http://{}", t.gw.local_addr());
    assert!(try_connect(&url, &[("Origin", &own)]).await.is_ok());

    let open = start_with(|c| c.allowed_origins = vec!["https://app.example".into()]).await;
    let (_, token) = open.new_user().await;
    let url = open.ws_url(&format!("?token={token}"));
    assert!(try_connect(&url, &[("Origin", "https://app.example")])
        .await
        .is_ok());
}

#[actix_rt::test]
async fn pages_and_unknown_paths() {
    let t = start().await;
    let page = t.http.get(t.url("/")).send().await.unwrap();
    assert_eq!(page.status(), 200);
    assert!(page.text().await.unwrap().contains("id=\"connect\""));
    let missing = t.http.get(t.url("/nope")).send().await.unwrap();
    assert_eq!(missing.status(), 404);
    assert_eq!(
        missing.json::<serde_json::Value>().await.unwrap(),
        json!({"error": "Not found"})
    );
    let health = t.http.get(t.url("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);
}

#[actix_rt::test]
async fn an_api_key_stops_working_when_it_expires() {
    let t = start().await;
    let (_, token) = t.new_user().await;
    let res = t
        .http
        .post(t.url("/v1/keys"))
        .bearer_auth(&token)
        .json(&json!({"name": "short-lived", "expires_in_secs": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    let created: serde_json::Value = res.json().await.unwrap();
    assert!(created["expires_at"].is_u64(), "{created}");
    let key = created["key"].as_str().unwrap().to_owned();
    let bearer = format!("Bearer {key}");
    assert!(try_connect(&t.ws_url(""), &[("Authorization", &bearer)])
        .await
        .is_ok());
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    assert_eq!(
        try_connect(&t.ws_url(""), &[("Authorization", &bearer)])
            .await
            .expect_err("expired"),
        (401, json!({"error": "Token expired or revoked"}))
    );
}
