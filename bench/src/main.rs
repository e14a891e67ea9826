//! `gateway-bench`: load scenarios against a running (or spawned) ai-gateway.
//! Every figure in docs/BENCHMARKS.md comes from one command of this binary.

use std::{net::SocketAddr, path::PathBuf, process::ExitCode, time::Duration};

use clap::{Args, Parser, Subcommand};
use gateway_bench::{
    cluster::{self, ClusterOptions},
    handshake::{self, HandshakeOptions},
    http::{self, HttpOptions},
    idle::{self, IdleOptions},
    overhead::{self, OverheadOptions},
    process::{self, SpawnedGateway},
    resume::{self, ResumeOptions},
    soak::{self, SoakOptions},
    stream::{self, StreamOptions},
    upstream::LocalUpstream,
    BenchError, Report, Target,
};

/// Load generator for ai-gateway. The gateway must run with GATEWAY_RATE_LIMITS=off.
#[derive(Parser)]
#[command(version)]
struct Cli {
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Args, Clone)]
struct Common {
    /// A running gateway (`127.0.0.1:8080` or `http://127.0.0.1:8080`).
    #[arg(long, value_name = "ADDR", conflicts_with = "spawn")]
    url: Option<String>,
    /// The running gateway's process id, for its memory and CPU.
    #[arg(long, value_name = "PID")]
    gateway_pid: Option<u32>,
    /// Start this ai-gateway binary with the benchmark settings instead of using --url.
    #[arg(long, value_name = "PATH_TO_AI_GATEWAY")]
    spawn: Option<PathBuf>,
    /// Also print the results as JSON to this file (`-` for stdout).
    #[arg(long, value_name = "FILE")]
    json: Option<String>,
}

#[derive(Subcommand)]
enum Scenario {
    /// Open N authenticated sessions and hold them: connect rate, gateway RSS per session, idle CPU.
    Idle {
        #[command(flatten)]
        common: Common,
        #[arg(long, default_value_t = 1000)]
        sessions: usize,
        #[arg(long, default_value_t = 10)]
        hold_secs: u64,
        /// Spread the sessions over this many spawned gateway nodes sharing Redis (needs --spawn);
        /// each node gets a load-generator process of its own.
        #[arg(long, default_value_t = 1)]
        nodes: usize,
        #[arg(long, default_value = "redis://127.0.0.1:6379/")]
        redis_url: String,
        /// First loopback source address, 127.0.0.N.
        #[arg(long, default_value_t = 1)]
        source_base: u8,
    },
    /// Idle sessions over N spawned nodes sharing Redis and PostgreSQL, held by several
    /// load-generator processes; then every session listed through the admin API, an admin kill
    /// of a user and a token revoke with sessions on every node (request to close frame at each
    /// client), and Redis memory and commands per session.
    Cluster {
        /// The ai-gateway binary to start N times.
        #[arg(long, value_name = "PATH_TO_AI_GATEWAY")]
        spawn: PathBuf,
        #[arg(long, default_value_t = 2)]
        nodes: usize,
        /// Idle sessions of one bulk user, spread evenly over the nodes.
        #[arg(long, default_value_t = 1000)]
        sessions: usize,
        /// Sessions per node of the user the admin kills, and as many of the token revoked.
        #[arg(long, default_value_t = 50)]
        control_per_node: usize,
        /// Kills (and revokes), each of a user (token) of its own with sessions on every node.
        #[arg(long, default_value_t = 1)]
        rounds: usize,
        #[arg(long, default_value_t = 10)]
        hold_secs: u64,
        /// Most sockets one load-generator process opens (its open-file limit is ~20,000).
        #[arg(long, default_value_t = 17_000)]
        per_process: usize,
        /// Page size of the admin listing (the API's largest is 1000).
        #[arg(long, default_value_t = 1000)]
        page_limit: usize,
        #[arg(long, default_value = "redis://127.0.0.1:6379/")]
        redis_url: String,
        /// A PostgreSQL database the nodes share (created beforehand, e.g. `createdb agw_bench`).
        #[arg(long, default_value = "postgres://postgres@127.0.0.1:5432/agw_bench")]
        database_url: String,
        /// Pin the gateways to these CPUs (`0`, `0-1`, `0,1`).
        #[arg(long, value_name = "CPUS")]
        gateway_cpus: Option<String>,
        /// Pin the load generators to these CPUs.
        #[arg(long, value_name = "CPUS")]
        client_cpus: Option<String>,
        /// Wait this long for the close frames after the kill and after the revoke.
        #[arg(long, default_value_t = 2)]
        settle_secs: u64,
        /// Handshakes in flight per load generator.
        #[arg(long, default_value_t = 100)]
        connect_concurrency: usize,
        /// Also print the results as JSON to this file (`-` for stdout).
        #[arg(long, value_name = "FILE")]
        json: Option<String>,
    },
    /// One load generator of `cluster` (started by it; talks over stdin and stdout).
    #[command(hide = true)]
    ClusterChild {
        #[arg(long)]
        url: String,
        #[arg(long, default_value_t = 1)]
        source_base: u8,
        #[arg(long, default_value_t = 100)]
        connect_concurrency: usize,
        /// JSON: [{kind, count, token}]
        #[arg(long)]
        groups: String,
    },
    /// S sessions streaming answers from the zero-delay mock: chunk rate, gaps, loss, order.
    Stream {
        #[command(flatten)]
        common: Common,
        #[arg(long, default_value_t = 100)]
        sessions: usize,
        #[arg(long, default_value_t = 10)]
        secs: u64,
        /// GATEWAY_MOCK__TEXT_REPEAT for a spawned gateway (longer answers).
        #[arg(long, default_value_t = 1)]
        mock_text_repeat: u32,
    },
    /// Time to first chunk and chunk gap added by the gateway, against the fake upstream.
    Overhead {
        #[command(flatten)]
        common: Common,
        #[arg(long, value_delimiter = ',', default_value = "1,100,1000")]
        concurrency: Vec<usize>,
        /// Seconds per side and concurrency.
        #[arg(long, default_value_t = 5)]
        secs: u64,
        /// A fake upstream already running (`http://ADDR`), the one the gateway routes `fake` to.
        #[arg(long)]
        upstream: Option<String>,
        /// Requests per second in all, on each side (the workers take turns): both sides then
        /// carry the same load, below what saturates either. Without it, each worker sends its
        /// next request as soon as an answer ends.
        #[arg(long)]
        rate: Option<f64>,
    },
    /// New authenticated WebSocket sessions per second.
    Handshake {
        #[command(flatten)]
        common: Common,
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
        #[arg(long, default_value_t = 10)]
        secs: u64,
    },
    /// Answers cut at a random chunk and resumed on another node: lost and duplicated chunks,
    /// resume latency, Redis cost per chunk. Spawns two nodes sharing PostgreSQL and Redis.
    Resume {
        #[command(flatten)]
        common: Common,
        #[arg(long, default_value_t = 50)]
        sessions: usize,
        #[arg(long, default_value_t = 1000)]
        cuts: usize,
        /// A cut comes after 1 to this many chunks.
        #[arg(long, default_value_t = 40)]
        max_chunks_before_cut: u64,
        /// The mock's pause between chunks, in ms (an answer is about 80 chunks).
        #[arg(long, default_value_t = 2)]
        chunk_delay_ms: u64,
        #[arg(long, default_value = "redis://127.0.0.1:6379/")]
        redis_url: String,
        /// A PostgreSQL database both nodes share (created beforehand, e.g. `createdb agw_bench`).
        #[arg(long, default_value = "postgres://postgres@127.0.0.1:5432/agw_bench")]
        database_url: String,
    },
    /// N streams over T, one connection each, with random cancels, disconnects and stalled
    /// readers: gateway RSS at start and end, errors, sessions left behind (from /metrics). A
    /// spawned gateway's mock takes about a second an answer; answers whose client left are
    /// cancelled after 1 s (resume.grace_ms).
    Soak {
        #[command(flatten)]
        common: Common,
        #[arg(long, default_value_t = 10_000)]
        streams: usize,
        #[arg(long, default_value_t = 600)]
        secs: u64,
        /// Wait after the last stream before counting what the gateway still holds.
        #[arg(long, default_value_t = 10)]
        settle_secs: u64,
    },
    /// A TCP forwarder that only copies bytes, on one thread: pinned where the gateway runs, the
    /// overhead scenario's direct side through it gives the floor any forwarder adds
    /// (scripts/bench-floor).
    Forward {
        /// Where to listen (IP:PORT).
        #[arg(long)]
        listen: String,
        /// Where to connect each accepted connection (IP:PORT).
        #[arg(long)]
        to: String,
    },
    /// Streaming POST /v1/chat/completions per second, direct to the fake and through the gateway.
    Http {
        #[command(flatten)]
        common: Common,
        #[arg(long, default_value_t = 50)]
        concurrency: usize,
        #[arg(long, default_value_t = 10)]
        secs: u64,
        #[arg(long)]
        upstream: Option<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    raise_nofile_limit();
    if let Scenario::Forward { listen, to } = &cli.scenario {
        // One thread, like the gateway under the pinned benchmarks (GATEWAY_WORKERS=1).
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime");
        // It forwards until killed: it only returns on an error.
        if let Err(e) = runtime.block_on(gateway_bench::forward::run(listen, to)) {
            eprintln!("gateway-bench: {e}");
        }
        return ExitCode::FAILURE;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    match runtime.block_on(run(cli.scenario)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("gateway-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Each connection is a file; take every one the hard limit allows.
fn raise_nofile_limit() {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) if n < 20_000 => {
            eprintln!("gateway-bench: open-file limit is {n}; large idle runs will fail")
        }
        Ok(_) => {}
        Err(e) => eprintln!("gateway-bench: cannot raise the open-file limit: {e}"),
    }
}

/// The gateway to measure: the one at --url, or one started now with `extra_env`.
async fn target(
    common: &Common,
    env: Vec<(String, String)>,
) -> Result<(Target, Option<SpawnedGateway>), BenchError> {
    if let Some(binary) = &common.spawn {
        let gw = SpawnedGateway::start(binary, &env).await?;
        eprintln!(
            "[bench] spawned {} (pid {}) on {}",
            binary.display(),
            gw.pid,
            gw.addr
        );
        let t = Target {
            addr: gw.addr,
            pid: Some(gw.pid),
        };
        return Ok((t, Some(gw)));
    }
    let url = common.url.as_deref().unwrap_or("127.0.0.1:8080");
    let addr = url
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .parse::<SocketAddr>()
        .map_err(|e| BenchError::Io(format!("--url {url}: {e} (give IP:PORT)")))?;
    Ok((
        Target {
            addr,
            pid: common.gateway_pid,
        },
        None,
    ))
}

fn emit(common: &Common, reports: &[Report]) -> Result<(), BenchError> {
    for r in reports {
        print!("{}", r.table());
    }
    if let Some(path) = &common.json {
        let json = serde_json::to_string_pretty(reports).expect("reports serialize");
        if path == "-" {
            println!("{json}");
        } else {
            std::fs::write(path, json)?;
        }
    }
    Ok(())
}

async fn run(scenario: Scenario) -> Result<(), BenchError> {
    match scenario {
        Scenario::Cluster {
            spawn,
            nodes,
            sessions,
            control_per_node,
            rounds,
            hold_secs,
            per_process,
            page_limit,
            redis_url,
            database_url,
            gateway_cpus,
            client_cpus,
            settle_secs,
            connect_concurrency,
            json,
        } => {
            let opts = ClusterOptions {
                binary: spawn.clone(),
                nodes,
                sessions,
                control_per_node,
                rounds,
                hold: Duration::from_secs(hold_secs),
                per_process,
                page_limit,
                redis_url,
                database_url,
                gateway_cpus,
                client_cpus,
                settle: Duration::from_secs(settle_secs),
                connect_concurrency,
            };
            let r = cluster::run(&opts).await?;
            let common = Common {
                url: None,
                gateway_pid: None,
                spawn: Some(spawn),
                json,
            };
            emit(&common, &[r])
        }
        Scenario::ClusterChild {
            url,
            source_base,
            connect_concurrency,
            groups,
        } => {
            let target = cluster::parse_target(&url)?;
            let groups: Vec<cluster::Group> = serde_json::from_str(&groups)
                .map_err(|e| BenchError::Io(format!("--groups: {e}")))?;
            cluster::child(&target, &groups, source_base, connect_concurrency).await
        }
        Scenario::Idle {
            common,
            sessions,
            hold_secs,
            nodes,
            redis_url,
            source_base,
        } => {
            let opts = IdleOptions {
                sessions,
                hold: Duration::from_secs(hold_secs),
                source_base,
                ..IdleOptions::default()
            };
            if nodes > 1 {
                let reports = idle_nodes(&common, &opts, nodes, &redis_url).await?;
                return emit(&common, &reports);
            }
            let (t, gw) = target(&common, process::bench_env(1)).await?;
            let r = idle::run(&t, &opts).await;
            stop(gw).await;
            emit(&common, &[r?])
        }
        Scenario::Stream {
            common,
            sessions,
            secs,
            mock_text_repeat,
        } => {
            let (t, gw) = target(&common, process::bench_env(mock_text_repeat)).await?;
            let opts = StreamOptions {
                sessions,
                duration: Duration::from_secs(secs),
                ..StreamOptions::default()
            };
            let r = stream::run(&t, &opts).await;
            stop(gw).await;
            emit(&common, &[r?])
        }
        Scenario::Resume {
            common,
            sessions,
            cuts,
            max_chunks_before_cut,
            chunk_delay_ms,
            redis_url,
            database_url,
        } => {
            if common.spawn.is_none() {
                return Err(BenchError::Io(
                    "resume needs --spawn (it starts two nodes)".into(),
                ));
            }
            let prefix = format!("bench-{:08x}:", rand::random::<u32>());
            let secret = format!("bench-secret-{:032x}", rand::random::<u128>());
            let delay = format!("[{chunk_delay_ms},{chunk_delay_ms}]");
            let mut env = process::bench_env(1);
            env.extend(
                [
                    ("REDIS_URL", redis_url.clone()),
                    ("DATABASE_URL", database_url),
                    ("GATEWAY_REDIS_PREFIX", prefix.clone()),
                    ("GATEWAY_JWT_SECRET", secret),
                    ("GATEWAY_MOCK__TEXT_DELAY_MS", delay.clone()),
                    ("GATEWAY_MOCK__REASONING_DELAY_MS", delay),
                ]
                .map(|(k, v)| (k.to_owned(), v)),
            );
            let (a, gw_a) = target(&common, env.clone()).await?;
            let (b, gw_b) = target(&common, env).await?;
            let opts = ResumeOptions {
                sessions,
                cuts,
                max_chunks_before_cut,
                redis_url,
                redis_prefix: prefix,
            };
            let r = resume::run([&a, &b], &opts).await;
            stop(gw_a).await;
            stop(gw_b).await;
            emit(&common, &[r?])
        }
        Scenario::Soak {
            common,
            streams,
            secs,
            settle_secs,
        } => {
            let mut env = process::bench_env(1);
            env.extend(
                [
                    ("GATEWAY_MOCK__TEXT_DELAY_MS", "[5,15]"),
                    ("GATEWAY_MOCK__REASONING_DELAY_MS", "[2,5]"),
                    ("GATEWAY_RESUME__GRACE_MS", "1000"),
                ]
                .map(|(k, v)| (k.to_owned(), v.to_owned())),
            );
            let (t, gw) = target(&common, env).await?;
            let opts = SoakOptions {
                streams,
                duration: Duration::from_secs(secs),
                settle: Duration::from_secs(settle_secs),
                ..SoakOptions::default()
            };
            let r = soak::run(&t, &opts).await;
            stop(gw).await;
            emit(&common, &[r?])
        }
        Scenario::Handshake {
            common,
            concurrency,
            secs,
        } => {
            let (t, gw) = target(&common, process::bench_env(1)).await?;
            let opts = HandshakeOptions {
                concurrency,
                duration: Duration::from_secs(secs),
            };
            let r = handshake::run(&t, &opts).await;
            stop(gw).await;
            emit(&common, &[r?])
        }
        Scenario::Overhead {
            common,
            concurrency,
            secs,
            upstream,
            rate,
        } => {
            let opts = OverheadOptions {
                concurrencies: concurrency,
                level_duration: Duration::from_secs(secs),
                rate,
            };
            with_upstream(&common, upstream, |t, up| async move {
                overhead::run(&t, &up, &opts).await
            })
            .await
        }
        Scenario::Forward { .. } => unreachable!("main runs the forwarder on a runtime of its own"),
        Scenario::Http {
            common,
            concurrency,
            secs,
            upstream,
        } => {
            let opts = HttpOptions {
                concurrency,
                duration: Duration::from_secs(secs),
            };
            with_upstream(&common, upstream, |t, up| async move {
                http::run(&t, &up, &opts).await
            })
            .await
        }
    }
}

async fn stop(gw: Option<SpawnedGateway>) {
    if let Some(gw) = gw {
        gw.stop().await;
    }
}

/// Runs `f` with the fake upstream (the given one, or one started in this process) and a gateway
/// routing model `fake` to it. A spawned gateway that refuses the route settings (built before
/// issue 4) is started without them, so the direct half is still measured.
async fn with_upstream<F, Fut>(
    common: &Common,
    upstream: Option<String>,
    f: F,
) -> Result<(), BenchError>
where
    F: FnOnce(Target, String) -> Fut,
    Fut: std::future::Future<Output = Result<Report, BenchError>>,
{
    let local = match upstream {
        Some(_) => None,
        None => Some(LocalUpstream::start(2)?),
    };
    let base = match (&upstream, &local) {
        (Some(u), _) => u.trim_end_matches('/').trim_end_matches("/v1").to_owned(),
        (None, Some(l)) => format!("http://{}", l.addr),
        (None, None) => unreachable!("one of them is set"),
    };
    let mut env = process::bench_env(1);
    env.extend(process::fake_route_env(
        &format!("{base}/v1"),
        http::UPSTREAM_MODEL,
    ));
    let (t, gw, refused) = match target(common, env).await {
        Ok((t, gw)) => (t, gw, None),
        Err(e) if common.spawn.is_some() => {
            eprintln!("[bench] the gateway refused the route to the fake upstream; starting it without: {e}");
            let (t, gw) = target(common, process::bench_env(1)).await?;
            (t, gw, Some(e))
        }
        Err(e) => return Err(e),
    };
    let r = f(t, base).await;
    stop(gw).await;
    let mut r = r?;
    if let Some(e) = refused {
        r.note(format!(
            "the spawned gateway refused GATEWAY_PROVIDERS__FAKE__* (build from main with issue 4): {e}"
        ));
    }
    emit(common, &[r])
}

/// Idle sessions over several spawned nodes sharing Redis, one load-generator process per node
/// (each process may hold only ~20,000 files). Each node keeps its users in memory, so every
/// child registers and logs in on its own node.
async fn idle_nodes(
    common: &Common,
    opts: &IdleOptions,
    nodes: usize,
    redis_url: &str,
) -> Result<Vec<Report>, BenchError> {
    if common.spawn.is_none() {
        return Err(BenchError::Io("--nodes needs --spawn".into()));
    }
    let prefix = format!("bench-{:08x}:", rand::random::<u32>());
    let secret = format!("bench-secret-{:032x}", rand::random::<u128>());
    let mut env = process::bench_env(1);
    env.push(("REDIS_URL".into(), redis_url.into()));
    env.push(("GATEWAY_REDIS_PREFIX".into(), prefix));
    env.push(("GATEWAY_JWT_SECRET".into(), secret));
    let mut gateways = Vec::new();
    for _ in 0..nodes {
        let (t, gw) = target(common, env.clone()).await?;
        gateways.push((t, gw.expect("spawned")));
    }
    let me = std::env::current_exe()?;
    let per_node = opts.sessions.div_ceil(nodes);
    let mut children = Vec::new();
    for (i, (t, _)) in gateways.iter().enumerate() {
        let child = tokio::process::Command::new(&me)
            .args(["idle", "--json", "-"])
            .args(["--url", &t.addr.to_string()])
            .args(["--gateway-pid", &t.pid.unwrap_or(0).to_string()])
            .args(["--sessions", &per_node.to_string()])
            .args(["--hold-secs", &opts.hold.as_secs().to_string()])
            // Eight loopback addresses per node: 120,000 connections of room each.
            .args([
                "--source-base",
                &(opts.source_base as usize + 8 * i).min(250).to_string(),
            ])
            .stdout(std::process::Stdio::piped())
            .spawn()?;
        children.push(child);
    }
    let mut reports = Vec::new();
    let mut total = Report::new(&format!("idle total over {nodes} nodes"));
    let (mut open, mut grown, mut cpu) = (0.0, 0.0, 0.0);
    for (i, child) in children.into_iter().enumerate() {
        let out = child.wait_with_output().await?;
        let text = String::from_utf8_lossy(&out.stdout);
        let json = &text[text.find("\n[").map(|p| p + 1).unwrap_or(0)..];
        let mut r: Vec<Report> = serde_json::from_str(json)
            .map_err(|e| BenchError::Io(format!("node {i}'s load generator: {e}: {text}")))?;
        let mut r = r.remove(0);
        r.scenario = format!("idle node {}", i + 1);
        let n = r.get("sessions open").unwrap_or(0.0);
        open += n;
        grown += r.get("gateway RSS per session").unwrap_or(0.0) * n;
        cpu += r.get("gateway CPU while idle").unwrap_or(0.0);
        reports.push(r);
    }
    total.add("sessions requested", opts.sessions as f64, "");
    total.add("sessions open", open, "");
    total.add("gateway RSS growth", grown / 1024.0, "MiB");
    total.add("gateway RSS per session", grown / open.max(1.0), "KiB");
    total.add("gateway CPU while idle", cpu, "% of one core");
    reports.push(total);
    for (_, gw) in gateways {
        gw.stop().await;
    }
    Ok(reports)
}
