//! Stream events for callers that are not a `SessionActor` (the OpenAI-compatible HTTP front):
//! a small actor that hands every event to a channel.

use actix::prelude::*;
use tokio::sync::mpsc;

use super::StreamEvent;

struct EventForwarder {
    tx: mpsc::UnboundedSender<StreamEvent>,
}

impl Actor for EventForwarder {
    type Context = Context<Self>;
}

impl Handler<StreamEvent> for EventForwarder {
    type Result = ();

    fn handle(&mut self, ev: StreamEvent, _: &mut Context<Self>) {
        let _ = self.tx.send(ev);
    }
}

/// A recipient for a `ChunkSink` and the channel its events come out of. The channel needs no
/// bound: the sink's `FlowControl` keeps what waits in it bounded in bytes. The actor (on the
/// current arbiter) stops once the stream drops its sink.
pub fn forward_events() -> (Recipient<StreamEvent>, mpsc::UnboundedReceiver<StreamEvent>) {
    let (tx, rx) = mpsc::unbounded_channel();
    (EventForwarder { tx }.start().recipient(), rx)
}
