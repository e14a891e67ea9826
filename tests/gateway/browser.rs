//! The chat page and the admin panel in headless Chromium: `tests/browser/pages.test.mjs`
//! drives the pages of a gateway started here, at desktop and phone width, and saves its
//! screenshots under `target/screenshots/`. `scripts/test` installs Chromium and the npm
//! package on a fresh machine.

use std::{path::Path, process::Stdio, time::Duration};

use ai_gateway::config::{ModelSettings, ProviderSettings};
use ai_gateway_actors::{provider::ApiKey, MockSettings, OpenAiSettings};
use fake_upstream::FakeUpstream;

use crate::support::*;

/// The whole browser run; it normally takes about a minute.
const BROWSER_RUN_TIMEOUT: Duration = Duration::from_secs(300);

/// The tests in `pages.test.mjs`.
const BROWSER_TESTS: usize = 9;

fn model(upstream: &str) -> ModelSettings {
    ModelSettings {
        provider: "fake".into(),
        upstream_model: upstream.into(),
        fallback: vec![],
        max_retries: Some(0),
        drop_params: false,
    }
}

#[actix_rt::test]
async fn the_pages_work_in_headless_chromium() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let browser_dir = root.join("tests/browser");
    assert!(
        browser_dir.join("node_modules/playwright-core").exists(),
        "tests/browser/node_modules is missing: run scripts/test (or `npm ci` in tests/browser)"
    );
    let fake = FakeUpstream::start().await.unwrap();
    let token = format!("browser-admin-{}", uuid::Uuid::new_v4().simple());
    let t = start_with(|c| {
        // The seed's pacing, so reasoning and text visibly stream and can be stopped.
        c.mock = MockSettings::default();
        c.admin_token = token.clone();
        let openai = OpenAiSettings::new(fake.openai_base_url(), Some(ApiKey::new("sk-test")));
        c.providers
            .insert("fake".into(), ProviderSettings::Openai(openai));
        // `echo` says the message back (the page's Markdown); `broken` always fails.
        c.models.insert("echo".into(), model("echo"));
        c.models.insert("broken".into(), model("fail-503"));
    })
    .await;
    let base = t.url("");
    let screenshots = root.join("target/screenshots");
    // Only this run's pictures.
    let _ = std::fs::remove_dir_all(&screenshots);
    let run = tokio::process::Command::new("node")
        // Node 20's WebSocket (the test opens many sessions from Node).
        .arg("--experimental-websocket")
        .arg("--test-reporter=tap")
        .arg(browser_dir.join("pages.test.mjs"))
        .arg(&base)
        .arg(&token)
        .arg(&screenshots)
        .current_dir(root)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(BROWSER_RUN_TIMEOUT, run)
        .await
        .expect("the browser tests finish in time")
        .expect("node runs");
    assert!(
        out.status.success(),
        "browser tests failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        report.contains(&format!("# pass {BROWSER_TESTS}")) && report.contains("# fail 0"),
        "all {BROWSER_TESTS} browser tests ran:\n{report}"
    );
    for shot in ["chat-desktop", "chat-phone", "admin-desktop", "admin-phone"] {
        assert!(
            screenshots.join(format!("{shot}.png")).exists(),
            "{shot}.png was saved"
        );
    }
    fake.stop().await;
}
