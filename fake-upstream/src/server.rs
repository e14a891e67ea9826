//! The HTTP server: routes, start and stop.

use std::{io, net::SocketAddr, sync::Arc};

use actix_web::{dev::ServerHandle, web, App, HttpResponse, HttpServer};

use crate::{anthropic, gemini, openai, record::State, RecordedRequest};

/// Largest request body the fake takes.
pub const MAX_REQUEST_BYTES: usize = 64 * 1024 * 1024;

/// Pacing of the fake's answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FakeOptions {
    /// Pause between pieces of an `ok` answer (zero for benchmarks).
    pub chunk_delay_ms: u64,
    /// Pause between pieces of a `slow-drip` answer.
    pub slow_drip_delay_ms: u64,
    /// Worker threads of the server.
    pub workers: usize,
}

impl Default for FakeOptions {
    fn default() -> Self {
        FakeOptions {
            chunk_delay_ms: 0,
            slow_drip_delay_ms: 200,
            workers: 1,
        }
    }
}

/// A running fake upstream. Stops when dropped.
pub struct FakeUpstream {
    addr: SocketAddr,
    state: Arc<State>,
    handle: ServerHandle,
}

impl FakeUpstream {
    /// Starts on `127.0.0.1:0` with default options. Call inside an actix system
    /// (`#[actix_rt::test]`, `#[actix_web::main]`).
    pub async fn start() -> io::Result<FakeUpstream> {
        Self::start_with(([127, 0, 0, 1], 0).into(), FakeOptions::default()).await
    }

    pub async fn start_with(addr: SocketAddr, options: FakeOptions) -> io::Result<FakeUpstream> {
        let workers = options.workers.max(1);
        let state = Arc::new(State::new(options));
        let data = web::Data::from(state.clone());
        // Requests may carry images: take bodies as large as the real APIs do (OpenAI's is
        // larger than 20 MiB), not actix-web's default of 256 KiB.
        let server = HttpServer::new(move || {
            App::new()
                .app_data(data.clone())
                .app_data(web::PayloadConfig::new(MAX_REQUEST_BYTES))
                .configure(routes)
        })
        .workers(workers)
        .disable_signals()
        .shutdown_timeout(0)
        .bind(addr)?;
        let addr = server.addrs()[0];
        let server = server.run();
        let handle = server.handle();
        actix_rt::spawn(server);
        Ok(FakeUpstream {
            addr,
            state,
            handle,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`, without a path (the Anthropic and Gemini base URL).
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `http://127.0.0.1:PORT/v1`, the OpenAI-style base URL.
    pub fn openai_base_url(&self) -> String {
        format!("{}/v1", self.base_url())
    }

    /// Every request received so far, oldest first.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.state.requests()
    }

    /// Answer streams whose body is still held by the server.
    pub fn open_streams(&self) -> usize {
        self.state.open_streams()
    }

    /// Answer streams dropped before their script ended: the client went away.
    pub fn abandoned_streams(&self) -> usize {
        self.state.abandoned_streams()
    }

    /// Stops the server at once, without waiting for open streams.
    pub async fn stop(self) {
        self.handle.stop(false).await;
    }
}

impl Drop for FakeUpstream {
    fn drop(&mut self) {
        // The command is sent now; the returned future only waits for completion.
        drop(self.handle.stop(false));
    }
}

fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route(
        "/v1/chat/completions",
        web::post().to(openai::chat_completions),
    )
    .route("/v1/models", web::get().to(openai::models))
    .route("/v1/messages", web::post().to(anthropic::messages))
    .route("/v1beta/models/{call}", web::post().to(gemini::call))
    .route("/health", web::get().to(HttpResponse::Ok));
}
