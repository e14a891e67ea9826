//! The checked-in JSON Schemas must match the Rust types. After changing a wire type, run
//! `UPDATE_SCHEMA=1 cargo test -p ai-gateway-proto --test schema_drift` and commit the result.

use std::path::PathBuf;

fn check(file: &str, schema: serde_json::Value) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("schema")
        .join(file);
    let fresh = serde_json::to_string_pretty(&schema).unwrap() + "\n";
    if std::env::var_os("UPDATE_SCHEMA").is_some() {
        std::fs::write(&path, &fresh).unwrap();
        return;
    }
    let stored = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{} is missing ({e}); run with UPDATE_SCHEMA=1",
            path.display()
        )
    });
    assert!(
        stored == fresh,
        "{} drifted from the Rust types; run `UPDATE_SCHEMA=1 cargo test -p ai-gateway-proto --test schema_drift`",
        path.display()
    );
}

#[test]
fn client_schema_is_current() {
    check("client.schema.json", ai_gateway_proto::client_schema());
}

#[test]
fn server_schema_is_current() {
    check("server.schema.json", ai_gateway_proto::server_schema());
}
