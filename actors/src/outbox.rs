//! A session's outgoing side: frames are encoded straight into the connection's one buffer, and
//! the connection's response body takes that buffer whole each time the socket can be written.
//!
//! The session actor and its relays never await the socket: they push frames here and carry on,
//! so the session's timers (heartbeat, idle timeout) keep firing while a client does not read.
//! A frame is encoded once, into the buffer (no queue of frames, no task per session, no channel
//! between them): each wake-up of the connection's writer hands the socket every frame that is
//! ready in one piece ([`OutboxBody`]). Every frame's bytes stay charged to the session's
//! [`FlowControl`] until the connection takes them. An idle connection holds no buffer.

use std::{
    cell::RefCell,
    error::Error as StdError,
    mem,
    pin::Pin,
    rc::Rc,
    sync::Arc,
    task::{Context, Poll, Waker},
    time::{Duration, Instant},
};

use actix_http::{
    body::{BodySize, BoxBody, MessageBody},
    ws::{CloseReason, OpCode, Parser},
};
use ai_gateway_proto::ServerMessage;
use bytes::{Bytes, BytesMut};

use crate::{ConnectionAbort, FlowControl, Metrics};

/// The most a control frame carries (RFC 6455 5.5): a close frame's reason is cut to fit.
const MAX_CONTROL_PAYLOAD: usize = 125;

/// The largest buffer a connection starts a batch with; one batch may grow past it.
const BATCH_START_MAX: usize = 64 * 1024;

/// When a chunk frame's chunk was produced, and (for a request's first chunk) when the request
/// arrived.
#[derive(Clone, Copy)]
pub(crate) struct ChunkTiming {
    pub produced_at: Instant,
    pub request_started: Option<Instant>,
}

/// What is waiting for the socket, shared by the session's [`Outbox`] and the connection's
/// [`OutboxBody`] (both on the connection's thread).
#[derive(Default)]
struct State {
    /// Encoded frames, oldest first.
    buf: BytesMut,
    /// Flow bytes of the frames in `buf`.
    charged: usize,
    /// How many frames `buf` holds.
    frames: u64,
    /// The chunk frames in `buf`, for the latency metrics.
    chunks: Vec<ChunkTiming>,
    /// The latest ping not answered yet: only the latest is answered (RFC 6455 5.5.3), so a
    /// flood of pings from a client that does not read costs one pong.
    pong: Option<Vec<u8>>,
    /// When the oldest frame waiting was queued.
    waiting_since: Option<Instant>,
    /// The connection's writer, waiting for frames.
    waker: Option<Waker>,
    /// The size of the last batch taken: the next one starts with that much room.
    last_batch: usize,
    /// No frame comes after what is queued (the close frame, or the session ended): the body
    /// ends once it is taken.
    ended: bool,
    /// The connection is over (its body dropped): frames are dropped as they come.
    gone: bool,
    flow: Option<Arc<FlowControl>>,
    metrics: Option<Arc<Metrics>>,
}

impl State {
    fn wake(&mut self) {
        if let Some(waker) = self.waker.take() {
            waker.wake();
        }
    }

    /// Appends one frame, or drops it (releasing `charge`) when nothing more is sent.
    fn frame(&mut self, charge: usize, encode: impl FnOnce(&mut BytesMut)) -> bool {
        if self.ended || self.gone {
            if let Some(flow) = &self.flow {
                flow.release(charge);
            }
            return false;
        }
        if self.buf.capacity() == 0 {
            self.buf
                .reserve(self.last_batch.clamp(256, BATCH_START_MAX));
        }
        encode(&mut self.buf);
        self.charged += charge;
        self.frames += 1;
        self.waiting_since.get_or_insert_with(Instant::now);
        self.wake();
        true
    }

    /// Appends the pong waiting, if any.
    fn put_pong(&mut self) {
        if let Some(data) = self.pong.take() {
            Parser::write_message(&mut self.buf, data, OpCode::Pong, true, false);
            self.frames += 1;
        }
    }

    /// Everything waiting, as one piece for the socket; its bytes leave the flow.
    fn take(&mut self) -> Option<Bytes> {
        self.put_pong();
        if self.buf.is_empty() {
            return None;
        }
        let batch = mem::take(&mut self.buf).freeze();
        self.last_batch = batch.len();
        self.waiting_since = None;
        if let Some(flow) = &self.flow {
            flow.release(mem::take(&mut self.charged));
        }
        let chunks = mem::take(&mut self.chunks);
        if let Some(m) = &self.metrics {
            m.frames_out.inc_by(mem::take(&mut self.frames));
            m.chunks_relayed.inc_by(chunks.len() as u64);
            let now = Instant::now();
            for timing in &chunks {
                let added = now.duration_since(timing.produced_at).as_secs_f64();
                m.added_latency_chunk.observe(added);
                if let Some(started) = timing.request_started {
                    m.added_latency_first_chunk.observe(added);
                    m.time_to_first_chunk
                        .observe(now.duration_since(started).as_secs_f64());
                }
            }
        }
        Some(batch)
    }

    /// The connection is over: what waits is dropped and its bytes freed.
    fn drop_all(&mut self) {
        self.gone = true;
        self.buf = BytesMut::new();
        self.chunks = Vec::new();
        self.pong = None;
        self.waiting_since = None;
        if let Some(flow) = &self.flow {
            flow.release(mem::take(&mut self.charged));
        }
    }
}

/// The sending end of a WebSocket connection whose session has not started yet: made with the
/// handshake's response, whose body it gives ([`Outbound::body`]), and given to the session.
/// Dropped unused, it ends the connection's body once anything else written before it is out.
#[derive(Default)]
pub struct Outbound {
    state: Rc<RefCell<State>>,
}

impl Drop for Outbound {
    fn drop(&mut self) {
        let mut state = self.state.borrow_mut();
        state.ended = true;
        state.wake();
    }
}

impl Outbound {
    /// The body for the WebSocket handshake's response (from `actix_ws::handle`), made once:
    /// what this end writes. What actix-ws's `Session` sends before the session starts
    /// (`before`: an answer to a ping while a connection authenticates, a refusal) goes out
    /// first: that body is read until it ends, and kept until the connection ends (actix-ws's
    /// message stream ends with it).
    pub fn body(&self, before: BoxBody) -> OutboxBody {
        OutboxBody {
            state: self.state.clone(),
            before,
            before_ended: false,
        }
    }
}

/// A WebSocket response's body: the frames queued by the time the connection's writer asks, in
/// one piece.
pub struct OutboxBody {
    state: Rc<RefCell<State>>,
    before: BoxBody,
    before_ended: bool,
}

impl MessageBody for OutboxBody {
    type Error = Box<dyn StdError>;

    fn size(&self) -> BodySize {
        BodySize::Stream
    }

    fn poll_next(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Bytes, Self::Error>>> {
        let this = self.get_mut();
        if !this.before_ended {
            match Pin::new(&mut this.before).poll_next(cx) {
                Poll::Ready(Some(piece)) => return Poll::Ready(Some(piece)),
                Poll::Ready(None) => this.before_ended = true,
                Poll::Pending => {}
            }
        }
        let mut state = this.state.borrow_mut();
        if let Some(batch) = state.take() {
            return Poll::Ready(Some(Ok(batch)));
        }
        if state.ended && this.before_ended {
            return Poll::Ready(None);
        }
        if !state
            .waker
            .as_ref()
            .is_some_and(|w| w.will_wake(cx.waker()))
        {
            state.waker = Some(cx.waker().clone());
        }
        Poll::Pending
    }
}

impl Drop for OutboxBody {
    fn drop(&mut self) {
        self.state.borrow_mut().drop_all();
    }
}

/// The session's end of its connection: what the session and its relays write to.
#[derive(Clone)]
pub(crate) struct Outbox {
    out: Rc<Outbound>,
}

impl Outbox {
    /// The session's end of `out`, charging and releasing its frames' bytes on `flow`.
    pub(crate) fn new(out: Outbound, flow: Arc<FlowControl>, metrics: Arc<Metrics>) -> Self {
        {
            let mut state = out.state.borrow_mut();
            state.flow = Some(flow);
            state.metrics = Some(metrics);
        }
        Outbox { out: Rc::new(out) }
    }

    /// An outbox with no connection behind it: what is pushed is dropped, its bytes released.
    pub(crate) fn detached(flow: Arc<FlowControl>, metrics: Arc<Metrics>) -> Self {
        let state = State {
            gone: true,
            flow: Some(flow),
            metrics: Some(metrics),
            ..State::default()
        };
        Outbox {
            out: Rc::new(Outbound {
                state: Rc::new(RefCell::new(state)),
            }),
        }
    }

    fn state(&self) -> std::cell::RefMut<'_, State> {
        self.out.state.borrow_mut()
    }

    /// Queues a chunk's frame, whose bytes are already charged (`charge`) to the flow.
    pub(crate) fn push_chunk(&self, msg: &ServerMessage<'_>, charge: usize, timing: ChunkTiming) {
        let mut state = self.state();
        if state.frame(charge, |buf| encode_text(buf, msg)) {
            state.chunks.push(timing);
        }
    }

    /// Queues a message, charging its bytes to the flow.
    pub(crate) fn push_message(&self, msg: &ServerMessage<'_>) {
        with_json(msg, |json| self.push_utf8(json));
    }

    /// Queues a text frame, charging its bytes to the flow.
    pub(crate) fn push_text(&self, text: &str) {
        self.push_utf8(text.as_bytes());
    }

    /// Queues a text frame of `text` (UTF-8), charging its bytes to the flow.
    fn push_utf8(&self, text: &[u8]) {
        let mut state = self.state();
        if let Some(flow) = &state.flow {
            flow.charge(text.len());
        }
        state.frame(text.len(), |buf| {
            Parser::write_message(buf, text, OpCode::Text, true, false);
        });
    }

    /// Queues a ping (the session's heartbeat).
    pub(crate) fn ping(&self) {
        self.state().frame(0, |buf| {
            Parser::write_message(buf, b"", OpCode::Ping, true, false);
        });
    }

    /// Answers a ping: replaces the data of a pong still waiting, or queues one.
    pub(crate) fn pong(&self, data: &[u8]) {
        let mut state = self.state();
        if state.ended || state.gone {
            return;
        }
        let data = &data[..data.len().min(MAX_CONTROL_PAYLOAD)];
        state.pong = Some(data.to_vec());
        state.waiting_since.get_or_insert_with(Instant::now);
        state.wake();
    }

    /// Queues the close frame, after which nothing more is sent: the connection ends once it is
    /// written. `then_end` (when given) ends the connection without waiting for the client to
    /// close it.
    pub(crate) fn close(&self, mut reason: CloseReason, then_end: Option<Rc<dyn ConnectionAbort>>) {
        if let Some(description) = &mut reason.description {
            // A close frame's reason fits in a control frame, after the two bytes of its code.
            let mut end = description.len().min(MAX_CONTROL_PAYLOAD - 2);
            while !description.is_char_boundary(end) {
                end -= 1;
            }
            description.truncate(end);
        }
        let mut state = self.state();
        // A pong still waiting goes before the close frame: nothing may follow that.
        state.put_pong();
        let queued = state.frame(0, |buf| Parser::write_close(buf, Some(reason), false));
        drop(state);
        self.end();
        if let (true, Some(connection)) = (queued, then_end) {
            connection.end_after_writes();
        }
    }

    /// Nothing more is sent: the connection's body ends once what is queued is taken.
    pub(crate) fn end(&self) {
        let mut state = self.state();
        state.ended = true;
        state.wake();
    }

    /// How long the oldest frame queued has waited for the connection to take it.
    pub(crate) fn stalled_for(&self) -> Duration {
        self.state()
            .waiting_since
            .map_or(Duration::ZERO, |since| since.elapsed())
    }

    /// The connection is over: everything queued was written, or the socket is gone.
    pub(crate) fn writer_finished(&self) -> bool {
        self.state().gone
    }
}

/// Serializes `msg` into a reused buffer of this thread and hands the JSON (UTF-8: serde_json
/// writes nothing else) to `f`.
fn with_json<R>(msg: &ServerMessage<'_>, f: impl FnOnce(&[u8]) -> R) -> R {
    thread_local! {
        static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
    }
    /// A message that made the scratch buffer larger than this gives the room back.
    const SCRATCH_KEEP: usize = 64 * 1024;
    SCRATCH.with_borrow_mut(|scratch| {
        scratch.clear();
        // As `ServerMessage::to_json`: its fields are strings, numbers and enums, which cannot fail.
        serde_json::to_writer(&mut *scratch, msg).expect("server messages always serialize");
        let result = f(scratch);
        if scratch.capacity() > SCRATCH_KEEP {
            *scratch = Vec::new();
        }
        result
    })
}

/// Appends `msg` as one text frame.
fn encode_text(buf: &mut BytesMut, msg: &ServerMessage<'_>) {
    with_json(msg, |json| {
        Parser::write_message(buf, json, OpCode::Text, true, false);
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_codec::Decoder;
    use actix_http::ws::{CloseCode, Codec, Frame};
    use ai_gateway_proto::{ErrorPayload, ErrorReason};
    use futures_util::task::noop_waker;

    const WATERMARK: usize = 1 << 20;

    fn setup() -> (OutboxBody, Outbox, Arc<FlowControl>, Arc<Metrics>) {
        let out = Outbound::default();
        let body = out.body(BoxBody::new(()));
        let flow = FlowControl::new(WATERMARK);
        let metrics = Metrics::new();
        let outbox = Outbox::new(out, flow.clone(), metrics.clone());
        (body, outbox, flow, metrics)
    }

    fn poll(body: &mut OutboxBody) -> Poll<Option<Bytes>> {
        let waker = noop_waker();
        let mut cx = Context::from_waker(&waker);
        Pin::new(body)
            .poll_next(&mut cx)
            .map(|piece| piece.map(|r| r.expect("the body never fails")))
    }

    /// Every frame in `bytes`, as a client decodes them.
    fn frames(bytes: &[u8]) -> Vec<Frame> {
        let mut codec = Codec::new().client_mode().max_size(1 << 20);
        let mut buf = BytesMut::from(bytes);
        let mut out = Vec::new();
        while let Some(frame) = codec.decode(&mut buf).expect("a valid frame") {
            out.push(frame);
        }
        assert!(buf.is_empty(), "a partial frame is left: {buf:?}");
        out
    }

    fn text(frame: &Frame) -> &str {
        match frame {
            Frame::Text(bytes) => std::str::from_utf8(bytes).unwrap(),
            other => panic!("not a text frame: {other:?}"),
        }
    }

    fn error_message(message: &str) -> ServerMessage<'_> {
        ServerMessage::Error {
            id: None,
            payload: ErrorPayload {
                code: 400,
                reason: ErrorReason::InvalidPayload,
                message: message.into(),
            },
        }
    }

    #[test]
    fn frames_queued_between_wakeups_leave_in_one_piece_in_order() {
        let (mut body, outbox, flow, metrics) = setup();
        assert!(poll(&mut body).is_pending());
        let long = "x".repeat(70_000);
        let texts = ["a".to_owned(), "b".repeat(125), "c".repeat(126), long];
        for t in &texts {
            outbox.push_text(t);
        }
        outbox.push_message(&error_message("bad"));
        let sizes: usize = texts.iter().map(String::len).sum();
        assert!(flow.queued_bytes() > sizes);

        let Poll::Ready(Some(batch)) = poll(&mut body) else {
            panic!("frames were queued")
        };
        let got = frames(&batch);
        assert_eq!(got.len(), 5);
        for (frame, want) in got.iter().zip(&texts) {
            assert_eq!(text(frame), want);
        }
        assert_eq!(text(&got[4]), error_message("bad").to_json());
        // Taken: the bytes left the flow, the frames were counted, nothing is held.
        assert_eq!(flow.queued_bytes(), 0);
        assert_eq!(metrics.frames_out.get(), 5);
        assert_eq!(outbox.state().buf.capacity(), 0);
        assert!(poll(&mut body).is_pending());
    }

    #[test]
    fn chunk_frames_are_counted_and_timed_when_taken() {
        let (mut body, outbox, flow, metrics) = setup();
        flow.charge(10);
        let timing = ChunkTiming {
            produced_at: Instant::now(),
            request_started: Some(Instant::now()),
        };
        outbox.push_chunk(&error_message("chunk"), 10, timing);
        assert_eq!(flow.queued_bytes(), 10);
        assert_eq!(metrics.chunks_relayed.get(), 0);
        assert!(matches!(poll(&mut body), Poll::Ready(Some(_))));
        assert_eq!(flow.queued_bytes(), 0);
        assert_eq!(metrics.chunks_relayed.get(), 1);
        // Nothing is kept for the next batch: an idle connection holds no memory for it.
        assert_eq!(outbox.state().chunks.capacity(), 0);
        assert_eq!(outbox.state().buf.capacity(), 0);
    }

    #[test]
    fn only_the_latest_ping_is_answered_and_before_the_close_frame() {
        let (mut body, outbox, _, _) = setup();
        outbox.pong(b"first");
        outbox.pong(b"second");
        let Poll::Ready(Some(batch)) = poll(&mut body) else {
            panic!("a pong was queued")
        };
        assert!(matches!(&frames(&batch)[..], [Frame::Pong(p)] if &p[..] == b"second"));

        outbox.pong(b"third");
        let reason = "é".repeat(100);
        outbox.close(
            CloseReason {
                code: CloseCode::Policy,
                description: Some(reason),
            },
            None,
        );
        outbox.push_text("after the close frame");
        outbox.pong(b"after the close frame");
        let Poll::Ready(Some(batch)) = poll(&mut body) else {
            panic!("the close frame was queued")
        };
        match &frames(&batch)[..] {
            [Frame::Pong(p), Frame::Close(Some(close))] => {
                assert_eq!(&p[..], b"third");
                assert_eq!(close.code, CloseCode::Policy);
                // Cut at a character boundary to fit a control frame.
                assert_eq!(close.description.as_deref(), Some("é".repeat(61).as_str()));
            }
            other => panic!("expected a pong then the close frame, got {other:?}"),
        }
        // Nothing follows the close frame: the body ends.
        assert!(matches!(poll(&mut body), Poll::Ready(None)));
    }

    #[test]
    fn the_connection_gone_frees_what_waits_and_what_comes() {
        let (body, outbox, flow, _) = setup();
        outbox.push_text("never read");
        assert_eq!(flow.queued_bytes(), "never read".len());
        assert!(!outbox.writer_finished());
        drop(body);
        assert!(outbox.writer_finished());
        assert_eq!(flow.queued_bytes(), 0);
        outbox.push_text("dropped at once");
        flow.charge(7);
        outbox.push_chunk(
            &error_message("x"),
            7,
            ChunkTiming {
                produced_at: Instant::now(),
                request_started: None,
            },
        );
        assert_eq!(flow.queued_bytes(), 0);
        assert_eq!(outbox.stalled_for(), Duration::ZERO);
    }

    /// The close grace cuts a connection whose writer is stuck on a client that reads nothing:
    /// the close frame taken by the connection is not yet the close frame written.
    #[test]
    fn the_writer_finishes_when_the_connection_lets_go_not_when_it_takes_the_close_frame() {
        let (mut body, outbox, _, _) = setup();
        outbox.push_text("the last of an answer");
        outbox.close(
            CloseReason {
                code: CloseCode::Normal,
                description: None,
            },
            None,
        );
        assert!(matches!(poll(&mut body), Poll::Ready(Some(_))));
        assert!(matches!(poll(&mut body), Poll::Ready(None)));
        assert!(!outbox.writer_finished(), "still being written");
        drop(body);
        assert!(outbox.writer_finished());
    }

    #[test]
    fn a_frame_not_taken_counts_as_stalled() {
        let (mut body, outbox, _, _) = setup();
        assert_eq!(outbox.stalled_for(), Duration::ZERO);
        outbox.ping();
        std::thread::sleep(Duration::from_millis(5));
        assert!(outbox.stalled_for() >= Duration::from_millis(5));
        let Poll::Ready(Some(batch)) = poll(&mut body) else {
            panic!("a ping was queued")
        };
        assert!(matches!(&frames(&batch)[..], [Frame::Ping(p)] if p.is_empty()));
        assert_eq!(outbox.stalled_for(), Duration::ZERO);
    }

    #[test]
    fn what_went_before_the_session_is_sent_first_and_the_body_ends_with_both() {
        let mut before = BytesMut::new();
        Parser::write_message(&mut before, "before", OpCode::Text, true, false);
        let before = BoxBody::new(before.freeze());
        let out = Outbound::default();
        let mut body = out.body(before);
        let Poll::Ready(Some(first)) = poll(&mut body) else {
            panic!("the earlier body's frame comes first")
        };
        assert_eq!(text(&frames(&first)[0]), "before");
        assert!(poll(&mut body).is_pending(), "the session has not ended");

        let outbox = Outbox::new(out, FlowControl::new(WATERMARK), Metrics::new());
        outbox.push_text("after");
        let Poll::Ready(Some(next)) = poll(&mut body) else {
            panic!("the session's frame follows")
        };
        assert_eq!(text(&frames(&next)[0]), "after");
        drop(outbox);
        assert!(matches!(poll(&mut body), Poll::Ready(None)));
    }

    #[test]
    fn an_unused_end_ends_the_body() {
        let out = Outbound::default();
        let mut body = out.body(BoxBody::new(()));
        assert!(poll(&mut body).is_pending());
        drop(out);
        assert!(matches!(poll(&mut body), Poll::Ready(None)));
    }

    #[test]
    fn a_detached_outbox_drops_what_is_pushed() {
        let flow = FlowControl::new(WATERMARK);
        let outbox = Outbox::detached(flow.clone(), Metrics::new());
        outbox.push_text("nobody reads this");
        assert_eq!(flow.queued_bytes(), 0);
        assert!(outbox.writer_finished());
    }
}
