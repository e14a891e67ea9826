//! **soak**: N streams spread over T, each on a connection of its own, with random cancels,
//! disconnects and stalled readers; the gateway's RSS before, after warm-up and at the end,
//! the errors the scenario did not cause on purpose, and the sessions and queued bytes the
//! gateway still holds once every client has gone (from `/metrics`).

use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use futures_util::SinkExt;
use rand::Rng;
use tokio_tungstenite::tungstenite::Message;

use crate::{
    client::{self, BenchError, ServerFrame, Target},
    report::{Progress, Report},
};

#[derive(Debug, Clone)]
pub struct SoakOptions {
    /// Streams started in all, evenly spread over `duration`.
    pub streams: usize,
    pub duration: Duration,
    /// After the last stream, how long the gateway has to let go of everything (answers whose
    /// client left run on for `resume.grace_ms`) before the leftovers are counted.
    pub settle: Duration,
    /// The share of the streams, in %, whose client cancels, disconnects, or stalls.
    pub cancel_pct: u32,
    pub disconnect_pct: u32,
    pub stall_pct: u32,
    /// How long a stalled reader stops reading (at most).
    pub max_stall: Duration,
    pub model: String,
}

impl Default for SoakOptions {
    fn default() -> Self {
        SoakOptions {
            streams: 10_000,
            duration: Duration::from_secs(600),
            settle: Duration::from_secs(10),
            cancel_pct: 15,
            disconnect_pct: 15,
            stall_pct: 10,
            max_stall: Duration::from_secs(5),
            model: "mock".into(),
        }
    }
}

/// What a client does with its stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Behaviour {
    Complete,
    /// Cancels after this many chunks.
    Cancel(u64),
    /// Drops the TCP connection after this many chunks, without a close frame.
    Disconnect(u64),
    /// Stops reading after this many chunks for this long, then reads the rest.
    Stall(u64, Duration),
}

fn behaviour(opts: &SoakOptions) -> Behaviour {
    let mut rng = rand::rng();
    let roll = rng.random_range(0..100);
    let after = rng.random_range(1..=30);
    let (c, d, s) = (opts.cancel_pct, opts.disconnect_pct, opts.stall_pct);
    if roll < c {
        Behaviour::Cancel(after)
    } else if roll < c + d {
        Behaviour::Disconnect(after)
    } else if roll < c + d + s {
        let stall = rng.random_range(0..=opts.max_stall.as_millis() as u64);
        Behaviour::Stall(after, Duration::from_millis(stall))
    } else {
        Behaviour::Complete
    }
}

#[derive(Default)]
struct Tally {
    completed: AtomicU64,
    cancelled: AtomicU64,
    disconnected: AtomicU64,
    stalled: AtomicU64,
    errors: AtomicU64,
    first_error: Mutex<Option<String>>,
}

impl Tally {
    fn error(&self, what: String) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        self.first_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_or_insert(what);
    }
}

/// The value of an unlabelled gauge in a Prometheus text page.
fn gauge(page: &str, name: &str) -> Option<f64> {
    page.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

async fn metrics(target: &Target) -> Result<String, BenchError> {
    let res = client::http_client()
        .get(target.url("/metrics"))
        .send()
        .await?;
    Ok(res.text().await?)
}

pub async fn run(target: &Target, opts: &SoakOptions) -> Result<Report, BenchError> {
    let token = client::login(target).await?;
    let rss_start = target.stats().map(|s| s.rss_bytes);
    let tally = Arc::new(Tally::default());
    let started_count = Arc::new(AtomicU64::new(0));
    let progress = Progress::start("soak", "streams started", started_count.clone());
    let started = Instant::now();
    let gap = opts.duration / opts.streams.max(1) as u32;
    let warm_up = opts.streams / 10;
    let mut rss_warm = None;
    let mut tasks = Vec::with_capacity(opts.streams);
    for i in 0..opts.streams {
        tokio::time::sleep_until((started + gap * i as u32).into()).await;
        if i == warm_up {
            rss_warm = target.stats().map(|s| s.rss_bytes);
        }
        started_count.fetch_add(1, Ordering::Relaxed);
        let (target, token, tally) = (target.clone(), token.clone(), tally.clone());
        let (model, how) = (opts.model.clone(), behaviour(opts));
        tasks.push(tokio::spawn(async move {
            if let Err(e) = stream(&target, &token, i, &model, how, &tally).await {
                tally.error(format!("stream {i} ({how:?}): {e}"));
            }
        }));
    }
    for t in tasks {
        t.await
            .map_err(|e| BenchError::Io(format!("stream task: {e}")))?;
    }
    let elapsed = started.elapsed().as_secs_f64();
    drop(progress);
    tokio::time::sleep(opts.settle).await;
    let page = metrics(target).await?;
    let rss_end = target.stats().map(|s| s.rss_bytes);

    let mut r = Report::new("soak");
    r.add("streams", opts.streams as f64, "");
    r.add("elapsed", elapsed, "s");
    let count = |c: &AtomicU64| c.load(Ordering::Relaxed) as f64;
    r.add("completed", count(&tally.completed), "");
    r.add("cancelled", count(&tally.cancelled), "");
    r.add("disconnected", count(&tally.disconnected), "");
    r.add("stalled, then read", count(&tally.stalled), "");
    r.add("errors not caused on purpose", count(&tally.errors), "");
    match gauge(&page, "gateway_sessions_live") {
        Some(n) => r.add("sessions left behind", n, ""),
        None => r.note("/metrics has no gateway_sessions_live"),
    };
    if let Some(n) = gauge(&page, "gateway_outbound_queue_bytes") {
        r.add("bytes left queued", n, "B");
    }
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    match (rss_start, rss_warm, rss_end) {
        (Some(start), warm, Some(end)) => {
            r.add("gateway RSS at start", mib(start), "MiB");
            let base = warm.unwrap_or(start);
            if let Some(warm) = warm {
                r.add(
                    "gateway RSS after warm-up (10 % of streams)",
                    mib(warm),
                    "MiB",
                );
            }
            r.add("gateway RSS at end", mib(end), "MiB");
            r.add(
                "RSS end vs warm-up",
                (end as f64 / base as f64 - 1.0) * 100.0,
                "%",
            );
        }
        _ => {
            r.note("gateway RSS unknown (give --gateway-pid or --spawn)");
        }
    }
    if let Some(e) = tally
        .first_error
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take()
    {
        r.note(format!("first error: {e}"));
    }
    Ok(r)
}

/// One stream on a connection of its own, played as `how` says.
async fn stream(
    target: &Target,
    token: &str,
    index: usize,
    model: &str,
    how: Behaviour,
    tally: &Tally,
) -> Result<(), BenchError> {
    let source = Some(client::source_addr(
        1,
        index % client::CONNECTIONS_PER_SOURCE_ADDR,
    ));
    let mut ws = client::connect(target, token, source).await?;
    let id = format!("k{index}");
    ws.send(client::chat_frame(&id, model)).await?;
    let mut chunks = 0u64;
    let mut acted = false;
    loop {
        let Some(text) = client::next_frame(&mut ws).await? else {
            return Err(BenchError::Gateway("the gateway closed the session".into()));
        };
        let frame: ServerFrame = serde_json::from_str(&text)
            .map_err(|e| BenchError::Gateway(format!("not a server frame ({e}): {text}")))?;
        if frame.id != Some(id.as_str()) {
            continue;
        }
        let payload = frame.payload.unwrap_or_default();
        match frame.kind {
            "chat" => {
                chunks += 1;
                match how {
                    Behaviour::Cancel(n) if chunks == n && !acted => {
                        acted = true;
                        let cancel = serde_json::json!({"type": "cancel", "id": id});
                        ws.send(Message::text(cancel.to_string())).await?;
                    }
                    Behaviour::Disconnect(n) if chunks == n => {
                        // Gone without a close frame, as a phone leaving coverage.
                        drop(ws);
                        tally.disconnected.fetch_add(1, Ordering::Relaxed);
                        return Ok(());
                    }
                    Behaviour::Stall(n, pause) if chunks == n && !acted => {
                        acted = true;
                        tokio::time::sleep(pause).await;
                    }
                    _ => {}
                }
            }
            "done" => {
                let finish = payload.finish_reason.unwrap_or_default();
                let counter = match (how, finish.as_str()) {
                    (Behaviour::Cancel(_), "cancelled") => &tally.cancelled,
                    // A short answer may end before the cancel or the cut.
                    (_, "stop") => match how {
                        Behaviour::Stall(..) if acted => &tally.stalled,
                        _ => &tally.completed,
                    },
                    _ => {
                        return Err(BenchError::Gateway(format!(
                            "done with finish_reason {finish:?}"
                        )))
                    }
                };
                counter.fetch_add(1, Ordering::Relaxed);
                client::close(ws).await;
                return Ok(());
            }
            "error" => {
                return Err(BenchError::Gateway(format!(
                    "error frame {}: {}",
                    payload.reason.unwrap_or_default(),
                    payload.message.unwrap_or_default()
                )))
            }
            _ => {}
        }
    }
}
