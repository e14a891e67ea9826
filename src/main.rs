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
    #[arg(long, value_name = "ADDR", global = true)]
    listen: Option<SocketAddr>,
    /// TOML configuration file.
    #[arg(long, value_name = "FILE", env = "GATEWAY_CONFIG", global = true)]
    config: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve (the default).
    Serve,
    /// Apply the database migrations in sql/ to DATABASE_URL, then exit.
    Migrate,
    /// Exit 0 when this node's `/healthz` answers 200, else 1: for a container's HEALTHCHECK,
    /// so the image needs no curl.
    Healthcheck {
        /// Default: `http://127.0.0.1:PORT/healthz`, PORT from `listen`.
        #[arg(long, value_name = "URL")]
        url: Option<String>,
    },
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
    if let Some(Command::Healthcheck { url }) = &cli.command {
        let url = url.clone().unwrap_or_else(|| healthz_url(config.listen));
        return healthcheck(&url);
    }
    let _telemetry = telemetry::init(config.log_format);
    nofile.log();
    if let Some(Command::Migrate) = cli.command {
        return migrate(&config);
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

/// Waits for PostgreSQL (up to `db_connect_timeout_secs`), then applies what is missing.
fn migrate(config: &Config) -> ExitCode {
    let database_url = config.database_url.as_str();
    if database_url.is_empty() {
        eprintln!("ai-gateway: migrate needs DATABASE_URL (or database_url in the config)");
        return ExitCode::from(2);
    }
    actix_web::rt::System::new().block_on(async {
        let limit = ai_gateway::startup::limit(config.db_connect_timeout_secs);
        let ca_file = &config.database_ca_file;
        let tls = match ai_gateway::startup::wait_for_postgres(database_url, ca_file, limit).await {
            Ok(tls) => tls,
            Err(e) => {
                eprintln!("ai-gateway: migration failed: {e}");
                return ExitCode::FAILURE;
            }
        };
        match ai_gateway::store::postgres::migrate(database_url, &tls).await {
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

/// `/healthz` of a node listening on `listen`, through loopback when it listens on every
/// interface.
fn healthz_url(listen: SocketAddr) -> String {
    let ip = match listen.ip() {
        std::net::IpAddr::V4(ip) if ip.is_unspecified() => std::net::Ipv4Addr::LOCALHOST.into(),
        std::net::IpAddr::V6(ip) if ip.is_unspecified() => std::net::Ipv6Addr::LOCALHOST.into(),
        ip => ip,
    };
    format!("http://{}/healthz", SocketAddr::new(ip, listen.port()))
}

fn healthcheck(url: &str) -> ExitCode {
    let answer = actix_web::rt::System::new().block_on(async {
        reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(3))
            .build()?
            .get(url)
            .send()
            .await
    });
    match answer {
        Ok(res) if res.status().is_success() => ExitCode::SUCCESS,
        Ok(res) => {
            eprintln!("ai-gateway: {url} answered {}", res.status());
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("ai-gateway: {url}: {e}");
            ExitCode::FAILURE
        }
    }
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
