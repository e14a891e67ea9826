//! **resume**: sessions streaming over two nodes that share PostgreSQL and Redis; each answer's
//! connection is cut at a random chunk (no close frame, as a network drop) and the answer is
//! resumed on the other node. Every chunk is checked by its `seq` across the cut: lost and
//! duplicated chunks, the time from the `resume` message to the first missed chunk, and what
//! Redis paid per chunk (commands, bytes).

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use futures_util::SinkExt;
use hdrhistogram::Histogram;
use tokio_tungstenite::tungstenite::Message;

use crate::{
    client::{self, BenchError, ServerFrame, Target},
    report::{self, Progress, Report},
};

#[derive(Debug, Clone)]
pub struct ResumeOptions {
    pub sessions: usize,
    /// Cuts in all; the scenario ends when they are done.
    pub cuts: usize,
    /// A cut comes after 1 to this many chunks of an answer.
    pub max_chunks_before_cut: u64,
    pub redis_url: String,
    /// The Redis key prefix of the gateways, to find their journals.
    pub redis_prefix: String,
}

/// What one session saw.
#[derive(Default)]
struct Tally {
    cuts: u64,
    chunks: u64,
    lost: u64,
    duplicated: u64,
    errors: u64,
    first_error: Option<String>,
}

impl Tally {
    fn error(&mut self, e: impl ToString) {
        self.errors += 1;
        self.first_error.get_or_insert(e.to_string());
    }
}

fn resume_frame(id: &str, stream_id: &str, after_seq: u64) -> Message {
    Message::text(
        serde_json::json!({"type": "resume", "id": id,
            "payload": {"stream_id": stream_id, "after_seq": after_seq}})
        .to_string(),
    )
}

#[derive(serde::Deserialize, Default)]
struct Seq0 {
    #[serde(default)]
    stream_id: Option<String>,
}

#[derive(serde::Deserialize)]
struct Frame0 {
    #[serde(default)]
    payload: Option<Seq0>,
}

/// Redis's command counts, by command.
async fn command_counts(
    conn: &mut redis::aio::MultiplexedConnection,
) -> Result<HashMap<String, u64>, BenchError> {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(conn)
        .await
        .map_err(|e| BenchError::Io(format!("redis INFO: {e}")))?;
    Ok(info
        .lines()
        .filter_map(|l| {
            let (name, rest) = l.strip_prefix("cmdstat_")?.split_once(':')?;
            let calls = rest.split(',').find_map(|f| f.strip_prefix("calls="))?;
            Some((name.to_owned(), calls.parse().ok()?))
        })
        .collect())
}

/// Memory and entries of the journals under `prefix`.
async fn journal_memory(
    conn: &mut redis::aio::MultiplexedConnection,
    prefix: &str,
) -> Result<(u64, u64, u64), BenchError> {
    let io = |e: redis::RedisError| BenchError::Io(format!("redis: {e}"));
    let mut cursor = 0u64;
    let (mut bytes, mut entries, mut keys) = (0u64, 0u64, 0u64);
    loop {
        let (next, found): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(format!("{prefix}answer:*"))
            .arg("COUNT")
            .arg(1000)
            .query_async(conn)
            .await
            .map_err(io)?;
        for key in found.iter().filter(|k| !k.ends_with(":follower")) {
            let used: Option<u64> = redis::cmd("MEMORY")
                .arg("USAGE")
                .arg(key)
                .query_async(conn)
                .await
                .map_err(io)?;
            let len: u64 = redis::cmd("XLEN")
                .arg(key)
                .query_async(conn)
                .await
                .map_err(io)?;
            bytes += used.unwrap_or(0);
            entries += len;
            keys += 1;
        }
        cursor = next;
        if cursor == 0 {
            return Ok((bytes, entries, keys));
        }
    }
}

pub async fn run(nodes: [&Target; 2], opts: &ResumeOptions) -> Result<Report, BenchError> {
    let client = redis::Client::open(opts.redis_url.as_str())
        .map_err(|e| BenchError::Io(format!("redis: {e}")))?;
    let mut redis = client
        .get_multiplexed_async_connection()
        .await
        .map_err(|e| BenchError::Io(format!("redis: {e}")))?;
    let before = command_counts(&mut redis).await?;

    let token = client::login(nodes[0]).await?;
    let cuts_left = Arc::new(AtomicU64::new(opts.cuts as u64));
    let cut_counter = Arc::new(AtomicU64::new(0));
    let progress = Progress::start("resume", "cuts", cut_counter.clone());
    let started = Instant::now();
    let tasks: Vec<_> = (0..opts.sessions)
        .map(|i| {
            let (nodes, token) = ([nodes[0].clone(), nodes[1].clone()], token.clone());
            let (left, counter) = (cuts_left.clone(), cut_counter.clone());
            let max_before = opts.max_chunks_before_cut.max(1);
            tokio::spawn(session(i, nodes, token, left, counter, max_before))
        })
        .collect();
    let mut total = Tally::default();
    let mut latency = report::histogram();
    for t in tasks {
        let (tally, h) = t
            .await
            .map_err(|e| BenchError::Io(format!("session task: {e}")))?;
        total.cuts += tally.cuts;
        total.chunks += tally.chunks;
        total.lost += tally.lost;
        total.duplicated += tally.duplicated;
        total.errors += tally.errors;
        if total.first_error.is_none() {
            total.first_error = tally.first_error;
        }
        latency.add(h).expect("same histogram bounds");
    }
    let elapsed = started.elapsed().as_secs_f64();
    drop(progress);
    // The last batches reach Redis a moment after their chunks reach the client.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = command_counts(&mut redis).await?;
    let (bytes, entries, keys) = journal_memory(&mut redis, &opts.redis_prefix).await?;
    let delta =
        |name: &str| after.get(name).copied().unwrap_or(0) - before.get(name).copied().unwrap_or(0);
    let all_commands: u64 = after.values().sum::<u64>() - before.values().sum::<u64>();

    let mut r = Report::new("resume");
    r.add("sessions", opts.sessions as f64, "");
    r.add("elapsed", elapsed, "s");
    r.add(
        "cuts, each resumed on the other node",
        total.cuts as f64,
        "",
    );
    r.add("chunks delivered", total.chunks as f64, "");
    r.add("lost", total.lost as f64, "chunks");
    r.add("duplicated", total.duplicated as f64, "chunks");
    report::add_latency(&mut r, "resume to first missed chunk", &latency);
    r.add("errors", total.errors as f64, "");
    r.add("answers journaled", keys as f64, "");
    r.add("journal entries (batches)", entries as f64, "");
    r.add(
        "Redis memory per journaled answer",
        bytes as f64 / keys.max(1) as f64,
        "bytes",
    );
    r.add(
        "Redis memory per chunk",
        bytes as f64 / total.chunks.max(1) as f64,
        "bytes",
    );
    r.add(
        "Redis XADD+PEXPIRE per chunk",
        (delta("xadd") + delta("pexpire")) as f64 / total.chunks.max(1) as f64,
        "commands",
    );
    r.add(
        "Redis commands per chunk, all",
        all_commands as f64 / total.chunks.max(1) as f64,
        "commands",
    );
    r.add(
        "Redis commands per second, all",
        all_commands as f64 / elapsed,
        "commands/s",
    );
    if let Some(e) = total.first_error {
        r.note(format!("first error: {e}"));
    }
    Ok(r)
}

/// One session: answer after answer, each cut at a random chunk and resumed on the other node.
async fn session(
    index: usize,
    nodes: [Target; 2],
    token: String,
    cuts_left: Arc<AtomicU64>,
    cut_counter: Arc<AtomicU64>,
    max_before: u64,
) -> (Tally, Histogram<u64>) {
    let mut tally = Tally::default();
    let mut latency = report::histogram();
    let mut n = 0usize;
    while cuts_left
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |c| c.checked_sub(1))
        .is_ok()
    {
        let (from, to) = (&nodes[n % 2], &nodes[(n + 1) % 2]);
        n += 1;
        let id = format!("s{index}-r{n}");
        let cut_after = rand::random_range(1..=max_before);
        // First connection: read `cut_after` chunks, then drop it without a close frame.
        let mut ws = match client::connect(from, &token, None).await {
            Ok(ws) => ws,
            Err(e) => {
                tally.error(e);
                continue;
            }
        };
        if let Err(e) = ws.send(client::chat_frame(&id, "mock")).await {
            tally.error(e);
            continue;
        }
        let mut stream_id = None;
        let mut last: Option<u64> = None;
        let mut finished = false;
        while last.map_or(0, |l| l + 1) < cut_after {
            let text = match client::next_frame(&mut ws).await {
                Ok(Some(t)) => t,
                other => {
                    tally.error(format!("first connection ended: {other:?}"));
                    break;
                }
            };
            let Ok(frame) = serde_json::from_str::<ServerFrame>(&text) else {
                continue;
            };
            match frame.kind {
                "chat" => {
                    let seq = frame.payload.and_then(|p| p.seq).unwrap_or(u64::MAX);
                    if seq == 0 {
                        stream_id = serde_json::from_str::<Frame0>(&text)
                            .ok()
                            .and_then(|f| f.payload)
                            .and_then(|p| p.stream_id);
                    }
                    tally.chunks += 1;
                    last = Some(seq);
                }
                "done" => {
                    finished = true;
                    break;
                }
                "error" => tally.error(text),
                _ => {}
            }
        }
        drop(ws);
        let (Some(stream_id), Some(mut last_seq), false) = (stream_id, last, finished) else {
            if !finished {
                tally.error("no chunk before the cut");
            }
            continue;
        };
        cut_counter.fetch_add(1, Ordering::Relaxed);
        tally.cuts += 1;

        // Second connection, on the other node: resume after the last chunk seen.
        let mut ws = match client::connect(to, &token, None).await {
            Ok(ws) => ws,
            Err(e) => {
                tally.error(e);
                continue;
            }
        };
        let asked = Instant::now();
        if let Err(e) = ws.send(resume_frame(&id, &stream_id, last_seq)).await {
            tally.error(e);
            continue;
        }
        let mut first = true;
        loop {
            let text = match client::next_frame(&mut ws).await {
                Ok(Some(t)) => t,
                other => {
                    tally.error(format!("resumed connection ended: {other:?}"));
                    break;
                }
            };
            let Ok(frame) = serde_json::from_str::<ServerFrame>(&text) else {
                continue;
            };
            let payload = frame.payload.unwrap_or_default();
            match frame.kind {
                "chat" => {
                    if first {
                        report::record(&mut latency, asked.elapsed());
                        first = false;
                    }
                    let seq = payload.seq.unwrap_or(u64::MAX);
                    tally.chunks += 1;
                    if seq <= last_seq {
                        tally.duplicated += 1;
                    } else {
                        tally.lost += seq - last_seq - 1;
                        last_seq = seq;
                    }
                }
                "done" => {
                    let expected = payload.chunks.unwrap_or(0);
                    tally.lost += expected.saturating_sub(last_seq + 1);
                    break;
                }
                "error" => {
                    tally.error(text);
                    break;
                }
                _ => {}
            }
        }
        client::close(ws).await;
    }
    (tally, latency)
}
