//! PostgreSQL over TLS (`sslmode=require`): a test server speaking PostgreSQL's TLS
//! negotiation (SSLRequest, then a TLS handshake) in front of the machine's PostgreSQL, with a
//! certificate from a private CA of the test's own.

use std::{
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use serde_json::json;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

use crate::{certs::test_certs, support::*};

/// PostgreSQL's SSLRequest: length 8, code 80877103.
const SSL_REQUEST: [u8; 8] = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];

struct TlsPostgres {
    addr: std::net::SocketAddr,
    /// TLS sessions established (handshake done).
    sessions: Arc<AtomicUsize>,
    /// The CA that signed the server's certificate, as PEM.
    ca_pem: String,
    accept: tokio::task::AbortHandle,
}

impl TlsPostgres {
    async fn start() -> TlsPostgres {
        let certs = test_certs();
        let acceptor = certs.acceptor;
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let sessions = Arc::new(AtomicUsize::new(0));
        let counted = sessions.clone();
        let accept = tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let (acceptor, counted) = (acceptor.clone(), counted.clone());
                tokio::spawn(async move {
                    let mut first = [0u8; 8];
                    // Only TLS is served: a plain start-up message is dropped.
                    if client.read_exact(&mut first).await.is_err() || first != SSL_REQUEST {
                        return;
                    }
                    if client.write_all(b"S").await.is_err() {
                        return;
                    }
                    let Ok(mut tls) = acceptor.accept(client).await else {
                        return;
                    };
                    counted.fetch_add(1, Ordering::SeqCst);
                    if let Ok(mut server) = TcpStream::connect(PG_HOST).await {
                        let _ = tokio::io::copy_bidirectional(&mut tls, &mut server).await;
                    }
                });
            }
        })
        .abort_handle();
        TlsPostgres {
            addr,
            sessions,
            ca_pem: certs.ca_pem,
            accept,
        }
    }

    fn url(&self, db: &TestDatabase) -> String {
        format!(
            "postgres://postgres@{}/{}?sslmode=require",
            self.addr, db.name
        )
    }
}

impl Drop for TlsPostgres {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

#[actix_rt::test]
async fn a_node_and_migrate_reach_postgres_over_tls_with_a_private_ca() {
    let db = TestDatabase::create().await;
    let pg = TlsPostgres::start().await;
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, &pg.ca_pem).unwrap();

    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_ai-gateway"))
        .arg("migrate")
        .env_clear()
        .env("DATABASE_URL", pg.url(&db))
        .env("GATEWAY_DATABASE_CA_FILE", &ca_file)
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("applied"));
    let after_migrate = pg.sessions.load(Ordering::SeqCst);
    assert!(after_migrate >= 1, "migrate went through TLS");

    let t = start_with(|c| {
        c.database_url = pg.url(&db);
        c.database_ca_file = ca_file.display().to_string();
    })
    .await;
    let (name, _token) = t.new_user().await;
    assert!(
        pg.sessions.load(Ordering::SeqCst) > after_migrate,
        "the node's pool went through TLS"
    );
    let stored: i64 = db
        .client()
        .await
        .query_one("SELECT count(*) FROM users WHERE username = $1", &[&name])
        .await
        .unwrap()
        .get(0);
    assert_eq!(stored, 1);
    let (status, _) = t
        .post("/login", json!({"username": name, "password": PASSWORD}))
        .await;
    assert_eq!(status, 200);
}

#[actix_rt::test]
async fn a_certificate_that_does_not_verify_fails_at_once() {
    let db = TestDatabase::create().await;
    let pg = TlsPostgres::start().await;
    let mut c = test_config();
    c.database_url = pg.url(&db); // the private CA is not trusted
    c.db_connect_timeout_secs = 30;
    let started = Instant::now();
    let err = match ai_gateway::Gateway::start(c).await {
        Ok(_) => panic!("trusted a certificate from an unknown CA"),
        Err(e) => format!("{e:#}"),
    };
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "a bad certificate is not retried for {:?}",
        started.elapsed()
    );
    assert!(
        err.contains("error performing TLS handshake: invalid peer certificate"),
        "{err}"
    );
    assert_eq!(pg.sessions.load(Ordering::SeqCst), 0);
}

#[actix_rt::test]
async fn a_missing_ca_file_is_named() {
    let db = TestDatabase::create().await;
    let mut c = test_config();
    c.database_url = format!("{}?sslmode=require", db.url());
    c.database_ca_file = "/nonexistent/ca.pem".into();
    let err = match ai_gateway::Gateway::start(c).await {
        Ok(_) => panic!("started without its CA file"),
        Err(e) => format!("{e:#}"),
    };
    assert!(
        err.contains("database_ca_file /nonexistent/ca.pem"),
        "{err}"
    );
}
