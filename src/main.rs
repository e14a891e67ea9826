//! `ai-gateway`: run a gateway node.

use std::{net::SocketAddr, path::PathBuf, process::ExitCode};

use ai_gateway::{
    config::{Config, Overrides},
    telemetry, Gateway,
};
use clap::{Parser, Subcommand};

/// jemalloc instead of glibc's malloc: the gateway allocates many small, short-lived buffers
/// across threads, where glibc's arenas spend more CPU per handshake and keep freed memory.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options: a background thread hands memory freed by closed sessions back to the
/// system within about a second, instead of at the next allocations.
#[allow(non_upper_case_globals)]
#[export_name = "_rjem_malloc_conf"]
pub static malloc_conf: &[u8] = b"background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:1000\0";

/// WebSocket gateway between chat clients and LLM providers.
#[derive(Parser)]
#[command(version)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Address to listen on (overrides GATEWAY_LISTEN and the config file).
    #[arg(long, value_name = "ADDR")]
    listen: Option<SocketAddr>,
    /// TOML configuration file.
    #[arg(long, value_name = "FILE", env = "GATEWAY_CONFIG")]
    config: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve (the default).
    Serve,
    /// Apply the database migrations in sql/ to DATABASE_URL, then exit.
    Migrate,
}

fn main() -> ExitCode {
    let nofile = ai_gateway::limits_nofile::raise_to_hard_limit();
    let cli = Cli::parse();
    let overrides = Overrides { listen: cli.listen };
    let config = match Config::load(cli.config.as_ref(), &overrides) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("ai-gateway: {e}");
            return ExitCode::from(2);
        }
    };
    let _telemetry = telemetry::init(config.log_format);
    nofile.log();
    if let Some(Command::Migrate) = cli.command {
        return migrate(&config.database_url);
    }
    actix_web::rt::System::new().block_on(async move {
        let gateway = match Gateway::start(config).await {
            Ok(g) => g,
            Err(e) => {
                eprintln!("ai-gateway: cannot start: {e:#}");
                return ExitCode::FAILURE;
            }
        };
        println!("ai-gateway listening on http://{}", gateway.local_addr());
        wait_for_signal().await;
        gateway.shutdown().await;
        ExitCode::SUCCESS
    })
}

fn migrate(database_url: &str) -> ExitCode {
    if database_url.is_empty() {
        eprintln!("ai-gateway: migrate needs DATABASE_URL (or database_url in the config)");
        return ExitCode::from(2);
    }
    actix_web::rt::System::new().block_on(async {
        match ai_gateway::store::postgres::migrate(database_url).await {
            Ok(applied) if applied.is_empty() => println!("database is up to date"),
            Ok(applied) => applied.iter().for_each(|m| println!("applied {m}")),
            Err(e) => {
                eprintln!("ai-gateway: migration failed: {e:#}");
                return ExitCode::FAILURE;
            }
        }
        ExitCode::SUCCESS
    })
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = int.recv() => tracing::info!("SIGINT received"),
    }
}
