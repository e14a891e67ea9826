//! Byte-counted flow control between a session's outbound queue and the streams feeding it.

use std::sync::{
    atomic::{AtomicBool, AtomicUsize, Ordering},
    Arc,
};

use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::Notify;

/// Counts the bytes queued for one client and not yet handed to the socket.
///
/// Provider streams charge each chunk before sending it and wait while the queue is above the
/// high watermark, so a slow reader slows the provider instead of growing memory. The session's
/// outbox releases the charge once the connection takes the frame for the socket.
#[derive(Debug)]
pub struct FlowControl {
    queued_bytes: AtomicUsize,
    high_watermark_bytes: usize,
    closed: AtomicBool,
    drained: Notify,
    /// The node-wide total of queued bytes, kept in step with this flow's.
    total: Option<Gauge>,
}

/// The session behind this flow has closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("session closed")]
pub struct SessionClosed;

impl FlowControl {
    pub fn new(high_watermark_bytes: usize) -> Arc<Self> {
        Self::counted(high_watermark_bytes, None)
    }

    /// A flow whose bytes also count in the node-wide `total`.
    pub fn counted(high_watermark_bytes: usize, total: Option<Gauge>) -> Arc<Self> {
        Arc::new(FlowControl {
            queued_bytes: AtomicUsize::new(0),
            high_watermark_bytes,
            closed: AtomicBool::new(false),
            drained: Notify::new(),
            total,
        })
    }

    pub fn queued_bytes(&self) -> usize {
        self.queued_bytes.load(Ordering::Relaxed)
    }

    pub fn charge(&self, bytes: usize) {
        self.queued_bytes.fetch_add(bytes, Ordering::Relaxed);
        if let Some(total) = &self.total {
            total.inc_by(bytes as i64);
        }
    }

    pub fn release(&self, bytes: usize) {
        if let Some(total) = &self.total {
            total.dec_by(bytes as i64);
        }
        let before = self.queued_bytes.fetch_sub(bytes, Ordering::Relaxed);
        if before > self.high_watermark_bytes && before - bytes <= self.high_watermark_bytes {
            self.drained.notify_waiters();
        }
    }

    pub fn close(&self) {
        self.closed.store(true, Ordering::Relaxed);
        self.drained.notify_waiters();
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Relaxed)
    }

    /// Waits until the queue is at or below the high watermark.
    pub async fn ready(&self) -> Result<(), SessionClosed> {
        loop {
            let drained = self.drained.notified();
            tokio::pin!(drained);
            // Register before checking, so a release between the check and the wait is not lost.
            drained.as_mut().enable();
            if self.is_closed() {
                return Err(SessionClosed);
            }
            if self.queued_bytes() <= self.high_watermark_bytes {
                return Ok(());
            }
            drained.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn waits_above_watermark_until_released() {
        let flow = FlowControl::new(10);
        flow.charge(25);
        let waiter = {
            let flow = flow.clone();
            tokio::spawn(async move { flow.ready().await })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiter.is_finished());
        flow.release(20);
        assert_eq!(waiter.await.unwrap(), Ok(()));
    }

    #[tokio::test]
    async fn close_wakes_waiters_with_an_error() {
        let flow = FlowControl::new(0);
        flow.charge(1);
        let waiter = {
            let flow = flow.clone();
            tokio::spawn(async move { flow.ready().await })
        };
        tokio::time::sleep(Duration::from_millis(10)).await;
        flow.close();
        assert_eq!(waiter.await.unwrap(), Err(SessionClosed));
    }
}
