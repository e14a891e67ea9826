//! **http**: streaming requests per second through `POST /v1/chat/completions`, against the
//! fake upstream reached directly and through the gateway, from one run.

use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use hdrhistogram::Histogram;

use crate::{
    client::{BenchError, Target},
    report::{self, Progress, Report},
};

/// The model name the gateway routes to the fake upstream (issue 4's `GATEWAY_MODELS__FAKE__*`).
pub const GATEWAY_FAKE_MODEL: &str = "fake";
/// The fake's scenario: reasoning pieces, then 20 text pieces, no delay.
pub const UPSTREAM_MODEL: &str = "ok-20";

/// The fake accepts any key but insists on one, like OpenAI.
pub const FAKE_API_KEY: &str = "sk-fake-bench";

/// Where a streaming chat completion is sent: URL, model, bearer token.
#[derive(Debug, Clone)]
pub struct Endpoint {
    pub url: String,
    pub model: String,
    pub bearer: Option<String>,
}

impl Endpoint {
    /// The fake upstream itself, `base` being `http://ADDR`.
    pub fn direct(base: &str) -> Endpoint {
        Endpoint {
            url: format!("{base}/v1/chat/completions"),
            model: UPSTREAM_MODEL.into(),
            bearer: Some(FAKE_API_KEY.into()),
        }
    }

    pub fn gateway(target: &Target, token: &str) -> Endpoint {
        Endpoint {
            url: target.url("/v1/chat/completions"),
            model: GATEWAY_FAKE_MODEL.into(),
            bearer: Some(token.to_owned()),
        }
    }
}

/// Timings of one streamed answer.
pub struct Answer {
    pub first_chunk: Duration,
    /// Data events that carried text.
    pub chunks: u64,
}

/// Whether an SSE data line carries a piece of the answer (not the role-only first delta).
fn carries_text(line: &[u8]) -> bool {
    let line = String::from_utf8_lossy(line);
    line.contains("\"reasoning_content\":\"")
        || (line.contains("\"content\":\"") && !line.contains("\"content\":\"\""))
}

/// Sends one streaming request and reads the SSE answer to `[DONE]`, recording the gap between
/// text events into `gaps`.
pub async fn stream_once(
    http: &reqwest::Client,
    ep: &Endpoint,
    gaps: &mut Histogram<u64>,
) -> Result<Answer, BenchError> {
    let body = serde_json::json!({
        "model": ep.model,
        "stream": true,
        "messages": [{"role": "user", "content": "Hello AI"}],
    });
    let t0 = Instant::now();
    let mut req = http.post(&ep.url).json(&body);
    if let Some(token) = &ep.bearer {
        req = req.bearer_auth(token);
    }
    let mut res = req.send().await?;
    match res.status().as_u16() {
        200 => {}
        404 => {
            return Err(BenchError::MissingFeature(format!(
                "the gateway answered 404 for {}: build from main with issue 4",
                ep.url
            )))
        }
        429 => return Err(BenchError::RateLimited(format!("POST {}", ep.url))),
        s => {
            let text = res.text().await.unwrap_or_default();
            return Err(BenchError::Gateway(format!(
                "POST {} answered {s}: {text}",
                ep.url
            )));
        }
    }
    let mut first_chunk = None;
    let mut last: Option<Instant> = None;
    let mut chunks = 0;
    let mut pending: Vec<u8> = Vec::new();
    let mut finished = false;
    while let Some(bytes) = res.chunk().await? {
        let now = Instant::now();
        pending.extend_from_slice(&bytes);
        while let Some(end) = pending.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = pending.drain(..=end).collect();
            let Some(data) = line.strip_prefix(b"data:") else {
                continue;
            };
            if data.trim_ascii() == b"[DONE]" {
                finished = true;
            } else if carries_text(data) {
                chunks += 1;
                first_chunk.get_or_insert(now - t0);
                if let Some(prev) = last {
                    report::record(gaps, now - prev);
                }
                last = Some(now);
            }
        }
    }
    match (finished, first_chunk) {
        (true, Some(first_chunk)) => Ok(Answer {
            first_chunk,
            chunks,
        }),
        _ => Err(BenchError::Gateway(format!(
            "{}: the answer ended without text or without [DONE]",
            ep.url
        ))),
    }
}

/// Requests per second at `concurrency` for `duration`, and the answers' chunk count.
pub async fn rate(
    ep: &Endpoint,
    concurrency: usize,
    duration: Duration,
    label: &str,
) -> Result<(f64, u64), BenchError> {
    let http = reqwest::Client::new();
    // Fail fast, with the endpoint's own message, before starting the workers.
    let probe = stream_once(&http, ep, &mut report::histogram()).await?;
    let done = Arc::new(AtomicU64::new(0));
    let progress = Progress::start(label, "requests", done.clone());
    let started = Instant::now();
    let deadline = started + duration;
    let workers: Vec<_> = (0..concurrency.max(1))
        .map(|_| {
            let (http, ep, done) = (http.clone(), ep.clone(), done.clone());
            tokio::spawn(async move {
                let mut gaps = report::histogram();
                while Instant::now() < deadline {
                    stream_once(&http, &ep, &mut gaps).await?;
                    done.fetch_add(1, Ordering::Relaxed);
                }
                Ok::<_, BenchError>(())
            })
        })
        .collect();
    for w in workers {
        w.await
            .map_err(|e| BenchError::Io(format!("worker: {e}")))??;
    }
    let elapsed = started.elapsed().as_secs_f64();
    drop(progress);
    Ok((done.load(Ordering::Relaxed) as f64 / elapsed, probe.chunks))
}

#[derive(Debug, Clone)]
pub struct HttpOptions {
    pub concurrency: usize,
    pub duration: Duration,
}

impl Default for HttpOptions {
    fn default() -> Self {
        HttpOptions {
            concurrency: 50,
            duration: Duration::from_secs(10),
        }
    }
}

/// `upstream` is the fake's `http://ADDR`; the gateway must route model `fake` to it.
pub async fn run(
    target: &Target,
    upstream: &str,
    opts: &HttpOptions,
) -> Result<Report, BenchError> {
    let mut r = Report::new("http");
    r.add("concurrency", opts.concurrency as f64, "");
    let (direct, chunks) = rate(
        &Endpoint::direct(upstream),
        opts.concurrency,
        opts.duration,
        "http direct",
    )
    .await?;
    r.add("direct rate", direct, "requests/s");
    r.add("direct chunks per answer", chunks as f64, "");
    let through = match crate::client::login(target).await {
        Ok(token) => {
            rate(
                &Endpoint::gateway(target, &token),
                opts.concurrency,
                opts.duration,
                "http gateway",
            )
            .await
        }
        Err(e) => Err(e),
    };
    match through {
        Ok((through, chunks)) => {
            r.add("gateway rate", through, "requests/s");
            r.add("gateway chunks per answer", chunks as f64, "");
            r.add("gateway / direct", through / direct, "");
        }
        Err(e @ BenchError::RateLimited(_)) => return Err(e),
        Err(e @ BenchError::MissingFeature(_)) => {
            r.note(format!("gateway half skipped: {e}"));
        }
        Err(e) => {
            r.note(format!("gateway half failed: {e}"));
        }
    }
    Ok(r)
}
