//! `web/gateway-client.js`: its declarations match the protocol's JSON Schema, and the library
//! itself, run by Node against a real gateway through a proxy that cuts connections, delivers
//! whole answers with nothing doubled.

use std::{collections::BTreeMap, path::Path, process::Stdio, time::Duration};

use ai_gateway_actors::MockSettings;
use serde_json::Value;

use crate::support::*;

/// The fields of each `export interface` in a `.d.ts`, with whether each is optional.
fn interfaces(dts: &str) -> BTreeMap<String, BTreeMap<String, bool>> {
    let mut all = BTreeMap::new();
    let mut current: Option<(String, BTreeMap<String, bool>)> = None;
    for line in dts.lines().map(str::trim) {
        if let Some(rest) = line.strip_prefix("export interface ") {
            let name = rest.trim_end_matches(" {").trim().to_owned();
            current = Some((name, BTreeMap::new()));
        } else if line == "}" {
            if let Some((name, fields)) = current.take() {
                all.insert(name, fields);
            }
        } else if let Some((_, fields)) = current.as_mut() {
            let Some((field, _)) = line.split_once(':') else {
                continue;
            };
            if field.starts_with("//") || field.starts_with('*') || field.starts_with("/*") {
                continue;
            }
            let optional = field.ends_with('?');
            let field = field.trim_end_matches('?').trim_start_matches("readonly ");
            if field.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                fields.insert(field.to_owned(), optional);
            }
        }
    }
    all
}

/// The properties of a schema definition, with whether each is optional (not required).
fn schema_fields(schema: &Value, name: &str) -> BTreeMap<String, bool> {
    let def = &schema["$defs"][name];
    let required: Vec<&str> = def["required"]
        .as_array()
        .map(|r| r.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    def["properties"]
        .as_object()
        .unwrap_or_else(|| panic!("no definition {name} in the schema"))
        .keys()
        .map(|k| (k.clone(), !required.contains(&k.as_str())))
        .collect()
}

#[test]
fn the_declarations_match_the_protocol_schema() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let read = |p: &str| std::fs::read_to_string(root.join(p)).unwrap();
    let dts = interfaces(&read("web/gateway-client.d.ts"));
    let client: Value =
        serde_json::from_str(&read("proto-json/schema/client.schema.json")).unwrap();
    let server: Value =
        serde_json::from_str(&read("proto-json/schema/server.schema.json")).unwrap();
    let wire = [
        (&client, "ChatPayload"),
        (&client, "ChatMessage"),
        (&client, "ResumePayload"),
        (&client, "AuthPayload"),
        (&server, "ChunkPayload"),
        (&server, "DonePayload"),
        (&server, "ErrorPayload"),
        (&server, "SystemPayload"),
        (&server, "SessionLimits"),
        (&server, "Usage"),
        (&server, "ToolCallPiece"),
    ];
    for (schema, name) in wire {
        let declared = dts
            .get(name)
            .unwrap_or_else(|| panic!("gateway-client.d.ts declares no {name}"));
        assert_eq!(
            declared,
            &schema_fields(schema, name),
            "{name}: fields and optionality of the declaration and the schema differ"
        );
    }
}

/// The whole Node run; it normally takes a few seconds.
const NODE_RUN_TIMEOUT: Duration = Duration::from_secs(60);

#[actix_rt::test]
async fn the_client_library_resumes_across_cut_connections() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let t = start_with(|c| {
        c.mock = MockSettings {
            text_delay_ms: [5, 5],
            reasoning_delay_ms: [5, 5],
            ..MockSettings::instant()
        };
        // Reconnects come quickly, but never hit the handshake limit.
        c.rate_limits.enabled = false;
    })
    .await;
    let run = tokio::process::Command::new("node")
        .arg("--experimental-websocket")
        .arg("--no-warnings")
        .arg("--test-reporter=tap")
        .arg(root.join("tests/browser/client.test.mjs"))
        .arg(t.url(""))
        .current_dir(root)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(NODE_RUN_TIMEOUT, run)
        .await
        .expect("the client tests finish in time")
        .expect("node runs");
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "client library tests failed ({}):\n{report}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        report.contains("# pass 3") && report.contains("# fail 0"),
        "all three ran:\n{report}"
    );
}
