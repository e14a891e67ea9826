//! Talking to the gateway as a client: log in over HTTP, open WebSocket sessions from a chosen
//! loopback source address, read frames.

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    time::Duration,
};

use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::{
    tungstenite::{self, protocol::WebSocketConfig, Message},
    WebSocketStream,
};

use crate::process;

/// How long a client waits for the welcome frame or any frame of a running request.
pub const FRAME_TIMEOUT: Duration = Duration::from_secs(30);
/// Connections per loopback source address: well inside the ephemeral port range.
pub const CONNECTIONS_PER_SOURCE_ADDR: usize = 15_000;
const PASSWORD: &str = "bench-password-0123";

pub type Ws = WebSocketStream<TcpStream>;

/// What went wrong, in words that say what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("the gateway answered 429 to {0}: start it with GATEWAY_RATE_LIMITS=off")]
    RateLimited(String),
    /// The gateway lacks what the scenario needs (an endpoint, a route): the half is skipped.
    #[error("{0}")]
    MissingFeature(String),
    #[error("{0}")]
    Gateway(String),
    #[error("{0}")]
    Io(String),
}

impl From<tungstenite::Error> for BenchError {
    fn from(e: tungstenite::Error) -> Self {
        match e {
            tungstenite::Error::Http(res) if res.status().as_u16() == 429 => {
                BenchError::RateLimited("a WebSocket handshake".into())
            }
            tungstenite::Error::Http(res) => BenchError::Gateway(format!(
                "the WebSocket handshake was refused with {}",
                res.status()
            )),
            e => BenchError::Io(format!("websocket: {e}")),
        }
    }
}

impl From<std::io::Error> for BenchError {
    fn from(e: std::io::Error) -> Self {
        BenchError::Io(e.to_string())
    }
}

impl From<reqwest::Error> for BenchError {
    fn from(e: reqwest::Error) -> Self {
        BenchError::Io(format!("http: {e}"))
    }
}

/// The gateway under test: where it listens and, when known, its process (for RSS and CPU).
#[derive(Debug, Clone)]
pub struct Target {
    pub addr: SocketAddr,
    pub pid: Option<u32>,
}

impl Target {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn stats(&self) -> Option<process::ProcStats> {
        self.pid.and_then(process::ProcStats::read)
    }
}

/// An HTTP client that keeps no idle connections (they would count as gateway connections).
pub fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .expect("http client")
}

/// Registers a fresh `bench-<random>` user and returns its token.
pub async fn login(target: &Target) -> Result<String, BenchError> {
    let http = http_client();
    let name = format!("bench-{:016x}", rand::random::<u64>());
    let body = serde_json::json!({"username": name, "password": PASSWORD});
    for path in ["/register", "/login"] {
        let res = http.post(target.url(path)).json(&body).send().await?;
        let status = res.status().as_u16();
        if status == 429 {
            return Err(BenchError::RateLimited(format!("POST {path}")));
        }
        let value: serde_json::Value = res.json().await.unwrap_or_default();
        if status != 200 {
            return Err(BenchError::Gateway(format!(
                "POST {path} answered {status}: {value}"
            )));
        }
        if let Some(token) = value["token"].as_str() {
            return Ok(token.to_owned());
        }
    }
    Err(BenchError::Gateway("POST /login gave no token".into()))
}

/// The loopback source address of connection number `i`: 127.0.0.`base`, then the next address
/// every [`CONNECTIONS_PER_SOURCE_ADDR`] connections, so one process can exceed the port range.
pub fn source_addr(base: u8, i: usize) -> IpAddr {
    let offset = (i / CONNECTIONS_PER_SOURCE_ADDR) as u8;
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, base.saturating_add(offset).max(1)))
}

/// Small buffers: idle sessions should cost the load generator little memory.
fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(16 * 1024)
        .write_buffer_size(0)
}

/// Opens an authenticated session from `source` (when the gateway is on loopback) and reads
/// its welcome frame.
pub async fn connect(
    target: &Target,
    token: &str,
    source: Option<IpAddr>,
) -> Result<Ws, BenchError> {
    let socket = TcpSocket::new_v4()?;
    if let Some(ip) = source.filter(|_| target.addr.ip().is_loopback()) {
        socket.bind(SocketAddr::new(ip, 0))?;
    }
    let stream = socket.connect(target.addr).await?;
    stream.set_nodelay(true)?;
    let url = format!("ws://{}/chat?token={token}", target.addr);
    let (mut ws, _) =
        tokio_tungstenite::client_async_with_config(url, stream, Some(ws_config())).await?;
    match next_frame(&mut ws).await? {
        Some(text) if text.contains("\"welcome\"") => Ok(ws),
        Some(text) => Err(BenchError::Gateway(format!(
            "expected the welcome frame first, got {text}"
        ))),
        None => Err(BenchError::Gateway(
            "closed before the welcome frame".into(),
        )),
    }
}

/// The next text frame, answering pings on the way; `None` when the connection closed.
pub async fn next_frame(ws: &mut Ws) -> Result<Option<tungstenite::Utf8Bytes>, BenchError> {
    loop {
        let msg = tokio::time::timeout(FRAME_TIMEOUT, ws.next())
            .await
            .map_err(|_| BenchError::Gateway("no frame within 30 s".into()))?;
        match msg {
            None | Some(Ok(Message::Close(_))) => return Ok(None),
            Some(Ok(Message::Text(t))) => return Ok(Some(t)),
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(e.into()),
        }
    }
}

/// The next text frame without a time limit (idle sessions), answering pings on the way.
pub async fn next_frame_untimed(ws: &mut Ws) -> Option<tungstenite::Utf8Bytes> {
    loop {
        match ws.next().await {
            None | Some(Ok(Message::Close(_))) | Some(Err(_)) => return None,
            Some(Ok(Message::Text(t))) => return Some(t),
            Some(Ok(_)) => continue,
        }
    }
}

/// Sends a close frame and waits briefly for the gateway's, so the gateway closes the TCP
/// connection first and keeps the TIME_WAIT state on its side.
pub async fn close(mut ws: Ws) {
    if ws.send(Message::Close(None)).await.is_ok() {
        let _ = tokio::time::timeout(Duration::from_secs(5), async {
            while let Some(Ok(_)) = ws.next().await {}
        })
        .await;
    }
}

/// The fields of a server frame the bench looks at.
#[derive(Debug, Deserialize)]
pub struct ServerFrame<'a> {
    #[serde(rename = "type", borrow)]
    pub kind: &'a str,
    #[serde(default, borrow)]
    pub id: Option<&'a str>,
    #[serde(default)]
    pub payload: Option<FramePayload>,
}

#[derive(Debug, Default, Deserialize)]
pub struct FramePayload {
    #[serde(default)]
    pub seq: Option<u64>,
    #[serde(default)]
    pub chunks: Option<u64>,
    #[serde(default)]
    pub reason: Option<String>,
    #[serde(default)]
    pub message: Option<String>,
    #[serde(default)]
    pub finish_reason: Option<String>,
}

/// A `chat` request frame.
pub fn chat_frame(id: &str, model: &str) -> Message {
    Message::text(
        serde_json::json!({"type": "chat", "id": id, "payload": {"content": "Hello AI", "model": model}})
            .to_string(),
    )
}
