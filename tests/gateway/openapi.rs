//! The OpenAPI document: served at `/openapi.json` and `/admin/openapi.json`, checked in at
//! `docs/openapi.json`, naming every route `src/routes` registers (and no other), with a schema
//! for every success body.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
};

use serde_json::Value;

use crate::support::*;

/// Routes the document leaves out, each with why. Everything else `src/routes` registers must
/// be in it.
const UNDOCUMENTED: &[(&str, &str, &str)] = &[
    ("get", "/", "the chat demo page (HTML)"),
    ("get", "/index.html", "the chat demo page (HTML)"),
    (
        "get",
        "/assets/{name}",
        "the pages' scripts, styles and vendored libraries (a fixed table)",
    ),
    (
        "get",
        "/login",
        "the chat demo page (HTML); POST /login is documented",
    ),
    (
        "get",
        "/gateway-client.js",
        "the browser client library (JavaScript)",
    ),
    (
        "get",
        "/gateway-client.d.ts",
        "the browser client library's types",
    ),
    ("get", "/admin", "the admin page (HTML)"),
    ("get", "/admin.html", "the admin page (HTML)"),
];

const METHODS: &[&str] = &["get", "post", "put", "patch", "delete", "head", "options"];

async fn served(t: &TestGateway, path: &str) -> Value {
    let res = t.http.get(t.url(path)).send().await.unwrap();
    assert_eq!(res.status(), 200, "{path}");
    res.json().await.unwrap()
}

/// The served document must match `docs/openapi.json`. After changing the API, run
/// `UPDATE_OPENAPI=1 cargo test --test gateway openapi::the_document` and commit the result.
#[actix_rt::test]
async fn the_document_is_checked_in_and_served_twice() {
    let t = start().await;
    let doc = served(&t, "/openapi.json").await;
    assert_eq!(served(&t, "/admin/openapi.json").await, doc);
    assert_eq!(doc["openapi"], "3.1.0");
    let fresh = serde_json::to_string_pretty(&doc).unwrap() + "\n";
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/openapi.json");
    if std::env::var_os("UPDATE_OPENAPI").is_some() {
        std::fs::write(&path, &fresh).unwrap();
        return;
    }
    let stored = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        stored == fresh,
        "docs/openapi.json differs from /openapi.json; run `UPDATE_OPENAPI=1 cargo test --test gateway openapi::the_document`"
    );
}

#[actix_rt::test]
async fn every_route_is_documented_and_every_documented_route_exists() {
    let t = start().await;
    let doc = served(&t, "/openapi.json").await;
    let documented: BTreeSet<(String, String)> = doc["paths"]
        .as_object()
        .expect("paths")
        .iter()
        .flat_map(|(path, item)| {
            METHODS
                .iter()
                .filter(|m| item.get(**m).is_some())
                .map(move |m| (m.to_string(), path.clone()))
        })
        .collect();
    let registered = registered_routes();
    let excluded: BTreeSet<(String, String)> = UNDOCUMENTED
        .iter()
        .map(|(m, p, _)| (m.to_string(), p.to_string()))
        .collect();
    // A sanity check of the source reader: it must see both modules' routes.
    for route in [
        ("post", "/v1/chat/completions"),
        ("delete", "/admin/sessions/{id}"),
    ] {
        assert!(
            registered.contains(&(route.0.into(), route.1.into())),
            "{route:?}"
        );
    }
    let missing: Vec<_> = registered
        .difference(&documented)
        .filter(|r| !excluded.contains(*r))
        .collect();
    assert!(missing.is_empty(), "routes missing from the OpenAPI document (annotate the handler with #[utoipa::path] and list it in src/routes/openapi.rs or src/routes/admin/openapi.rs): {missing:?}");
    let unrouted: Vec<_> = documented.difference(&registered).collect();
    assert!(
        unrouted.is_empty(),
        "documented but not routed: {unrouted:?}"
    );
    let stale: Vec<_> = excluded.difference(&registered).collect();
    assert!(
        stale.is_empty(),
        "UNDOCUMENTED names routes that do not exist: {stale:?}"
    );
    let both: Vec<_> = excluded.intersection(&documented).collect();
    assert!(
        both.is_empty(),
        "both documented and in UNDOCUMENTED: {both:?}"
    );
    let mut ids = BTreeSet::new();
    for (method, path) in &documented {
        let id = doc["paths"][path][method]["operationId"]
            .as_str()
            .unwrap_or_default();
        assert!(
            ids.insert(id.to_owned()),
            "operationId {id:?} of {method} {path} is not unique"
        );
    }
}

/// Success answers whose JSON is free-form by nature, each with why. Every other 2xx answer
/// must have a schema naming its fields.
const FREE_FORM_SUCCESS: &[(&str, &str, &str)] = &[
    ("get", "/openapi.json", "the OpenAPI document itself"),
    ("get", "/admin/openapi.json", "the OpenAPI document itself"),
];

/// A schema that says only "an object": no fields, no reference, no composition.
fn untyped_object(schema: &Value) -> bool {
    let Some(fields) = schema.as_object() else {
        return false;
    };
    schema["type"] == "object"
        && fields
            .keys()
            .all(|k| ["type", "description", "title"].contains(&k.as_str()))
}

/// The handlers build their success bodies from types that derive `ToSchema`, so no success
/// answer is documented as a bare object with its shape only in prose.
#[actix_rt::test]
async fn every_success_body_has_a_schema() {
    let t = start().await;
    let doc = served(&t, "/openapi.json").await;
    let mut untyped = Vec::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for method in METHODS {
            let Some(op) = item.get(*method) else {
                continue;
            };
            if FREE_FORM_SUCCESS
                .iter()
                .any(|(m, p, _)| m == method && p == path)
            {
                continue;
            }
            for (status, response) in op["responses"].as_object().expect("responses") {
                if !status.starts_with('2') {
                    continue;
                }
                let Some(content) = response.get("content").and_then(Value::as_object) else {
                    continue;
                };
                for (media_type, media) in content {
                    if untyped_object(&media["schema"]) {
                        untyped.push(format!("{method} {path} {status} {media_type}"));
                    }
                }
            }
        }
    }
    assert!(
        untyped.is_empty(),
        "success bodies documented as a bare object (answer with a type deriving ToSchema and name it in `body = ...`): {untyped:?}"
    );
    for (method, path, _) in FREE_FORM_SUCCESS {
        assert!(
            doc["paths"][path].get(*method).is_some(),
            "FREE_FORM_SUCCESS names a route the document lacks: {method} {path}"
        );
    }
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// `(method, path)` of every route registered in `src/routes/**/*.rs`, read from the source:
/// `.route("/p", web::get()…)`, and `web::resource("/p")…route(web::post()…)`, each under
/// the prefix of the `web::scope("/s")` it sits in.
fn registered_routes() -> BTreeSet<(String, String)> {
    let mut files = Vec::new();
    rust_files(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("src/routes"),
        &mut files,
    );
    let mut routes = BTreeSet::new();
    for file in files {
        let source = std::fs::read_to_string(&file).unwrap();
        routes_in(&tokens(&source), &mut routes);
    }
    routes
}

#[derive(Debug, PartialEq)]
enum Token {
    Word(String),
    Str(String),
    Open,
    Close,
    Punct,
}

/// Just enough of a Rust lexer: words (with `::` and `.`), string literals, brackets.
fn tokens(source: &str) -> Vec<Token> {
    let chars: Vec<char> = source.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_whitespace() {
            i += 1;
        } else if c == '/' && chars.get(i + 1) == Some(&'/') {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
        } else if c == '"' {
            let mut s = String::new();
            i += 1;
            while i < chars.len() && chars[i] != '"' {
                if chars[i] == '\\' {
                    i += 1;
                }
                s.push(chars[i]);
                i += 1;
            }
            i += 1;
            out.push(Token::Str(s));
        } else if c == '\'' {
            // A char literal ('x', '\n') or a lifetime ('a).
            if chars.get(i + 1) == Some(&'\\') {
                i += 2;
                while i < chars.len() && chars[i] != '\'' {
                    i += 1;
                }
                i += 1;
            } else if chars.get(i + 2) == Some(&'\'') {
                i += 3;
            } else {
                i += 1;
            }
        } else if "([{".contains(c) {
            out.push(Token::Open);
            i += 1;
        } else if ")]}".contains(c) {
            out.push(Token::Close);
            i += 1;
        } else if c.is_alphanumeric() || "_:.".contains(c) {
            let start = i;
            while i < chars.len() && (chars[i].is_alphanumeric() || "_:.".contains(chars[i])) {
                i += 1;
            }
            out.push(Token::Word(chars[start..i].iter().collect()));
        } else {
            out.push(Token::Punct);
            i += 1;
        }
    }
    out
}

/// The HTTP method of `web::get` and the like.
fn method_of(word: &str) -> Option<&'static str> {
    let name = word.strip_prefix("web::")?;
    METHODS.iter().copied().find(|m| *m == name)
}

fn routes_in(tokens: &[Token], routes: &mut BTreeSet<(String, String)>) {
    // Open scopes and resources: (the depth they live at, their full path).
    let mut scopes: Vec<(usize, String)> = Vec::new();
    let mut resources: Vec<(usize, String)> = Vec::new();
    let mut depth = 0;
    let prefix =
        |scopes: &[(usize, String)]| scopes.iter().map(|s| s.1.as_str()).collect::<String>();
    for (i, token) in tokens.iter().enumerate() {
        let literal_after = |at: usize| match (tokens.get(at), tokens.get(at + 1)) {
            (Some(Token::Open), Some(Token::Str(s))) => Some(s.clone()),
            _ => None,
        };
        match token {
            Token::Open => depth += 1,
            Token::Close => {
                depth -= 1;
                scopes.retain(|s| s.0 <= depth);
                resources.retain(|r| r.0 <= depth);
            }
            Token::Word(w) if w.ends_with("web::scope") => {
                if let Some(p) = literal_after(i + 1) {
                    scopes.push((depth, p));
                }
            }
            Token::Word(w) if w.ends_with("web::resource") => {
                if let Some(p) = literal_after(i + 1) {
                    resources.push((depth, prefix(&scopes) + &p));
                }
            }
            Token::Word(w) if w.ends_with(".route") => {
                if let Some(p) = literal_after(i + 1) {
                    // `.route("/p", web::get()…)`: the first `web::<method>` after it.
                    let method = tokens[i + 1..]
                        .iter()
                        .find_map(|t| match t {
                            Token::Word(w) => method_of(w),
                            _ => None,
                        })
                        .unwrap_or_else(|| panic!("no method for route {p}"));
                    routes.insert((method.to_owned(), prefix(&scopes) + &p));
                } else if let (Some(Token::Open), Some(Token::Word(m))) =
                    (tokens.get(i + 1), tokens.get(i + 2))
                {
                    // `web::resource("/p").route(web::get()…)`
                    if let (Some(method), Some((_, path))) = (method_of(m), resources.last()) {
                        routes.insert((method.to_owned(), path.clone()));
                    }
                }
            }
            _ => {}
        }
    }
}

#[test]
fn the_route_reader_reads_scopes_and_resources() {
    let source = r#"
        cfg.route("/a", web::get().to(a))
            .service(web::resource("/b").app_data(x(1)).route(web::post().to(b)).route(web::get().to(c)))
            .route(
                "/c/{id}",
                web::delete().to(d), // a comment (with a paren
            )
            .service(web::scope("/s").wrap(f(')')).route("/d", web::patch().to(e)));
        cfg.route("/e", web::put().to(g));
    "#;
    let mut routes = BTreeSet::new();
    routes_in(&tokens(source), &mut routes);
    let want: BTreeSet<(String, String)> = [
        ("get", "/a"),
        ("post", "/b"),
        ("get", "/b"),
        ("delete", "/c/{id}"),
        ("patch", "/s/d"),
        ("put", "/e"),
    ]
    .iter()
    .map(|(m, p)| (m.to_string(), p.to_string()))
    .collect();
    assert_eq!(routes, want);
}
