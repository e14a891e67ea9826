//! Redis over TLS (`rediss://`): a TLS terminator of the test's own, with a private CA, in
//! front of the machine's Redis.

use std::sync::{
    atomic::{AtomicUsize, Ordering},
    Arc,
};

use tokio::net::{TcpListener, TcpStream};

use crate::{certs::test_certs, support::*};

/// A TLS terminator with the test CA's certificate in front of the machine's Redis.
struct TlsRedis {
    addr: std::net::SocketAddr,
    /// TLS sessions established (handshake done).
    sessions: Arc<AtomicUsize>,
    accept: tokio::task::AbortHandle,
}

impl TlsRedis {
    async fn start(acceptor: tokio_rustls::TlsAcceptor) -> TlsRedis {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let sessions = Arc::new(AtomicUsize::new(0));
        let counted = sessions.clone();
        let accept = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let (acceptor, counted) = (acceptor.clone(), counted.clone());
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(client).await else {
                        return;
                    };
                    counted.fetch_add(1, Ordering::SeqCst);
                    if let Ok(mut server) = TcpStream::connect(REDIS_HOST).await {
                        let _ = tokio::io::copy_bidirectional(&mut tls, &mut server).await;
                    }
                });
            }
        })
        .abort_handle();
        TlsRedis {
            addr,
            sessions,
            accept,
        }
    }
}

impl Drop for TlsRedis {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

/// Waits until the node `node_id` has its entry in the directory of `prefix`, read from the
/// machine's Redis directly.
async fn wait_for_directory_entry(prefix: &str, node_id: &str) {
    let client = redis::Client::open(format!("redis://{REDIS_HOST}/")).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let nodes: Vec<String> = redis::cmd("ZRANGE")
            .arg(format!("{prefix}nodes"))
            .arg(0)
            .arg(-1)
            .query_async(&mut conn)
            .await
            .unwrap();
        if nodes.iter().any(|n| n == node_id) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no directory entry: {nodes:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

#[actix_rt::test]
async fn a_node_trusts_the_cas_of_redis_ca_file() {
    let certs = test_certs();
    let redis = TlsRedis::start(certs.acceptor).await;
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, &certs.ca_pem).unwrap();
    let db = TestDatabase::create().await;
    let prefix = redis_prefix();
    let t = start_with(|c| {
        shared(c, &db, &prefix);
        c.redis_url = format!("rediss://{}/", redis.addr);
        c.redis_ca_file = ca_file.display().to_string();
        c.node_id = "gw-tls-ca".into();
    })
    .await;
    assert!(
        redis.sessions.load(Ordering::SeqCst) >= 1,
        "the node reached Redis through TLS"
    );
    // The node writes its directory entry through that connection.
    wait_for_directory_entry(&prefix, "gw-tls-ca").await;
    drop(t);
}

#[actix_rt::test]
async fn a_redis_ca_file_that_cannot_be_used_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty.pem");
    std::fs::write(&empty, "not a certificate\n").unwrap();
    for (path, problem) in [
        ("/nonexistent/ca.pem".to_owned(), "No such file"),
        (empty.display().to_string(), "holds no PEM certificate"),
    ] {
        let mut c = test_config();
        c.redis_url = "rediss://127.0.0.1:1/".into();
        c.redis_ca_file = path.clone();
        let err = match ai_gateway::Gateway::start(c).await {
            Ok(_) => panic!("started without a usable redis_ca_file"),
            Err(e) => format!("{e:#}"),
        };
        assert!(
            err.contains(&format!("redis_ca_file {path}: ")) && err.contains(problem),
            "{err}"
        );
    }
}

#[actix_rt::test]
async fn a_node_shares_state_through_redis_over_tls() {
    let certs = test_certs();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let sessions = Arc::new(AtomicUsize::new(0));
    let counted = sessions.clone();
    let acceptor = certs.acceptor;
    let accept = tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let (acceptor, counted) = (acceptor.clone(), counted.clone());
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(client).await else {
                    return;
                };
                counted.fetch_add(1, Ordering::SeqCst);
                if let Ok(mut server) = TcpStream::connect(REDIS_HOST).await {
                    let _ = tokio::io::copy_bidirectional(&mut tls, &mut server).await;
                }
            });
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, &certs.ca_pem).unwrap();

    let db = TestDatabase::create().await;
    let prefix = redis_prefix();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_ai-gateway"))
        .args(["serve", "--listen", "127.0.0.1:0"])
        .env_clear()
        .env("DATABASE_URL", db.url())
        .env("REDIS_URL", format!("rediss://{addr}/"))
        // rustls-native-certs reads the trusted CAs from here instead of the system's store.
        .env("SSL_CERT_FILE", &ca_file)
        .env("GATEWAY_REDIS_PREFIX", &prefix)
        .env("GATEWAY_NODE_ID", "gw-tls")
        .env("GATEWAY_JWT_SECRET", test_config().jwt_secret)
        .env("GATEWAY_DB_CONNECT_TIMEOUT_SECS", "5")
        .env("GATEWAY_DIRECTORY__REFRESH_INTERVAL_MS", "200")
        .env("GATEWAY_DIRECTORY__SESSION_TTL_MS", "2000")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    use tokio::io::AsyncBufReadExt;
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let line = tokio::time::timeout(std::time::Duration::from_secs(20), lines.next_line())
        .await
        .expect("starts")
        .unwrap();
    let Some(line) = line else {
        let out = child.wait_with_output().await.unwrap();
        panic!("exited: {}", String::from_utf8_lossy(&out.stderr));
    };
    assert!(line.starts_with("ai-gateway listening on"), "{line}");
    assert!(
        sessions.load(Ordering::SeqCst) >= 1,
        "the node reached Redis through TLS"
    );
    // The node writes its directory entry through that connection.
    let client = redis::Client::open(format!("redis://{REDIS_HOST}/")).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let nodes: Vec<String> = redis::cmd("ZRANGE")
            .arg(format!("{prefix}nodes"))
            .arg(0)
            .arg(-1)
            .query_async(&mut conn)
            .await
            .unwrap();
        if nodes.contains(&"gw-tls".to_owned()) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no directory entry: {nodes:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    accept.abort();
}

#[actix_rt::test]
async fn an_untrusted_redis_certificate_is_named_when_the_node_gives_up() {
    let certs = test_certs();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = certs.acceptor;
    let accept = tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let _ = acceptor.accept(client).await;
            });
        }
    });
    let mut c = test_config();
    c.redis_url = format!("rediss://{addr}/");
    c.db_connect_timeout_secs = 2;
    let err = match ai_gateway::Gateway::start(c).await {
        Ok(_) => panic!("trusted an unknown CA"),
        Err(e) => format!("{e:#}"),
    };
    // Retried up to the limit (the redis crate reports it as text), then named.
    assert!(
        err.contains("Redis at rediss://")
            && err.contains("within 2s")
            && err.contains("invalid peer certificate: UnknownIssuer"),
        "{err}"
    );
    accept.abort();
}
