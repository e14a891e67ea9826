//! **handshake**: new authenticated WebSocket sessions per second (TCP connect, upgrade with the
//! token, welcome frame), each closed again right after its welcome.

use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use crate::{
    client::{self, BenchError, Target},
    report::{self, Progress, Report},
};

#[derive(Debug, Clone)]
pub struct HandshakeOptions {
    /// Handshakes in flight at once.
    pub concurrency: usize,
    pub duration: Duration,
}

impl Default for HandshakeOptions {
    fn default() -> Self {
        HandshakeOptions {
            concurrency: 64,
            duration: Duration::from_secs(10),
        }
    }
}

/// Source addresses the workers rotate over, so closed connections never exhaust the ports.
const SOURCE_ADDRS: usize = 16;

pub async fn run(target: &Target, opts: &HandshakeOptions) -> Result<Report, BenchError> {
    let token = client::login(target).await?;
    let done = Arc::new(AtomicU64::new(0));
    let progress = Progress::start("handshake", "sessions", done.clone());
    let started = Instant::now();
    let deadline = started + opts.duration;
    let workers: Vec<_> = (0..opts.concurrency.max(1))
        .map(|w| {
            let (target, token, done) = (target.clone(), token.clone(), done.clone());
            tokio::spawn(async move {
                let mut h = report::histogram();
                let mut failures = 0u64;
                let mut first_error = None;
                let mut n = w;
                while Instant::now() < deadline {
                    let source = client::source_addr(1 + (n % SOURCE_ADDRS) as u8, 0);
                    n += 1;
                    let t0 = Instant::now();
                    match client::connect(&target, &token, Some(source)).await {
                        Ok(ws) => {
                            report::record(&mut h, t0.elapsed());
                            done.fetch_add(1, Ordering::Relaxed);
                            // Closing is not timed, but it is part of each worker's loop.
                            tokio::spawn(client::close(ws));
                        }
                        Err(e) => {
                            failures += 1;
                            if matches!(e, BenchError::RateLimited(_)) {
                                return (h, failures, Some(e));
                            }
                            first_error.get_or_insert(e);
                            tokio::time::sleep(Duration::from_millis(10)).await;
                        }
                    }
                }
                (h, failures, first_error)
            })
        })
        .collect();
    let mut latency = report::histogram();
    let mut failures = 0;
    let mut first_error = None;
    for w in workers {
        let (h, f, e) = w
            .await
            .map_err(|e| BenchError::Io(format!("worker: {e}")))?;
        latency.add(h).expect("same histogram bounds");
        failures += f;
        if first_error.is_none() {
            first_error = e;
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    drop(progress);
    if let Some(e @ BenchError::RateLimited(_)) = first_error {
        return Err(e);
    }
    let sessions = done.load(Ordering::Relaxed);
    let mut r = Report::new("handshake");
    r.add("concurrency", opts.concurrency as f64, "");
    r.add("elapsed", elapsed, "s");
    r.add("sessions", sessions as f64, "");
    r.add("handshake rate", sessions as f64 / elapsed, "sessions/s");
    report::add_latency(&mut r, "connect to welcome", &latency);
    r.add("failures", failures as f64, "");
    if let Some(e) = first_error {
        r.note(format!("first failure: {e}"));
    }
    Ok(r)
}
