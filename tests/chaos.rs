//! Chaos with three nodes: real `ai-gateway` processes sharing a Redis and a PostgreSQL of the
//! test's own (never the machine's shared ones, which other tests use), while answers stream.
//! (a) one node is killed with SIGKILL: its sessions leave the Redis directory within the TTL
//! and the other nodes' streams are unaffected; (b) Redis and (c) PostgreSQL are restarted:
//! live streams go on, new handshakes recover by themselves, nothing stored is lost.

use std::{
    net::TcpListener, os::unix::fs::PermissionsExt, path::PathBuf, process::Stdio, time::Duration,
};

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    net::TcpStream,
    process::{Child, Command},
};
use tokio_tungstenite::{tungstenite::Message, MaybeTlsStream, WebSocketStream};

const PG_BIN: &str = "/usr/lib/postgresql/15/bin";
const JWT_SECRET: &str = "chaos-secret-chaos-secret-chaos-secret";
const PASSWORD: &str = "correct horse battery";
/// The directory TTL of every node: a dead node's sessions must be gone this long after it.
const DIRECTORY_TTL_MS: u64 = 1_500;
/// How long anything the test waits for may take before the test fails.
const PATIENCE: Duration = Duration::from_secs(20);

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn wait_for_port(port: u16, what: &str) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while TcpStream::connect(("127.0.0.1", port)).await.is_err() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what} never listened on {port}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A `redis-server` of the test's own, without persistence.
struct OwnRedis {
    port: u16,
    child: Child,
}

impl OwnRedis {
    async fn start() -> OwnRedis {
        let port = free_port();
        let child = OwnRedis::spawn(port);
        wait_for_port(port, "redis-server").await;
        OwnRedis { port, child }
    }

    fn spawn(port: u16) -> Child {
        Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("redis-server runs")
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Kills it (SIGKILL: everything it held is gone) and starts a fresh one on the same port.
    async fn restart(&mut self) {
        self.child.kill().await.unwrap();
        self.child = OwnRedis::spawn(self.port);
        wait_for_port(self.port, "the restarted redis-server").await;
    }

    async fn connection(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.url())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap()
    }
}

/// A PostgreSQL cluster of the test's own in a temporary directory, run as `postgres` when
/// the test runs as root (PostgreSQL refuses root).
struct OwnPostgres {
    port: u16,
    dir: tempfile::TempDir,
}

fn as_postgres(program: &str) -> std::process::Command {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        let mut c = std::process::Command::new("runuser");
        c.args(["-u", "postgres", "--", program]);
        c
    } else {
        std::process::Command::new(program)
    }
}

fn run(mut command: std::process::Command, what: &str) {
    let out = command.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl OwnPostgres {
    async fn start() -> OwnPostgres {
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        let port = free_port();
        let pg = OwnPostgres { port, dir };
        let mut initdb = as_postgres(&format!("{PG_BIN}/initdb"));
        initdb
            .args(["-D"])
            .arg(pg.data())
            .args(["-U", "postgres", "--auth=trust", "--no-sync"]);
        run(initdb, "initdb");
        pg.pg_ctl_start();
        pg
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn pg_ctl_start(&self) {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
            self.port,
            self.dir.path().display()
        );
        let mut start = as_postgres(&format!("{PG_BIN}/pg_ctl"));
        start
            .arg("-D")
            .arg(self.data())
            .args(["-o", &options, "-l"])
            .arg(self.dir.path().join("log"))
            .args(["-w", "start"]);
        run(start, "pg_ctl start");
    }

    fn pg_ctl_stop(&self, mode: &str) {
        let mut stop = as_postgres(&format!("{PG_BIN}/pg_ctl"));
        stop.arg("-D")
            .arg(self.data())
            .args(["-m", mode, "-w", "stop"]);
        run(stop, "pg_ctl stop");
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Stops it at once (`immediate`: no clean shutdown, as a crash) and starts it again on
    /// the same data.
    fn restart(&self) {
        self.pg_ctl_stop("immediate");
        self.pg_ctl_start();
    }

    async fn count(&self, sql: &str) -> i64 {
        let (client, conn) = tokio_postgres::connect(&self.url(), tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        client.query_one(sql, &[]).await.unwrap().get(0)
    }
}

impl Drop for OwnPostgres {
    fn drop(&mut self) {
        let mut stop = as_postgres(&format!("{PG_BIN}/pg_ctl"));
        stop.arg("-D")
            .arg(self.data())
            .args(["-m", "immediate", "-w", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let _ = stop.status();
    }
}

/// One `ai-gateway` process.
struct Node {
    id: String,
    addr: String,
    child: Child,
}

impl Node {
    async fn spawn(id: &str, pg: &OwnPostgres, redis: &OwnRedis, prefix: &str) -> Node {
        let mut child = Command::new(env!("CARGO_BIN_EXE_ai-gateway"))
            .args(["--listen", "127.0.0.1:0"])
            .env("DATABASE_URL", pg.url())
            .env("REDIS_URL", redis.url())
            .env("GATEWAY_REDIS_PREFIX", prefix)
            .env("GATEWAY_NODE_ID", id)
            .env("GATEWAY_JWT_SECRET", JWT_SECRET)
            .env("GATEWAY_RATE_LIMITS", "off")
            .env("GATEWAY_WORKERS", "1")
            .env(
                "GATEWAY_DIRECTORY__SESSION_TTL_MS",
                DIRECTORY_TTL_MS.to_string(),
            )
            .env("GATEWAY_DIRECTORY__REFRESH_INTERVAL_MS", "300")
            // Answers of a few seconds, so that the chaos strikes mid-stream.
            .env("GATEWAY_MOCK__FIRST_CHUNK_DELAY_MS", "0")
            .env("GATEWAY_MOCK__REASONING_DELAY_MS", "[5,5]")
            .env("GATEWAY_MOCK__TEXT_DELAY_MS", "[15,15]")
            .env("GATEWAY_MOCK__TEXT_REPEAT", "4")
            .env("GATEWAY_DB_CONNECT_TIMEOUT_SECS", "20")
            .env("RUST_LOG", "error")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let line = tokio::time::timeout(PATIENCE, lines.next_line())
            .await
            .expect("the node starts in time")
            .unwrap()
            .expect("the node prints its address");
        let addr = line
            .strip_prefix("ai-gateway listening on http://")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .to_owned();
        Node {
            id: id.to_owned(),
            addr,
            child,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

/// Redis, PostgreSQL and three nodes sharing them, with a user registered.
struct Cluster {
    redis: OwnRedis,
    pg: OwnPostgres,
    prefix: String,
    nodes: Vec<Node>,
    token: String,
    http: reqwest::Client,
}

impl Cluster {
    async fn start() -> Cluster {
        let (redis, pg) = tokio::join!(OwnRedis::start(), OwnPostgres::start());
        let prefix = "chaos:".to_owned();
        let mut nodes = Vec::new();
        // One at a time: the first migrates the database.
        for id in ["n1", "n2", "n3"] {
            nodes.push(Node::spawn(id, &pg, &redis, &prefix).await);
        }
        let http = reqwest::Client::new();
        let token = login(&http, &nodes[0], "chaos_user")
            .await
            .expect("sign-up");
        Cluster {
            redis,
            pg,
            prefix,
            nodes,
            token,
            http,
        }
    }

    /// The session ids the Redis directory lists: the fields of every node's hash.
    async fn directory(&self) -> Vec<String> {
        let mut redis = self.redis.connection().await;
        let hashes: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{}node-sessions:*", self.prefix))
            .query_async(&mut redis)
            .await
            .unwrap_or_default();
        let mut ids = Vec::new();
        for hash in hashes {
            let fields: Vec<String> = redis::cmd("HKEYS")
                .arg(&hash)
                .query_async(&mut redis)
                .await
                .unwrap_or_default();
            ids.extend(fields);
        }
        ids
    }

    /// Waits until the directory lists (or no longer lists) `session`.
    async fn wait_directory(&self, session: &str, listed: bool) -> Duration {
        let started = tokio::time::Instant::now();
        loop {
            if self.directory().await.iter().any(|s| s == session) == listed {
                return started.elapsed();
            }
            assert!(
                started.elapsed() < PATIENCE,
                "session {session} still {} the directory",
                if listed { "missing from" } else { "in" }
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Signs `name` up (once) and logs in; `None` while the node cannot (its database is down).
async fn login(http: &reqwest::Client, node: &Node, name: &str) -> Option<String> {
    let body = json!({"username": name, "password": PASSWORD});
    let _ = http.post(node.url("/register")).json(&body).send().await;
    let res = http
        .post(node.url("/login"))
        .json(&body)
        .send()
        .await
        .ok()?;
    if !res.status().is_success() {
        return None;
    }
    let body: Value = res.json().await.ok()?;
    body["token"].as_str().map(str::to_owned)
}

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A session on `node`, past its welcome frame: its id. `None` when the handshake fails.
async fn connect(node: &Node, token: &str) -> Option<(Ws, String)> {
    let url = format!("ws://{}/chat?token={token}", node.addr);
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.ok()?;
    let welcome = next_json(&mut ws).await?;
    let id = welcome["payload"]["session_id"].as_str()?.to_owned();
    Some((ws, id))
}

async fn next_json(ws: &mut Ws) -> Option<Value> {
    loop {
        let msg = tokio::time::timeout(PATIENCE, ws.next())
            .await
            .ok()??
            .ok()?;
        match msg {
            Message::Text(t) => return serde_json::from_str(t.as_str()).ok(),
            Message::Close(_) => return None,
            _ => continue,
        }
    }
}

/// A streaming answer on its own session.
struct Stream {
    ws: Ws,
    session: String,
    next_seq: u64,
}

impl Stream {
    /// Starts a chat (in `conversation`, when given) and reads its first chunk.
    async fn start(node: &Node, token: &str, conversation: Option<&str>) -> Stream {
        let (mut ws, session) = connect(node, token).await.expect("a session opens");
        let mut payload = json!({"content": "chaos", "model": "mock"});
        if let Some(c) = conversation {
            payload["conversation_id"] = json!(c);
        }
        let chat = json!({"type": "chat", "id": "r", "payload": payload});
        ws.send(Message::text(chat.to_string())).await.unwrap();
        let mut stream = Stream {
            ws,
            session,
            next_seq: 0,
        };
        assert_eq!(stream.next().await, None, "the answer has started");
        stream
    }

    /// Reads one frame of the answer: `None` for a chunk (checked in order), else the end.
    async fn next(&mut self) -> Option<String> {
        let frame = next_json(&mut self.ws)
            .await
            .expect("the stream goes on (no close, no silence)");
        match frame["type"].as_str() {
            Some("chat") => {
                assert_eq!(frame["payload"]["seq"], self.next_seq, "{frame}");
                self.next_seq += 1;
                None
            }
            Some("done") => Some(frame["payload"]["finish_reason"].as_str()?.to_owned()),
            _ => panic!("unexpected frame {frame}"),
        }
    }

    /// Reads the rest of the answer; it must end complete.
    async fn finish(mut self) -> u64 {
        loop {
            if let Some(reason) = self.next().await {
                assert_eq!(reason, "stop", "the answer ended normally");
                return self.next_seq;
            }
        }
    }
}

/// Retries `f` until it gives something: for what must recover by itself.
async fn eventually<T, F: std::future::Future<Output = Option<T>>>(
    what: &str,
    mut f: impl FnMut() -> F,
) -> T {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what} never recovered"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_killed_node_leaves_the_directory_and_the_others_stream_on() {
    let mut c = Cluster::start().await;
    let streams = [
        Stream::start(&c.nodes[0], &c.token, None).await,
        Stream::start(&c.nodes[1], &c.token, None).await,
    ];
    let doomed = Stream::start(&c.nodes[2], &c.token, None).await;
    for s in streams.iter().chain([&doomed]) {
        c.wait_directory(&s.session, true).await;
    }

    let victim = &mut c.nodes[2];
    assert_eq!(victim.id, "n3");
    victim.child.start_kill().unwrap();
    victim.child.wait().await.unwrap();
    let gone_after = c.wait_directory(&doomed.session, false).await;
    assert!(
        gone_after <= Duration::from_millis(DIRECTORY_TTL_MS + 1_000),
        "the dead node's session left the directory only after {gone_after:?}"
    );

    // The other nodes' sessions stay listed, and their answers are whole and in order.
    let listed = c.directory().await;
    for s in streams {
        assert!(
            listed.contains(&s.session),
            "{} left the directory",
            s.session
        );
        assert!(s.finish().await > 0);
    }
}

#[tokio::test]
async fn a_redis_restart_leaves_streams_alone_and_handshakes_recover() {
    let mut c = Cluster::start().await;
    let streams: Vec<Stream> =
        futures_util::future::join_all(c.nodes.iter().map(|n| Stream::start(n, &c.token, None)))
            .await;

    c.redis.restart().await;

    for s in streams {
        s.finish().await;
    }
    // New sessions on every node, and the directory filled again by the nodes' refreshes.
    for node in &c.nodes {
        let (_ws, session) = eventually("a handshake after the Redis restart", || {
            connect(node, &c.token)
        })
        .await;
        c.wait_directory(&session, true).await;
    }
}

#[tokio::test]
async fn a_postgres_restart_leaves_streams_alone_and_loses_nothing() {
    let c = Cluster::start().await;
    let conversations: Vec<String> = (0..3).map(|_| uuid::Uuid::new_v4().to_string()).collect();
    let streams: Vec<Stream> = futures_util::future::join_all(
        c.nodes
            .iter()
            .zip(&conversations)
            .map(|(n, conv)| Stream::start(n, &c.token, Some(conv))),
    )
    .await;

    c.pg.restart();

    // The answers go on, and are stored once PostgreSQL is back (the write-behind queue).
    for s in streams {
        s.finish().await;
    }
    // A new user on every node: sign-up and login need PostgreSQL, so they prove it is back.
    for (i, node) in c.nodes.iter().enumerate() {
        let name = format!("after_restart_{i}");
        let token = eventually("login after the PostgreSQL restart", || {
            login(&c.http, node, &name)
        })
        .await;
        eventually("a handshake after the PostgreSQL restart", || {
            connect(node, &token)
        })
        .await;
    }
    let (pg, expected) = (&c.pg, 2 * conversations.len() as i64);
    eventually("every question and answer stored", || async move {
        (pg.count("SELECT count(*) FROM messages").await == expected).then_some(())
    })
    .await;
    let per_conversation = pg
        .count("SELECT count(DISTINCT conversation_id) FROM messages")
        .await;
    assert_eq!(per_conversation, 3, "each conversation has its exchange");
    // The user from before the restart is still there and still logs in.
    assert!(login(&c.http, &c.nodes[1], "chaos_user").await.is_some());
}
