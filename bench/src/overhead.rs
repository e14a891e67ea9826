//! **overhead**: what the gateway adds to the time to first chunk and to the gap between chunks,
//! against the fake upstream reached directly (HTTP SSE) and through the gateway (WebSocket,
//! model `fake`), at several concurrencies. With a rate, both sides carry the same load (paced
//! requests), so that at 50 workers the comparison is not one of two saturated sides.

use std::time::{Duration, Instant};

use futures_util::{stream, SinkExt, StreamExt};
use hdrhistogram::Histogram;

use crate::{
    client::{self, BenchError, ServerFrame, Target},
    http::{self, Endpoint, GATEWAY_FAKE_MODEL},
    report::{self, Report},
};

#[derive(Debug, Clone)]
pub struct OverheadOptions {
    pub concurrencies: Vec<usize>,
    /// How long each side is measured at each concurrency.
    pub level_duration: Duration,
    /// Requests per second in all on each side; `None`: as fast as answers end.
    pub rate: Option<f64>,
}

impl Default for OverheadOptions {
    fn default() -> Self {
        OverheadOptions {
            concurrencies: vec![1, 100, 1000],
            level_duration: Duration::from_secs(5),
            rate: None,
        }
    }
}

/// First-chunk times and chunk gaps of one side at one concurrency.
struct Side {
    first_chunk: Histogram<u64>,
    gaps: Histogram<u64>,
    requests: u64,
}

impl Side {
    fn new() -> Side {
        Side {
            first_chunk: report::histogram(),
            gaps: report::histogram(),
            requests: 0,
        }
    }
}

/// Paces one worker: at `rate` requests/s over `workers` workers, each starts a request every
/// `workers / rate` seconds, the workers staggered; a worker running late does not wait.
struct Pacer {
    next: tokio::time::Instant,
    every: Duration,
}

impl Pacer {
    fn new(rate: Option<f64>, workers: usize, worker: usize) -> Option<Pacer> {
        rate.filter(|r| *r > 0.0).map(|r| Pacer {
            next: tokio::time::Instant::now() + Duration::from_secs_f64(worker as f64 / r),
            every: Duration::from_secs_f64(workers as f64 / r),
        })
    }

    async fn wait(pacer: &mut Option<Pacer>) {
        if let Some(p) = pacer {
            tokio::time::sleep_until(p.next).await;
            p.next += p.every;
        }
    }
}

async fn direct(
    upstream: &str,
    concurrency: usize,
    duration: Duration,
    rate: Option<f64>,
) -> Result<Side, BenchError> {
    let http = reqwest::Client::new();
    let ep = Endpoint::direct(upstream);
    let deadline = Instant::now() + duration;
    let workers: Vec<_> = (0..concurrency)
        .map(|i| {
            let (http, ep) = (http.clone(), ep.clone());
            let mut pacer = Pacer::new(rate, concurrency, i);
            tokio::spawn(async move {
                let mut side = Side::new();
                while Instant::now() < deadline {
                    Pacer::wait(&mut pacer).await;
                    let a = http::stream_once(&http, &ep, &mut side.gaps).await?;
                    report::record(&mut side.first_chunk, a.first_chunk);
                    side.requests += 1;
                }
                Ok::<_, BenchError>(side)
            })
        })
        .collect();
    merge(workers).await
}

async fn merge(
    workers: Vec<tokio::task::JoinHandle<Result<Side, BenchError>>>,
) -> Result<Side, BenchError> {
    let mut all = Side::new();
    for w in workers {
        let side = w
            .await
            .map_err(|e| BenchError::Io(format!("worker: {e}")))??;
        all.first_chunk.add(side.first_chunk).expect("same bounds");
        all.gaps.add(side.gaps).expect("same bounds");
        all.requests += side.requests;
    }
    Ok(all)
}

/// One request over WebSocket; records its first-chunk time and chunk gaps.
async fn gateway_once(ws: &mut client::Ws, id: &str, side: &mut Side) -> Result<(), BenchError> {
    let t0 = Instant::now();
    ws.send(client::chat_frame(id, GATEWAY_FAKE_MODEL))
        .await
        .map_err(BenchError::from)?;
    let mut last: Option<Instant> = None;
    loop {
        let Some(text) = client::next_frame(ws).await? else {
            return Err(BenchError::Gateway("the gateway closed the session".into()));
        };
        let now = Instant::now();
        let frame: ServerFrame = serde_json::from_str(&text)
            .map_err(|_| BenchError::Gateway(format!("not a server frame: {text}")))?;
        if frame.id != Some(id) {
            continue;
        }
        match frame.kind {
            "chat" => {
                match last {
                    None => report::record(&mut side.first_chunk, now - t0),
                    Some(prev) => report::record(&mut side.gaps, now - prev),
                }
                last = Some(now);
            }
            "done" => return Ok(()),
            "error" => {
                let p = frame.payload.unwrap_or_default();
                let reason = p.reason.unwrap_or_default();
                let message = p.message.unwrap_or_default();
                return Err(if reason == "unknown_model" {
                    BenchError::MissingFeature(format!(
                        "the gateway does not route model `{GATEWAY_FAKE_MODEL}` ({message}): build from main with issue 4 and start it with GATEWAY_PROVIDERS__FAKE__* and GATEWAY_MODELS__FAKE__* (see docs/BENCHMARKS.md)"
                    ))
                } else {
                    BenchError::Gateway(format!("{reason}: {message}"))
                });
            }
            _ => {}
        }
    }
}

async fn through_gateway(
    target: &Target,
    token: &str,
    concurrency: usize,
    duration: Duration,
    rate: Option<f64>,
) -> Result<Side, BenchError> {
    let sessions: Vec<Result<client::Ws, BenchError>> = stream::iter(0..concurrency)
        .map(|i| client::connect(target, token, Some(client::source_addr(1, i))))
        .buffer_unordered(100)
        .collect()
        .await;
    let sessions = sessions.into_iter().collect::<Result<Vec<_>, _>>()?;
    let deadline = Instant::now() + duration;
    let workers: Vec<_> = sessions
        .into_iter()
        .enumerate()
        .map(|(i, mut ws)| {
            let mut pacer = Pacer::new(rate, concurrency, i);
            tokio::spawn(async move {
                let mut side = Side::new();
                let mut n = 0;
                while Instant::now() < deadline {
                    n += 1;
                    Pacer::wait(&mut pacer).await;
                    gateway_once(&mut ws, &format!("o{i}-{n}"), &mut side).await?;
                    side.requests += 1;
                }
                client::close(ws).await;
                Ok::<_, BenchError>(side)
            })
        })
        .collect();
    merge(workers).await
}

/// `upstream` is the fake's `http://ADDR`; the gateway must route model `fake` to it.
pub async fn run(
    target: &Target,
    upstream: &str,
    opts: &OverheadOptions,
) -> Result<Report, BenchError> {
    let mut r = Report::new("overhead");
    let token = client::login(target).await?;
    // One probe says whether the gateway can reach the fake at all.
    let mut gateway_ok = match client::connect(target, &token, None).await {
        Ok(mut ws) => {
            let mut probe = Side::new();
            let res = gateway_once(&mut ws, "probe", &mut probe).await;
            client::close(ws).await;
            res
        }
        Err(e) => Err(e),
    };
    match &gateway_ok {
        Err(BenchError::RateLimited(what)) => return Err(BenchError::RateLimited(what.clone())),
        Err(e @ BenchError::MissingFeature(_)) => {
            r.note(format!("gateway half skipped: {e}"));
        }
        Err(e) => {
            r.note(format!("gateway half failed: {e}"));
        }
        Ok(()) => {}
    }
    for &c in &opts.concurrencies {
        eprintln!("[overhead] concurrency {c}");
        let d = direct(upstream, c, opts.level_duration, opts.rate).await?;
        let per_sec = |side: &Side| side.requests as f64 / opts.level_duration.as_secs_f64();
        if opts.rate.is_some() {
            // A side that could not keep the rate was saturated: its latencies are queueing.
            r.add(format!("c={c} direct requests/s"), per_sec(&d), "");
        }
        let ms = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1000.0;
        for (q, name) in [(0.5, "p50"), (0.99, "p99")] {
            r.add(
                format!("c={c} direct first chunk {name}"),
                ms(&d.first_chunk, q),
                "ms",
            );
        }
        for (q, name) in [(0.5, "p50"), (0.99, "p99")] {
            r.add(
                format!("c={c} direct chunk gap {name}"),
                ms(&d.gaps, q),
                "ms",
            );
        }
        if gateway_ok.is_err() {
            continue;
        }
        match through_gateway(target, &token, c, opts.level_duration, opts.rate).await {
            Ok(g) => {
                if opts.rate.is_some() {
                    r.add(format!("c={c} gateway requests/s"), per_sec(&g), "");
                }
                for (q, name) in [(0.5, "p50"), (0.99, "p99")] {
                    let (gw, dir) = (ms(&g.first_chunk, q), ms(&d.first_chunk, q));
                    r.add(format!("c={c} gateway first chunk {name}"), gw, "ms");
                    r.add(format!("c={c} added first chunk {name}"), gw - dir, "ms");
                }
                for (q, name) in [(0.5, "p50"), (0.99, "p99")] {
                    let (gw, dir) = (ms(&g.gaps, q), ms(&d.gaps, q));
                    r.add(format!("c={c} gateway chunk gap {name}"), gw, "ms");
                    r.add(format!("c={c} added chunk gap {name}"), gw - dir, "ms");
                }
            }
            Err(e) => {
                r.note(format!("gateway half failed at concurrency {c}: {e}"));
                gateway_ok = Err(e);
            }
        }
    }
    Ok(r)
}
