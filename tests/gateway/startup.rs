//! Starting against dependencies that come up late or never, secrets that must not be used,
//! and the container healthcheck.

use std::time::{Duration, Instant};

use tokio::process::Command;

use crate::{proxy::Proxy, support::*};

/// A password that must never appear in what the gateway prints (trust auth ignores it).
const PASSWORD_IN_URL: &str = "hunter2-never-logged";

fn gateway() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ai-gateway"));
    cmd.env_clear()
        .env("GATEWAY_LOG_FORMAT", "json")
        .env("RUST_LOG", "info")
        .kill_on_drop(true);
    cmd
}

fn url_with_password(db: &TestDatabase, host: &str) -> String {
    format!("postgres://postgres:{PASSWORD_IN_URL}@{host}/{}", db.name)
}

#[actix_rt::test]
async fn migrate_waits_for_a_database_that_comes_up_late() {
    let db = TestDatabase::create().await;
    let pg = Proxy::start(PG_HOST).await;
    pg.cut(); // accepts and drops every connection, like a server still starting
    let migrating = gateway()
        .arg("migrate")
        .env("DATABASE_URL", url_with_password(&db, &pg.addr.to_string()))
        .env("GATEWAY_DB_CONNECT_TIMEOUT_SECS", "30")
        .output();
    let migrating = actix_rt::spawn(migrating);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        !migrating.is_finished(),
        "gave up while the database was down"
    );
    pg.restore();
    let out = tokio::time::timeout(Duration::from_secs(20), migrating)
        .await
        .expect("migrate finishes once the database answers")
        .unwrap()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("applied"), "{stdout}");
    let retries = stderr
        .lines()
        .filter(|l| l.contains("PostgreSQL unreachable; retrying"))
        .count();
    assert!(retries >= 2, "each retry is logged:\n{stderr}");
    assert!(stderr.contains("postgres:***@127.0.0.1"), "{stderr}");
    assert!(!stderr.contains(PASSWORD_IN_URL), "{stderr}");
    let tables: i64 = db
        .client()
        .await
        .query_one(
            "SELECT count(*) FROM information_schema.tables WHERE table_name = 'users'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(tables, 1, "the schema is there");
}

#[actix_rt::test]
async fn migrate_gives_up_at_the_limit_with_a_clear_message() {
    let db = TestDatabase::create().await;
    let pg = Proxy::start(PG_HOST).await;
    pg.cut();
    let started = Instant::now();
    let out = gateway()
        .arg("migrate")
        .env("DATABASE_URL", url_with_password(&db, &pg.addr.to_string()))
        .env("GATEWAY_DB_CONNECT_TIMEOUT_SECS", "2")
        .output()
        .await
        .unwrap();
    let took = started.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(6),
        "gave up after {took:?}"
    );
    assert!(
        stderr.contains("ai-gateway: migration failed: PostgreSQL at postgres://postgres:***@")
            && stderr.contains("did not answer within 2s")
            && stderr.contains("db_connect_timeout_secs"),
        "{stderr}"
    );
    assert!(!stderr.contains(PASSWORD_IN_URL), "{stderr}");
}

#[actix_rt::test]
async fn migrate_does_not_wait_for_a_database_that_does_not_exist() {
    let started = Instant::now();
    let out = gateway()
        .arg("migrate")
        .env(
            "DATABASE_URL",
            format!("postgres://postgres:{PASSWORD_IN_URL}@{PG_HOST}/agw_no_such_database"),
        )
        .env("GATEWAY_DB_CONNECT_TIMEOUT_SECS", "30")
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(started.elapsed() < Duration::from_secs(5), "no retries");
    assert!(stderr.contains("agw_no_such_database"), "{stderr}");
    assert!(!stderr.contains(PASSWORD_IN_URL), "{stderr}");
}

#[actix_rt::test]
async fn a_node_gives_up_when_postgres_never_comes() {
    let db = TestDatabase::create().await;
    let pg = Proxy::start(PG_HOST).await;
    pg.cut();
    let mut c = test_config();
    c.database_url = url_with_password(&db, &pg.addr.to_string());
    c.db_connect_timeout_secs = 2;
    let started = Instant::now();
    let err = match ai_gateway::Gateway::start(c).await {
        Ok(_) => panic!("started without its database"),
        Err(e) => format!("{e:#}"),
    };
    let took = started.elapsed();
    assert!(took < Duration::from_secs(6), "gave up after {took:?}");
    assert!(err.contains("did not answer within 2s"), "{err}");
    assert!(!err.contains(PASSWORD_IN_URL), "{err}");
}

#[actix_rt::test]
async fn a_node_gives_up_when_redis_never_comes() {
    let redis = Proxy::start(REDIS_HOST).await;
    redis.cut();
    let mut c = test_config();
    c.redis_url = format!("redis://:{PASSWORD_IN_URL}@{}/", redis.addr);
    c.db_connect_timeout_secs = 1;
    let started = Instant::now();
    let err = match ai_gateway::Gateway::start(c).await {
        Ok(_) => panic!("started without Redis"),
        Err(e) => format!("{e:#}"),
    };
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(
        err.contains("Redis at redis://:***@") && err.contains("within 1s"),
        "{err}"
    );
    assert!(!err.contains(PASSWORD_IN_URL), "{err}");
}

#[actix_rt::test]
async fn a_node_started_as_a_process_waits_for_a_late_database() {
    let db = TestDatabase::create().await;
    let pg = Proxy::start(PG_HOST).await;
    pg.cut();
    let mut child = gateway()
        .args(["serve", "--listen", "127.0.0.1:0"])
        .env("DATABASE_URL", url_with_password(&db, &pg.addr.to_string()))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(child.try_wait().unwrap().is_none(), "exited while waiting");
    pg.restore();
    use tokio::io::AsyncBufReadExt;
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let line = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
        .await
        .expect("listens once the database answers")
        .unwrap()
        .unwrap();
    assert!(line.starts_with("ai-gateway listening on"), "{line}");
}

/// Runs `ai-gateway serve` with `env` until it prints where it listens or exits.
async fn serve_with(env: &[(&str, &str)]) -> Result<String, String> {
    use tokio::io::AsyncBufReadExt;
    let mut cmd = gateway();
    cmd.args(["serve", "--listen", "127.0.0.1:0"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    match tokio::time::timeout(Duration::from_secs(20), lines.next_line())
        .await
        .expect("starts or exits")
        .unwrap()
    {
        Some(line) => Ok(line),
        None => {
            let out = child.wait_with_output().await.unwrap();
            assert!(!out.status.success());
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }
}

#[actix_rt::test]
async fn a_node_refuses_published_secrets_unless_dev_insecure() {
    // The values compose used to fall back to.
    let compose_jwt = "local-only-jwt-secret-change-me-0123456789";
    let err = serve_with(&[("GATEWAY_JWT_SECRET", compose_jwt)])
        .await
        .unwrap_err();
    assert!(
        err.contains("jwt_secret is a published placeholder"),
        "{err}"
    );
    assert!(
        !err.contains(compose_jwt),
        "the secret is not repeated: {err}"
    );

    let err = serve_with(&[
        ("GATEWAY_JWT_SECRET", "9f1c2e7a5b3d4c6e8f0a1b2c3d4e5f60"),
        ("GATEWAY_ADMIN_TOKEN", "local-only-admin-token"),
    ])
    .await
    .unwrap_err();
    assert!(
        err.contains("admin_token is a published placeholder"),
        "{err}"
    );

    let err = serve_with(&[("GATEWAY_JWT_SECRET", "too-short")])
        .await
        .unwrap_err();
    assert!(
        err.contains("jwt_secret must be at least 32 bytes"),
        "{err}"
    );

    let listening = serve_with(&[
        ("GATEWAY_JWT_SECRET", compose_jwt),
        ("GATEWAY_DEV_INSECURE", "1"),
    ])
    .await
    .expect("dev_insecure starts anyway");
    assert!(
        listening.starts_with("ai-gateway listening on"),
        "{listening}"
    );
}

#[actix_rt::test]
async fn the_healthcheck_command_asks_healthz() {
    let t = start().await;
    let addr = t.gw.local_addr().to_string();
    let ok = gateway()
        .args(["healthcheck", "--url", &t.url("/healthz")])
        .status()
        .await
        .unwrap();
    assert!(ok.success());
    // Without --url it asks loopback on the configured port, as in the image.
    let port = t.gw.local_addr().port();
    let ok = gateway()
        .arg("healthcheck")
        .env("GATEWAY_LISTEN", format!("0.0.0.0:{port}"))
        .status()
        .await
        .unwrap();
    assert!(ok.success(), "{addr}");

    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead = format!("http://{}/healthz", closed.local_addr().unwrap());
    drop(closed);
    let out = gateway()
        .args(["healthcheck", "--url", &dead])
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains(&dead));
    let out = gateway()
        .args(["healthcheck", "--url", &t.url("/no-such-page")])
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
}
