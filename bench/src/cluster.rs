//! **cluster**: idle sessions spread over several spawned nodes sharing Redis and PostgreSQL,
//! held by several load-generator processes (each may hold only ~20,000 files); then the whole
//! directory listed through the admin API, an admin kill of a user with sessions on every node
//! and a token revoke whose sessions are on every node, timed from the HTTP request to the close
//! frame at each client; Redis memory and commands per session.
//!
//! The parent process ([`run`]) starts the nodes and the load generators; each load generator is
//! this binary again (`gateway-bench cluster-child`, [`child`]), talking to the parent over its
//! stdin and stdout. Close frames are stamped with the wall clock (all processes share the
//! machine's), so the parent can subtract its own request time.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::PathBuf,
    process::Stdio,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use futures_util::{stream, StreamExt};
use serde::{Deserialize, Serialize};
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
    process::{Child, ChildStdin, Command},
    sync::watch,
};
use tokio_tungstenite::tungstenite::Message;

use crate::{
    client::{self, BenchError, Target},
    process::{self, ProcStats, SpawnedGateway},
    report::{self, Report},
};

/// The close reason of the bench's admin kill.
pub const KILL_REASON: &str = "bench kill";
/// What the gateway says when it closes a session whose token was revoked.
pub const REVOKE_REASON: &str = "token revoked";
const PASSWORD: &str = "bench-password-0123";
/// Ends of bulk sessions kept in detail (the rest are only counted).
const MAX_BULK_ENDS: usize = 20;

#[derive(Debug, Clone)]
pub struct ClusterOptions {
    pub binary: PathBuf,
    pub nodes: usize,
    /// Idle sessions of the bulk user, spread evenly over the nodes.
    pub sessions: usize,
    /// Sessions per node of the user the admin kills, and as many of the token that is revoked.
    pub control_per_node: usize,
    /// Kills and revokes, each of a user (token) of its own with sessions on every node.
    pub rounds: usize,
    pub hold: Duration,
    /// Most sockets one load-generator process opens.
    pub per_process: usize,
    /// Page size of the admin listing.
    pub page_limit: usize,
    pub redis_url: String,
    pub database_url: String,
    /// CPUs for the gateways (`0`, `0-1`, `0,1`), set with sched_setaffinity; none: not pinned.
    pub gateway_cpus: Option<String>,
    /// CPUs for the load generators.
    pub client_cpus: Option<String>,
    /// How long to wait for the close frames after each control request.
    pub settle: Duration,
    /// Handshakes in flight per load generator.
    pub connect_concurrency: usize,
}

/// One kind of session a load generator holds: `count` sessions opened with `token`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Group {
    pub kind: String,
    pub count: usize,
    pub token: String,
}

/// What a load generator reports once its sessions are open.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Ready {
    pub open: BTreeMap<String, usize>,
    pub failed: usize,
    /// Handshakes tried again after a failure.
    pub retried: usize,
    pub first_error: Option<String>,
    pub connect_secs: f64,
}

/// A session that ended before the load generator was told to stop.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct End {
    /// Wall clock, unix microseconds, when the close frame (or the loss) was seen.
    pub at_us: u64,
    /// 0 when the connection ended without a close frame.
    pub code: u16,
    pub reason: String,
}

/// What a load generator reports at the end.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Done {
    /// Ends by kind (bulk: only the first few).
    pub ends: BTreeMap<String, Vec<End>>,
    /// Ends by kind, all of them counted.
    pub ended: BTreeMap<String, usize>,
}

fn unix_us(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).unwrap_or_default().as_micros() as u64
}

/// Pins `pid` to `cpus` (`0`, `0-1`, `0,2`).
pub fn pin(pid: u32, cpus: &str) -> Result<(), BenchError> {
    // SAFETY: a zeroed cpu_set_t is the empty set; CPU_SET and sched_setaffinity only read and
    // write it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for part in cpus.split(',').filter(|p| !p.is_empty()) {
            let (a, b) = part.split_once('-').unwrap_or((part, part));
            let parse = |s: &str| {
                s.trim()
                    .parse::<usize>()
                    .map_err(|e| BenchError::Io(format!("cpu list {cpus}: {e}")))
            };
            for cpu in parse(a)?..=parse(b)? {
                libc::CPU_SET(cpu, &mut set);
            }
        }
        if libc::sched_setaffinity(pid as i32, std::mem::size_of_val(&set), &set) != 0 {
            return Err(BenchError::Io(format!(
                "pinning {pid} to {cpus}: {}",
                std::io::Error::last_os_error()
            )));
        }
        // Threads already started keep their old mask: pin every one of them.
        if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
            for task in tasks.flatten() {
                if let Some(tid) = task
                    .file_name()
                    .to_str()
                    .and_then(|t| t.parse::<i32>().ok())
                {
                    libc::sched_setaffinity(tid, std::mem::size_of_val(&set), &set);
                }
            }
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The load generator.

/// Opens `groups` against `target`, prints `ready <json>`, holds them until a line arrives on
/// stdin (or stdin closes), closes them and prints `done <json>`.
pub async fn child(
    target: &Target,
    groups: &[Group],
    source_base: u8,
    connect_concurrency: usize,
) -> Result<(), BenchError> {
    let (stop_tx, stop_rx) = watch::channel(false);
    let ends: Arc<Mutex<Done>> = Arc::default();
    let opened = Arc::new(AtomicU64::new(0));
    let retried = Arc::new(AtomicU64::new(0));
    let jobs: Vec<(usize, &Group)> = groups
        .iter()
        .flat_map(|g| (0..g.count).map(move |_| g))
        .enumerate()
        .collect();
    let started = Instant::now();
    let results: Vec<(String, Result<tokio::task::JoinHandle<()>, BenchError>)> =
        stream::iter(jobs)
            .map(|(i, g)| {
                let (mut stop, ends, opened) = (stop_rx.clone(), ends.clone(), opened.clone());
                let source = client::source_addr(source_base, i);
                let kind = g.kind.clone();
                let retried = retried.clone();
                async move {
                    // A gateway on a starved core may answer a handshake with 408 (its request
                    // timeout); try such a session again, twice at most, and count it.
                    let mut ws = client::connect(target, &g.token, Some(source)).await;
                    for _ in 0..2 {
                        if ws.is_ok() {
                            break;
                        }
                        retried.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_millis(500)).await;
                        ws = client::connect(target, &g.token, Some(source)).await;
                    }
                    let held = ws.map(|mut ws| {
                        opened.fetch_add(1, Ordering::Relaxed);
                        let kind = g.kind.clone();
                        tokio::spawn(async move {
                            let end = loop {
                                tokio::select! {
                                    msg = ws.next() => match msg {
                                        Some(Ok(Message::Close(frame))) => {
                                            let at_us = unix_us(SystemTime::now());
                                            let (code, reason) = frame
                                                .map(|f| (u16::from(f.code), f.reason.to_string()))
                                                .unwrap_or((1005, String::new()));
                                            break Some(End { at_us, code, reason });
                                        }
                                        None | Some(Err(_)) => break Some(End {
                                            at_us: unix_us(SystemTime::now()),
                                            code: 0,
                                            reason: "connection lost without a close frame".into(),
                                        }),
                                        Some(Ok(_)) => continue,
                                    },
                                    _ = stop.changed() => break None,
                                }
                            };
                            match end {
                                Some(end) => {
                                    {
                                        let mut done = ends.lock().expect("ends");
                                        *done.ended.entry(kind.clone()).or_default() += 1;
                                        let list = done.ends.entry(kind.clone()).or_default();
                                        if kind != "bulk" || list.len() < MAX_BULK_ENDS {
                                            list.push(end);
                                        }
                                    }
                                    // Finish the close handshake the gateway started.
                                    let _ = tokio::time::timeout(Duration::from_secs(2), async {
                                        while let Some(Ok(_)) = ws.next().await {}
                                    })
                                    .await;
                                }
                                None => client::close(ws).await,
                            }
                        })
                    });
                    (kind, held)
                }
            })
            .buffer_unordered(connect_concurrency.max(1))
            .collect()
            .await;
    let mut ready = Ready {
        connect_secs: started.elapsed().as_secs_f64(),
        retried: retried.load(Ordering::Relaxed) as usize,
        ..Ready::default()
    };
    let mut holders = Vec::with_capacity(results.len());
    for (kind, r) in results {
        match r {
            Ok(h) => {
                *ready.open.entry(kind).or_default() += 1;
                holders.push(h);
            }
            Err(e) => {
                ready.failed += 1;
                ready.first_error.get_or_insert(e.to_string());
            }
        }
    }
    println!(
        "ready {}",
        serde_json::to_string(&ready).expect("ready serializes")
    );
    // One line (or the end) on stdin: the parent says stop.
    let _ = tokio::task::spawn_blocking(|| std::io::stdin().read_line(&mut String::new())).await;
    let _ = stop_tx.send(true);
    for h in holders {
        let _ = h.await;
    }
    let done = std::mem::take(&mut *ends.lock().expect("ends"));
    println!(
        "done {}",
        serde_json::to_string(&done).expect("done serializes")
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The parent.

/// A load-generator process and the lines it prints.
struct Generator {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
}

impl Generator {
    /// The next line starting with `tag`, its JSON parsed.
    async fn expect<T: serde::de::DeserializeOwned>(
        &mut self,
        tag: &str,
        within: Duration,
    ) -> Result<T, BenchError> {
        let read = async {
            while let Some(line) = self.lines.next_line().await? {
                if let Some(json) = line.strip_prefix(tag) {
                    return serde_json::from_str(json.trim())
                        .map_err(|e| BenchError::Io(format!("load generator: {e}: {line}")));
                }
            }
            Err(BenchError::Io(format!(
                "a load generator ended before `{tag}`"
            )))
        };
        tokio::time::timeout(within, read)
            .await
            .map_err(|_| BenchError::Io(format!("no `{tag}` from a load generator in time")))?
    }
}

struct Redis {
    conn: redis::aio::MultiplexedConnection,
}

impl Redis {
    async fn info_field(&mut self, section: &str, field: &str) -> Result<u64, BenchError> {
        let info: String = redis::cmd("INFO")
            .arg(section)
            .query_async(&mut self.conn)
            .await
            .map_err(|e| BenchError::Io(format!("redis INFO: {e}")))?;
        info.lines()
            .find_map(|l| l.strip_prefix(&format!("{field}:")))
            .and_then(|v| v.trim().parse().ok())
            .ok_or_else(|| BenchError::Io(format!("redis INFO {section} has no {field}")))
    }

    /// Sessions the directory holds: the sizes of every node's hash (`node-sessions:{node}`).
    async fn directory_entries(&mut self, prefix: &str) -> Result<u64, BenchError> {
        let err = |e: redis::RedisError| BenchError::Io(format!("redis directory: {e}"));
        let nodes: Vec<String> = redis::cmd("ZRANGE")
            .arg(format!("{prefix}nodes"))
            .arg(0)
            .arg(-1)
            .query_async(&mut self.conn)
            .await
            .map_err(err)?;
        let mut pipe = redis::pipe();
        for node in &nodes {
            pipe.hlen(format!("{prefix}node-sessions:{node}"));
        }
        let sizes: Vec<u64> = pipe.query_async(&mut self.conn).await.map_err(err)?;
        Ok(sizes.iter().sum())
    }
}

/// Registers `name` through `target` and logs in: its user id and token.
async fn account(
    http: &reqwest::Client,
    target: &Target,
    name: &str,
) -> Result<(String, String), BenchError> {
    let body = serde_json::json!({"username": name, "password": PASSWORD});
    let mut user_id = String::new();
    for path in ["/register", "/login"] {
        let res = http.post(target.url(path)).json(&body).send().await?;
        let status = res.status().as_u16();
        let value: serde_json::Value = res.json().await.unwrap_or_default();
        if status != 200 {
            return Err(BenchError::Gateway(format!(
                "POST {path} answered {status}: {value}"
            )));
        }
        if let Some(id) = value["user_id"].as_str() {
            user_id = id.to_owned();
        }
        if let Some(token) = value["token"].as_str() {
            return Ok((user_id, token.to_owned()));
        }
    }
    Err(BenchError::Gateway("POST /login gave no token".into()))
}

/// Lists every session through `GET /admin/sessions`, page after page: the time it took, the
/// pages, the entries read and the total the first page announced.
async fn list_all(
    http: &reqwest::Client,
    target: &Target,
    admin_token: &str,
    limit: usize,
) -> Result<(Duration, Duration, usize, usize, usize), BenchError> {
    let started = Instant::now();
    let mut first_page = None;
    let (mut pages, mut read, mut total) = (0, 0, 0);
    loop {
        let url = target.url(&format!("/admin/sessions?offset={read}&limit={limit}"));
        let res = http.get(url).bearer_auth(admin_token).send().await?;
        let status = res.status().as_u16();
        let value: serde_json::Value = res.json().await?;
        if status != 200 {
            return Err(BenchError::Gateway(format!(
                "GET /admin/sessions answered {status}: {value}"
            )));
        }
        pages += 1;
        first_page.get_or_insert(started.elapsed());
        if pages == 1 {
            total = value["total"].as_u64().unwrap_or(0) as usize;
        }
        let n = value["sessions"].as_array().map_or(0, Vec::len);
        read += n;
        if n < limit || read >= total {
            break;
        }
    }
    Ok((
        started.elapsed(),
        first_page.unwrap_or_default(),
        pages,
        read,
        total,
    ))
}

/// Closes seen for one control request, and what they say about it.
fn control_figures(
    r: &mut Report,
    name: &str,
    reason: &str,
    expected: usize,
    sent_at: SystemTime,
    ends: &[End],
) {
    let t0 = unix_us(sent_at);
    let mut h = report::histogram();
    let (mut closed, mut early, mut other) = (0, 0, 0);
    for e in ends {
        if e.at_us <= t0 {
            early += 1;
        } else if e.code == 1008 && e.reason == reason {
            closed += 1;
            report::record(&mut h, Duration::from_micros(e.at_us - t0));
        } else {
            other += 1;
        }
    }
    r.add(format!("{name} sessions"), expected as f64, "");
    r.add(format!("{name} closed (1008)"), closed as f64, "");
    if !h.is_empty() {
        let ms = |us: u64| us as f64 / 1000.0;
        r.add(
            format!("{name} close p50"),
            ms(h.value_at_quantile(0.50)),
            "ms",
        );
        r.add(
            format!("{name} close p95"),
            ms(h.value_at_quantile(0.95)),
            "ms",
        );
        r.add(
            format!("{name} close p99"),
            ms(h.value_at_quantile(0.99)),
            "ms",
        );
        r.add(format!("{name} close max"), ms(h.max()), "ms");
    }
    if early > 0 {
        r.note(format!("{name}: {early} sessions ended before the request"));
    }
    if other > 0 {
        r.note(format!(
            "{name}: {other} sessions ended otherwise (not 1008 {reason:?})"
        ));
    }
    if closed + early + other < expected {
        r.note(format!(
            "{name}: {} sessions never closed",
            expected - closed - early - other
        ));
    }
}

pub async fn run(opts: &ClusterOptions) -> Result<Report, BenchError> {
    let nodes = opts.nodes.max(1);
    let prefix = format!("bench-{:08x}:", rand::random::<u32>());
    let secret = format!("bench-secret-{:032x}", rand::random::<u128>());
    let admin_token = format!("bench-admin-{:032x}", rand::random::<u128>());
    let redis_client = redis::Client::open(opts.redis_url.as_str())
        .map_err(|e| BenchError::Io(format!("redis: {e}")))?;
    let mut redis = Redis {
        // Redis may be busy with a refresh of 100,000 entries: wait longer than the default 0.5 s.
        conn: redis_client
            .get_multiplexed_async_connection_with_config(
                &redis::AsyncConnectionConfig::new()
                    .set_response_timeout(Some(Duration::from_secs(30))),
            )
            .await
            .map_err(|e| BenchError::Io(format!("redis {}: {e}", opts.redis_url)))?,
    };
    let mut r = Report::new(&format!("cluster over {nodes} nodes"));
    r.note(format!("load average at start: {}", loadavg()));
    let mut env = process::bench_env(1);
    env.extend(
        [
            ("REDIS_URL", opts.redis_url.clone()),
            ("DATABASE_URL", opts.database_url.clone()),
            ("GATEWAY_REDIS_PREFIX", prefix.clone()),
            ("GATEWAY_JWT_SECRET", secret),
            ("GATEWAY_ADMIN_TOKEN", admin_token.clone()),
        ]
        .map(|(k, v)| (k.to_owned(), v)),
    );
    let mut gateways: Vec<SpawnedGateway> = Vec::new();
    for i in 0..nodes {
        let mut env = env.clone();
        env.push(("GATEWAY_NODE_ID".into(), format!("bench-node-{}", i + 1)));
        let gw = SpawnedGateway::start(&opts.binary, &env).await?;
        if let Some(cpus) = &opts.gateway_cpus {
            pin(gw.pid, cpus)?;
        }
        eprintln!("[cluster] node {} pid {} on {}", i + 1, gw.pid, gw.addr);
        gateways.push(gw);
    }
    let targets: Vec<Target> = gateways
        .iter()
        .map(|g| Target {
            addr: g.addr,
            pid: Some(g.pid),
        })
        .collect();
    let result = drive(opts, &targets, &admin_token, &prefix, &mut redis, &mut r).await;
    r.note(format!("load average at end: {}", loadavg()));
    for gw in gateways {
        gw.stop().await;
    }
    result.map(|()| r)
}

async fn drive(
    opts: &ClusterOptions,
    targets: &[Target],
    admin_token: &str,
    prefix: &str,
    redis: &mut Redis,
    r: &mut Report,
) -> Result<(), BenchError> {
    let nodes = targets.len();
    let http = client::http_client();
    let tag = format!("{:08x}", rand::random::<u32>());
    let (_, bulk_token) = account(&http, &targets[0], &format!("bench-bulk-{tag}")).await?;
    let rounds = opts.rounds.max(1);
    let mut kills = Vec::new();
    let mut revokes = Vec::new();
    for round in 0..rounds {
        kills.push(account(&http, &targets[0], &format!("bench-kill-{tag}-{round}")).await?);
        revokes.push(account(&http, &targets[0], &format!("bench-revoke-{tag}-{round}")).await?);
    }

    // Generators: at least one per node, each at most `per_process` sockets.
    let per_node_bulk = opts.sessions.div_ceil(nodes);
    let per_node_total = per_node_bulk + 2 * rounds * opts.control_per_node;
    let per_node_procs = per_node_total.div_ceil(opts.per_process.max(1)).max(1);
    let rss_start: Vec<Option<ProcStats>> = targets.iter().map(Target::stats).collect();
    let mem_start = redis.info_field("memory", "used_memory").await?;
    let me = std::env::current_exe()?;
    let mut generators = Vec::new();
    let share =
        |total: usize, parts: usize, i: usize| total / parts + usize::from(i < total % parts);
    for (n, t) in targets.iter().enumerate() {
        let node_bulk = share(opts.sessions, nodes, n);
        for p in 0..per_node_procs {
            let j = n * per_node_procs + p;
            let bulk = share(node_bulk, per_node_procs, p);
            let control = if p == 0 { opts.control_per_node } else { 0 };
            let mut groups = vec![Group {
                kind: "bulk".into(),
                count: bulk,
                token: bulk_token.clone(),
            }];
            for round in 0..rounds {
                groups.push(Group {
                    kind: format!("kill-{round}"),
                    count: control,
                    token: kills[round].1.clone(),
                });
                groups.push(Group {
                    kind: format!("revoke-{round}"),
                    count: control,
                    token: revokes[round].1.clone(),
                });
            }
            // Two loopback addresses per generator: 30,000 connections of room.
            let source_base = (1 + 2 * j).min(250);
            let mut child = Command::new(&me)
                .arg("cluster-child")
                .args(["--url", &t.addr.to_string()])
                .args(["--source-base", &source_base.to_string()])
                .args([
                    "--connect-concurrency",
                    &opts.connect_concurrency.to_string(),
                ])
                .args([
                    "--groups",
                    &serde_json::to_string(&groups).expect("groups serialize"),
                ])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .kill_on_drop(true)
                .spawn()?;
            if let (Some(cpus), Some(pid)) = (&opts.client_cpus, child.id()) {
                pin(pid, cpus)?;
            }
            let stdin = child.stdin.take();
            let lines = BufReader::new(child.stdout.take().expect("piped stdout")).lines();
            generators.push(Generator {
                child,
                stdin,
                lines,
            });
        }
    }
    eprintln!(
        "[cluster] {} load generators opening {} bulk + {rounds} x {} kill + {rounds} x {} revoke sessions",
        generators.len(),
        opts.sessions,
        nodes * opts.control_per_node,
        nodes * opts.control_per_node
    );
    let opening = Instant::now();
    let mut open: BTreeMap<String, usize> = BTreeMap::new();
    let (mut failed, mut retried) = (0, 0);
    for g in &mut generators {
        let ready: Ready = g.expect("ready", Duration::from_secs(1800)).await?;
        for (k, n) in ready.open {
            *open.entry(k).or_default() += n;
        }
        failed += ready.failed;
        retried += ready.retried;
        if let Some(e) = ready.first_error {
            r.note(format!("a load generator: first error: {e}"));
        }
    }
    let connect_secs = opening.elapsed().as_secs_f64();
    let total_open: usize = open.values().sum();
    r.add("nodes", nodes as f64, "");
    r.add("load generators", generators.len() as f64, "");
    r.add(
        "sessions requested",
        (opts.sessions + 2 * rounds * nodes * opts.control_per_node) as f64,
        "",
    );
    r.add("sessions open", total_open as f64, "");
    r.add("sessions failed", failed as f64, "");
    r.add("handshakes retried", retried as f64, "");
    r.add("connect time", connect_secs, "s");
    r.add(
        "connect rate",
        total_open as f64 / connect_secs,
        "sessions/s",
    );

    // Let every join reach the directory, then take the figures of the hold.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let listed_at_open = redis.directory_entries(prefix).await?;
    let cmds_before = redis
        .info_field("stats", "total_commands_processed")
        .await?;
    let hold_started = Instant::now();
    let rss_open: Vec<Option<ProcStats>> = targets.iter().map(Target::stats).collect();
    eprintln!(
        "[cluster] {total_open} sessions open; holding {:?}",
        opts.hold
    );
    tokio::time::sleep(opts.hold).await;
    let cmds_after = redis
        .info_field("stats", "total_commands_processed")
        .await?;
    let hold_secs = hold_started.elapsed().as_secs_f64();
    // At the end of the hold: joins dropped during the connect storm are back after a refresh.
    let listed_in_redis = redis.directory_entries(prefix).await?;
    let mem_open = redis.info_field("memory", "used_memory").await?;
    let rss_held: Vec<Option<ProcStats>> = targets.iter().map(Target::stats).collect();
    r.add("hold", hold_secs, "s");
    r.add(
        "directory entries 2 s after open",
        listed_at_open as f64,
        "",
    );
    r.add(
        "directory entries after the hold",
        listed_in_redis as f64,
        "",
    );
    let mem_growth = mem_open.saturating_sub(mem_start) as f64;
    r.add("Redis used_memory growth", mem_growth / 1_048_576.0, "MiB");
    r.add(
        "Redis memory per directory entry",
        mem_growth / listed_in_redis.max(1) as f64,
        "bytes",
    );
    let cmds_per_sec = cmds_after.saturating_sub(cmds_before) as f64 / hold_secs;
    r.add("Redis commands while idle", cmds_per_sec, "commands/s");
    r.add(
        "Redis commands per 1,000 sessions",
        cmds_per_sec * 1000.0 / total_open.max(1) as f64,
        "commands/s",
    );
    let mut rss_total = 0.0;
    for (i, ((s, o), h)) in rss_start.iter().zip(&rss_open).zip(&rss_held).enumerate() {
        if let (Some(s), Some(o), Some(h)) = (s, o, h) {
            let mib = |b: u64| b as f64 / 1_048_576.0;
            rss_total += mib(h.rss_bytes);
            let on_node = total_open / nodes;
            r.add(format!("node {} RSS held", i + 1), mib(h.rss_bytes), "MiB");
            r.add(
                format!("node {} RSS per session", i + 1),
                o.rss_bytes.saturating_sub(s.rss_bytes) as f64 / 1024.0 / on_node.max(1) as f64,
                "KiB",
            );
            r.add(
                format!("node {} CPU while idle", i + 1),
                (h.cpu_secs - o.cpu_secs) / hold_secs * 100.0,
                "% of one core",
            );
        }
    }
    r.add("nodes RSS total", rss_total, "MiB");

    // (a) The whole directory through the admin API.
    match list_all(&http, &targets[0], admin_token, opts.page_limit).await {
        Ok((took, first, pages, read, total)) => {
            r.add("listing: sessions read", read as f64, "");
            r.add("listing: total announced", total as f64, "");
            r.add("listing: pages", pages as f64, "");
            r.add("listing: page size", opts.page_limit as f64, "");
            r.add("listing: first page", first.as_secs_f64() * 1000.0, "ms");
            r.add("listing: all pages", took.as_secs_f64(), "s");
        }
        Err(e) => {
            r.note(format!("listing failed: {e}"));
        }
    }

    // (b) Kills of a user with sessions on every node and revokes of a token with sessions on
    // every node, asked of the first node, one after the other.
    let mut sent = Vec::new();
    for round in 0..rounds {
        let kill_user = &kills[round].0;
        let kill = http.delete(targets[0].url(&format!(
            "/admin/users/{kill_user}/sessions?reason=bench%20kill"
        )));
        let revoke = http
            .post(targets[0].url("/admin/tokens/revoke"))
            .json(&serde_json::json!({ "token": revokes[round].1 }));
        for (what, request) in [("kill", kill), ("revoke", revoke)] {
            // The wall clock when sent (the clients stamp their close frames with it).
            let at = SystemTime::now();
            eprintln!("[cluster] {what}-{round} sent at {} us", unix_us(at));
            let t = Instant::now();
            let res = request.bearer_auth(admin_token).send().await?;
            let answered = t.elapsed();
            let status = res.status().as_u16();
            let body = res.text().await.unwrap_or_default();
            if status != 200 {
                r.note(format!("{what} {round} answered {status}: {body}"));
            }
            sent.push((format!("{what}-{round}"), at, answered));
            tokio::time::sleep(opts.settle).await;
        }
    }

    // Stop the generators and gather what ended.
    for g in &mut generators {
        if let Some(mut stdin) = g.stdin.take() {
            let _ = stdin.write_all(b"stop\n").await;
        }
    }
    let mut ends: BTreeMap<String, Vec<End>> = BTreeMap::new();
    let mut ended: BTreeMap<String, usize> = BTreeMap::new();
    for g in &mut generators {
        let done: Done = g.expect("done", Duration::from_secs(120)).await?;
        for (k, v) in done.ends {
            ends.entry(k).or_default().extend(v);
        }
        for (k, n) in done.ended {
            *ended.entry(k).or_default() += n;
        }
        let _ = g.child.wait().await;
    }
    let bulk_dropped = ended.get("bulk").copied().unwrap_or(0);
    r.add("bulk sessions dropped", bulk_dropped as f64, "");
    if let Some(first) = ends.get("bulk").and_then(|e| e.first()) {
        r.note(format!(
            "first bulk drop: code {} {:?}",
            first.code, first.reason
        ));
    }
    for (kind, reason) in [("kill", KILL_REASON), ("revoke", REVOKE_REASON)] {
        let mut all = Vec::new();
        let mut expected = 0;
        let mut answers = Vec::new();
        let mut rounds_seen = Vec::new();
        for (group, at, answered) in sent.iter().filter(|(g, ..)| g.starts_with(kind)) {
            expected += open.get(group).copied().unwrap_or(0);
            answers.push(answered.as_secs_f64() * 1000.0);
            let t0 = unix_us(*at);
            // Stamp each close relative to its own request: shift it onto one common origin.
            let closes: Vec<End> = ends
                .get(group)
                .into_iter()
                .flatten()
                .map(|e| End {
                    at_us: (e.at_us + 1).saturating_sub(t0),
                    ..e.clone()
                })
                .collect();
            let first = closes.iter().map(|e| e.at_us).min().unwrap_or(0);
            let last = closes.iter().map(|e| e.at_us).max().unwrap_or(0);
            rounds_seen.push(format!(
                "{group} {:.0}/{:.0}/{:.0}",
                answered.as_secs_f64() * 1000.0,
                first as f64 / 1000.0,
                last as f64 / 1000.0
            ));
            all.extend(closes);
        }
        r.note(format!(
            "{kind} by round, HTTP answer / first / last close frame, ms: {}",
            rounds_seen.join(", ")
        ));
        control_figures(r, kind, reason, expected, UNIX_EPOCH, &all);
        answers.sort_by(f64::total_cmp);
        r.add(format!("{kind} requests"), answers.len() as f64, "");
        r.add(
            format!("{kind} HTTP answer median"),
            answers.get(answers.len() / 2).copied().unwrap_or(0.0),
            "ms",
        );
        r.add(
            format!("{kind} HTTP answer max"),
            answers.last().copied().unwrap_or(0.0),
            "ms",
        );
        r.note(format!(
            "{kind} HTTP answers, ms: {}",
            answers
                .iter()
                .map(|a| format!("{a:.0}"))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    Ok(())
}

/// `/proc/loadavg`'s first three fields: whatever else ran on the machine shows here.
fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// Where a load generator connects: `IP:PORT`.
pub fn parse_target(url: &str) -> Result<Target, BenchError> {
    let addr = url
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .parse::<SocketAddr>()
        .map_err(|e| BenchError::Io(format!("--url {url}: {e}")))?;
    Ok(Target { addr, pid: None })
}
