//! The chat demo and the admin panel in headless Chromium: `tests/browser/pages.test.mjs`
//! drives the pages of a gateway started here. `scripts/test` installs Chromium and the npm
//! package on a fresh machine.

use std::{path::Path, process::Stdio, time::Duration};

use ai_gateway_actors::MockSettings;

use crate::support::*;

/// The whole browser run; it normally takes well under this.
const BROWSER_RUN_TIMEOUT: Duration = Duration::from_secs(120);

#[actix_rt::test]
async fn the_pages_work_in_headless_chromium() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let browser_dir = root.join("tests/browser");
    assert!(
        browser_dir.join("node_modules/playwright-core").exists(),
        "tests/browser/node_modules is missing: run scripts/test (or npm ci --prefix tests/browser)"
    );
    let token = format!("browser-admin-{}", uuid::Uuid::new_v4().simple());
    let t = start_with(|c| {
        // The seed's pacing, so reasoning and text visibly stream and can be cancelled.
        c.mock = MockSettings::default();
        c.admin_token = token.clone();
    })
    .await;
    let base = t.url("");
    let run = tokio::process::Command::new("node")
        .arg("--test-reporter=tap")
        .arg(browser_dir.join("pages.test.mjs"))
        .arg(&base)
        .arg(&token)
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
        report.contains("# pass 3") && report.contains("# fail 0"),
        "all three browser tests ran:\n{report}"
    );
}
