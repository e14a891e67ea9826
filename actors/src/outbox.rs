//! A session's outbound queue and the task that writes it to the WebSocket.
//!
//! The session actor never awaits the socket: it pushes frames here and carries on, so its
//! timers (heartbeat, idle timeout) keep firing while a client does not read. One writer task
//! per session drains the queue in order; every frame's bytes stay charged to the session's
//! [`FlowControl`] until written.

use std::{
    cell::{Cell, RefCell},
    collections::VecDeque,
    rc::Rc,
    sync::Arc,
};

use std::time::Instant;

use actix_ws::{CloseReason, Session};
use bytestring::ByteString;
use tokio::sync::Notify;

use crate::{ConnectionAbort, FlowControl, Metrics};

/// When a chunk frame's chunk was produced, and (for a request's first chunk) when the request
/// arrived.
#[derive(Clone, Copy)]
pub(crate) struct ChunkTiming {
    pub produced_at: Instant,
    pub request_started: Option<Instant>,
}

pub(crate) enum Outgoing {
    Text {
        frame: ByteString,
        charge: usize,
        chunk: Option<ChunkTiming>,
    },
    Ping,
    /// Answers the client's latest ping; its data is in `Outbox::pong`.
    Pong,
    /// The close frame; once it is handed over, `then_end` (when given) ends the connection
    /// without waiting for the client to close it.
    Close(CloseReason, Option<Rc<dyn ConnectionAbort>>),
}

#[derive(Clone)]
pub(crate) struct Outbox {
    queue: Rc<RefCell<VecDeque<Outgoing>>>,
    wake: Rc<Notify>,
    ended: Rc<Cell<bool>>,
    writer_finished: Rc<Cell<bool>>,
    /// The data of the latest ping not answered yet: only the latest is answered (RFC 6455
    /// 5.5.3), so a flood of pings from a client that does not read costs one pong.
    pong: Rc<RefCell<Option<Vec<u8>>>>,
    /// Since when the writer waits for the socket to take a frame.
    writing_since: Rc<Cell<Option<Instant>>>,
    flow: Arc<FlowControl>,
    metrics: Arc<Metrics>,
}

impl Outbox {
    /// Creates the queue and spawns its writer on the current arbiter.
    pub(crate) fn spawn(session: Session, flow: Arc<FlowControl>, metrics: Arc<Metrics>) -> Self {
        let outbox = Outbox {
            queue: Rc::default(),
            wake: Rc::default(),
            ended: Rc::default(),
            writer_finished: Rc::default(),
            pong: Rc::default(),
            writing_since: Rc::default(),
            flow,
            metrics,
        };
        actix_rt::spawn(outbox.clone().write_all(session));
        outbox
    }

    /// A queue with no connection behind it: what is pushed is dropped, its bytes released.
    pub(crate) fn detached(flow: Arc<FlowControl>, metrics: Arc<Metrics>) -> Self {
        Outbox {
            queue: Rc::default(),
            wake: Rc::default(),
            ended: Rc::new(Cell::new(true)),
            writer_finished: Rc::new(Cell::new(true)),
            pong: Rc::default(),
            writing_since: Rc::default(),
            flow,
            metrics,
        }
    }

    /// Queues a text frame whose bytes are already charged (`charge`) to the flow.
    pub(crate) fn push_chunk(&self, frame: String, charge: usize, timing: ChunkTiming) {
        self.push(Outgoing::Text {
            frame: ByteString::from(frame),
            charge,
            chunk: Some(timing),
        });
    }

    /// Queues a text frame, charging its bytes to the flow.
    pub(crate) fn push_text(&self, frame: String) {
        self.flow.charge(frame.len());
        let charge = frame.len();
        self.push(Outgoing::Text {
            frame: ByteString::from(frame),
            charge,
            chunk: None,
        });
    }

    pub(crate) fn push(&self, out: Outgoing) {
        if self.ended.get() {
            if let Outgoing::Text { charge, .. } = out {
                self.flow.release(charge);
            }
            return;
        }
        self.queue.borrow_mut().push_back(out);
        self.wake.notify_one();
    }

    /// Answers a ping: replaces the data of a pong still waiting, or queues one.
    pub(crate) fn pong(&self, data: &[u8]) {
        let waiting = self.pong.borrow_mut().replace(data.to_vec()).is_some();
        if !waiting {
            self.push(Outgoing::Pong);
        }
    }

    /// How long the writer has waited for the socket to take its current frame.
    pub(crate) fn stalled_for(&self) -> std::time::Duration {
        self.writing_since
            .get()
            .map_or(std::time::Duration::ZERO, |since| since.elapsed())
    }

    /// Lets the writer finish what is queued, then drop the socket's sender.
    pub(crate) fn end(&self) {
        self.ended.set(true);
        self.wake.notify_one();
    }

    fn observe_chunk(&self, timing: ChunkTiming) {
        let m = &self.metrics;
        m.chunks_relayed.inc();
        let added = timing.produced_at.elapsed().as_secs_f64();
        m.added_latency_chunk.observe(added);
        if let Some(started) = timing.request_started {
            m.added_latency_first_chunk.observe(added);
            m.time_to_first_chunk
                .observe(started.elapsed().as_secs_f64());
        }
    }

    /// The writer has exited: everything queued was written, or the socket is gone.
    pub(crate) fn writer_finished(&self) -> bool {
        self.writer_finished.get()
    }

    async fn write_all(self, mut session: Session) {
        loop {
            let next = self.queue.borrow_mut().pop_front();
            if next.is_some() {
                self.writing_since.set(Some(Instant::now()));
            }
            let written = match next {
                Some(Outgoing::Text {
                    frame,
                    charge,
                    chunk,
                }) => {
                    let res = session.text(frame).await;
                    self.flow.release(charge);
                    self.metrics.frames_out.inc();
                    if let Some(timing) = chunk {
                        self.observe_chunk(timing);
                    }
                    res
                }
                Some(Outgoing::Ping) => session.ping(b"").await,
                Some(Outgoing::Pong) => {
                    let data = self.pong.borrow_mut().take().unwrap_or_default();
                    session.pong(&data).await
                }
                Some(Outgoing::Close(reason, then_end)) => {
                    let _ = session.close(Some(reason)).await;
                    if let Some(connection) = then_end {
                        connection.end_after_writes();
                    }
                    break;
                }
                None if self.ended.get() => break,
                None => {
                    self.wake.notified().await;
                    Ok(())
                }
            };
            self.writing_since.set(None);
            if written.is_err() {
                break;
            }
        }
        self.ended.set(true);
        for out in self.queue.borrow_mut().drain(..) {
            if let Outgoing::Text { charge, .. } = out {
                self.flow.release(charge);
            }
        }
        // The flow stays open: a running answer may outlive its connection (resume), its
        // frames now dropped as they come, their bytes freed at once.
        self.writer_finished.set(true);
    }
}
