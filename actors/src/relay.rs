//! The task that relays one WebSocket answer: it takes its stream's batches, keeps them in the
//! answer's journal, writes their frames to the session's outbox, and ends the answer's
//! [`ChatRequest`]. It runs on the session's arbiter but does not depend on the session: when
//! the connection goes, it runs on (its frames going nowhere) until the answer ends, a resumed
//! client keeps it going, or the grace time runs out and it cancels the answer upstream.
//!
//! A resumed client reads the journal instead ([`replay`]), on any connection of the node.

use std::{future::pending, sync::Arc, time::Instant};

use actix::prelude::*;
use ai_gateway_proto::{
    ChunkPayload, DoneMetadata, DonePayload, ErrorPayload, ErrorReason, FinishReason,
    ServerMessage, ToolCallPiece, Usage,
};

use crate::{
    answer::{Cancel, Ending, Journal, Remote, RemoteAnswer, SharedJournals, ToolCallDelta},
    outbox::{ChunkTiming, Outbox},
    provider::{ChunkReceiver, Finish, ProviderError, StreamEvent},
    request::ChatRequest,
    FlowControl,
};

/// How often an orphaned answer that a client on another node follows checks that it still does.
const FOLLOWED_RECHECK: std::time::Duration = std::time::Duration::from_secs(1);

/// What a relay tells its session.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub(crate) enum RelayNews {
    /// The answer under this key ended (its `done` is queued).
    Ended { key: u64 },
    /// More than the session's `outbox_max_bytes` may be waiting for the client.
    Backlog,
}

/// Frames go here while the session lives (an ended outbox drops them and frees their bytes).
pub(crate) struct Relay {
    pub key: u64,
    pub request: ChatRequest,
    pub events: ChunkReceiver,
    pub journal: Arc<Journal>,
    pub outbox: Outbox,
    pub flow: Arc<FlowControl>,
    pub outbox_max_bytes: usize,
    /// The session to tell; none for an answer whose HTTP client went away.
    pub session: Option<Recipient<RelayNews>>,
    /// The journals other nodes read, to learn whether one of their clients follows this answer.
    pub shared: Option<Arc<dyn SharedJournals>>,
}

impl Relay {
    pub(crate) async fn run(mut self) {
        loop {
            let orders = self.journal.orders();
            if let Some(cancel) = orders.cancel {
                return self.cancelled(cancel);
            }
            let deadline = orders.deadline;
            // Nobody can resume an answer that is no longer kept: waiting would waste its upstream.
            if deadline.is_some() && self.journal.is_lost() {
                return self.abandoned();
            }
            let grace_over = async {
                match deadline {
                    Some(at) => actix_rt::time::sleep_until(at.into()).await,
                    None => pending().await,
                }
            };
            tokio::select! {
                event = self.events.recv() => match event {
                    Some(event) => {
                        if self.batch(event) {
                            return;
                        }
                    }
                    None => return self.broken(),
                },
                () = self.journal.order_changed() => {}
                () = grace_over => {
                    if let Some(shared) = &self.shared {
                        if shared.followed(&self.journal.stream_id).await {
                            // A client on another node reads it: look again a little later.
                            self.journal.orphan(FOLLOWED_RECHECK);
                            continue;
                        }
                    }
                    return self.abandoned();
                }
            }
        }
    }

    /// Relays one batch; answers whether the answer ended with it.
    fn batch(&mut self, event: StreamEvent) -> bool {
        if let Some(provider) = event.provider {
            self.request.provider_started(provider);
        }
        // Seals of reasoning are for the Anthropic-compatible front only: their bytes leave the
        // flow here, the others' once their frames are written.
        for seal in event.chunks.iter().filter(|c| c.is_seal()) {
            self.flow.release(seal.charge());
        }
        let chunks = || event.chunks.iter().filter(|c| !c.is_seal());
        self.journal
            .append(chunks().map(|c| (c.kind, c.text.as_str(), c.tool_call.as_deref())));
        for chunk in chunks() {
            let seq = self.request.chunk(chunk);
            let frame = chunk_frame(
                &self.request.id,
                &self.request.model,
                &self.journal.stream_id,
                seq,
                chunk.kind,
                &chunk.text,
                chunk.tool_call.as_deref(),
            );
            let timing = ChunkTiming {
                produced_at: chunk.produced_at,
                request_started: (seq == 0).then_some(self.request.started()),
            };
            self.outbox.push_chunk(&frame, chunk.charge(), timing);
        }
        if self.flow.queued_bytes() > self.outbox_max_bytes {
            if let Some(session) = &self.session {
                session.do_send(RelayNews::Backlog);
            }
        }
        match event.end {
            None => false,
            Some(Ok(Finish { reason, usage })) => {
                self.end(reason, usage, None);
                true
            }
            Some(Err(e)) => {
                self.failed(&e);
                true
            }
        }
    }

    fn failed(&mut self, e: &ProviderError) {
        self.request.failed(e);
        // What reached the client before the failure was used all the same.
        let usage = self.request.partial_usage();
        let error = (e.reason(), e.to_string());
        self.end(FinishReason::Error, usage, Some(error));
    }

    /// Queues the answer's last frames, ends its request and its journal, tells the session.
    fn end(&mut self, reason: FinishReason, usage: Usage, error: Option<(ErrorReason, String)>) {
        if let Some((why, message)) = &error {
            self.outbox
                .push_text(&error_frame(&self.request.id, *why, message));
        }
        let r = &self.request;
        let chunks = r.chunks();
        let added = r.added_latency();
        let metadata = (chunks > 0).then(|| DoneMetadata {
            gateway_first_chunk_us: added.first_us,
            gateway_mean_chunk_us: added.sum_us / chunks,
            gateway_max_chunk_us: added.max_us,
        });
        let done = done_frame(&r.id, &self.journal, reason, usage, chunks, metadata);
        self.outbox.push_text(&done);
        self.request.finish(reason, usage);
        self.journal.end(Ending {
            finish_reason: reason,
            usage,
            error,
        });
        if let Some(session) = &self.session {
            session.do_send(RelayNews::Ended { key: self.key });
        }
    }

    fn cancelled(mut self, why: Cancel) {
        match why {
            Cancel::ByClient => {
                let usage = self.request.partial_usage();
                self.end(FinishReason::Cancelled, usage, None);
            }
            Cancel::Failed(reason, message) => {
                self.end(
                    FinishReason::Error,
                    Usage::default(),
                    Some((reason, message)),
                );
            }
        }
    }

    /// Nobody resumed within the grace time: the answer is cancelled upstream and recorded.
    fn abandoned(mut self) {
        tracing::debug!(stream_id = %self.journal.stream_id, "nobody resumed the answer; cancelling it");
        let usage = self.request.partial_usage();
        self.end(FinishReason::Cancelled, usage, None);
    }

    /// The stream stopped without saying how it ended.
    fn broken(mut self) {
        let message = "the answer's stream ended early".to_owned();
        self.end(
            FinishReason::Error,
            Usage::default(),
            Some((ErrorReason::Internal, message)),
        );
    }
}

/// Runs an answer whose client went away before its end (an HTTP response the client dropped)
/// as a WebSocket answer whose connection closed: journaled, it waits `grace` for a resume (or
/// for a reader already attached), then is cancelled upstream; it is recorded whatever happens.
/// Its frames go nowhere, and their bytes leave `flow` at once.
pub fn run_detached(
    request: ChatRequest,
    events: ChunkReceiver,
    journal: Arc<Journal>,
    flow: Arc<FlowControl>,
    metrics: Arc<crate::Metrics>,
    shared: Option<Arc<dyn SharedJournals>>,
    grace: std::time::Duration,
) {
    journal.orphan(grace);
    let relay = Relay {
        key: 0,
        request,
        events,
        journal,
        outbox: Outbox::detached(flow.clone(), metrics),
        flow,
        outbox_max_bytes: usize::MAX,
        session: None,
        shared,
    };
    actix_rt::spawn(relay.run());
}

pub(crate) fn chunk_frame<'a>(
    id: &'a str,
    model: &'a str,
    stream_id: &'a str,
    seq: u64,
    kind: ai_gateway_proto::ChunkKind,
    text: &'a str,
    call: Option<&'a ToolCallDelta>,
) -> ServerMessage<'a> {
    ServerMessage::Chat {
        id: id.into(),
        payload: ChunkPayload {
            content: text.into(),
            kind,
            model: model.into(),
            seq,
            stream_id: (seq == 0).then_some(stream_id.into()),
            tool_call: call.map(|c| ToolCallPiece {
                index: c.index,
                id: c.id.as_deref().map(Into::into),
                name: c.name.as_deref().map(Into::into),
            }),
        },
    }
}

pub(crate) fn error_frame(id: &str, reason: ErrorReason, message: &str) -> String {
    ServerMessage::Error {
        id: Some(id.into()),
        payload: ErrorPayload {
            code: reason.status_code(),
            reason,
            message: message.into(),
        },
    }
    .to_json()
}

pub(crate) fn done_frame(
    id: &str,
    journal: &Journal,
    finish_reason: FinishReason,
    usage: Usage,
    chunks: u64,
    metadata: Option<DoneMetadata>,
) -> String {
    ServerMessage::Done {
        id: id.into(),
        metadata,
        payload: DonePayload {
            finish_reason,
            model: journal.model.as_str().into(),
            usage,
            chunks,
            conversation_id: journal.conversation_id.as_deref().map(Into::into),
            stream_id: Some(journal.stream_id.as_ref().into()),
        },
    }
    .to_json()
}

/// Frames a replay hands over before it waits for room at the client.
const REPLAY_BATCH_FRAMES: usize = 64;

/// Keeps a journal's answer running while a resumed client reads it; when the reader goes, the
/// answer waits `grace` for another.
pub(crate) struct Reader {
    pub journal: Arc<Journal>,
    pub grace: std::time::Duration,
}

impl Drop for Reader {
    fn drop(&mut self) {
        self.journal.detach_reader(self.grace);
    }
}

/// Sends a journal's chunks after `after_seq` under `id`, then the rest as they come, then its
/// end; waits for room at the client between batches.
pub(crate) async fn replay(
    reader: Reader,
    id: String,
    after_seq: Option<u64>,
    outbox: Outbox,
    flow: Arc<FlowControl>,
) {
    let journal = &reader.journal;
    let mut cursor = after_seq;
    let started = Instant::now();
    loop {
        let changed = journal.changed();
        tokio::pin!(changed);
        changed.as_mut().enable();
        let read = journal.read(cursor);
        if read.lost {
            let message = "the answer outgrew what the gateway keeps; it cannot be resumed";
            outbox.push_text(&error_frame(&id, ErrorReason::ResumeUnavailable, message));
            return;
        }
        for batch in read.chunks.chunks(REPLAY_BATCH_FRAMES) {
            if flow.ready().await.is_err() {
                return;
            }
            for (seq, kind, text, call) in batch {
                outbox.push_message(&chunk_frame(
                    &id,
                    &journal.model,
                    &journal.stream_id,
                    *seq,
                    *kind,
                    text,
                    call.as_ref(),
                ));
                cursor = Some(*seq);
            }
        }
        if let Some(ending) = read.ending {
            if let Some((reason, message)) = &ending.error {
                outbox.push_text(&error_frame(&id, *reason, message));
            }
            outbox.push_text(&done_frame(
                &id,
                journal,
                ending.finish_reason,
                ending.usage,
                read.total,
                None,
            ));
            tracing::debug!(stream_id = %journal.stream_id, ms = started.elapsed().as_millis() as u64, "resumed answer replayed");
            return;
        }
        changed.await;
    }
}

/// Like [`replay`], for an answer journaled by another node.
pub(crate) async fn replay_remote(
    remote: RemoteAnswer,
    id: String,
    stream_id: String,
    outbox: Outbox,
    flow: Arc<FlowControl>,
) {
    use futures_util::StreamExt;
    let RemoteAnswer {
        model: journal_model,
        conversation_id,
        mut pieces,
        ..
    } = remote;
    let mut since_ready = 0;
    while let Some(item) = pieces.next().await {
        match item {
            Remote::Chunk(seq, kind, text, call) => {
                if since_ready == REPLAY_BATCH_FRAMES {
                    since_ready = 0;
                    if flow.ready().await.is_err() {
                        return;
                    }
                }
                since_ready += 1;
                outbox.push_message(&chunk_frame(
                    &id,
                    &journal_model,
                    &stream_id,
                    seq,
                    kind,
                    &text,
                    call.as_ref(),
                ));
            }
            Remote::End(ending, total) => {
                if let Some((reason, message)) = &ending.error {
                    outbox.push_text(&error_frame(&id, *reason, message));
                }
                let done = ServerMessage::Done {
                    id: id.as_str().into(),
                    metadata: None,
                    payload: DonePayload {
                        finish_reason: ending.finish_reason,
                        model: journal_model.as_str().into(),
                        usage: ending.usage,
                        chunks: total,
                        conversation_id: conversation_id.as_deref().map(Into::into),
                        stream_id: Some(stream_id.as_str().into()),
                    },
                };
                outbox.push_message(&done);
                return;
            }
            Remote::Lost(why) => {
                outbox.push_text(&error_frame(&id, ErrorReason::ResumeUnavailable, &why));
                return;
            }
        }
    }
}

/// A journal of this node read as the pieces of a followed answer: its chunks after
/// `after_seq`, then the rest as they come, then its end. While the stream is held the answer
/// runs on; when it is dropped, the answer waits `grace` for another reader.
pub fn follow_local(
    journal: Arc<Journal>,
    grace: std::time::Duration,
    after_seq: Option<u64>,
) -> futures_util::stream::LocalBoxStream<'static, Remote> {
    use futures_util::StreamExt;
    journal.attach();
    let reader = Reader { journal, grace };
    let pending = std::collections::VecDeque::new();
    futures_util::stream::unfold(
        (reader, after_seq, pending, false),
        |(reader, mut cursor, mut pending, mut over)| async move {
            loop {
                if let Some(piece) = pending.pop_front() {
                    return Some((piece, (reader, cursor, pending, over)));
                }
                if over {
                    return None;
                }
                let journal = reader.journal.clone();
                let changed = journal.changed();
                tokio::pin!(changed);
                changed.as_mut().enable();
                let read = journal.read(cursor);
                if read.lost {
                    over = true;
                    let why = "the answer outgrew what the gateway keeps; it cannot be resumed";
                    pending.push_back(Remote::Lost(why.to_owned()));
                    continue;
                }
                for (seq, kind, text, call) in read.chunks {
                    cursor = Some(seq);
                    pending.push_back(Remote::Chunk(seq, kind, text, call));
                }
                if let Some(ending) = read.ending {
                    over = true;
                    pending.push_back(Remote::End(ending, read.total));
                    continue;
                }
                if pending.is_empty() {
                    changed.await;
                }
            }
        },
    )
    .boxed_local()
}
