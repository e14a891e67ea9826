//! The admin API's OpenAPI 3.1 document, served at `/admin/openapi.json` and checked in at
//! `docs/admin-openapi.json` (a test fails when the two differ).

use serde_json::{json, Value};

fn op(summary: &str, params: &[Value], body: Option<Value>, ok: (&str, &str)) -> Value {
    let mut op = json!({
        "summary": summary,
        "security": [{"bearer": []}],
        "responses": {
            ok.0: {"description": ok.1, "content": {"application/json": {"schema": {"type": "object"}}}},
            "401": {"$ref": "#/components/responses/Unauthorized"},
            "403": {"$ref": "#/components/responses/Forbidden"},
        },
    });
    if !params.is_empty() {
        op["parameters"] = Value::Array(params.to_vec());
    }
    if let Some(schema) = body {
        op["requestBody"] =
            json!({"required": true, "content": {"application/json": {"schema": schema}}});
    }
    op
}

fn path_param(name: &str, description: &str) -> Value {
    json!({"name": name, "in": "path", "required": true, "description": description, "schema": {"type": "string"}})
}

fn query(name: &str, kind: &str, description: &str) -> Value {
    json!({"name": name, "in": "query", "required": false, "description": description, "schema": {"type": kind}})
}

pub fn document() -> Value {
    let id = path_param("id", "the id");
    let paging = [
        query("offset", "integer", "items to skip (default 0)"),
        query("limit", "integer", "page size (default 100, at most 1000)"),
    ];
    let reason = query(
        "reason",
        "string",
        "close reason the client sees (cut to 123 bytes); default \"closed by an administrator\"",
    );
    let mut session_params = vec![
        query("user", "string", "only this user (id or username)"),
        query("node", "string", "only this node"),
        query(
            "model",
            "string",
            "only sessions whose latest request used this model",
        ),
    ];
    session_params.extend(paging.iter().cloned());
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "ai-gateway admin API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Live sessions on every node, nodes, users, credentials, providers and the audit trail. Bearer: a token or API key of an admin user, or the static admin token (GATEWAY_ADMIN_TOKEN). Errors are {\"error\": message}.",
        },
        "paths": {
            "/admin/sessions": {
                "get": op("Live sessions of every node", &session_params, None, ("200", "{sessions, total, offset, limit}")),
            },
            "/admin/sessions/{id}": {
                "get": op("One live session", std::slice::from_ref(&id), None, ("200", "the session")),
                "delete": op("Close a session (code 1008, the reason) on whichever node holds it", &[id.clone(), reason.clone()], None, ("200", "{session_id, node_id, reason}")),
            },
            "/admin/users/{id}/sessions": {
                "delete": op("Close every session of a user on every node", &[id.clone(), reason], None, ("200", "{user_id, sessions, reason}")),
            },
            "/admin/nodes": {
                "get": op("Every live node: its sessions and running requests from the directory, and the figures it published (this node's read now)", &[], None, ("200", "{nodes: [{node_id, sessions, running, refreshed_at, figures: null | {node_id, version, started_at, uptime_secs, sessions, running_requests, running_answers, rss_bytes, queued_bytes, chunks_relayed, draining, at}}]}")),
            },
            "/admin/users": {
                "get": op("Users, oldest first", &paging, None, ("200", "{users, offset, limit}")),
                "post": op("Create a user", &[], Some(json!({
                    "type": "object",
                    "required": ["username", "password"],
                    "properties": {
                        "username": {"type": "string"},
                        "password": {"type": "string"},
                        "role": {"type": "string", "enum": ["user", "admin"], "default": "user"},
                    },
                })), ("201", "the user")),
            },
            "/admin/users/{id}": {
                "get": op("One user", std::slice::from_ref(&id), None, ("200", "the user")),
                "patch": op("Change a user's role, or disable (closes their sessions everywhere) or enable them", std::slice::from_ref(&id), Some(json!({
                    "type": "object",
                    "properties": {
                        "role": {"type": "string", "enum": ["user", "admin"]},
                        "disabled": {"type": "boolean"},
                    },
                })), ("200", "the user")),
            },
            "/admin/users/{id}/keys": {
                "get": op("A user's API keys (never the keys themselves)", std::slice::from_ref(&id), None, ("200", "{keys}")),
            },
            "/admin/keys/{id}": {
                "delete": op("Revoke an API key on every node", std::slice::from_ref(&id), None, ("200", "{revoked}")),
            },
            "/admin/tokens/revoke": {
                "post": op("Revoke a session token on every node", &[], Some(json!({
                    "type": "object",
                    "required": ["token"],
                    "properties": {"token": {"type": "string"}},
                })), ("200", "{revoked: jti}")),
            },
            "/admin/providers": {
                "get": op("Models served, their routes and each upstream's circuit breaker", &[], None, ("200", "{models: [{model, provider, kind, upstream_model, targets: [{provider, kind, upstream_model, breaker: closed|open|half_open, recent: {calls, failures}}]}]} (recent: the upstream's latest 100 calls at most, on this node) (provider: the configured name; kind: openai, anthropic, gemini or mock)")),
            },
            "/admin/usage": {
                "get": op("Every user's usage by UTC day and model, oldest first", &[query("days", "integer", "today and the days before it (default 30, at most 366)")], None, ("200", "{days, totals: [{day, user_id, username, model, requests, prompt_tokens, completion_tokens}]}")),
            },
            "/admin/audit": {
                "get": op("Recent admin actions, newest first", &[query("limit", "integer", "entries (default 100, at most 1000)")], None, ("200", "{entries: [{id, actor, action, target, detail, at}]}")),
            },
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "responses": {
                "Unauthorized": {"description": "no or bad credential", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}},
                "Forbidden": {"description": "not an admin", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}},
            },
            "schemas": {
                "Error": {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}},
            },
        },
    })
}
