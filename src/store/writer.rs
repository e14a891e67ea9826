//! Writes that must not be lost when the store is briefly down: usage records and conversation
//! turns. They queue (bounded) and a task writes them in order, retrying while the store is
//! unavailable, so a chat never waits on PostgreSQL.

use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use tokio::sync::{mpsc, oneshot};

use super::{Exchange, StoreError, Stores, UsageRecord};

/// Longest pause between two attempts while the store is down.
const MAX_RETRY_DELAY: Duration = Duration::from_secs(5);
const FIRST_RETRY_DELAY: Duration = Duration::from_millis(100);

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PendingWrite {
    Usage(UsageRecord),
    Exchange(Exchange),
}

enum Job {
    Write(Box<PendingWrite>),
    Flush(oneshot::Sender<()>),
}

#[derive(Clone)]
pub struct WriteBehind {
    tx: mpsc::Sender<Job>,
    dropped: Arc<AtomicU64>,
}

impl WriteBehind {
    /// Starts the writer task on the current runtime; at most `capacity` writes wait.
    pub fn start(stores: Stores, capacity: usize) -> WriteBehind {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        actix_rt::spawn(run(stores, rx));
        WriteBehind {
            tx,
            dropped: Arc::default(),
        }
    }

    /// Queues a write. When the queue is full (a long outage) the write is dropped and counted:
    /// memory stays bounded.
    pub fn submit(&self, write: PendingWrite) {
        if self.tx.try_send(Job::Write(Box::new(write))).is_err() {
            let n = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            tracing::error!(
                dropped_total = n,
                "write queue full or closed: a record was dropped"
            );
        }
    }

    /// Writes dropped because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Waits until every write queued before this call is written.
    pub async fn flush(&self) {
        let (done, wait) = oneshot::channel();
        if self.tx.send(Job::Flush(done)).await.is_ok() {
            let _ = wait.await;
        }
    }
}

/// How long the writer lets writes gather once it has written what was queued. The writer runs
/// on another thread than the sessions that queue writes, and waking it is a system call and a
/// switch of tasks on a busy core: once a request when it waits for each write (7 % of the
/// gateway's core in the stream benchmark). Gathering makes that at most a few hundred times a
/// second, whatever the request rate; a write lands at most this much later.
const GATHER: Duration = Duration::from_millis(5);

async fn run(stores: Stores, mut rx: mpsc::Receiver<Job>) {
    while let Some(job) = rx.recv().await {
        write(&stores, job).await;
        while let Ok(job) = rx.try_recv() {
            write(&stores, job).await;
        }
        actix_rt::time::sleep(GATHER).await;
    }
}

/// Writes one queued record, retrying while the store is unavailable.
async fn write(stores: &Stores, job: Job) {
    let write = match job {
        Job::Write(w) => w,
        Job::Flush(done) => {
            let _ = done.send(());
            return;
        }
    };
    let mut delay = FIRST_RETRY_DELAY;
    loop {
        let result = match &*write {
            PendingWrite::Usage(r) => stores.usage.record_usage(r).await,
            PendingWrite::Exchange(e) => stores.conversations.append_exchange(e).await,
        };
        match result {
            Ok(()) => return,
            Err(StoreError::Unavailable(e)) => {
                tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "store down; will retry the write");
                actix_rt::time::sleep(delay).await;
                delay = (delay * 2).min(MAX_RETRY_DELAY);
            }
            Err(e) => {
                tracing::error!(error = %e, "write refused by the store; dropped");
                return;
            }
        }
    }
}
