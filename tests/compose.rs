//! `compose/` checked without a Docker engine: the compose file parses and wires the services as
//! `compose/README.md` says, every variable it (and the Dockerfile) sets on the gateway is one
//! the gateway reads and the value lands in its configuration, and the load balancer's
//! configuration passes `nginx -t`. `scripts/test` installs nginx.
#![allow(clippy::result_large_err)] // figment's Jail fixes the closures' error type

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
    process::Command,
};

use ai_gateway::{config::Overrides, Config};
use serde_norway::Value;

/// Variables without the `GATEWAY_` prefix that a gateway container may be given.
const OTHER_VARIABLES: [&str; 7] = [
    "DATABASE_URL",
    "REDIS_URL",
    "RUST_LOG",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_SERVICE_NAME",
    "OTEL_TRACES_SAMPLER",
    "OTEL_TRACES_SAMPLER_ARG",
];

/// The services that run the gateway image.
const GATEWAY_IMAGE_SERVICES: [&str; 3] = ["migrate", "gateway-1", "gateway-2"];
const NODES: [&str; 2] = ["gateway-1", "gateway-2"];

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &str) -> String {
    std::fs::read_to_string(root().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// compose/compose.yaml with its `<<` merge keys applied, as Docker Compose reads it.
fn compose() -> Value {
    let mut doc: Value = serde_norway::from_str(&read("compose/compose.yaml"))
        .unwrap_or_else(|e| panic!("compose/compose.yaml does not parse: {e}"));
    doc.apply_merge().expect("the merge keys resolve");
    doc
}

fn service<'a>(doc: &'a Value, name: &str) -> &'a Value {
    let s = &doc["services"][name];
    assert!(s.is_mapping(), "no service {name}");
    s
}

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        other => panic!("expected a scalar, got {other:?}"),
    }
}

fn strings(v: &Value) -> Vec<String> {
    match v {
        Value::Sequence(items) => items.iter().map(text).collect(),
        Value::String(s) => vec![s.clone()],
        Value::Null => vec![],
        other => panic!("expected a list, got {other:?}"),
    }
}

/// A service's `depends_on`: service name to condition (the short list form means started).
fn depends_on(svc: &Value) -> BTreeMap<String, String> {
    match &svc["depends_on"] {
        Value::Mapping(m) => m
            .iter()
            .map(|(k, v)| {
                let condition = v["condition"]
                    .as_str()
                    .unwrap_or("service_started")
                    .to_owned();
                (text(k), condition)
            })
            .collect(),
        other => strings(other)
            .into_iter()
            .map(|s| (s, "service_started".to_owned()))
            .collect(),
    }
}

/// What the tests put in the host environment: compose requires these (no defaults).
const HOST: [(&str, &str); 2] = [
    ("POSTGRES_PASSWORD", "5b0d1e8c9a7f4e21"),
    ("GATEWAY_JWT_SECRET", "3c9e1f7a2b8d4c6e0f5a9b1c7d3e8f20"),
];

fn host() -> BTreeMap<String, String> {
    HOST.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// A service's `environment`, map or `KEY=value` list, interpolated with [`HOST`].
fn environment(svc: &Value) -> BTreeMap<String, String> {
    environment_with(svc, &host()).unwrap_or_else(|e| panic!("{e}"))
}

fn environment_with(
    svc: &Value,
    host: &BTreeMap<String, String>,
) -> Result<BTreeMap<String, String>, String> {
    let raw: Vec<(String, String)> = match &svc["environment"] {
        Value::Mapping(m) => m
            .iter()
            .map(|(k, v)| {
                let k = text(k);
                assert!(
                    !v.is_null(),
                    "{k} has no value (it would come from the host)"
                );
                (k, text(v))
            })
            .collect(),
        other => strings(other)
            .into_iter()
            .map(|kv| {
                let (k, v) = kv
                    .split_once('=')
                    .unwrap_or_else(|| panic!("{kv}: no value"));
                (k.to_owned(), v.to_owned())
            })
            .collect(),
    };
    raw.into_iter()
        .map(|(k, v)| {
            let v = substitute(&v, host).map_err(|e| format!("{k}: {e}"))?;
            Ok((k, v))
        })
        .collect()
}

/// Compose interpolation with `host` as the shell's variables: `${VAR:-default}` and
/// `${VAR-default}` take the default when VAR is unset (`:-` also when empty),
/// `${VAR:?message}` and `${VAR?message}` fail with the message, `$$` is a dollar. A variable
/// with neither a default nor a message is an error: the file must say what happens.
fn substitute(s: &str, host: &BTreeMap<String, String>) -> Result<String, String> {
    let mut out = String::new();
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        rest = &rest[i + 1..];
        if let Some(r) = rest.strip_prefix('$') {
            out.push('$');
            rest = r;
        } else if let Some(r) = rest.strip_prefix('{') {
            let end = r
                .find('}')
                .ok_or_else(|| format!("unclosed ${{ in {s:?}"))?;
            let expr = &r[..end];
            let name_end = expr
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(expr.len());
            let (name, op) = expr.split_at(name_end);
            let value = host.get(name);
            let set_nonempty = value.is_some_and(|v| !v.is_empty());
            let replacement = if let Some(default) = op.strip_prefix(":-") {
                if set_nonempty {
                    value.cloned()
                } else {
                    Some(default.to_owned())
                }
            } else if let Some(default) = op.strip_prefix('-') {
                Some(value.cloned().unwrap_or_else(|| default.to_owned()))
            } else if let Some(message) = op.strip_prefix(":?") {
                if set_nonempty {
                    value.cloned()
                } else {
                    return Err(format!("{name}: {message}"));
                }
            } else if let Some(message) = op.strip_prefix('?') {
                match value {
                    Some(v) => Some(v.clone()),
                    None => return Err(format!("{name}: {message}")),
                }
            } else {
                return Err(format!(
                    "${{{expr}}} has neither a default nor a message in {s:?}"
                ));
            };
            out.push_str(&replacement.unwrap_or_default());
            rest = &r[end + 1..];
        } else {
            return Err(format!("bare $ in {s:?}; write ${{VAR:-default}} or $$"));
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// `ENV NAME=value` lines of compose/Dockerfile: the image's environment.
fn dockerfile_env() -> BTreeMap<String, String> {
    read("compose/Dockerfile")
        .lines()
        .filter_map(|l| l.trim().strip_prefix("ENV "))
        .flat_map(|rest| rest.split_whitespace())
        .map(|kv| {
            let (k, v) = kv.split_once('=').expect("ENV NAME=value");
            (k.to_owned(), v.to_owned())
        })
        .collect()
}

/// "40s", "1m30s", "500ms" in milliseconds.
fn duration_ms(s: &str) -> u64 {
    let mut total = 0;
    let mut number = String::new();
    let mut unit = String::new();
    let mut flush = |number: &mut String, unit: &mut String| {
        if number.is_empty() {
            return;
        }
        let n: u64 = number.parse().unwrap();
        total += n * match unit.as_str() {
            "ms" => 1,
            "s" | "" => 1000,
            "m" => 60_000,
            "h" => 3_600_000,
            u => panic!("unit {u} in {s}"),
        };
        number.clear();
        unit.clear();
    };
    for c in s.chars() {
        if c.is_ascii_digit() {
            if !unit.is_empty() {
                flush(&mut number, &mut unit);
            }
            number.push(c);
        } else {
            unit.push(c);
        }
    }
    flush(&mut number, &mut unit);
    total
}

#[test]
fn the_compose_file_wires_the_services() {
    let doc = compose();
    let names: BTreeSet<String> = doc["services"]
        .as_mapping()
        .expect("services")
        .keys()
        .map(text)
        .collect();
    let expected: BTreeSet<String> = [
        "postgres",
        "redis",
        "jaeger",
        "migrate",
        "gateway-1",
        "gateway-2",
        "lb",
    ]
    .map(String::from)
    .into();
    assert_eq!(names, expected);

    let postgres = service(&doc, "postgres");
    assert!(text(&postgres["image"]).starts_with("postgres:15"));
    assert!(strings(&postgres["healthcheck"]["test"])
        .iter()
        .any(|t| t.contains("pg_isready")));
    let redis = service(&doc, "redis");
    assert!(text(&redis["image"]).starts_with("redis:7"));
    assert!(strings(&redis["healthcheck"]["test"])
        .iter()
        .any(|t| t.contains("redis-cli")));

    let jaeger = service(&doc, "jaeger");
    assert!(text(&jaeger["image"]).starts_with("jaegertracing/all-in-one:"));
    assert_eq!(environment(jaeger)["COLLECTOR_OTLP_ENABLED"], "true");
    let ports = strings(&jaeger["ports"]);
    for port in ["16686", "4317", "4318"] {
        assert!(
            ports.iter().any(|p| p.ends_with(&format!(":{port}"))),
            "jaeger publishes {port}: {ports:?}"
        );
    }

    // One image, built from compose/Dockerfile with the repository as context.
    for name in GATEWAY_IMAGE_SERVICES {
        let svc = service(&doc, name);
        assert_eq!(text(&svc["build"]["context"]), "..", "{name}");
        assert_eq!(
            text(&svc["build"]["dockerfile"]),
            "compose/Dockerfile",
            "{name}"
        );
        assert_eq!(text(&svc["image"]), "ai-gateway:local", "{name}");
    }
    let migrate = service(&doc, "migrate");
    assert_eq!(strings(&migrate["command"]), ["migrate"]);
    // migrate waits for PostgreSQL itself (db_connect_timeout_secs), healthcheck or not.
    assert_eq!(depends_on(migrate)["postgres"], "service_started");
    assert!(environment(migrate).contains_key("DATABASE_URL"));

    let defaults = Config::default();
    let mut node_ids = BTreeSet::new();
    let mut secrets = BTreeSet::new();
    for name in NODES {
        let svc = service(&doc, name);
        assert_eq!(
            strings(&svc["command"]),
            ["serve", "--listen", "0.0.0.0:8080"],
            "{name}"
        );
        let deps = depends_on(svc);
        assert_eq!(deps["migrate"], "service_completed_successfully", "{name}");
        assert_eq!(deps["postgres"], "service_healthy", "{name}");
        assert_eq!(deps["redis"], "service_healthy", "{name}");
        assert!(deps.contains_key("jaeger"), "{name}");
        // The image's own binary asks /healthz on its listen port: no curl in the image.
        let health = strings(&svc["healthcheck"]["test"]);
        assert_eq!(health, ["CMD", "ai-gateway", "healthcheck"], "{name}");
        assert!(
            duration_ms(&text(&svc["stop_grace_period"])) > defaults.shutdown.drain_timeout_ms,
            "{name}: Docker must not SIGKILL a node before its streams drain"
        );

        let env = environment(svc);
        node_ids.insert(env["GATEWAY_NODE_ID"].clone());
        secrets.insert(env["GATEWAY_JWT_SECRET"].clone());
        assert!(env["DATABASE_URL"].contains("@postgres:5432/"), "{name}");
        assert_eq!(env["REDIS_URL"], "redis://redis:6379/", "{name}");
        assert_eq!(env["GATEWAY_LOG_FORMAT"], "json", "{name}");
        assert!(env.contains_key("GATEWAY_ADMIN_TOKEN"), "{name}");
        assert_eq!(
            env["OTEL_EXPORTER_OTLP_ENDPOINT"], "http://jaeger:4318",
            "{name}"
        );
        assert_eq!(env["OTEL_SERVICE_NAME"], "ai-gateway", "{name}");
        let ratio: f64 = env["OTEL_TRACES_SAMPLER_ARG"].parse().unwrap();
        assert!((0.0..=1.0).contains(&ratio), "{name}");
    }
    assert_eq!(node_ids.len(), 2, "each node has its own id: {node_ids:?}");
    assert_eq!(secrets.len(), 1, "the nodes share one JWT secret");

    let lb = service(&doc, "lb");
    assert!(text(&lb["image"]).starts_with("nginx:"));
    let deps = depends_on(lb);
    for name in NODES {
        assert_eq!(deps[name], "service_healthy", "lb waits for {name}");
    }
    assert_eq!(published(lb, &host()), ["127.0.0.1:8080:8080"]);
    assert!(strings(&lb["volumes"]).contains(&"./nginx.conf:/etc/nginx/nginx.conf:ro".to_owned()));

    // The balancer sends to exactly the two nodes, on the port they listen on.
    let conf = read("compose/nginx.conf");
    let upstream = conf
        .split("upstream gateways {")
        .nth(1)
        .and_then(|rest| rest.split('}').next())
        .expect("an upstream block named gateways");
    let upstreams: BTreeSet<String> = upstream
        .lines()
        .filter_map(|l| l.trim().strip_prefix("server "))
        .map(|s| s.split_whitespace().next().unwrap().trim_end_matches(';'))
        .map(String::from)
        .collect();
    assert_eq!(
        upstreams,
        NODES.iter().map(|n| format!("{n}:8080")).collect(),
    );
}

#[test]
fn every_variable_given_to_the_gateway_is_one_it_reads() {
    let doc = compose();
    let image_env = dockerfile_env();
    assert_eq!(image_env["GATEWAY_LISTEN"], "0.0.0.0:8080");
    for name in GATEWAY_IMAGE_SERVICES {
        let mut env = image_env.clone();
        env.extend(environment(service(&doc, name)));
        for key in env.keys() {
            assert!(
                key.starts_with("GATEWAY_") || OTHER_VARIABLES.contains(&key.as_str()),
                "{name}: {key} is not a variable the gateway reads"
            );
        }
        figment::Jail::expect_with(|jail| {
            jail.clear_env();
            for (k, v) in &env {
                jail.set_env(k, v);
            }
            let config = Config::load(None, &Overrides::default())
                .unwrap_or_else(|e| panic!("{name}: the gateway refuses its environment: {e}"));
            // Each value landed in the field its name points at.
            let loaded = serde_json::to_value(&config).unwrap();
            for (k, v) in &env {
                let path: Vec<String> = match k.strip_prefix("GATEWAY_") {
                    Some(rest) => rest.split("__").map(str::to_lowercase).collect(),
                    None if k == "DATABASE_URL" || k == "REDIS_URL" => vec![k.to_lowercase()],
                    None => continue,
                };
                let field = path.iter().fold(&loaded, |value, key| &value[key.as_str()]);
                let got = match field {
                    serde_json::Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                assert_eq!(&got, v, "{name}: {k} lands in {}", path.join("."));
            }
            if name != "migrate" {
                assert!(config.node_id.starts_with("gw-"), "{name}");
                assert!(!config.redis_url.is_empty(), "{name}");
                config
                    .check_secrets()
                    .unwrap_or_else(|e| panic!("{name} refuses the operator's secrets: {e}"));
            }
            assert!(!config.database_url.is_empty(), "{name}");
            Ok(())
        });
    }

    // The check has teeth: a misspelt variable stops the gateway.
    figment::Jail::expect_with(|jail| {
        jail.clear_env();
        jail.set_env("GATEWAY_NODEID", "gw-1");
        assert!(Config::load(None, &Overrides::default()).is_err());
        Ok(())
    });
}

/// A service's published ports, interpolated with `host`.
fn published(svc: &Value, host: &BTreeMap<String, String>) -> Vec<String> {
    strings(&svc["ports"])
        .iter()
        .map(|p| substitute(p, host).unwrap())
        .collect()
}

#[test]
fn compose_needs_real_secrets_and_publishes_on_loopback() {
    let doc = compose();
    // Without the operator's secrets compose refuses to start, naming what to set.
    let nothing = BTreeMap::new();
    for (svc, variable) in [
        ("postgres", "POSTGRES_PASSWORD"),
        ("migrate", "POSTGRES_PASSWORD"),
        ("gateway-1", "POSTGRES_PASSWORD"),
        ("gateway-2", "GATEWAY_JWT_SECRET"),
    ] {
        let mut host = host();
        host.remove(variable);
        let err = environment_with(service(&doc, svc), &host).unwrap_err();
        assert!(
            err.contains(variable) && err.contains("compose/README.md"),
            "{svc}: {err}"
        );
        assert!(environment_with(service(&doc, svc), &nothing).is_err());
    }
    // No default anywhere in the file is a secret someone could guess.
    let text = read("compose/compose.yaml");
    for default in text.split("${").skip(1).filter_map(|rest| {
        let expr = rest.split('}').next()?;
        expr.split_once(":-")
            .or_else(|| expr.split_once('-'))
            .map(|(_, d)| d)
    }) {
        assert!(
            !ai_gateway::config::is_placeholder_secret(default),
            "published default {default:?}"
        );
    }
    for old in [
        "local-only-jwt-secret",
        "local-only-admin-token",
        "gateway-local-only",
    ] {
        assert!(!text.contains(old), "{old} is still in compose.yaml");
    }
    // Every published port is on loopback unless the operator says otherwise.
    let services = doc["services"].as_mapping().unwrap();
    let mut ports = 0;
    for (name, svc) in services {
        for port in published(svc, &host()) {
            ports += 1;
            assert!(port.starts_with("127.0.0.1:"), "{name:?} publishes {port}");
        }
    }
    assert!(ports >= 4, "lb and jaeger publish ports");
    let mut exposed = host();
    exposed.insert("LB_BIND_ADDRESS".into(), "0.0.0.0".into());
    assert_eq!(
        published(service(&doc, "lb"), &exposed),
        ["0.0.0.0:8080:8080"]
    );
}

#[test]
fn the_load_balancer_passes_websockets_and_streams() {
    let conf = read("compose/nginx.conf");
    let has = |directive: &str| conf.lines().any(|l| l.trim() == directive);
    assert!(has("proxy_http_version 1.1;"));
    assert!(has("proxy_set_header Upgrade $http_upgrade;"));
    assert!(has("proxy_set_header Connection $connection_upgrade;"));
    assert!(has("least_conn;") || has("ip_hash;"));

    // The gateway closes idle sessions itself (with a close frame); nginx must not cut first.
    let read_timeout = conf
        .lines()
        .find_map(|l| l.trim().strip_prefix("proxy_read_timeout "))
        .map(|v| duration_ms(v.trim_end_matches(';')))
        .expect("proxy_read_timeout is set");
    let doc = compose();
    for name in NODES {
        let idle_timeout_ms = environment(service(&doc, name))
            .get("GATEWAY_SESSION__IDLE_TIMEOUT_MS")
            .map(|v| v.parse().unwrap())
            .unwrap_or(Config::default().session.idle_timeout_ms);
        assert!(
            read_timeout > idle_timeout_ms,
            "proxy_read_timeout {read_timeout} ms must exceed {name}'s idle timeout \
             {idle_timeout_ms} ms"
        );
    }

    // Server-Sent Events on the OpenAI-compatible front are not buffered.
    let sse = conf
        .split("location = /v1/chat/completions {")
        .nth(1)
        .and_then(|rest| rest.split('}').next())
        .expect("a location for /v1/chat/completions");
    assert!(sse.contains("proxy_buffering off;"), "{sse}");
}

fn nginx() -> PathBuf {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .chain([PathBuf::from("/usr/sbin")])
        .map(|dir| dir.join("nginx"))
        .find(|p| p.is_file())
        .expect("nginx is missing: run scripts/test (or apt-get install nginx)")
}

#[test]
fn the_nginx_config_passes_nginx_t() {
    // gateway-1 and gateway-2 resolve only inside the compose network, and nginx resolves
    // upstream names while checking; the pid file goes where this test may write.
    let dir = tempfile::tempdir().unwrap();
    let conf = read("compose/nginx.conf")
        .replace("gateway-1:8080", "127.0.0.1:8080")
        .replace("gateway-2:8080", "127.0.0.1:8081")
        .replace(
            "pid /tmp/nginx.pid;",
            &format!("pid {};", dir.path().join("nginx.pid").display()),
        );
    assert!(
        !conf.contains("/tmp/nginx.pid"),
        "the pid line was replaced"
    );
    let path = dir.path().join("nginx.conf");
    std::fs::write(&path, conf).unwrap();
    // Not the inherited directory: a figment Jail in a parallel test may have removed it.
    let out = Command::new(nginx())
        .current_dir(root())
        .arg("-t")
        .arg("-p")
        .arg(dir.path())
        .arg("-c")
        .arg(&path)
        .output()
        .expect("nginx runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "nginx -t failed:\n{stderr}");
    assert!(stderr.contains("test is successful"), "{stderr}");
}

#[test]
fn substitution_takes_the_defaults() {
    let none = BTreeMap::new();
    assert_eq!(substitute("a${X:-b}c${Y-d}$$", &none).unwrap(), "abcd$");
    assert!(substitute("${X}", &none).is_err());
    assert!(substitute("$X", &none).is_err());
    assert_eq!(substitute("${X:?say}", &none).unwrap_err(), "X: say");
    let x = BTreeMap::from([("X".to_owned(), "v".to_owned())]);
    assert_eq!(substitute("${X:?say}-${X:-d}", &x).unwrap(), "v-v");
    assert_eq!(duration_ms("1m30s"), 90_000);
    assert_eq!(duration_ms("300s"), 300_000);
}

/// Cargo.toml's `[workspace] members`.
fn workspace_members() -> Vec<String> {
    use figment::providers::Format;
    figment::Figment::from(figment::providers::Toml::file(root().join("Cargo.toml")))
        .extract_inner("workspace.members")
        .expect("Cargo.toml has [workspace] members")
}

/// The stages of a Dockerfile: the lines after each `FROM`, joined where they end in `\`.
fn stages(dockerfile: &str) -> Vec<Vec<String>> {
    let mut stages: Vec<Vec<String>> = Vec::new();
    let mut line = String::new();
    for raw in dockerfile.lines() {
        let raw = raw.trim();
        if raw.starts_with('#') && line.is_empty() {
            continue;
        }
        match raw.strip_suffix('\\') {
            Some(part) => line.push_str(part),
            None => {
                line.push_str(raw);
                let done = std::mem::take(&mut line);
                if done.starts_with("FROM ") {
                    stages.push(Vec::new());
                }
                if let Some(stage) = stages.last_mut() {
                    stage.push(done);
                }
            }
        }
    }
    stages
}

/// `*` within one path segment, `**` across segments, `?` one character (`.dockerignore`).
fn glob(pattern: &str, path: &str) -> bool {
    fn go(p: &[u8], s: &[u8]) -> bool {
        match (p.first(), s.first()) {
            (None, None) => true,
            (Some(b'*'), _) if p.get(1) == Some(&b'*') => {
                let rest = p[2..].strip_prefix(b"/").unwrap_or(&p[2..]);
                (0..=s.len()).any(|i| go(rest, &s[i..]))
            }
            (Some(b'*'), _) => (0..=s.len())
                .take_while(|&i| i == 0 || s[i - 1] != b'/')
                .any(|i| go(&p[1..], &s[i..])),
            (Some(b'?'), Some(c)) if *c != b'/' => go(&p[1..], &s[1..]),
            (Some(a), Some(b)) if a == b => go(&p[1..], &s[1..]),
            _ => false,
        }
    }
    go(pattern.as_bytes(), path.as_bytes())
}

/// Whether `.dockerignore` keeps `path` (or a folder above it) out of the build context.
fn ignored(dockerignore: &str, path: &str) -> bool {
    let mut out = false;
    for pattern in dockerignore.lines().map(str::trim) {
        if pattern.is_empty() || pattern.starts_with('#') {
            continue;
        }
        let (negated, pattern) = match pattern.strip_prefix('!') {
            Some(p) => (true, p),
            None => (false, pattern),
        };
        let pattern = pattern.trim_start_matches('/').trim_end_matches('/');
        let mut prefix = String::new();
        let hit = path.split('/').any(|segment| {
            if !prefix.is_empty() {
                prefix.push('/');
            }
            prefix.push_str(segment);
            glob(pattern, &prefix)
        });
        if hit {
            out = !negated;
        }
    }
    out
}

/// Workspace members whose manifest or sources the Dockerfile's build stage would not have:
/// not copied by a `COPY` of the stage, or dropped by `.dockerignore`.
fn members_missing_from_build(dockerfile: &str, dockerignore: &str) -> Vec<String> {
    let build = stages(dockerfile).into_iter().next().unwrap_or_default();
    let sources: Vec<String> = build
        .iter()
        .filter_map(|l| l.strip_prefix("COPY "))
        .filter(|args| !args.contains("--from"))
        .flat_map(|args| {
            let mut words: Vec<&str> = args
                .split_whitespace()
                .filter(|w| !w.starts_with("--"))
                .collect();
            words.pop(); // the destination
            words
                .into_iter()
                .map(|w| w.trim_start_matches("./").trim_end_matches('/').to_owned())
                .collect::<Vec<_>>()
        })
        .collect();
    let copied = |path: &str| {
        sources
            .iter()
            .any(|s| s.is_empty() || s == "." || path == s || path.starts_with(&format!("{s}/")))
    };
    workspace_members()
        .into_iter()
        .filter(|member| {
            let dir = member.trim_start_matches("./").trim_end_matches('/');
            let under = |f: &str| match dir {
                "" | "." => f.to_owned(),
                d => format!("{d}/{f}"),
            };
            ["Cargo.toml", "src"]
                .iter()
                .map(|f| under(f))
                .any(|p| !copied(&p) || ignored(dockerignore, &p))
        })
        .collect()
}

#[test]
fn the_image_builds_every_workspace_member() {
    let members = workspace_members();
    assert!(members.contains(&"bench".to_owned()), "{members:?}");
    let dockerfile = read("compose/Dockerfile");
    let dockerignore = read(".dockerignore");
    assert_eq!(
        members_missing_from_build(&dockerfile, &dockerignore),
        Vec::<String>::new(),
        "the Dockerfile's build stage must see every workspace member"
    );

    // The check has teeth: the Dockerfile of issue 14, which copied the manifests one by one and
    // forgot bench/, and a .dockerignore that drops a member.
    let old = "FROM rust:1-bookworm AS builder\nCOPY Cargo.toml Cargo.lock ./\n\
               COPY actors/Cargo.toml actors/\nCOPY proto-json/Cargo.toml proto-json/\n\
               COPY fake-upstream/Cargo.toml fake-upstream/\nCOPY src src\n\
               COPY actors/src actors/src\nCOPY proto-json/src proto-json/src\n\
               COPY fake-upstream/src fake-upstream/src\nFROM debian:bookworm-slim\n";
    assert_eq!(members_missing_from_build(old, ""), ["bench", "fuzz"]);
    assert_eq!(
        members_missing_from_build(&dockerfile, &format!("{dockerignore}\nbench/\n")),
        ["bench"]
    );
    assert_eq!(
        members_missing_from_build(&dockerfile, "**/src\n"),
        members,
        "every member's sources"
    );
    assert!(ignored(&dockerignore, "compose/.env"), "secrets stay out");
    assert!(ignored(&dockerignore, "target/release/ai-gateway"));
    assert!(!ignored(&dockerignore, "sql/V1__init.sql"));
    assert!(!ignored(&dockerignore, "web/index.html"));
}

#[test]
fn the_image_runs_unprivileged_with_a_healthcheck_and_no_curl() {
    let stages = stages(&read("compose/Dockerfile"));
    assert_eq!(stages.len(), 2, "a build stage and a runtime stage");
    let build = stages[0].join("\n");
    assert!(
        build.contains("cargo build --release --locked -p ai-gateway"),
        "{build}"
    );
    let run = &stages[1];
    assert!(
        run[0].starts_with("FROM debian:") && run[0].ends_with("-slim"),
        "{}",
        run[0]
    );
    let joined = run.join("\n");
    assert!(!joined.contains("curl"), "no curl in the runtime image");
    let user = run
        .iter()
        .find_map(|l| l.strip_prefix("USER "))
        .expect("USER");
    let uid: u32 = user
        .split(':')
        .next()
        .unwrap()
        .parse()
        .expect("numeric uid");
    assert_ne!(uid, 0);
    let health = run
        .iter()
        .find_map(|l| l.strip_prefix("HEALTHCHECK "))
        .expect("HEALTHCHECK");
    assert!(
        health.ends_with(r#"CMD ["ai-gateway", "healthcheck"]"#),
        "{health}"
    );
    assert!(run.iter().any(|l| l == r#"ENTRYPOINT ["ai-gateway"]"#));
}
