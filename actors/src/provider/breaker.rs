//! A circuit breaker per upstream endpoint: after `failure_threshold` failures in a row it opens
//! and refuses calls for `open_for`; then one probe is let through (half-open); its success closes
//! the breaker, its failure opens it again.
//!
//! Time is tokio's, so tests drive the transitions on a paused clock.

use std::{
    collections::VecDeque,
    sync::{Arc, Mutex},
    time::Duration,
};

use serde::Serialize;
use tokio::time::Instant;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Closed { failures: u32 },
    Open { until: Instant },
    HalfOpen { probing: bool },
}

/// What an operator sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum BreakerState {
    Closed,
    Open,
    HalfOpen,
}

/// How many of the latest calls [`Breaker::recent`] reports on.
pub const RECENT_CALLS: usize = 100;

/// The outcome of the latest calls (at most [`RECENT_CALLS`]), for the admin panel's error rate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
pub struct RecentCalls {
    pub calls: usize,
    pub failures: usize,
}

#[derive(Debug)]
pub struct Breaker {
    state: Mutex<State>,
    failure_threshold: u32,
    open_for: Duration,
    /// `true` for each failed call among the latest, oldest first.
    recent: Mutex<VecDeque<bool>>,
}

/// The breaker is open: the call was not made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("circuit open for {retry_in:?} more")]
pub struct BreakerOpen {
    pub retry_in: Duration,
}

/// Leave to make one call. Report how it went with [`Permit::succeeded`] or
/// [`Permit::failed`]; a permit dropped unreported (the call was cancelled) counts as neither.
#[must_use]
pub struct Permit {
    breaker: Arc<Breaker>,
    probe: bool,
    reported: bool,
}

impl Breaker {
    pub fn new(failure_threshold: u32, open_for: Duration) -> Arc<Breaker> {
        Arc::new(Breaker {
            state: Mutex::new(State::Closed { failures: 0 }),
            failure_threshold: failure_threshold.max(1),
            open_for,
            recent: Mutex::new(VecDeque::with_capacity(RECENT_CALLS)),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn state(&self) -> BreakerState {
        match *self.lock() {
            State::Closed { .. } => BreakerState::Closed,
            State::Open { until } if Instant::now() >= until => BreakerState::HalfOpen,
            State::Open { .. } => BreakerState::Open,
            State::HalfOpen { .. } => BreakerState::HalfOpen,
        }
    }

    /// How the latest calls went (calls refused while open are not calls).
    pub fn recent(&self) -> RecentCalls {
        let recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        RecentCalls {
            calls: recent.len(),
            failures: recent.iter().filter(|failed| **failed).count(),
        }
    }

    pub fn try_acquire(self: &Arc<Self>) -> Result<Permit, BreakerOpen> {
        let mut state = self.lock();
        let probe = match *state {
            State::Closed { .. } => false,
            State::Open { until } => {
                let now = Instant::now();
                if now < until {
                    return Err(BreakerOpen {
                        retry_in: until - now,
                    });
                }
                *state = State::HalfOpen { probing: true };
                true
            }
            State::HalfOpen { probing: false } => {
                *state = State::HalfOpen { probing: true };
                true
            }
            State::HalfOpen { probing: true } => {
                return Err(BreakerOpen {
                    retry_in: Duration::ZERO,
                })
            }
        };
        Ok(Permit {
            breaker: self.clone(),
            probe,
            reported: false,
        })
    }

    fn record(&self, success: bool) {
        {
            let mut recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
            if recent.len() == RECENT_CALLS {
                recent.pop_front();
            }
            recent.push_back(!success);
        }
        let mut state = self.lock();
        *state = match (*state, success) {
            (_, true) => State::Closed { failures: 0 },
            (State::Closed { failures }, false) if failures + 1 < self.failure_threshold => {
                State::Closed {
                    failures: failures + 1,
                }
            }
            (_, false) => {
                tracing::warn!(
                    open_ms = self.open_for.as_millis() as u64,
                    "circuit breaker opened"
                );
                State::Open {
                    until: Instant::now() + self.open_for,
                }
            }
        };
    }
}

impl Permit {
    pub fn succeeded(mut self) {
        self.reported = true;
        self.breaker.record(true);
    }

    pub fn failed(mut self) {
        self.reported = true;
        self.breaker.record(false);
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if !self.reported && self.probe {
            // A cancelled probe proves nothing: let the next call probe.
            let mut state = self.breaker.lock();
            if *state == (State::HalfOpen { probing: true }) {
                *state = State::HalfOpen { probing: false };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn opens_after_threshold_probes_then_closes() {
        let b = Breaker::new(3, Duration::from_secs(30));
        for _ in 0..2 {
            b.try_acquire().unwrap().failed();
        }
        assert_eq!(b.state(), BreakerState::Closed);
        b.try_acquire().unwrap().failed();
        assert_eq!(b.state(), BreakerState::Open);
        let refused = b.try_acquire().err().unwrap();
        assert_eq!(refused.retry_in, Duration::from_secs(30));

        tokio::time::advance(Duration::from_secs(29)).await;
        assert!(b.try_acquire().is_err(), "still open");
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(b.state(), BreakerState::HalfOpen);
        let probe = b.try_acquire().expect("one probe");
        assert!(b.try_acquire().is_err(), "only one probe at a time");
        probe.succeeded();
        assert_eq!(b.state(), BreakerState::Closed);
        assert!(b.try_acquire().is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn recent_calls_count_the_latest_outcomes_only() {
        let b = Breaker::new(1_000, Duration::from_secs(5));
        assert_eq!(
            b.recent(),
            RecentCalls {
                calls: 0,
                failures: 0
            }
        );
        for _ in 0..3 {
            b.try_acquire().unwrap().failed();
        }
        b.try_acquire().unwrap().succeeded();
        drop(b.try_acquire().unwrap());
        assert_eq!(
            b.recent(),
            RecentCalls {
                calls: 4,
                failures: 3
            }
        );
        for _ in 0..RECENT_CALLS {
            b.try_acquire().unwrap().succeeded();
        }
        assert_eq!(
            b.recent(),
            RecentCalls {
                calls: RECENT_CALLS,
                failures: 0
            }
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_probe_opens_again() {
        let b = Breaker::new(1, Duration::from_secs(10));
        b.try_acquire().unwrap().failed();
        tokio::time::advance(Duration::from_secs(10)).await;
        b.try_acquire().unwrap().failed();
        assert_eq!(b.state(), BreakerState::Open);
        assert_eq!(
            b.try_acquire().err().unwrap().retry_in,
            Duration::from_secs(10)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_cancelled_probe_lets_the_next_call_probe() {
        let b = Breaker::new(1, Duration::from_secs(5));
        b.try_acquire().unwrap().failed();
        tokio::time::advance(Duration::from_secs(5)).await;
        drop(b.try_acquire().unwrap());
        assert!(b.try_acquire().is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn success_resets_the_failure_count() {
        let b = Breaker::new(2, Duration::from_secs(5));
        b.try_acquire().unwrap().failed();
        b.try_acquire().unwrap().succeeded();
        b.try_acquire().unwrap().failed();
        assert_eq!(b.state(), BreakerState::Closed);
    }
}
