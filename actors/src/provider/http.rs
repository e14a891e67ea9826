//! What the HTTP providers share: the client, the timeouts, opening an event stream and turning
//! HTTP failures into [`ProviderError`]s.
//!
//! Events are parsed by `eventsource-stream` rather than by hand: it follows the SSE spec
//! (CR, LF and CRLF line ends, multi-line `data:`, comments, events split across TCP reads),
//! which is where hand-written parsers break.

use std::{pin::Pin, time::Duration};

use ai_gateway_proto::ChunkKind;
use eventsource_stream::{Event, EventStreamError, Eventsource};
use futures_util::{FutureExt, Stream, StreamExt};
use reqwest::{header::HeaderMap, RequestBuilder, Response, StatusCode};
use serde::de::DeserializeOwned;
use tokio::time::{timeout, timeout_at, Instant};

use super::{ChunkSink, Finish, ProviderError};

pub const DEFAULT_CONNECT_TIMEOUT_MS: u64 = 10_000;
/// Reasoning models may think a while before their first event.
pub const DEFAULT_FIRST_CHUNK_TIMEOUT_MS: u64 = 120_000;
pub const DEFAULT_IDLE_CHUNK_TIMEOUT_MS: u64 = 60_000;
/// No limit on a whole answer by default: a long answer that keeps flowing is fine.
pub const DEFAULT_TOTAL_TIMEOUT_MS: u64 = 0;
/// How much of an error body is read to find the provider's message.
const MAX_ERROR_BODY_BYTES: usize = 64 * 1024;
/// How much of a bad body or event is quoted in an error message.
const QUOTE_CHARS: usize = 200;

/// Settings that cannot work, found when a provider is built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidSettings(pub String);

/// A provider's time limits; zero means none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// Establishing the TCP (and TLS) connection.
    pub connect_timeout_ms: u64,
    /// From sending the request to the answer's first piece of text or reasoning. Events
    /// without content (role-only deltas, `message_start`, pings) do not stop this clock: a
    /// model may send them at once and then think for long.
    pub first_chunk_timeout_ms: u64,
    /// Between two events once the answer has started.
    pub idle_chunk_timeout_ms: u64,
    /// The whole answer, from sending the request to its last event.
    pub total_timeout_ms: u64,
}

/// What every HTTP provider writes the same way: its settings' `timeouts()` (from the four
/// `*_timeout_ms` fields each settings struct declares, so that `deny_unknown_fields` keeps
/// working) and the `Provider` impl that runs its `answer` under `total_timeout_ms`. The
/// provider's module must have a `NAME`, the provider a `settings` field and an
/// `async fn answer(&self, ProviderRequest, ChunkSink) -> Result<Finish, ProviderError>`.
macro_rules! http_provider {
    ($provider:ty, $settings:ty, supported: $supported:expr) => {
        $crate::provider::http::http_provider!(@impl $provider, $settings, {
            fn supported_params(&self) -> &'static [&'static str] {
                $supported
            }
        });
    };
    ($provider:ty, $settings:ty) => {
        $crate::provider::http::http_provider!(@impl $provider, $settings, {});
    };
    (@impl $provider:ty, $settings:ty, { $($extra:tt)* }) => {
        impl $settings {
            pub fn timeouts(&self) -> $crate::provider::Timeouts {
                $crate::provider::Timeouts {
                    connect_timeout_ms: self.connect_timeout_ms,
                    first_chunk_timeout_ms: self.first_chunk_timeout_ms,
                    idle_chunk_timeout_ms: self.idle_chunk_timeout_ms,
                    total_timeout_ms: self.total_timeout_ms,
                }
            }
        }

        impl $crate::provider::Provider for $provider {
            fn name(&self) -> &'static str {
                NAME
            }

            $($extra)*

            fn stream(
                self: ::std::sync::Arc<Self>,
                request: $crate::provider::ProviderRequest,
                sink: $crate::provider::ChunkSink,
            ) -> ::futures_util::future::LocalBoxFuture<
                'static,
                Result<$crate::provider::Finish, $crate::provider::ProviderError>,
            > {
                Box::pin(async move {
                    let timeouts = self.settings.timeouts();
                    timeouts.total(NAME, self.answer(request, sink)).await
                })
            }
        }
    };
}
pub(crate) use http_provider;

fn limit(ms: u64) -> Option<Duration> {
    (ms > 0).then(|| Duration::from_millis(ms))
}

impl Timeouts {
    /// Runs a whole answer under `total_timeout_ms`.
    pub(crate) async fn total<F>(
        &self,
        provider: &'static str,
        answer: F,
    ) -> Result<Finish, ProviderError>
    where
        F: std::future::Future<Output = Result<Finish, ProviderError>>,
    {
        match limit(self.total_timeout_ms) {
            None => answer.await,
            Some(d) => timeout(d, answer).await.unwrap_or_else(|_| {
                Err(ProviderError::Timeout {
                    provider,
                    message: format!(
                        "no complete answer within total_timeout_ms = {}",
                        self.total_timeout_ms
                    ),
                })
            }),
        }
    }
}

pub(crate) fn default_connect_timeout_ms() -> u64 {
    DEFAULT_CONNECT_TIMEOUT_MS
}
pub(crate) fn default_first_chunk_timeout_ms() -> u64 {
    DEFAULT_FIRST_CHUNK_TIMEOUT_MS
}
pub(crate) fn default_idle_chunk_timeout_ms() -> u64 {
    DEFAULT_IDLE_CHUNK_TIMEOUT_MS
}
pub(crate) fn default_total_timeout_ms() -> u64 {
    DEFAULT_TOTAL_TIMEOUT_MS
}

/// Checks a base URL and drops its trailing `/`.
pub(crate) fn base_url(provider: &str, url: &str) -> Result<String, InvalidSettings> {
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        return Err(InvalidSettings(format!(
            "providers.{provider}.base_url must start with http:// or https://, got {url:?}"
        )));
    }
    Ok(url.trim_end_matches('/').to_owned())
}

/// The HTTP client of one provider. It keeps a connection pool shared by every arbiter; the
/// arbiters live as long as the server, so pooled connections never outlive their runtime.
pub(crate) fn client(
    provider: &str,
    timeouts: &Timeouts,
) -> Result<reqwest::Client, InvalidSettings> {
    let mut builder =
        reqwest::Client::builder().user_agent(concat!("ai-gateway/", env!("CARGO_PKG_VERSION")));
    if let Some(d) = limit(timeouts.connect_timeout_ms) {
        builder = builder.connect_timeout(d);
    }
    builder.build().map_err(|e| {
        InvalidSettings(format!(
            "providers.{provider}: cannot build an HTTP client: {e}"
        ))
    })
}

/// What a provider's error body says.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct ErrorDetails {
    pub message: Option<String>,
    /// A retry delay given in the body (Gemini's `RetryInfo`).
    pub retry_after_ms: Option<u64>,
}

/// Reads a provider's JSON error body.
pub(crate) type ReadErrorBody = fn(&serde_json::Value) -> ErrorDetails;

/// An answer's event stream, with the first-chunk and idle timeouts applied to each event.
pub(crate) struct Events {
    provider: &'static str,
    inner: Pin<Box<dyn Stream<Item = Result<Event, EventStreamError<reqwest::Error>>>>>,
    first_deadline: Option<Instant>,
    timeouts: Timeouts,
    /// A piece of the answer has been sent: the idle timeout applies from now on.
    answer_started: bool,
    /// The first piece has been handed over: from now on a batch waits one turn of the
    /// scheduler for the rest of a read (the first piece never waits).
    batching: bool,
}

/// Sends `request` and opens its event stream, or says why it could not.
pub(crate) async fn open_events(
    provider: &'static str,
    timeouts: Timeouts,
    request: RequestBuilder,
    read_error: ReadErrorBody,
) -> Result<Events, ProviderError> {
    let first_deadline = limit(timeouts.first_chunk_timeout_ms).map(|d| Instant::now() + d);
    let first_timeout = || ProviderError::Timeout {
        provider,
        message: format!(
            "no answer within first_chunk_timeout_ms = {}",
            timeouts.first_chunk_timeout_ms
        ),
    };
    let mut request = request.header("accept", "text/event-stream");
    for (name, value) in crate::trace::current_headers() {
        request = request.header(name, value);
    }
    let sent = request.send();
    let response = match first_deadline {
        Some(deadline) => timeout_at(deadline, sent)
            .await
            .map_err(|_| first_timeout())?,
        None => sent.await,
    }
    .map_err(|e| send_error(provider, &timeouts, e))?;
    let status = response.status();
    if !status.is_success() {
        return Err(http_error(provider, response, read_error).await);
    }
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    if !content_type.starts_with("text/event-stream") {
        let (body, _) = read_error_body(response).await;
        return Err(ProviderError::Protocol {
            provider,
            message: format!(
                "expected text/event-stream, got {content_type:?}: {}",
                quote(&body)
            ),
        });
    }
    Ok(Events {
        provider,
        inner: Box::pin(without_bom(Box::pin(response.bytes_stream())).eventsource()),
        first_deadline,
        timeouts,
        answer_started: false,
        batching: false,
    })
}

/// Polls `next` once after letting every other ready task run: `None` if it is still pending.
async fn yield_then<F: std::future::Future + Unpin>(mut next: F) -> Option<F::Output> {
    tokio::task::yield_now().await;
    (&mut next).now_or_never()
}

/// The upstream's body without a leading UTF-8 byte-order mark. eventsource-stream 0.2.3 drops
/// the mark by slicing one byte off the first text, which panics on the mark's three bytes; so
/// the bytes are looked at here until they are known not to start with it (a mark split over
/// pieces included), and everything after passes through untouched.
fn without_bom<S, E>(inner: S) -> impl Stream<Item = Result<bytes::Bytes, E>>
where
    S: Stream<Item = Result<bytes::Bytes, E>> + Unpin,
{
    const BOM: &[u8] = b"\xEF\xBB\xBF";
    // The bytes read while it is still open whether they start with the mark; None after.
    let state = (inner.fuse(), Some(Vec::new()));
    futures_util::stream::unfold(state, |(mut inner, head)| async move {
        let Some(mut seen) = head else {
            let next = inner.next().await?;
            return Some((next, (inner, None)));
        };
        loop {
            match inner.next().await {
                Some(Ok(piece)) => {
                    seen.extend_from_slice(&piece);
                    if seen.len() < BOM.len() && BOM.starts_with(&seen) {
                        continue;
                    }
                }
                Some(Err(e)) => return Some((Err(e), (inner, None))),
                // The stream ends (fused: a later poll answers None again).
                None if seen.is_empty() => return None,
                None => {}
            }
            let rest = seen.strip_prefix(BOM).unwrap_or(&seen);
            let rest = bytes::Bytes::copy_from_slice(rest);
            return Some((Ok(rest), (inner, None)));
        }
    })
}

impl Events {
    /// The next event; `None` when the upstream ended the stream. An event already received
    /// comes at once; before waiting for the upstream, the chunks gathered in `sink` are handed
    /// over, so that everything one read brought travels as one batch.
    pub async fn next(&mut self, sink: &ChunkSink) -> Result<Option<Event>, ProviderError> {
        let ready = match self.inner.next().now_or_never() {
            Some(item) => Some(item),
            // The HTTP client's connection task decodes the body one piece at a time, as it is
            // asked for: a piece already read from the socket may just not be decoded yet. One
            // turn of the scheduler lets it catch up, so that an answer that arrived in one read
            // leaves as one batch (one write to the client, not one per event).
            None if self.batching => yield_then(self.inner.next()).await,
            None => None,
        };
        let item = match ready {
            Some(item) => item,
            None => {
                sink.flush().await?;
                self.batching = self.answer_started;
                self.wait_next().await?
            }
        };
        match item {
            None => Ok(None),
            Some(Ok(event)) => Ok(Some(event)),
            Some(Err(EventStreamError::Transport(e))) => Err(ProviderError::Unavailable {
                provider: self.provider,
                message: format!("connection lost mid-stream: {}", describe(&e.without_url())),
            }),
            Some(Err(e)) => Err(ProviderError::Protocol {
                provider: self.provider,
                message: format!("unreadable event stream: {e}"),
            }),
        }
    }

    /// Waits for the upstream's next event under the first-chunk or idle timeout.
    async fn wait_next(
        &mut self,
    ) -> Result<Option<Result<Event, EventStreamError<reqwest::Error>>>, ProviderError> {
        let next = self.inner.next();
        if !self.answer_started {
            match self.first_deadline {
                Some(deadline) => {
                    timeout_at(deadline, next)
                        .await
                        .map_err(|_| ProviderError::Timeout {
                            provider: self.provider,
                            message: format!(
                                "no first event within first_chunk_timeout_ms = {}",
                                self.timeouts.first_chunk_timeout_ms
                            ),
                        })
                }
                None => Ok(next.await),
            }
        } else {
            match limit(self.timeouts.idle_chunk_timeout_ms) {
                Some(d) => timeout(d, next).await.map_err(|_| ProviderError::Timeout {
                    provider: self.provider,
                    message: format!(
                        "no event for idle_chunk_timeout_ms = {}",
                        self.timeouts.idle_chunk_timeout_ms
                    ),
                }),
                None => Ok(next.await),
            }
        }
    }

    /// Parses an event's JSON `data`; invalid JSON is the upstream's fault.
    pub fn parse<T: DeserializeOwned>(&self, event: &Event) -> Result<T, ProviderError> {
        serde_json::from_str(&event.data).map_err(|e| ProviderError::Protocol {
            provider: self.provider,
            message: format!("invalid JSON in event ({e}): {}", quote(&event.data)),
        })
    }

    /// Sends a piece of the answer; empty pieces (role-only deltas, empty parts) are skipped.
    pub async fn emit(
        &mut self,
        sink: &ChunkSink,
        kind: ChunkKind,
        text: Option<String>,
    ) -> Result<(), ProviderError> {
        match text {
            Some(text) if !text.is_empty() => {
                self.answer_started = true;
                Ok(sink.chunk(kind, text).await?)
            }
            _ => Ok(()),
        }
    }
}

impl Events {
    /// Sends a piece of a tool call; a piece with neither a new id, name nor argument text is
    /// skipped.
    pub async fn emit_tool_call(
        &mut self,
        sink: &ChunkSink,
        delta: super::ToolCallDelta,
        arguments: String,
    ) -> Result<(), ProviderError> {
        if delta.id.is_none() && delta.name.is_none() && arguments.is_empty() {
            return Ok(());
        }
        self.answer_started = true;
        Ok(sink.tool_call(delta, arguments).await?)
    }
}

/// A request that got no response.
fn send_error(provider: &'static str, timeouts: &Timeouts, e: reqwest::Error) -> ProviderError {
    let e = e.without_url();
    if e.is_connect() && e.is_timeout() {
        ProviderError::Timeout {
            provider,
            message: format!(
                "no connection within connect_timeout_ms = {}",
                timeouts.connect_timeout_ms
            ),
        }
    } else if e.is_connect() {
        ProviderError::Unavailable {
            provider,
            message: format!("cannot connect: {}", describe(&e)),
        }
    } else {
        ProviderError::Unavailable {
            provider,
            message: describe(&e),
        }
    }
}

/// An error and every cause under it, joined with `: ` (reqwest's own message is terse).
fn describe(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

fn quote(text: &str) -> String {
    match text.char_indices().nth(QUOTE_CHARS) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text.to_owned(),
    }
}

/// Reads at most [`MAX_ERROR_BODY_BYTES`] of a body; read errors just end it.
async fn read_error_body(mut response: Response) -> (String, HeaderMap) {
    let headers = response.headers().clone();
    let mut body = Vec::new();
    let read = async {
        while let Ok(Some(chunk)) = response.chunk().await {
            body.extend_from_slice(&chunk);
            if body.len() >= MAX_ERROR_BODY_BYTES {
                break;
            }
        }
    };
    // An error body that does not come promptly is not worth waiting for.
    let _ = timeout(Duration::from_millis(DEFAULT_CONNECT_TIMEOUT_MS), read).await;
    body.truncate(MAX_ERROR_BODY_BYTES);
    (String::from_utf8_lossy(&body).into_owned(), headers)
}

/// A non-2xx response as a [`ProviderError`], with the provider's own message.
async fn http_error(
    provider: &'static str,
    response: Response,
    read_error: ReadErrorBody,
) -> ProviderError {
    let status = response.status();
    let (body, headers) = read_error_body(response).await;
    let details = serde_json::from_str(&body)
        .map(|json| read_error(&json))
        .unwrap_or_default();
    let message = details.message.unwrap_or_else(|| {
        if body.trim().is_empty() {
            status.canonical_reason().unwrap_or("no message").to_owned()
        } else {
            quote(body.trim())
        }
    });
    if status == StatusCode::TOO_MANY_REQUESTS {
        return ProviderError::RateLimited {
            provider,
            retry_after_ms: retry_after_ms(&headers).or(details.retry_after_ms),
            message,
        };
    }
    ProviderError::Upstream {
        provider,
        status: status.as_u16(),
        message,
    }
}

/// `retry-after-ms` (OpenAI) or `retry-after` in seconds; HTTP dates are not used by these APIs.
fn retry_after_ms(headers: &HeaderMap) -> Option<u64> {
    let number = |name: &str| -> Option<f64> {
        let v: f64 = headers.get(name)?.to_str().ok()?.trim().parse().ok()?;
        (v.is_finite() && v >= 0.0).then_some(v)
    };
    number("retry-after-ms")
        .map(|ms| ms.ceil() as u64)
        .or_else(|| number("retry-after").map(|s| (s * 1000.0).ceil() as u64))
}

/// A protobuf `Duration` in JSON form (`"1.5s"`), as Gemini's `RetryInfo.retryDelay` gives it.
pub(crate) fn duration_ms(text: &str) -> Option<u64> {
    let secs: f64 = text.strip_suffix('s')?.parse().ok()?;
    (secs.is_finite() && secs >= 0.0).then(|| (secs * 1000.0).ceil() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_reads_seconds_and_milliseconds() {
        let mut h = HeaderMap::new();
        assert_eq!(retry_after_ms(&h), None);
        h.insert("retry-after", "2".parse().unwrap());
        assert_eq!(retry_after_ms(&h), Some(2000));
        h.insert("retry-after-ms", "150.5".parse().unwrap());
        assert_eq!(retry_after_ms(&h), Some(151));
        let mut h = HeaderMap::new();
        h.insert(
            "retry-after",
            "Wed, 21 Oct 2015 07:28:00 GMT".parse().unwrap(),
        );
        assert_eq!(retry_after_ms(&h), None);
    }

    #[test]
    fn protobuf_durations() {
        assert_eq!(duration_ms("1s"), Some(1000));
        assert_eq!(duration_ms("0.25s"), Some(250));
        assert_eq!(duration_ms("soon"), None);
    }

    #[test]
    fn base_urls_are_checked_and_trimmed() {
        assert_eq!(base_url("x", "http://h:1/v1/").unwrap(), "http://h:1/v1");
        assert!(base_url("x", "h:1").is_err());
    }

    #[test]
    fn quotes_are_cut_on_characters() {
        let long = "é".repeat(QUOTE_CHARS + 5);
        assert_eq!(quote(&long).chars().count(), QUOTE_CHARS + 1);
    }
}
