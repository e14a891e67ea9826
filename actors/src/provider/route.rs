//! A model's route: the targets to try in order (the model's own upstream, then its fallbacks),
//! retries with backoff while nothing has reached the client, and a circuit breaker per
//! upstream endpoint. A route is itself a [`Provider`], so a running request is one
//! `ProviderStream` whatever happens inside it.

use std::{sync::Arc, time::Duration};

use futures_util::future::LocalBoxFuture;
use tracing::Instrument;

use super::{breaker::Breaker, ChunkSink, Finish, Provider, ProviderError, ProviderRequest};

/// An upstream endpoint (one `[providers.NAME]`) and its breaker, shared by every model on it.
#[derive(Clone)]
pub struct Upstream {
    /// The configured name (`NAME` in `[providers.NAME]`): two upstreams of one kind are two
    /// names in metrics and usage records.
    pub name: Arc<str>,
    pub provider: Arc<dyn Provider>,
    pub breaker: Arc<Breaker>,
}

impl Upstream {
    /// An upstream named after its provider's kind.
    pub fn new(provider: Arc<dyn Provider>, breaker: Arc<Breaker>) -> Self {
        Upstream {
            name: provider.name().into(),
            provider,
            breaker,
        }
    }

    /// The same upstream under its configured name.
    pub fn named(mut self, name: &str) -> Self {
        self.name = name.into();
        self
    }
}

/// One step of a route: an upstream and the model name it knows.
#[derive(Clone)]
pub struct Target {
    pub upstream: Upstream,
    pub upstream_model: String,
    /// Drop the request parameters the upstream cannot take instead of refusing the request
    /// (a model's opt-in `drop_params`).
    pub drop_params: bool,
}

impl Target {
    pub fn new(upstream: Upstream, upstream_model: &str) -> Self {
        Target {
            upstream,
            upstream_model: upstream_model.to_owned(),
            drop_params: false,
        }
    }

    /// The same target, dropping what its upstream cannot take when `drop` is set.
    pub fn dropping_params(mut self, drop: bool) -> Self {
        self.drop_params = drop;
        self
    }
}

/// How hard to try one target before moving to the next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Further attempts on the same target after a retryable failure.
    pub max_retries: u32,
    /// The first pause; it doubles with each retry.
    pub backoff: Duration,
    /// A pause (backoff or an upstream's `Retry-After`) longer than this moves to the next
    /// target instead of waiting.
    pub max_delay: Duration,
}

impl RetryPolicy {
    pub fn none() -> Self {
        RetryPolicy {
            max_retries: 0,
            backoff: Duration::ZERO,
            max_delay: Duration::ZERO,
        }
    }

    fn delay(&self, attempt: u32, error: &ProviderError) -> Duration {
        match error {
            ProviderError::RateLimited {
                retry_after_ms: Some(ms),
                ..
            } => Duration::from_millis(*ms),
            _ => self.backoff * 2u32.saturating_pow(attempt.saturating_sub(1)),
        }
    }
}

pub struct Route {
    pub targets: Vec<Target>,
    pub retry: RetryPolicy,
}

/// Whether an error says the upstream itself is unwell (and so counts against its breaker).
/// A rate limit, a bad request or a filtered answer says nothing about its health.
fn counts_against_breaker(e: &ProviderError) -> bool {
    match e {
        ProviderError::Upstream { status, .. } => *status >= 500,
        ProviderError::Timeout { .. }
        | ProviderError::Unavailable { .. }
        | ProviderError::Protocol { .. } => true,
        ProviderError::RateLimited { .. }
        | ProviderError::Filtered { .. }
        | ProviderError::Unsupported { .. }
        | ProviderError::SessionClosed => false,
    }
}

impl Route {
    pub fn new(targets: Vec<Target>, retry: RetryPolicy) -> Self {
        assert!(!targets.is_empty(), "a route needs a target");
        Route { targets, retry }
    }

    /// The provider of the route's first target.
    pub fn primary(&self) -> &Arc<dyn Provider> {
        &self.targets[0].upstream.provider
    }

    async fn run(
        self: Arc<Self>,
        request: ProviderRequest,
        sink: ChunkSink,
    ) -> Result<Finish, ProviderError> {
        let mut last_error = None;
        for target in &self.targets {
            let provider = &target.upstream.provider;
            let mut attempt = 0;
            loop {
                let permit = match target.upstream.breaker.try_acquire() {
                    Ok(p) => p,
                    Err(open) => {
                        last_error = Some(ProviderError::Unavailable {
                            provider: provider.name(),
                            message: format!("{open} after repeated failures"),
                        });
                        break;
                    }
                };
                sink.started(target.upstream.name.clone());
                let sent_before = sink.chunks_sent();
                let mut attempt_request = ProviderRequest {
                    upstream_model: target.upstream_model.clone(),
                    ..request.clone()
                };
                if target.drop_params {
                    attempt_request.drop_unsupported(provider.supported_params());
                }
                let call = tracing::info_span!(
                    parent: &attempt_request.span,
                    "provider_call",
                    provider = %target.upstream.name,
                    upstream_model = %target.upstream_model,
                    attempt,
                    error = tracing::field::Empty,
                );
                let result = provider
                    .clone()
                    .stream(attempt_request, sink.clone())
                    .instrument(call.clone())
                    .await;
                if let Err(e) = &result {
                    call.record("error", tracing::field::display(e));
                }
                let error = match result {
                    Ok(mut finish) => {
                        permit.succeeded();
                        // Usage is never silently zero: what the upstream did not report, the
                        // gateway counts.
                        let u = finish.usage;
                        if u.prompt_tokens == 0 || u.completion_tokens == 0 {
                            finish.usage = super::estimate::complete(
                                u,
                                &request,
                                &target.upstream_model,
                                &sink.answer_text(),
                            );
                        }
                        return Ok(finish);
                    }
                    Err(ProviderError::SessionClosed) => return Err(ProviderError::SessionClosed),
                    Err(e) => e,
                };
                if counts_against_breaker(&error) {
                    permit.failed();
                } else {
                    drop(permit);
                }
                // Once a chunk reached the client, another attempt would repeat or contradict it.
                if sink.chunks_sent() > sent_before {
                    return Err(error);
                }
                tracing::info!(provider = %target.upstream.name, attempt, error = %error, "upstream attempt failed");
                attempt += 1;
                let delay = self.retry.delay(attempt, &error);
                let retry_here = error.is_retryable()
                    && attempt <= self.retry.max_retries
                    && delay <= self.retry.max_delay;
                last_error = Some(error);
                if !retry_here {
                    break;
                }
                actix_rt::time::sleep(delay).await;
            }
        }
        Err(last_error.expect("a route has a target"))
    }
}

impl Provider for Route {
    fn name(&self) -> &'static str {
        self.primary().name()
    }

    fn stream(
        self: Arc<Self>,
        request: ProviderRequest,
        sink: ChunkSink,
    ) -> LocalBoxFuture<'static, Result<Finish, ProviderError>> {
        Box::pin(self.run(request, sink))
    }
}
