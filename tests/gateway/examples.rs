//! Every client example of `examples/` against a real node: each is run as a user would run it
//! (its README's command, `GATEWAY_URL` and `GATEWAY_API_KEY` set) and what it printed is
//! checked. The browser example runs in headless Chromium (`tests/browser/example.test.mjs`).

use std::{path::Path, process::Stdio, time::Duration};

use ai_gateway_actors::provider::mock::MOCK_ANSWER;
use serde_json::{json, Value};

use crate::support::*;

/// One example's whole run; each normally takes a second or two.
const EXAMPLE_TIMEOUT: Duration = Duration::from_secs(120);

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// A node and a new user's API key.
async fn node_and_key(tweak: impl FnOnce(&mut ai_gateway::Config)) -> (TestGateway, String) {
    let t = start_with(tweak).await;
    let (_, token) = t.new_user().await;
    let res = t
        .http
        .post(t.url("/v1/keys"))
        .bearer_auth(&token)
        .json(&json!({"name": "examples"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    let key = res.json::<Value>().await.unwrap()["key"]
        .as_str()
        .unwrap()
        .to_owned();
    (t, key)
}

/// Runs `program args` with the gateway's address and the key in the environment; answers
/// what it printed, after checking it succeeded.
async fn run(t: &TestGateway, key: &str, program: &str, args: &[&str]) -> String {
    let run = tokio::process::Command::new(program)
        .args(args)
        .env("GATEWAY_URL", t.url(""))
        .env("GATEWAY_API_KEY", key)
        .current_dir(root())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(EXAMPLE_TIMEOUT, run)
        .await
        .expect("the example finishes in time")
        .unwrap_or_else(|e| panic!("{program} runs: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{program} {args:?} failed ({}; scripts/test installs examples/python/requirements.txt):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// The line `answer: …` holds the whole mock answer, once.
fn assert_whole_answer(printed: &str) {
    let line = printed
        .lines()
        .find(|l| l.starts_with("answer: "))
        .unwrap_or_else(|| panic!("no answer line in:\n{printed}"));
    let answer = MOCK_ANSWER.trim_start();
    assert_eq!(line.matches(answer).count(), 1, "{printed}");
}

#[actix_rt::test]
async fn the_python_websocket_example_streams_an_answer() {
    let (t, key) = node_and_key(|_| {}).await;
    let out = run(
        &t,
        &key,
        "python3",
        &["examples/python/ws_chat.py", "Hello"],
    )
    .await;
    assert!(out.starts_with("connected: session "), "{out}");
    assert_whole_answer(&out);
    assert!(out.contains("finish_reason: stop, tokens: "), "{out}");
}

#[actix_rt::test]
async fn the_openai_sdk_example_streams_an_answer() {
    let (t, key) = node_and_key(|_| {}).await;
    let out = run(
        &t,
        &key,
        "python3",
        &["examples/python/openai_sdk.py", "Hello"],
    )
    .await;
    assert!(out.starts_with("models: ") && out.contains("mock"), "{out}");
    assert_whole_answer(&out);
    assert!(out.contains("finish_reason: stop, tokens: "), "{out}");
}

#[actix_rt::test]
async fn the_anthropic_sdk_example_streams_an_answer() {
    let (t, key) = node_and_key(|_| {}).await;
    let out = run(
        &t,
        &key,
        "python3",
        &["examples/python/anthropic_sdk.py", "Hello"],
    )
    .await;
    assert_whole_answer(&out);
    assert!(out.contains("stop_reason: end_turn, tokens: "), "{out}");
}

#[actix_rt::test]
async fn the_node_example_streams_an_answer() {
    let (t, key) = node_and_key(|_| {}).await;
    let out = run(
        &t,
        &key,
        "node",
        &[
            "--experimental-websocket",
            "examples/node/chat.mjs",
            "Hello",
        ],
    )
    .await;
    assert!(out.starts_with("connected: session "), "{out}");
    assert_whole_answer(&out);
    assert!(out.contains("finish_reason: stop, tokens: "), "{out}");
}

#[actix_rt::test]
async fn the_browser_example_streams_an_answer_in_headless_chromium() {
    assert!(
        root()
            .join("tests/browser/node_modules/playwright-core")
            .exists(),
        "tests/browser/node_modules is missing: run scripts/test (or `npm ci` in tests/browser)"
    );
    // The page is served from another origin (the test's own static server).
    let (t, key) = node_and_key(|c| c.allowed_origins = vec!["*".into()]).await;
    let base = t.url("");
    let out = run(
        &t,
        &key,
        "node",
        &[
            "--test-reporter=tap",
            "tests/browser/example.test.mjs",
            base.as_str(),
            key.as_str(),
        ],
    )
    .await;
    assert!(
        out.contains("# pass 1") && out.contains("# fail 0"),
        "{out}"
    );
}
