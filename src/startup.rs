//! Waiting for PostgreSQL and Redis at start-up (`ai-gateway migrate` and a starting node):
//! retries with exponential backoff, a warning per retry (never with a password), and a clear
//! error once `db_connect_timeout_secs` has passed.

use std::{
    future::Future,
    time::{Duration, Instant},
};

/// First pause between two attempts; it doubles up to [`MAX_DELAY`].
const FIRST_DELAY: Duration = Duration::from_millis(200);
/// Longest pause between two attempts.
const MAX_DELAY: Duration = Duration::from_secs(10);
/// Longest wait for one attempt, so a peer that never answers costs a retry, not the limit.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a dependency could not be reached at start-up.
#[derive(Debug, thiserror::Error)]
pub enum WaitError {
    #[error(
        "{what} at {target} did not answer within {limit:?} ({attempts} attempts; \
         db_connect_timeout_secs sets how long to wait); last error: {last}"
    )]
    TimedOut {
        what: &'static str,
        /// The address with its password replaced by `***`.
        target: String,
        limit: Duration,
        attempts: u32,
        last: String,
    },
    /// An error that waiting does not cure (a bad URL, a wrong password, a missing database).
    #[error("{what} at {target}: {error}")]
    Refused {
        what: &'static str,
        target: String,
        error: String,
    },
}

/// Runs `attempt` until it succeeds, retrying with backoff while `transient` says its error may
/// pass and `limit` (none: for ever) has not run out. `target` is shown in logs and errors: pass
/// it through [`crate::config::redact_url`].
pub async fn wait_for<T, E, F, Fut>(
    what: &'static str,
    target: &str,
    limit: Option<Duration>,
    transient: impl Fn(&E) -> bool,
    mut attempt: F,
) -> Result<T, WaitError>
where
    E: std::error::Error + 'static,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let started = Instant::now();
    let deadline = limit.map(|l| started + l);
    let mut delay = FIRST_DELAY;
    let mut attempts = 0u32;
    let mut last = String::new();
    let timed_out = |attempts, last| WaitError::TimedOut {
        what,
        target: target.to_owned(),
        limit: limit.unwrap_or_default(),
        attempts,
        last,
    };
    loop {
        let remaining = deadline.map(|d| d.saturating_duration_since(Instant::now()));
        if attempts > 0 && remaining.is_some_and(|r| r.is_zero()) {
            // The pause took what was left: no attempt without time to answer.
            return Err(timed_out(attempts, last));
        }
        attempts += 1;
        let budget = remaining.map_or(ATTEMPT_TIMEOUT, |r| r.min(ATTEMPT_TIMEOUT));
        let error = match tokio::time::timeout(budget, attempt()).await {
            Ok(Ok(v)) => {
                if attempts > 1 {
                    tracing::info!(target_addr = %target, attempts, "{what} answered");
                }
                return Ok(v);
            }
            Ok(Err(e)) if !transient(&e) => {
                return Err(WaitError::Refused {
                    what,
                    target: target.to_owned(),
                    error: with_causes(&e),
                })
            }
            Ok(Err(e)) => with_causes(&e),
            Err(_) => format!("no answer within {} ms", budget.as_millis()),
        };
        let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
        if left.is_some_and(|l| l.is_zero()) {
            return Err(timed_out(attempts, error));
        }
        let pause = left.map_or(delay, |l| l.min(delay));
        tracing::warn!(
            target_addr = %target,
            attempt = attempts,
            retry_in_ms = pause.as_millis() as u64,
            error = %error,
            "{what} unreachable; retrying"
        );
        last = error;
        tokio::time::sleep(pause).await;
        delay = (delay * 2).min(MAX_DELAY);
    }
}

/// `error: cause: cause…`: "error performing TLS handshake" alone does not say why.
fn with_causes(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let more = c.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        cause = c.source();
    }
    text
}

/// `db_connect_timeout_secs` as a limit: 0 waits for ever.
pub fn limit(secs: u64) -> Option<Duration> {
    (secs > 0).then(|| Duration::from_secs(secs))
}

/// Whether a PostgreSQL connection error may pass by waiting: no answer, a dropped connection,
/// or a server that is starting, stopping or full. Authentication and missing databases do not.
/// A certificate that does not verify does not either.
pub fn postgres_transient(e: &tokio_postgres::Error) -> bool {
    use tokio_postgres::error::SqlState;
    if is_tls_failure(e) {
        return false;
    }
    match e.code() {
        None => true,
        Some(code) => [
            SqlState::CANNOT_CONNECT_NOW,
            SqlState::TOO_MANY_CONNECTIONS,
            SqlState::ADMIN_SHUTDOWN,
            SqlState::CRASH_SHUTDOWN,
        ]
        .contains(code),
    }
}

/// Whether a rustls error (a certificate that does not verify, a failed handshake) is among the
/// error's causes.
fn is_tls_failure(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cause {
        if err.is::<rustls::Error>() {
            return true;
        }
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            if io
                .get_ref()
                .is_some_and(|inner| inner.is::<rustls::Error>())
            {
                return true;
            }
        }
        cause = err.source();
    }
    false
}

/// Waits until PostgreSQL at `database_url` accepts a connection and answers a query, over TLS
/// when the URL says `sslmode=require` (trusting `ca_file` besides the Mozilla roots). Answers
/// how to connect, for the migrations and the pool.
pub async fn wait_for_postgres(
    database_url: &str,
    ca_file: &str,
    limit: Option<Duration>,
) -> Result<crate::store::postgres::PgTls, WaitError> {
    let target = crate::config::redact_url(database_url);
    let config: tokio_postgres::Config =
        database_url
            .parse()
            .map_err(|e: tokio_postgres::Error| WaitError::Refused {
                what: "PostgreSQL",
                target: target.clone(),
                error: format!("database_url: {e}"),
            })?;
    let tls = crate::store::postgres::PgTls::for_config(&config, ca_file).map_err(|e| {
        WaitError::Refused {
            what: "PostgreSQL",
            target: target.clone(),
            error: e.to_string(),
        }
    })?;
    wait_for("PostgreSQL", &target, limit, postgres_transient, || {
        crate::store::postgres::probe(&config, &tls)
    })
    .await?;
    Ok(tls)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn gives_up_at_the_limit_and_stops_at_a_lasting_error() {
        let started = Instant::now();
        let err = wait_for(
            "Thing",
            "thing://host",
            Some(Duration::from_millis(700)),
            |_: &std::io::Error| true,
            || async { Err::<(), _>(std::io::Error::other("refused")) },
        )
        .await
        .unwrap_err();
        let took = started.elapsed();
        assert!(
            took >= Duration::from_millis(700) && took < Duration::from_secs(2),
            "{took:?}"
        );
        let text = err.to_string();
        assert!(
            text.contains("Thing at thing://host did not answer within 700ms"),
            "{text}"
        );
        assert!(text.contains("last error: refused"), "{text}");

        let mut calls = 0;
        let err = wait_for(
            "Thing",
            "thing://host",
            None,
            |e: &std::io::Error| e.to_string() != "wrong password",
            || {
                calls += 1;
                async { Err::<(), _>(std::io::Error::other("wrong password")) }
            },
        )
        .await
        .unwrap_err();
        assert_eq!(calls, 1);
        assert!(matches!(err, WaitError::Refused { .. }), "{err}");
    }
}
