//! `fake-upstream --listen 127.0.0.1:8090`: the fake LLM upstream as a process, for manual
//! tests and benchmarks.

use std::net::SocketAddr;

use clap::Parser;
use fake_upstream::{FakeOptions, FakeUpstream};

/// A fake LLM upstream speaking the OpenAI, Anthropic and Gemini streaming formats. The model
/// name picks the scenario: ok, ok-N, fail-NNN, flaky-N, midstream-error, stall, stall-after-N,
/// malformed, cut, slow-drip, filtered, echo (OpenAI API: the answer is the last user message).
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8090")]
    listen: SocketAddr,
    /// Pause between pieces of an `ok` answer, in milliseconds (0 for benchmarks).
    #[arg(long, default_value_t = 0)]
    chunk_delay_ms: u64,
    /// Pause between pieces of a `slow-drip` answer, in milliseconds.
    #[arg(long, default_value_t = 200)]
    slow_drip_delay_ms: u64,
    /// Server worker threads.
    #[arg(long, default_value_t = 2)]
    workers: usize,
}

#[actix_web::main]
async fn main() -> std::io::Result<()> {
    let args = Args::parse();
    let options = FakeOptions {
        chunk_delay_ms: args.chunk_delay_ms,
        slow_drip_delay_ms: args.slow_drip_delay_ms,
        workers: args.workers,
    };
    let fake = FakeUpstream::start_with(args.listen, options).await?;
    println!("fake-upstream listening on {}", fake.base_url());
    tokio::signal::ctrl_c().await?;
    fake.stop().await;
    Ok(())
}
