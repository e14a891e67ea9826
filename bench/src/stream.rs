//! **stream**: S sessions each asking for answer after answer from the zero-delay mock; chunks
//! per second delivered, the gap between chunks, and every chunk checked by its `seq`.

use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use futures_util::SinkExt;
use hdrhistogram::Histogram;

use crate::{
    client::{self, BenchError, ServerFrame, Target},
    report::{self, Progress, Report},
};

#[derive(Debug, Clone)]
pub struct StreamOptions {
    pub sessions: usize,
    /// Requests start until this much time has passed; running ones then finish.
    pub duration: Duration,
    pub model: String,
}

impl Default for StreamOptions {
    fn default() -> Self {
        StreamOptions {
            sessions: 100,
            duration: Duration::from_secs(10),
            model: "mock".into(),
        }
    }
}

/// What one session saw.
#[derive(Default)]
struct Tally {
    requests: u64,
    chunks: u64,
    lost: u64,
    duplicated: u64,
    out_of_order: u64,
    errors: u64,
    first_error: Option<String>,
}

impl Tally {
    fn merge(&mut self, o: Tally) {
        self.requests += o.requests;
        self.chunks += o.chunks;
        self.lost += o.lost;
        self.duplicated += o.duplicated;
        self.out_of_order += o.out_of_order;
        self.errors += o.errors;
        if self.first_error.is_none() {
            self.first_error = o.first_error;
        }
    }
}

pub async fn run(target: &Target, opts: &StreamOptions) -> Result<Report, BenchError> {
    let token = client::login(target).await?;
    let mut sessions = Vec::with_capacity(opts.sessions);
    for i in 0..opts.sessions {
        sessions.push(client::connect(target, &token, Some(client::source_addr(1, i))).await?);
    }
    let delivered = Arc::new(AtomicU64::new(0));
    let progress = Progress::start("stream", "chunks", delivered.clone());
    let started = Instant::now();
    let deadline = started + opts.duration;
    let tasks: Vec<_> = sessions
        .into_iter()
        .enumerate()
        .map(|(i, ws)| {
            let (model, delivered) = (opts.model.clone(), delivered.clone());
            tokio::spawn(session(i, ws, model, deadline, delivered))
        })
        .collect();
    let mut total = Tally::default();
    let mut gaps = report::histogram();
    for t in tasks {
        let (tally, h) = t
            .await
            .map_err(|e| BenchError::Io(format!("session task: {e}")))?;
        total.merge(tally);
        gaps.add(h).expect("same histogram bounds");
    }
    let elapsed = started.elapsed().as_secs_f64();
    drop(progress);

    let mut r = Report::new("stream");
    r.add("sessions", opts.sessions as f64, "");
    r.add("elapsed", elapsed, "s");
    r.add("requests done", total.requests as f64, "");
    r.add("chunks delivered", total.chunks as f64, "");
    r.add("chunk rate", total.chunks as f64 / elapsed, "chunks/s");
    report::add_latency(&mut r, "gap between chunks", &gaps);
    r.add("lost", total.lost as f64, "chunks");
    r.add("duplicated", total.duplicated as f64, "chunks");
    r.add("out of order", total.out_of_order as f64, "chunks");
    r.add("errors", total.errors as f64, "");
    if let Some(e) = total.first_error {
        r.note(format!("first error: {e}"));
    }
    Ok(r)
}

/// One session: request after request until the deadline, checking every chunk.
async fn session(
    index: usize,
    mut ws: client::Ws,
    model: String,
    deadline: Instant,
    delivered: Arc<AtomicU64>,
) -> (Tally, Histogram<u64>) {
    let mut tally = Tally::default();
    let mut gaps = report::histogram();
    let mut seen: Vec<bool> = Vec::new();
    let mut n = 0u64;
    'requests: while Instant::now() < deadline {
        let id = format!("s{index}-r{n}");
        n += 1;
        if let Err(e) = ws.send(client::chat_frame(&id, &model)).await {
            tally.errors += 1;
            tally.first_error.get_or_insert(e.to_string());
            break;
        }
        seen.clear();
        let mut next_seq = 0u64;
        let mut last_chunk: Option<Instant> = None;
        loop {
            let text = match client::next_frame(&mut ws).await {
                Ok(Some(t)) => t,
                Ok(None) => {
                    tally.errors += 1;
                    tally
                        .first_error
                        .get_or_insert("the gateway closed the session".into());
                    break 'requests;
                }
                Err(e) => {
                    tally.errors += 1;
                    tally.first_error.get_or_insert(e.to_string());
                    break 'requests;
                }
            };
            let Ok(frame) = serde_json::from_str::<ServerFrame>(&text) else {
                tally.errors += 1;
                tally
                    .first_error
                    .get_or_insert(format!("not a server frame: {text}"));
                continue;
            };
            if frame.id != Some(id.as_str()) {
                continue;
            }
            let payload = frame.payload.unwrap_or_default();
            match frame.kind {
                "chat" => {
                    let now = Instant::now();
                    if let Some(prev) = last_chunk {
                        report::record(&mut gaps, now - prev);
                    }
                    last_chunk = Some(now);
                    tally.chunks += 1;
                    delivered.fetch_add(1, Ordering::Relaxed);
                    let seq = payload.seq.unwrap_or(u64::MAX) as usize;
                    if seq as u64 != next_seq {
                        tally.out_of_order += 1;
                    }
                    next_seq = seq as u64 + 1;
                    if seq >= seen.len() {
                        seen.resize(seq.min(1 << 24) + 1, false);
                    }
                    if let Some(s) = seen.get_mut(seq) {
                        if *s {
                            tally.duplicated += 1;
                        }
                        *s = true;
                    }
                }
                "done" => {
                    let expected = payload.chunks.unwrap_or(0) as usize;
                    seen.resize(seen.len().max(expected), false);
                    tally.lost += seen[..expected].iter().filter(|s| !**s).count() as u64;
                    tally.requests += 1;
                    break;
                }
                "error" => {
                    tally.errors += 1;
                    let reason = payload.reason.unwrap_or_default();
                    tally.first_error.get_or_insert(format!(
                        "{reason}: {}",
                        payload.message.unwrap_or_default()
                    ));
                    // Provider failures end with a `done`; refusals have none and would repeat.
                    if !reason.starts_with("provider_") {
                        break 'requests;
                    }
                }
                _ => {}
            }
        }
    }
    client::close(ws).await;
    (tally, gaps)
}
