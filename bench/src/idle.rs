//! **idle**: open N authenticated sessions, hold them, close them; the gateway's memory per
//! session and its CPU while they sit idle.

use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use futures_util::{stream, StreamExt};
use tokio::sync::watch;

use crate::{
    client::{self, BenchError, Target},
    report::{Progress, Report},
};

#[derive(Debug, Clone)]
pub struct IdleOptions {
    pub sessions: usize,
    /// How long the sessions are held open while the gateway's CPU is measured.
    pub hold: Duration,
    /// Handshakes in flight while connecting.
    pub connect_concurrency: usize,
    /// First loopback source address (127.0.0.`source_base`).
    pub source_base: u8,
    /// How long to wait after closing before reading the gateway's memory again.
    pub settle: Duration,
}

impl Default for IdleOptions {
    fn default() -> Self {
        IdleOptions {
            sessions: 1000,
            hold: Duration::from_secs(10),
            connect_concurrency: 200,
            source_base: 1,
            settle: Duration::from_secs(5),
        }
    }
}

pub async fn run(target: &Target, opts: &IdleOptions) -> Result<Report, BenchError> {
    let token = client::login(target).await?;
    // A first session warms the gateway's one-time allocations before the baseline.
    client::close(client::connect(target, &token, None).await?).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = target.stats();

    let (stop_tx, stop_rx) = watch::channel(false);
    let opened = Arc::new(AtomicU64::new(0));
    let progress = Progress::start("idle", "sessions open", opened.clone());
    let started = Instant::now();
    let results: Vec<Result<tokio::task::JoinHandle<()>, BenchError>> =
        stream::iter(0..opts.sessions)
            .map(|i| {
                let (token, opened, mut stop) = (token.clone(), opened.clone(), stop_rx.clone());
                let source = client::source_addr(opts.source_base, i);
                async move {
                    let mut ws = client::connect(target, &token, Some(source)).await?;
                    opened.fetch_add(1, Ordering::Relaxed);
                    // Hold the session: answer pings, until told to close.
                    Ok(tokio::spawn(async move {
                        loop {
                            tokio::select! {
                                frame = client::next_frame_untimed(&mut ws) => if frame.is_none() { return },
                                _ = stop.changed() => break,
                            }
                        }
                        client::close(ws).await;
                    }))
                }
            })
            .buffer_unordered(opts.connect_concurrency.max(1))
            .collect()
            .await;
    let connect_secs = started.elapsed().as_secs_f64();
    drop(progress);
    let mut holders = Vec::with_capacity(results.len());
    let mut first_error = None;
    for r in results {
        match r {
            Ok(h) => holders.push(h),
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    if let Some(e @ BenchError::RateLimited(_)) = first_error {
        return Err(e);
    }
    let open = holders.len();

    tokio::time::sleep(Duration::from_secs(1)).await;
    let held = target.stats();
    tokio::time::sleep(opts.hold).await;
    let after_hold = target.stats();

    let _ = stop_tx.send(true);
    for h in holders {
        let _ = h.await;
    }
    tokio::time::sleep(opts.settle).await;
    let closed = target.stats();

    let mut r = Report::new("idle");
    r.add("sessions requested", opts.sessions as f64, "");
    r.add("sessions open", open as f64, "");
    r.add("connect time", connect_secs, "s");
    r.add("connect rate", open as f64 / connect_secs, "sessions/s");
    if let (Some(b), Some(h), Some(a), Some(c)) = (before, held, after_hold, closed) {
        let mb = |bytes: u64| bytes as f64 / 1_048_576.0;
        r.add("gateway RSS before", mb(b.rss_bytes), "MiB");
        r.add("gateway RSS open", mb(h.rss_bytes), "MiB");
        r.add("gateway RSS after close", mb(c.rss_bytes), "MiB");
        let per = h.rss_bytes.saturating_sub(b.rss_bytes) as f64 / open.max(1) as f64;
        r.add("gateway RSS per session", per / 1024.0, "KiB");
        let cpu = (a.cpu_secs - h.cpu_secs) / opts.hold.as_secs_f64() * 100.0;
        r.add("gateway CPU while idle", cpu, "% of one core");
    } else {
        r.note("gateway memory and CPU not measured: pass --gateway-pid or --spawn");
    }
    if let Some(e) = first_error {
        r.note(format!(
            "{} sessions failed to open; first error: {e}",
            opts.sessions - open
        ));
    }
    Ok(r)
}
