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

use actix_ws::{CloseReason, Session};
use bytestring::ByteString;
use tokio::sync::Notify;

use crate::FlowControl;

pub(crate) enum Outgoing {
    Text { frame: ByteString, charge: usize },
    Ping,
    Pong(Vec<u8>),
    Close(CloseReason),
}

#[derive(Clone)]
pub(crate) struct Outbox {
    queue: Rc<RefCell<VecDeque<Outgoing>>>,
    wake: Rc<Notify>,
    ended: Rc<Cell<bool>>,
    writer_finished: Rc<Cell<bool>>,
    flow: Arc<FlowControl>,
}

impl Outbox {
    /// Creates the queue and spawns its writer on the current arbiter.
    pub(crate) fn spawn(session: Session, flow: Arc<FlowControl>) -> Self {
        let outbox = Outbox {
            queue: Rc::default(),
            wake: Rc::default(),
            ended: Rc::default(),
            writer_finished: Rc::default(),
            flow,
        };
        actix_rt::spawn(outbox.clone().write_all(session));
        outbox
    }

    /// Queues a text frame whose bytes are already charged (`charge`) to the flow.
    pub(crate) fn push_charged(&self, frame: String, charge: usize) {
        self.push(Outgoing::Text {
            frame: ByteString::from(frame),
            charge,
        });
    }

    /// Queues a text frame, charging its bytes to the flow.
    pub(crate) fn push_text(&self, frame: String) {
        self.flow.charge(frame.len());
        let charge = frame.len();
        self.push_charged(frame, charge);
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

    /// Lets the writer finish what is queued, then drop the socket's sender.
    pub(crate) fn end(&self) {
        self.ended.set(true);
        self.wake.notify_one();
    }

    /// The writer has exited: everything queued was written, or the socket is gone.
    pub(crate) fn writer_finished(&self) -> bool {
        self.writer_finished.get()
    }

    async fn write_all(self, mut session: Session) {
        loop {
            let next = self.queue.borrow_mut().pop_front();
            let written = match next {
                Some(Outgoing::Text { frame, charge }) => {
                    let res = session.text(frame).await;
                    self.flow.release(charge);
                    res
                }
                Some(Outgoing::Ping) => session.ping(b"").await,
                Some(Outgoing::Pong(data)) => session.pong(&data).await,
                Some(Outgoing::Close(reason)) => {
                    let _ = session.close(Some(reason)).await;
                    break;
                }
                None if self.ended.get() => break,
                None => {
                    self.wake.notified().await;
                    Ok(())
                }
            };
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
        self.flow.close();
        self.writer_finished.set(true);
    }
}
