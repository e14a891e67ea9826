//! Fuzz targets `openai_sse`, `anthropic_sse` and `gemini_sse`: whatever an upstream sends as
//! its event stream, each provider ends the answer (an answer or a typed error) without a panic
//! and without hanging. Every input is served as a real `text/event-stream` response over
//! loopback and read by the provider as in production. Corpus: `fuzz/corpus/<target>/`.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use ai_gateway_actors::{
    provider::{Message, Role},
    AnthropicProvider, AnthropicSettings, ApiKey, ChunkSink, FlowControl, GeminiProvider,
    GeminiSettings, OpenAiProvider, OpenAiSettings, Provider, ProviderRequest,
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

/// A provider that takes longer than this on one input is hung: a bug.
const CASE_LIMIT: Duration = Duration::from_secs(5);

/// Serves `body` (the current input) as the event stream of every request.
async fn serve(listener: TcpListener, body: Arc<Mutex<Vec<u8>>>) {
    loop {
        let Ok((conn, _)) = listener.accept().await else {
            return;
        };
        let body = body.lock().unwrap().clone();
        actix_rt::spawn(answer(conn, body));
    }
}

async fn answer(mut conn: TcpStream, body: Vec<u8>) {
    // Read the whole request first: closing a socket with unread bytes resets it, and the
    // reset could reach the client before the response.
    let mut request = Vec::new();
    let mut buf = [0u8; 4096];
    let mut wanted = None;
    while wanted.is_none_or(|n| request.len() < n) {
        match conn.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => request.extend_from_slice(&buf[..n]),
        }
        if wanted.is_none() {
            if let Some(end) = request.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&request[..end]).to_ascii_lowercase();
                let length = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse::<usize>().ok())
                    .unwrap_or(0);
                wanted = Some(end + 4 + length);
            }
        }
    }
    let head = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncontent-length: {}\r\n\
         connection: close\r\n\r\n",
        body.len()
    );
    let _ = conn.write_all(head.as_bytes()).await;
    let _ = conn.write_all(&body).await;
    let _ = conn.shutdown().await;
    let _ = conn.read(&mut buf).await;
}

fn request() -> ProviderRequest {
    ProviderRequest {
        model: "m".into(),
        upstream_model: "m".into(),
        messages: vec![Message::text(Role::User, "hello")],
        ..ProviderRequest::default()
    }
}

/// Runs `target`'s corpus and mutations through the provider `make` builds for a base URL.
fn fuzz_provider(target: &str, make: impl Fn(&str) -> Arc<dyn Provider>) {
    let system = actix_rt::System::new();
    let body = Arc::new(Mutex::new(Vec::new()));
    let addr = system.block_on(async {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        actix_rt::spawn(serve(listener, body.clone()));
        addr
    });
    let provider = make(&format!("http://{addr}"));
    ai_gateway_fuzz::fuzz(target, |input| {
        *body.lock().unwrap() = input.to_vec();
        system.block_on(async {
            let (sink, mut events) = ChunkSink::channel(1, FlowControl::new(usize::MAX));
            let answer = provider.clone().stream(request(), sink);
            let end = tokio::time::timeout(CASE_LIMIT, answer)
                .await
                .expect("the provider ends the answer in time");
            // Whatever it ended with, it is a value the gateway can report.
            match end {
                Ok(finish) => drop(format!("{finish:?}")),
                Err(e) => drop((e.to_string(), e.reason())),
            }
            while let Ok(event) = events.try_recv() {
                drop(event.chunks);
            }
        });
    });
}

#[test]
fn fuzz_openai_sse() {
    fuzz_provider("openai_sse", |base| {
        OpenAiProvider::new(OpenAiSettings::new(
            format!("{base}/v1"),
            Some(ApiKey::new("sk-test")),
        ))
        .unwrap()
    });
}

#[test]
fn fuzz_anthropic_sse() {
    fuzz_provider("anthropic_sse", |base| {
        let mut settings = AnthropicSettings::new(base, ApiKey::new("sk-ant-test"));
        settings.thinking_budget_tokens = Some(1024);
        AnthropicProvider::new(settings).unwrap()
    });
}

#[test]
fn fuzz_gemini_sse() {
    fuzz_provider("gemini_sse", |base| {
        let mut settings = GeminiSettings::new(base, ApiKey::new("AIza-test"));
        settings.include_thoughts = true;
        GeminiProvider::new(settings).unwrap()
    });
}
