//! A gateway on a loopback port with a real WebSocket client, per test.

use std::{
    sync::atomic::{AtomicUsize, Ordering},
    time::Duration,
};

use ai_gateway::{limits::RateLimitSettings, Config, Gateway};
use ai_gateway_actors::MockSettings;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::{
    tungstenite::{client::IntoClientRequest, protocol::CloseFrame, Message},
    MaybeTlsStream, WebSocketStream,
};

/// How long a test waits for any one frame before failing.
pub const FRAME_TIMEOUT: Duration = Duration::from_secs(10);

pub const PASSWORD: &str = "correct horse battery";

/// The machine's PostgreSQL (trust auth) and Redis, shared by every test; each test gets its
/// own database and key prefix.
pub const PG_HOST: &str = "127.0.0.1:5432";
pub const REDIS_HOST: &str = "127.0.0.1:6379";

/// A database of its own for one test, dropped when the test ends.
pub struct TestDatabase {
    pub name: String,
}

async fn pg_admin() -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(
        &format!("postgres://postgres@{PG_HOST}/postgres"),
        tokio_postgres::NoTls,
    )
    .await
    .expect("the local PostgreSQL is up (127.0.0.1:5432, trust auth)");
    tokio::spawn(conn);
    client
}

impl TestDatabase {
    pub async fn create() -> TestDatabase {
        let name = format!("agw_test_{}", uuid::Uuid::new_v4().simple());
        pg_admin()
            .await
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .unwrap();
        TestDatabase { name }
    }

    /// The URL of this database through `host` (the server itself, or a test proxy).
    pub fn url_via(&self, host: &str) -> String {
        format!("postgres://postgres@{host}/{}", self.name)
    }

    pub fn url(&self) -> String {
        self.url_via(PG_HOST)
    }

    /// A direct connection, for checking what was stored.
    pub async fn client(&self) -> tokio_postgres::Client {
        let (client, conn) = tokio_postgres::connect(&self.url(), tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        client
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let name = self.name.clone();
        // Dropped inside the test's runtime, so drop the database from a thread of its own.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let _ = pg_admin()
                    .await
                    .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                    .await;
            });
        })
        .join();
    }
}

/// A gateway binary on the test's database and Redis prefix, in a process of its own so a test
/// can SIGKILL it; its directory entries expire after `ttl_ms`. Answers the child and the
/// `host:port` it listens on.
pub async fn spawn_node(
    db: &TestDatabase,
    prefix: &str,
    node_id: &str,
    ttl_ms: u64,
) -> (tokio::process::Child, String) {
    use tokio::io::AsyncBufReadExt;
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_ai-gateway"))
        .args(["--listen", "127.0.0.1:0"])
        .env("DATABASE_URL", db.url())
        .env("REDIS_URL", format!("redis://{REDIS_HOST}/"))
        .env("GATEWAY_REDIS_PREFIX", prefix)
        .env("GATEWAY_NODE_ID", node_id)
        .env("GATEWAY_JWT_SECRET", test_config().jwt_secret)
        .env("GATEWAY_DIRECTORY__SESSION_TTL_MS", ttl_ms.to_string())
        .env("GATEWAY_DIRECTORY__REFRESH_INTERVAL_MS", "300")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let line = lines.next_line().await.unwrap().unwrap();
    let addr = line
        .strip_prefix("ai-gateway listening on http://")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_owned();
    (child, addr)
}

/// A Redis key prefix of its own for one test.
pub fn redis_prefix() -> String {
    format!("agw_test:{}:", uuid::Uuid::new_v4().simple())
}

/// Points a config at a test's database and Redis prefix, with a quick directory.
pub fn shared(c: &mut Config, db: &TestDatabase, prefix: &str) {
    c.database_url = db.url();
    c.redis_url = format!("redis://{REDIS_HOST}/");
    c.redis_prefix = prefix.to_owned();
    c.directory.session_ttl_ms = 2_000;
    c.directory.refresh_interval_ms = 300;
}

/// A config for tests: loopback port 0, two workers, the instant mock.
pub fn test_config() -> Config {
    Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        workers: 2,
        jwt_secret: "test-secret-test-secret-test-secret".into(),
        mock: MockSettings::instant(),
        rate_limits: RateLimitSettings::off(),
        ..Config::default()
    }
}

pub struct TestGateway {
    pub gw: Gateway,
    pub http: reqwest::Client,
}

pub async fn start() -> TestGateway {
    start_with(|_| {}).await
}

pub async fn start_with(tweak: impl FnOnce(&mut Config)) -> TestGateway {
    let mut config = test_config();
    tweak(&mut config);
    let gw = Gateway::start(config).await.expect("gateway starts");
    TestGateway {
        gw,
        // No pooled keep-alive connections, so tests can count the server's open connections.
        http: reqwest::Client::builder()
            .pool_max_idle_per_host(0)
            .build()
            .unwrap(),
    }
}

fn unique_name() -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    format!(
        "user{}_{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

impl TestGateway {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.gw.local_addr(), path)
    }

    pub fn ws_url(&self, query: &str) -> String {
        format!("ws://{}/chat{}", self.gw.local_addr(), query)
    }

    pub async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        let res = self
            .http
            .post(self.url(path))
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = res.status().as_u16();
        (status, res.json().await.unwrap_or(Value::Null))
    }

    /// Registers a fresh user and returns (username, token).
    pub async fn new_user(&self) -> (String, String) {
        let name = unique_name();
        let (status, _) = self
            .post("/register", json!({"username": name, "password": PASSWORD}))
            .await;
        assert_eq!(status, 200);
        let (status, body) = self
            .post("/login", json!({"username": name, "password": PASSWORD}))
            .await;
        assert_eq!(status, 200, "{body}");
        (name, body["token"].as_str().unwrap().to_owned())
    }

    /// A new user's connected session, past its welcome frame.
    pub async fn client(&self) -> Ws {
        let (_, token) = self.new_user().await;
        self.connect(&token).await
    }

    pub async fn connect(&self, token: &str) -> Ws {
        let (ws, _) = tokio_tungstenite::connect_async(self.ws_url(&format!("?token={token}")))
            .await
            .expect("websocket connects");
        Ws::after_welcome(ws).await
    }

    /// Waits until the registry holds `n` sessions, or fails after `within`.
    pub async fn wait_sessions(&self, n: usize, within: Duration) {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let count = self.gw.session_count().await;
            if count == n {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "registry holds {count} sessions, expected {n}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until no session is left and every TCP connection is closed, or fails after
    /// `within` each.
    pub async fn wait_all_closed(&self, within: Duration) {
        self.wait_sessions(0, within).await;
        eventually(within, "every connection to close", || {
            self.gw.open_connections() == 0
        })
        .await;
    }
}

/// Polls `f` until it returns true, failing after `within`.
pub async fn eventually(within: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + within;
    while !f() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

pub type WsStream = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Connects with a custom request (headers), returning the handshake's HTTP error if any.
pub async fn try_connect(url: &str, headers: &[(&str, &str)]) -> Result<WsStream, (u16, Value)> {
    let mut req = url.into_client_request().unwrap();
    for (k, v) in headers {
        let name: tokio_tungstenite::tungstenite::http::HeaderName = k.parse().unwrap();
        req.headers_mut()
            .insert(name, v.parse().expect("header value"));
    }
    match tokio_tungstenite::connect_async(req).await {
        Ok((ws, _)) => Ok(ws),
        Err(tokio_tungstenite::tungstenite::Error::Http(res)) => {
            let body = res
                .body()
                .as_ref()
                .and_then(|b| serde_json::from_slice(b).ok())
                .unwrap_or(Value::Null);
            Err((res.status().as_u16(), body))
        }
        Err(e) => panic!("unexpected connect error: {e}"),
    }
}

pub struct Ws {
    pub inner: WsStream,
    /// From the welcome frame.
    pub session_id: String,
}

/// How a connection ended, as the client saw it.
#[derive(Debug)]
pub enum Ending {
    Closed(Option<CloseFrame>),
    /// The TCP connection ended without a close frame.
    Cut,
}

impl Ws {
    /// Wraps a fresh connection, reading and checking its welcome frame.
    pub async fn after_welcome(inner: WsStream) -> Self {
        let mut ws = Ws {
            inner,
            session_id: String::new(),
        };
        let welcome = ws.next_json().await;
        assert_eq!(welcome["type"], "system", "{welcome}");
        assert_eq!(welcome["payload"]["event"], "welcome", "{welcome}");
        ws.session_id = welcome["payload"]["session_id"]
            .as_str()
            .unwrap()
            .to_owned();
        ws
    }

    pub async fn send_json(&mut self, v: Value) {
        self.send_text(&v.to_string()).await;
    }

    pub async fn send_text(&mut self, s: &str) {
        self.inner.send(Message::text(s)).await.expect("send");
    }

    pub async fn send(&mut self, m: Message) {
        self.inner.send(m).await.expect("send");
    }

    /// The next JSON text frame (control frames are skipped); fails on close or timeout.
    pub async fn next_json(&mut self) -> Value {
        loop {
            let msg = tokio::time::timeout(FRAME_TIMEOUT, self.inner.next())
                .await
                .expect("a frame in time")
                .expect("connection open")
                .expect("frame reads");
            match msg {
                Message::Text(t) => return serde_json::from_str(t.as_str()).expect("JSON frame"),
                Message::Ping(_) | Message::Pong(_) => continue,
                other => panic!("expected a text frame, got {other:?}"),
            }
        }
    }

    /// Reads until the connection ends, ignoring frames; returns how it ended.
    pub async fn ending(&mut self) -> Ending {
        loop {
            let next = tokio::time::timeout(FRAME_TIMEOUT, self.inner.next())
                .await
                .expect("connection ends in time");
            match next {
                Some(Ok(Message::Close(frame))) => return Ending::Closed(frame),
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return Ending::Cut,
            }
        }
    }

    /// The close code the server sent; fails if the connection was cut instead.
    pub async fn close_code(&mut self) -> (u16, String) {
        match self.ending().await {
            Ending::Closed(Some(f)) => (u16::from(f.code), f.reason.to_string()),
            other => panic!("expected a close frame, got {other:?}"),
        }
    }

    /// Sends a chat request and gathers its frames up to and including `done`.
    pub async fn chat(&mut self, id: &str, content: &str) -> Answer {
        self.send_json(
            json!({"type": "chat", "id": id, "payload": {"content": content, "model": "mock"}}),
        )
        .await;
        self.answer(id).await
    }

    /// Gathers the frames of request `id` up to its `done`; fails on frames of other requests.
    pub async fn answer(&mut self, id: &str) -> Answer {
        let mut answer = Answer::default();
        loop {
            let f = self.next_json().await;
            assert_eq!(f["id"], id, "frame of another request: {f}");
            match f["type"].as_str().unwrap() {
                "chat" => answer.chunks.push(f),
                "error" => answer.errors.push(f),
                "done" => {
                    answer.done = f;
                    return answer;
                }
                other => panic!("unexpected frame type {other}: {f}"),
            }
        }
    }
}

#[derive(Debug, Default)]
pub struct Answer {
    pub chunks: Vec<Value>,
    pub errors: Vec<Value>,
    pub done: Value,
}

impl Answer {
    pub fn text_of(&self, kind: &str) -> String {
        self.chunks
            .iter()
            .filter(|c| c["payload"]["type"] == kind)
            .map(|c| c["payload"]["content"].as_str().unwrap())
            .collect()
    }

    pub fn finish_reason(&self) -> &str {
        self.done["payload"]["finish_reason"].as_str().unwrap()
    }

    /// Every chunk's `seq`, which must run 0, 1, 2, ...
    pub fn assert_in_order(&self) {
        for (i, c) in self.chunks.iter().enumerate() {
            assert_eq!(c["payload"]["seq"], i as u64, "chunk {i} out of order: {c}");
        }
        assert_eq!(self.done["payload"]["chunks"], self.chunks.len() as u64);
    }
}

/// The value of one sample line (`name{labels} value`) in the Prometheus exposition text.
pub fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            (name == series).then(|| value.parse().unwrap())
        })
        .unwrap_or_else(|| panic!("no sample {series} in:\n{text}"))
}

/// The node's `/metrics` text.
pub async fn scrape(t: &TestGateway) -> String {
    let res = t.http.get(t.url("/metrics")).send().await.unwrap();
    assert_eq!(res.status(), 200);
    res.text().await.unwrap()
}

/// The message of an error body: the seed's `{"error": message}`, or OpenAI's
/// `{"error": {"message", ...}}` (every `/v1/*` error).
pub fn error_message(body: &Value) -> Option<&str> {
    body["error"]
        .as_str()
        .or_else(|| body["error"]["message"].as_str())
}
