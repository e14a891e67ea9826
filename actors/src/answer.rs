//! Resumable answers. Every WebSocket answer has a [`Journal`] in its node's [`AnswerHub`]:
//! its chunks in order and, once it ended, how. A client that lost its connection sends
//! `resume` with the answer's `stream_id` and gets the chunks it missed, then the rest live. The
//! answer itself does not depend on the connection that asked for it: when that connection
//! goes, the answer runs on for `grace` waiting for a resume, then is cancelled upstream.
//!
//! Memory is bounded: an answer whose journal outgrows `max_answer_bytes` stops being kept (it
//! still streams to its client); past `max_journal_bytes` for the node, the oldest finished
//! answers are forgotten first, then new chunks are not kept.

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex, MutexGuard,
    },
    time::{Duration, Instant},
};

use ai_gateway_proto::{ChunkKind, ErrorReason, FinishReason, Usage};

pub use crate::provider::chat::ToolCallDelta;
use prometheus_client::metrics::gauge::Gauge;
use rand::RngCore;
use tokio::sync::Notify;

/// Settings of resumable answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResumeSettings {
    /// How long a finished answer can still be resumed.
    pub retention: Duration,
    /// How long an answer whose connection went away runs on, waiting for a resume. Zero
    /// cancels it at once.
    pub grace: Duration,
    /// Largest journal of one answer (its text and a few bytes a chunk).
    pub max_answer_bytes: usize,
    /// Largest total of every journal on the node.
    pub max_journal_bytes: usize,
}

impl Default for ResumeSettings {
    fn default() -> Self {
        ResumeSettings {
            retention: Duration::from_secs(600),
            grace: Duration::from_secs(30),
            max_answer_bytes: 1024 * 1024,
            max_journal_bytes: 256 * 1024 * 1024,
        }
    }
}

/// Bytes a journal holds for a chunk beyond its text.
const BYTES_PER_CHUNK: usize = 8;

/// How an answer ended, as a resumed client is told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ending {
    pub finish_reason: FinishReason,
    pub usage: Usage,
    /// The error frame that came before `done`, when the answer failed.
    pub error: Option<(ErrorReason, String)>,
}

/// What a reader gets from a journal.
#[derive(Debug, Default)]
pub struct Read {
    /// Chunks after the reader's cursor: `(seq, kind, text, tool call)`.
    pub chunks: Vec<(u64, ChunkKind, String, Option<ToolCallDelta>)>,
    pub ending: Option<Ending>,
    /// Chunks kept in all.
    pub total: u64,
    /// The journal was dropped (too large, or the node's budget ran out): it cannot be resumed.
    pub lost: bool,
}

#[derive(Default)]
struct Kept {
    /// Every chunk's text, one after the other.
    text: String,
    /// Each chunk's end offset in `text`, and its kind; its index is its `seq`.
    marks: Vec<(u32, ChunkKind)>,
    /// The tool call of each `tool_call` chunk, by `seq`.
    calls: Vec<(u64, ToolCallDelta)>,
    lost: bool,
    ending: Option<Ending>,
    ended_at: Option<Instant>,
    /// Readers attached now (resumed clients), which keep the answer running.
    readers: u32,
    /// When the answer is cancelled unless a reader attaches; set when its connection went.
    deadline: Option<Instant>,
    cancel: Option<Cancel>,
}

/// Why an answer is stopped before its end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cancel {
    /// The client asked (`cancel`): `done` with `cancelled`.
    ByClient,
    /// The node could not finish it: an `error` frame, then `done` with `error`.
    Failed(ErrorReason, String),
}

impl Kept {
    fn bytes(&self) -> usize {
        let calls: usize = self
            .calls
            .iter()
            .map(|(_, c)| {
                16 + c.id.as_ref().map_or(0, String::len) + c.name.as_ref().map_or(0, String::len)
            })
            .sum();
        self.text.len() + self.marks.len() * BYTES_PER_CHUNK + calls
    }
}

/// One answer's journal, and the controls of the task that runs it.
pub struct Journal {
    pub stream_id: Arc<str>,
    pub user_id: String,
    pub model: String,
    pub conversation_id: Option<String>,
    /// Unix seconds when the answer started: every rendering of it (a resume on any node)
    /// shows the same time.
    pub created: u64,
    kept: Mutex<Kept>,
    /// Wakes readers when chunks or the end arrive.
    changed: Notify,
    /// Wakes the answer's task when it is cancelled, detached or attached.
    control: Notify,
    hub: Arc<HubCounters>,
    /// Where the other nodes read it, when nodes share journals.
    shared: std::sync::OnceLock<Box<dyn SharedWriter>>,
}

impl Journal {
    fn kept(&self) -> MutexGuard<'_, Kept> {
        self.kept.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Keeps a batch of chunks (in `seq` order, following what is kept).
    pub fn append<'a>(
        &self,
        chunks: impl Iterator<Item = (ChunkKind, &'a str, Option<&'a ToolCallDelta>)>,
    ) {
        let readers = {
            let mut k = self.kept();
            if k.lost {
                return;
            }
            let before = k.bytes();
            let first_seq = k.marks.len() as u64;
            let mut copies = Vec::new();
            for (kind, text, call) in chunks {
                if let Some(call) = call {
                    let seq = k.marks.len() as u64;
                    k.calls.push((seq, call.clone()));
                }
                k.text.push_str(text);
                let end = u32::try_from(k.text.len()).unwrap_or(u32::MAX);
                k.marks.push((end, kind));
                if self.shared.get().is_some() {
                    copies.push((kind, text.to_owned(), call.cloned()));
                }
            }
            if let Some(shared) = self.shared.get() {
                shared.append(first_seq, copies);
            }
            let after = k.bytes();
            let too_large = after > self.hub.max_answer_bytes;
            if too_large || !self.hub.reserve(after - before) {
                // What this journal held goes back to the node's budget.
                self.hub.release(before);
                if too_large {
                    self.hub.lost_too_large.inc();
                } else {
                    self.hub.lost_budget.inc();
                }
                k.lost = true;
                k.text = String::new();
                k.marks = Vec::new();
                k.calls = Vec::new();
            }
            k.readers
        };
        if readers > 0 {
            self.changed.notify_waiters();
        }
    }

    /// The answer ended: resumed readers get this after its chunks.
    pub fn end(&self, ending: Ending) {
        {
            let mut k = self.kept();
            if let Some(shared) = self.shared.get() {
                shared.end(&ending, k.marks.len() as u64);
            }
            k.ending = Some(ending);
            k.ended_at = Some(Instant::now());
            k.deadline = None;
        }
        self.changed.notify_waiters();
    }

    /// Chunks after `after_seq` (all when `None`), and the end if it came.
    pub fn read(&self, after_seq: Option<u64>) -> Read {
        let k = self.kept();
        if k.lost {
            return Read {
                lost: true,
                ..Read::default()
            };
        }
        let from = after_seq.map_or(0, |s| s.saturating_add(1));
        let mut chunks = Vec::new();
        for seq in from..k.marks.len() as u64 {
            let i = seq as usize;
            let start = if i == 0 { 0 } else { k.marks[i - 1].0 as usize };
            let (end, kind) = k.marks[i];
            let call = k
                .calls
                .binary_search_by_key(&seq, |(s, _)| *s)
                .ok()
                .map(|at| k.calls[at].1.clone());
            chunks.push((seq, kind, k.text[start..end as usize].to_owned(), call));
        }
        Read {
            chunks,
            ending: k.ending.clone(),
            total: k.marks.len() as u64,
            lost: false,
        }
    }

    /// Waits until something new may be there; register before reading to miss nothing.
    pub fn changed(&self) -> tokio::sync::futures::Notified<'_> {
        self.changed.notified()
    }

    /// The journal was dropped: the answer cannot be resumed.
    pub fn is_lost(&self) -> bool {
        self.kept().lost
    }

    pub fn is_running(&self) -> bool {
        self.kept().ending.is_none()
    }

    /// A resumed client reads along: the answer runs to its end.
    pub fn attach(&self) {
        let mut k = self.kept();
        k.readers += 1;
        k.deadline = None;
    }

    /// A resumed client left: with no reader left, the answer waits `grace` for another.
    pub fn detach_reader(&self, grace: Duration) {
        let mut k = self.kept();
        k.readers = k.readers.saturating_sub(1);
        if k.readers == 0 && k.ending.is_none() {
            k.deadline = Some(Instant::now() + grace);
            drop(k);
            self.control.notify_one();
        }
    }

    /// The answer's connection went away: it waits `grace` for a resume.
    pub fn orphan(&self, grace: Duration) {
        {
            let mut k = self.kept();
            if k.readers == 0 {
                k.deadline = Some(Instant::now() + grace);
            }
        }
        self.control.notify_one();
    }

    /// Stops the answer now.
    pub fn cancel(&self, why: Cancel) {
        self.kept().cancel.get_or_insert(why);
        self.control.notify_one();
    }

    /// What the answer's task should do now.
    pub fn orders(&self) -> Orders {
        let k = self.kept();
        Orders {
            cancel: k.cancel.clone(),
            deadline: if k.readers > 0 { None } else { k.deadline },
        }
    }

    /// Waits for a cancel, an orphaning or an attach.
    pub async fn order_changed(&self) {
        self.control.notified().await
    }
}

impl Drop for Journal {
    fn drop(&mut self) {
        let k = self.kept.get_mut().unwrap_or_else(|p| p.into_inner());
        if !k.lost {
            self.hub.release(k.bytes());
        }
    }
}

/// What an answer's task is told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Orders {
    pub cancel: Option<Cancel>,
    /// Cancel at this instant unless a reader attaches first.
    pub deadline: Option<Instant>,
}

/// One piece of an answer journaled by another node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Remote {
    Chunk(u64, ChunkKind, String, Option<ToolCallDelta>),
    /// The answer ended; `total` chunks in all.
    End(Ending, u64),
    /// The journal cannot be followed any further (its node stopped, or it expired); why.
    Lost(String),
}

/// An answer journaled by another node, as it is followed.
pub struct RemoteAnswer {
    pub model: String,
    pub conversation_id: Option<String>,
    /// Unix seconds when the answer started.
    pub created: u64,
    pub pieces: futures_util::stream::LocalBoxStream<'static, Remote>,
}

/// Journals shared with the other nodes (Redis in the gateway binary), so that a client can
/// resume on any node.
pub trait SharedJournals: Send + Sync + 'static {
    /// Starts sharing a new answer's journal.
    fn open(&self, journal: &Journal) -> Box<dyn SharedWriter>;
    /// Follows an answer journaled by another node: its chunks after `after_seq`, then the rest
    /// as they come, then its end. `None` when there is no such answer of `user_id`.
    fn follow(
        &self,
        stream_id: &str,
        user_id: &str,
        after_seq: Option<u64>,
    ) -> futures_util::future::LocalBoxFuture<'static, Option<RemoteAnswer>>;
    /// Whether a client on another node follows this answer now (so it must not be cancelled).
    fn followed(&self, stream_id: &str) -> futures_util::future::LocalBoxFuture<'static, bool>;
    /// Entries handed over and not yet shared: a stopping node waits for them, so that the
    /// end of an answer it finished reaches the others.
    fn unwritten(&self) -> usize {
        0
    }
    /// A client following `user_id`'s answer from this node cancelled it: the node that runs it
    /// stops it now ([`AnswerHub::cancel`] there).
    fn cancel(
        &self,
        stream_id: &str,
        user_id: &str,
    ) -> futures_util::future::LocalBoxFuture<'static, ()>;
}

/// Writes one answer's journal where the other nodes can read it.
pub trait SharedWriter: Send + Sync {
    fn append(&self, first_seq: u64, chunks: Vec<(ChunkKind, String, Option<ToolCallDelta>)>);
    fn end(&self, ending: &Ending, total: u64);
}

/// The node's totals, shared by its journals.
struct HubCounters {
    bytes: AtomicUsize,
    max_answer_bytes: usize,
    max_journal_bytes: usize,
    bytes_gauge: Gauge,
    lost_too_large: prometheus_client::metrics::counter::Counter,
    lost_budget: prometheus_client::metrics::counter::Counter,
}

impl HubCounters {
    fn reserve(&self, n: usize) -> bool {
        let mut current = self.bytes.load(Ordering::Relaxed);
        loop {
            if current + n > self.max_journal_bytes {
                return false;
            }
            match self.bytes.compare_exchange_weak(
                current,
                current + n,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => {
                    self.bytes_gauge.inc_by(n as i64);
                    return true;
                }
                Err(now) => current = now,
            }
        }
    }

    fn release(&self, n: usize) {
        self.bytes.fetch_sub(n, Ordering::Relaxed);
        self.bytes_gauge.dec_by(n as i64);
    }
}

/// Metrics of the node's journals.
#[derive(Clone, Default)]
pub struct JournalMetrics {
    /// Bytes kept by every journal of the node.
    pub bytes: Gauge,
    /// Journals kept (running and finished).
    pub answers: Gauge,
    /// Answers no longer kept because they outgrew `max_answer_bytes`.
    pub lost_too_large: prometheus_client::metrics::counter::Counter,
    /// Answers no longer kept because the node's `max_journal_bytes` ran out.
    pub lost_budget: prometheus_client::metrics::counter::Counter,
}

/// Every journal of a node, by `stream_id`.
pub struct AnswerHub {
    settings: ResumeSettings,
    shared: Option<Arc<dyn SharedJournals>>,
    journals: Mutex<HashMap<Arc<str>, Arc<Journal>>>,
    counters: Arc<HubCounters>,
    answers_gauge: Gauge,
}

impl AnswerHub {
    pub fn new(settings: ResumeSettings, metrics: JournalMetrics) -> Arc<Self> {
        Self::sharing(settings, metrics, None)
    }

    /// A hub whose journals are also shared with the other nodes through `shared`.
    pub fn sharing(
        settings: ResumeSettings,
        metrics: JournalMetrics,
        shared: Option<Arc<dyn SharedJournals>>,
    ) -> Arc<Self> {
        Arc::new(AnswerHub {
            settings,
            shared,
            journals: Mutex::default(),
            counters: Arc::new(HubCounters {
                bytes: AtomicUsize::new(0),
                max_answer_bytes: settings.max_answer_bytes,
                max_journal_bytes: settings.max_journal_bytes,
                bytes_gauge: metrics.bytes,
                lost_too_large: metrics.lost_too_large,
                lost_budget: metrics.lost_budget,
            }),
            answers_gauge: metrics.answers,
        })
    }

    pub fn settings(&self) -> &ResumeSettings {
        &self.settings
    }

    pub fn shared(&self) -> Option<&Arc<dyn SharedJournals>> {
        self.shared.as_ref()
    }

    fn journals(&self) -> MutexGuard<'_, HashMap<Arc<str>, Arc<Journal>>> {
        self.journals.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A journal for a new answer of `user_id`, under a fresh unguessable `stream_id`.
    pub fn open(
        &self,
        user_id: &str,
        model: &str,
        conversation_id: Option<String>,
    ) -> Arc<Journal> {
        let journal = Arc::new(Journal {
            stream_id: new_stream_id().into(),
            user_id: user_id.to_owned(),
            model: model.to_owned(),
            conversation_id,
            created: crate::unix_time::now_unix_secs(),
            kept: Mutex::default(),
            changed: Notify::new(),
            control: Notify::new(),
            hub: self.counters.clone(),
            shared: std::sync::OnceLock::new(),
        });
        if let Some(shared) = &self.shared {
            let _ = journal.shared.set(shared.open(&journal));
        }
        let mut journals = self.journals();
        journals.insert(journal.stream_id.clone(), journal.clone());
        self.answers_gauge.set(journals.len() as i64);
        journal
    }

    /// The journal of `stream_id` if it is `user_id`'s and still kept. Another user's answer
    /// is as unknown as a made-up id.
    pub fn find(&self, stream_id: &str, user_id: &str) -> Option<Arc<Journal>> {
        let journal = self.journals().get(stream_id)?.clone();
        let expired = journal
            .kept()
            .ended_at
            .is_some_and(|at| at.elapsed() >= self.settings.retention);
        (journal.user_id == user_id && !expired).then_some(journal)
    }

    /// Cancels `user_id`'s answer `stream_id` if it runs on this node (a client that follows it
    /// from another node asked); answers whether it did.
    pub fn cancel(&self, stream_id: &str, user_id: &str) -> bool {
        match self.find(stream_id, user_id) {
            Some(journal) if journal.is_running() => {
                journal.cancel(Cancel::ByClient);
                true
            }
            _ => false,
        }
    }

    /// What the node's journals have not yet written where the other nodes read them.
    pub fn unwritten(&self) -> usize {
        self.shared.as_ref().map_or(0, |s| s.unwritten())
    }

    /// Answers still running on this node.
    pub fn running(&self) -> usize {
        self.journals().values().filter(|j| j.is_running()).count()
    }

    /// Ends every answer still running on this node with an error (a drain that ran out of
    /// time); their relays send it to whoever follows them.
    pub fn fail_running(&self, reason: ErrorReason, message: &str) {
        for journal in self.journals().values().filter(|j| j.is_running()) {
            journal.cancel(Cancel::Failed(reason, message.to_owned()));
        }
    }

    /// Forgets finished answers past the retention time and, while the node's journals are over
    /// budget, the oldest finished ones.
    pub fn sweep(&self) {
        let now = Instant::now();
        let mut journals = self.journals();
        journals.retain(|_, j| {
            let k = j.kept();
            k.ended_at
                .is_none_or(|at| now.duration_since(at) < self.settings.retention)
        });
        let budget = self.settings.max_journal_bytes / 10 * 9;
        if self.counters.bytes.load(Ordering::Relaxed) > budget {
            let mut finished: Vec<(Instant, Arc<str>)> = journals
                .iter()
                .filter_map(|(id, j)| j.kept().ended_at.map(|at| (at, id.clone())))
                .collect();
            finished.sort();
            for (_, id) in finished {
                if self.counters.bytes.load(Ordering::Relaxed) <= budget {
                    break;
                }
                journals.remove(&id);
            }
        }
        self.answers_gauge.set(journals.len() as i64);
    }
}

/// 128 random bits, hex: unguessable, so knowing a stream id is what lets one resume it (with
/// the right user).
fn new_stream_id() -> String {
    let mut bytes = [0u8; 16];
    rand::rng().fill_bytes(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hub(max_answer_bytes: usize, max_journal_bytes: usize) -> Arc<AnswerHub> {
        AnswerHub::new(
            ResumeSettings {
                max_answer_bytes,
                max_journal_bytes,
                ..ResumeSettings::default()
            },
            JournalMetrics::default(),
        )
    }

    #[test]
    fn reads_after_a_seq_and_keeps_the_end() {
        let hub = hub(1 << 20, 1 << 20);
        let j = hub.open("u1", "mock", None);
        assert_eq!(j.stream_id.len(), 32);
        j.append(
            [
                (ChunkKind::Reasoning, "a", None),
                (ChunkKind::Text, "bc", None),
            ]
            .into_iter(),
        );
        j.append([(ChunkKind::Text, "d", None)].into_iter());
        let r = j.read(Some(0));
        assert_eq!(
            r.chunks,
            vec![
                (1, ChunkKind::Text, "bc".to_owned(), None),
                (2, ChunkKind::Text, "d".to_owned(), None)
            ]
        );
        assert!(r.ending.is_none());
        let ending = Ending {
            finish_reason: FinishReason::Stop,
            usage: Usage::default(),
            error: None,
        };
        j.end(ending.clone());
        assert_eq!(j.read(None).chunks.len(), 3);
        assert_eq!(j.read(Some(2)).ending, Some(ending));
        assert!(hub.find(&j.stream_id, "u1").is_some());
        assert!(hub.find(&j.stream_id, "u2").is_none(), "another user's");
        assert!(hub.find("0123", "u1").is_none());
    }

    #[test]
    fn budgets_bound_what_is_kept() {
        let hub = hub(30, 38);
        let big = hub.open("u", "m", None);
        big.append([(ChunkKind::Text, "0123456789abcdef", None)].into_iter());
        assert!(!big.read(None).lost);
        big.append([(ChunkKind::Text, "0123456789", None)].into_iter());
        assert!(big.read(None).lost, "over max_answer_bytes");
        assert_eq!(hub.counters.bytes.load(Ordering::Relaxed), 0);

        let a = hub.open("u", "m", None);
        a.append([(ChunkKind::Text, "0123456789", None)].into_iter());
        let b = hub.open("u", "m", None);
        b.append([(ChunkKind::Text, "0123456789", None)].into_iter());
        let c = hub.open("u", "m", None);
        c.append([(ChunkKind::Text, "0123456789", None)].into_iter());
        assert!(c.read(None).lost, "over max_journal_bytes");
        a.end(Ending {
            finish_reason: FinishReason::Stop,
            usage: Usage::default(),
            error: None,
        });
        hub.sweep();
        assert!(
            hub.find(&a.stream_id, "u").is_none(),
            "oldest finished goes first"
        );
        drop(a);
        assert_eq!(hub.counters.bytes.load(Ordering::Relaxed), 18);
    }

    #[test]
    fn orders_follow_readers() {
        let hub = hub(1 << 20, 1 << 20);
        let j = hub.open("u", "m", None);
        assert_eq!(j.orders().deadline, None);
        j.orphan(Duration::from_secs(30));
        assert!(j.orders().deadline.is_some());
        j.attach();
        assert_eq!(j.orders().deadline, None, "a reader keeps it running");
        j.detach_reader(Duration::from_secs(30));
        assert!(j.orders().deadline.is_some());
        j.cancel(Cancel::ByClient);
        assert_eq!(j.orders().cancel, Some(Cancel::ByClient));
    }
}
