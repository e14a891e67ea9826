//! [`SessionActor`]: one per WebSocket connection.
//!
//! It decodes client frames, keeps the requests running on this connection, turns provider
//! events into frames, and keeps the connection honest: heartbeat pings, an idle timeout and a
//! byte bound on what waits to be written. It never awaits the socket itself (see `outbox`).

use std::{
    rc::Rc,
    sync::Arc,
    time::{Duration, Instant},
};

use actix::prelude::*;
use actix_ws::{CloseCode, CloseReason, Message, ProtocolError};
use ai_gateway_proto::{
    decode_client_frame, ChatPayload, ClientFrame, DonePayload, ErrorPayload, ErrorReason,
    FinishReason, ServerMessage, SessionLimits, SystemEvent, SystemPayload, Usage,
    PROTOCOL_VERSION,
};

use crate::{
    answer::{AnswerHub, Cancel, Journal, SharedJournals},
    frames::{close_code, Assembler, FrameError, Incoming},
    hooks::{Admission, Refusal, RequestStart},
    metrics::{Front, ReasonLabel},
    outbox::{Outbound, Outbox},
    provider::{chat, ChunkReceiver, ChunkSink, ProviderRequest, StreamHandle},
    registry::{
        CloseSession, DrainSession, Register, Registry, RequestsChanged, SessionInfo,
        SessionRegistry, Unregister,
    },
    relay::{error_frame, replay, replay_remote, Reader, Relay, RelayNews},
    request::{ChatRequest, Engine},
    FlowControl, Metrics,
};

/// Why a session closes: the close code it sends and its label in
/// `gateway_disconnects_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Why {
    /// The client sent a close frame (with this code); the gateway answers in kind.
    ClientClosed(u16),
    Idle,
    Restart,
    SlowConsumer,
    /// An operator's kill or a revocation, with the code it asked for.
    Policy(u16),
    /// The client broke the protocol (1002, 1007, 1009).
    Protocol(u16),
}

impl Why {
    fn code(self) -> u16 {
        match self {
            Why::ClientClosed(code) | Why::Policy(code) | Why::Protocol(code) => code,
            Why::Idle => close_code::GOING_AWAY,
            Why::Restart => close_code::RESTART,
            Why::SlowConsumer => close_code::POLICY,
        }
    }

    fn label(self) -> &'static str {
        match self {
            Why::ClientClosed(_) => "client",
            Why::Idle => "idle",
            Why::Restart => "restart",
            Why::SlowConsumer => "slow_consumer",
            Why::Policy(_) => "policy",
            Why::Protocol(_) => "protocol",
        }
    }
}

/// Limits and timings of every session on a node.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    pub node_id: Arc<str>,
    /// Largest client message (after joining continuation frames); larger closes with 1009.
    pub max_frame_bytes: usize,
    /// Requests one connection may have running at once.
    pub max_concurrent_requests: usize,
    /// Bytes that may wait for a client; past this the client is closed as a slow consumer.
    pub outbox_max_bytes: usize,
    /// Provider streams pause while more than this waits for the client.
    pub outbox_high_watermark_bytes: usize,
    pub heartbeat_interval: Duration,
    /// A client that sends nothing (not even a pong) for this long is closed.
    pub idle_timeout: Duration,
    /// After a close frame is queued, how long the client has to take it before the connection
    /// is cut.
    pub close_grace: Duration,
    /// How long a frame may wait for a client that does not read before the client is closed.
    pub write_timeout: Duration,
}

/// The session's hold on its TCP connection, given by the HTTP layer.
pub trait ConnectionAbort: 'static {
    /// Cuts the connection at once, whatever is queued on it: for a client that will not take
    /// its close frame.
    fn abort(&self);

    /// Ends the connection as soon as what is queued is written, without waiting for the
    /// client to close it: for a completed close handshake, where RFC 6455 has the server
    /// close TCP first.
    fn end_after_writes(&self) {}
}

/// What every session of a node shares.
#[derive(Clone)]
pub struct SessionEnv {
    pub config: Arc<SessionConfig>,
    pub registry: Registry,
    pub engine: Arc<Engine>,
    pub metrics: Arc<Metrics>,
    /// The node's journals of answers, for `resume`.
    pub answers: Arc<AnswerHub>,
}

/// A request running on this connection, under the session's private key.
struct RunningRequest {
    key: u64,
    /// The client's id for it.
    id: String,
    phase: Phase,
}

enum Phase {
    /// Being admitted, or its stream being started.
    Admitting(Box<ChatRequest>),
    /// Its answer streams, relayed by its own task.
    Answering(Arc<Journal>),
    /// A `resume`: a journal read back to this client.
    Replaying(Arc<Journal>),
    /// A `resume` of an answer journaled by another node.
    Following(Arc<str>),
}

fn unavailable(stream_id: &str) -> String {
    format!("no answer {stream_id:?} to resume: unknown, expired or not yours")
}

pub struct SessionActor {
    info: SessionInfo,
    /// Parent of every request's span.
    span: tracing::Span,
    config: Arc<SessionConfig>,
    registry: Registry,
    /// This thread's registry shard, where the session registers (set in `started`).
    shard: Option<Addr<SessionRegistry>>,
    engine: Arc<Engine>,
    metrics: Arc<Metrics>,
    answers: Arc<AnswerHub>,
    /// Why the session closed, for the disconnect metric; unset when the client just left.
    close_label: Option<&'static str>,
    flow: Arc<FlowControl>,
    ws: Option<(Outbound, actix_ws::MessageStream)>,
    outbox: Option<Outbox>,
    incoming: Option<SpawnHandle>,
    assembler: Assembler,
    requests: Vec<RunningRequest>,
    next_key: u64,
    last_heard: Instant,
    draining: bool,
    closing: bool,
    abort: Option<Rc<dyn ConnectionAbort>>,
}

impl SessionActor {
    pub fn new(
        info: SessionInfo,
        span: tracing::Span,
        env: SessionEnv,
        ws: (Outbound, actix_ws::MessageStream),
        abort: Option<Rc<dyn ConnectionAbort>>,
    ) -> Self {
        let max_frame_bytes = env.config.max_frame_bytes;
        SessionActor {
            info,
            span,
            flow: FlowControl::counted(
                env.config.outbox_high_watermark_bytes,
                Some(env.metrics.outbound_queue_bytes.clone()),
            ),
            config: env.config,
            registry: env.registry,
            shard: None,
            engine: env.engine,
            metrics: env.metrics,
            answers: env.answers,
            close_label: None,
            ws: Some(ws),
            outbox: None,
            incoming: None,
            assembler: Assembler::new(max_frame_bytes),
            requests: Vec::new(),
            next_key: 0,
            last_heard: Instant::now(),
            draining: false,
            closing: false,
            abort,
        }
    }

    fn send(&mut self, msg: &ServerMessage<'_>, ctx: &mut Context<Self>) {
        if let Some(outbox) = &self.outbox {
            outbox.push_message(msg);
        }
        self.check_outbox(ctx);
    }

    fn send_error(
        &mut self,
        id: Option<&str>,
        reason: ErrorReason,
        message: &str,
        ctx: &mut Context<Self>,
    ) {
        let msg = ServerMessage::Error {
            id: id.map(Into::into),
            payload: ErrorPayload {
                code: reason.status_code(),
                reason,
                message: message.into(),
            },
        };
        self.send(&msg, ctx);
    }

    /// `done` for a request that ended before its answer started (no stream id).
    fn send_early_done(&mut self, r: &ChatRequest, reason: FinishReason, ctx: &mut Context<Self>) {
        let msg = ServerMessage::Done {
            id: r.id.as_str().into(),
            metadata: None,
            payload: DonePayload {
                finish_reason: reason,
                model: r.model.as_str().into(),
                usage: Usage::default(),
                chunks: 0,
                conversation_id: r.conversation_id.as_deref().map(Into::into),
                stream_id: None,
            },
        };
        self.send(&msg, ctx);
    }

    /// A client that lets too much pile up is not reading: close it before it costs more memory.
    fn check_outbox(&mut self, ctx: &mut Context<Self>) {
        let queued = self.flow.queued_bytes();
        if queued > self.config.outbox_max_bytes {
            let reason = format!(
                "slow consumer: {queued} bytes queued, limit outbox_max_bytes={}",
                self.config.outbox_max_bytes
            );
            self.close(Why::SlowConsumer, &reason, ctx);
        }
    }

    /// Queues a close frame, stops the actor, and cuts the connection if the client has not
    /// taken the close frame within `close_grace`. When the client closed first, the close
    /// handshake is complete once the answer is written, and the connection ends at once.
    fn close(&mut self, why: Why, reason: &str, ctx: &mut Context<Self>) {
        if self.closing {
            return;
        }
        self.closing = true;
        self.close_label = Some(why.label());
        let code = why.code();
        tracing::debug!(session = %self.info.session_id, code, reason, "closing session");
        if let Some(outbox) = &self.outbox {
            let then_end = match why {
                Why::ClientClosed(_) => self.abort.clone(),
                _ => None,
            };
            outbox.close(
                CloseReason {
                    code: CloseCode::from(code),
                    description: Some(reason.to_owned()),
                },
                then_end,
            );
            outbox.end();
            if let Some(abort) = self.abort.take() {
                let outbox = outbox.clone();
                let grace = self.config.close_grace;
                actix_rt::spawn(async move {
                    actix_rt::time::sleep(grace).await;
                    if !outbox.writer_finished() {
                        abort.abort();
                    }
                });
            }
        }
        ctx.stop();
    }

    fn on_text(&mut self, text: &str, ctx: &mut Context<Self>) {
        match decode_client_frame(text) {
            Err((id, e)) => self.send_error(id.as_deref(), e.reason(), &e.message(), ctx),
            Ok(ClientFrame::Ping { id }) => {
                let msg = ServerMessage::Pong {
                    id: id.as_deref().map(Into::into),
                    payload: (),
                };
                self.send(&msg, ctx);
            }
            Ok(ClientFrame::Cancel { id }) => self.cancel(&id, ctx),
            Ok(ClientFrame::Resume {
                id,
                stream_id,
                after_seq,
            }) => self.resume(id, &stream_id, after_seq, ctx),
            Ok(ClientFrame::Chat {
                id,
                payload,
                traceparent,
            }) => self.start_chat(id, payload, traceparent, ctx),
            Ok(ClientFrame::Auth { .. }) => {
                let msg = "this connection is already authenticated; \
                           auth is only the first message of one opened without a token";
                self.send_error(None, ErrorReason::InvalidPayload, msg, ctx);
            }
        }
    }

    fn start_chat(
        &mut self,
        id: Option<String>,
        payload: ChatPayload,
        traceparent: Option<String>,
        ctx: &mut Context<Self>,
    ) {
        let key = self.next_key;
        self.next_key += 1;
        let id = id.unwrap_or_else(|| format!("req-{key}"));
        let mut options = ProviderRequest::default();
        chat::apply_payload_options(&mut options, &payload);
        let model = payload
            .model
            .filter(|m| !m.is_empty())
            .unwrap_or_else(|| crate::provider::DEFAULT_MODEL.to_owned());
        let refused = if self.draining {
            let msg = "this node is shutting down; reconnect and retry";
            Some((ErrorReason::ShuttingDown, msg.to_owned()))
        } else if self.requests.len() >= self.config.max_concurrent_requests {
            let msg = format!(
                "at most {} requests may run at once on one connection",
                self.config.max_concurrent_requests
            );
            Some((ErrorReason::TooManyRequests, msg))
        } else if self.requests.iter().any(|r| r.id == id) {
            let msg = format!("request {id:?} is still running");
            Some((ErrorReason::DuplicateRequestId, msg))
        } else {
            None
        };
        if let Some((reason, msg)) = refused {
            self.engine.refused(Front::Ws, &model);
            return self.send_error(Some(&id), reason, &msg, ctx);
        }
        self.info.last_model = Some(model.clone());
        let conversation_id = payload.conversation_id;
        let question = conversation_id
            .as_ref()
            .map(|_| payload.content.clone())
            .filter(|q| !q.is_empty());
        let mut messages: Vec<chat::Message> =
            payload.messages.into_iter().map(Into::into).collect();
        if !payload.content.is_empty() {
            messages.push(chat::Message::text(chat::Role::User, payload.content));
        }
        let span = tracing::info_span!(
            parent: &self.span,
            "chat_request",
            request.id = %id,
            session.id = %self.info.session_id,
            user.id = %self.info.user_id,
            model = %model,
            front = "ws",
            provider = tracing::field::Empty,
            prompt_tokens = tracing::field::Empty,
            completion_tokens = tracing::field::Empty,
            time_to_first_chunk_ms = tracing::field::Empty,
            finish_reason = tracing::field::Empty,
            trace_id = tracing::field::Empty,
        );
        if let Some(tp) = traceparent {
            crate::trace::adopt(&span, &[("traceparent".to_owned(), tp)].into());
        }
        crate::trace::record_trace_id(&span);
        let start = RequestStart {
            session: self.info.clone(),
            request_id: id.clone(),
            request: ProviderRequest {
                span: span.clone(),
                model: model.clone(),
                system: payload.system,
                messages,
                ..options
            },
            conversation_id: conversation_id.clone(),
        };
        let request = ChatRequest::new(
            self.engine.clone(),
            Front::Ws,
            self.info.clone(),
            id,
            model,
            span,
            conversation_id,
            question,
        );
        self.requests.push(RunningRequest {
            key,
            id: request.id.clone(),
            phase: Phase::Admitting(Box::new(request)),
        });
        self.requests_changed();
        self.engine
            .clone()
            .admit(start)
            .into_actor(self)
            .map(move |admitted, act, ctx| match admitted {
                Ok(admission) => act.admitted(key, admission, ctx),
                Err(refusal) => act.refused(key, refusal, ctx),
            })
            .spawn(ctx);
    }

    fn admitting(&mut self, key: u64) -> Option<&mut ChatRequest> {
        match self.requests.iter_mut().find(|r| r.key == key) {
            Some(RunningRequest {
                phase: Phase::Admitting(request),
                ..
            }) => Some(&mut **request),
            _ => None,
        }
    }

    /// The hooks let the request through: have its provider stream started.
    fn admitted(&mut self, key: u64, admission: Admission, ctx: &mut Context<Self>) {
        // Cancelled while being admitted: dropping the admission releases its lease.
        let Some(request) = self.admitting(key) else {
            return;
        };
        request.admitted(admission.lease);
        let (sink, events) = ChunkSink::channel(key, self.flow.clone());
        self.engine
            .clone()
            .start(admission.request, sink)
            .into_actor(self)
            .map(move |started, act, ctx| match started {
                Ok(stream) => act.answering(key, stream, events, ctx),
                Err(refusal) => act.refused(key, refusal, ctx),
            })
            .spawn(ctx);
    }

    /// The answer's stream runs: its relay takes it from here.
    fn answering(
        &mut self,
        key: u64,
        stream: StreamHandle,
        events: ChunkReceiver,
        ctx: &mut Context<Self>,
    ) {
        let Some(i) = self.requests.iter().position(|r| r.key == key) else {
            // Cancelled or closed while the stream was starting.
            return stream.cancel();
        };
        let (Some(outbox), Phase::Admitting(_)) = (self.outbox.clone(), &self.requests[i].phase)
        else {
            return stream.cancel();
        };
        let RunningRequest { id, phase, .. } = self.requests.remove(i);
        let Phase::Admitting(mut request) = phase else {
            return stream.cancel();
        };
        request.streaming(stream);
        let journal = self.answers.open(
            &self.info.user_id,
            &request.model,
            request.conversation_id.clone(),
        );
        self.requests.insert(
            i,
            RunningRequest {
                key,
                id,
                phase: Phase::Answering(journal.clone()),
            },
        );
        let relay = Relay {
            key,
            request: *request,
            events,
            journal,
            outbox,
            flow: self.flow.clone(),
            outbox_max_bytes: self.config.outbox_max_bytes,
            session: Some(ctx.address().recipient()),
            shared: self.answers.shared().cloned(),
        };
        actix_rt::spawn(relay.run());
    }

    fn refused(&mut self, key: u64, refusal: Refusal, ctx: &mut Context<Self>) {
        if let Some(request) = self.take_admitting(key) {
            self.send_error(Some(&request.id), refusal.reason, &refusal.message, ctx);
            request.refused();
            self.request_ended(ctx);
        }
    }

    /// Removes the entry under `key`; its request when it was still being admitted.
    fn take(&mut self, key: u64) -> Option<Phase> {
        let i = self.requests.iter().position(|r| r.key == key)?;
        let r = self.requests.remove(i);
        self.requests_changed();
        Some(r.phase)
    }

    fn take_admitting(&mut self, key: u64) -> Option<ChatRequest> {
        self.admitting(key)?;
        match self.take(key) {
            Some(Phase::Admitting(request)) => Some(*request),
            _ => None,
        }
    }

    fn requests_changed(&self) {
        if let Some(shard) = &self.shard {
            shard.do_send(RequestsChanged {
                session_id: self.info.session_id.clone(),
                running: self.requests.len() as u32,
                last_model: self.info.last_model.clone(),
            });
        }
    }

    fn cancel(&mut self, id: &str, ctx: &mut Context<Self>) {
        let Some(key) = self.requests.iter().find(|r| r.id == id).map(|r| r.key) else {
            let msg = format!("no running request with id {id:?}");
            return self.send_error(Some(id), ErrorReason::UnknownRequest, &msg, ctx);
        };
        if let Some(mut request) = self.take_admitting(key) {
            self.send_early_done(&request, FinishReason::Cancelled, ctx);
            let usage = request.partial_usage();
            request.finish(FinishReason::Cancelled, usage);
            return self.request_ended(ctx);
        }
        // A running answer (or the one a resume reads) stops now; its `done` comes from the
        // relay or the replay.
        let following = match self
            .requests
            .iter()
            .find(|r| r.key == key)
            .map(|r| &r.phase)
        {
            Some(Phase::Answering(journal) | Phase::Replaying(journal)) => {
                journal.cancel(Cancel::ByClient);
                None
            }
            Some(Phase::Following(stream_id)) => Some(stream_id.clone()),
            _ => None,
        };
        // An answer followed from another node: the node that runs it stops it, and its `done`
        // (cancelled) reaches this client through the journal it follows.
        if let (Some(stream_id), Some(shared)) = (following, self.answers.shared().cloned()) {
            actix_rt::spawn(shared.cancel(&stream_id, &self.info.user_id));
        }
    }

    /// `resume`: the answer's missed chunks, then the rest live, then its end.
    fn resume(
        &mut self,
        id: Option<String>,
        stream_id: &str,
        after_seq: Option<u64>,
        ctx: &mut Context<Self>,
    ) {
        let key = self.next_key;
        self.next_key += 1;
        let id = id.unwrap_or_else(|| format!("req-{key}"));
        if self.requests.iter().any(|r| r.id == id) {
            let msg = format!("request {id:?} is still running");
            return self.send_error(Some(&id), ErrorReason::DuplicateRequestId, &msg, ctx);
        }
        let Some(journal) = self.answers.find(stream_id, &self.info.user_id) else {
            if let Some(shared) = self.answers.shared().cloned() {
                return self.follow(shared, key, id, stream_id, after_seq, ctx);
            }
            self.metrics.resumes_unavailable.inc();
            return self.send_error(
                Some(&id),
                ErrorReason::ResumeUnavailable,
                &unavailable(stream_id),
                ctx,
            );
        };
        let Some(outbox) = self.outbox.clone() else {
            return;
        };
        self.metrics.resumes.inc();
        journal.attach();
        let reader = Reader {
            journal: journal.clone(),
            grace: self.answers.settings().grace,
        };
        self.requests.push(RunningRequest {
            key,
            id: id.clone(),
            phase: Phase::Replaying(journal),
        });
        self.requests_changed();
        replay(reader, id, after_seq, outbox, self.flow.clone())
            .into_actor(self)
            .map(move |(), act, ctx| {
                act.take(key);
                act.check_outbox(ctx);
                act.request_ended(ctx);
            })
            .spawn(ctx);
    }

    /// `resume` of an answer that another node journaled (and may still be running).
    fn follow(
        &mut self,
        shared: Arc<dyn SharedJournals>,
        key: u64,
        id: String,
        stream_id: &str,
        after_seq: Option<u64>,
        ctx: &mut Context<Self>,
    ) {
        let Some(outbox) = self.outbox.clone() else {
            return;
        };
        self.requests.push(RunningRequest {
            key,
            id: id.clone(),
            phase: Phase::Following(stream_id.into()),
        });
        self.requests_changed();
        let (flow, metrics) = (self.flow.clone(), self.metrics.clone());
        let (user, stream_id) = (self.info.user_id.clone(), stream_id.to_owned());
        async move {
            match shared.follow(&stream_id, &user, after_seq).await {
                Some(remote) => {
                    metrics.resumes.inc();
                    replay_remote(remote, id, stream_id, outbox, flow).await;
                }
                None => {
                    metrics.resumes_unavailable.inc();
                    let reason = ErrorReason::ResumeUnavailable;
                    outbox.push_text(&error_frame(&id, reason, &unavailable(&stream_id)));
                }
            }
        }
        .into_actor(self)
        .map(move |(), act, ctx| {
            act.take(key);
            act.check_outbox(ctx);
            act.request_ended(ctx);
        })
        .spawn(ctx);
    }

    fn request_ended(&mut self, ctx: &mut Context<Self>) {
        if self.draining && self.requests.is_empty() {
            self.close(Why::Restart, "server restarting", ctx);
        }
    }

    fn on_frame_error(&mut self, err: FrameError, ctx: &mut Context<Self>) {
        // Stop reading: a broken frame leaves the input in an unknown state.
        if let Some(handle) = self.incoming.take() {
            ctx.cancel_future(handle);
        }
        match err.close_code() {
            Some(code) => self.close(Why::Protocol(code), &err.to_string(), ctx),
            // Nobody is left to tell.
            None => ctx.stop(),
        }
    }

    fn send_system(&mut self, event: SystemEvent, ctx: &mut Context<Self>) {
        let max_concurrent_requests = if self.draining {
            0
        } else {
            self.config.max_concurrent_requests as u32
        };
        let msg = ServerMessage::System {
            payload: SystemPayload {
                event,
                session_id: self.info.session_id.as_ref().into(),
                node_id: self.config.node_id.as_ref().into(),
                protocol_version: PROTOCOL_VERSION,
                limits: SessionLimits {
                    max_frame_bytes: self.config.max_frame_bytes as u64,
                    max_concurrent_requests,
                    heartbeat_interval_ms: self.config.heartbeat_interval.as_millis() as u64,
                    idle_timeout_ms: self.config.idle_timeout.as_millis() as u64,
                },
            },
        }
        .to_json();
        if let Some(outbox) = &self.outbox {
            outbox.push_text(&msg);
        }
        self.check_outbox(ctx);
    }
}

impl Actor for SessionActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        let Some((ws, stream)) = self.ws.take() else {
            return ctx.stop();
        };
        self.outbox = Some(Outbox::new(ws, self.flow.clone(), self.metrics.clone()));
        self.metrics.connects.inc();
        self.metrics.sessions_live.inc();
        self.incoming = Some(ctx.add_stream(stream.max_frame_size(self.config.max_frame_bytes)));

        let shard = self.registry.shard();
        shard.do_send(Register {
            info: self.info.clone(),
            close: ctx.address().recipient(),
            drain: ctx.address().recipient(),
        });
        self.shard = Some(shard);

        let heartbeat = self.config.heartbeat_interval;
        ctx.run_interval(heartbeat, |act, _| {
            if let Some(outbox) = &act.outbox {
                outbox.ping();
            }
        });
        // A client that stops reading holds its answers at the watermark, never growing past
        // outbox_max_bytes: it is closed once a frame has waited write_timeout for the socket.
        let write_timeout = self.config.write_timeout;
        let check_writes = (write_timeout / 4).max(Duration::from_millis(10));
        ctx.run_interval(check_writes, move |act, ctx| {
            let stalled = act
                .outbox
                .as_ref()
                .map_or(Duration::ZERO, Outbox::stalled_for);
            if stalled >= write_timeout {
                let reason = format!(
                    "slow consumer: nothing read for {} ms, limit write_timeout_ms={}",
                    stalled.as_millis(),
                    write_timeout.as_millis()
                );
                act.close(Why::SlowConsumer, &reason, ctx);
            }
        });
        let idle = self.config.idle_timeout;
        let check_every = (idle / 4).max(Duration::from_millis(10));
        ctx.run_interval(check_every, move |act, ctx| {
            if act.last_heard.elapsed() >= idle {
                let reason = format!("idle timeout: nothing received for {} ms", idle.as_millis());
                act.close(Why::Idle, &reason, ctx);
            }
        });

        self.send_system(SystemEvent::Welcome, ctx);
    }

    fn stopping(&mut self, _: &mut Self::Context) -> Running {
        self.metrics.sessions_live.dec();
        let reason = self.close_label.unwrap_or("client_gone").to_owned();
        self.metrics
            .disconnects
            .get_or_create(&ReasonLabel { reason })
            .inc();
        // A request still being admitted is dropped: cancelled and recorded. A running answer
        // waits `grace` for a resume (or stops now without one); a replay's reader goes with
        // this actor's futures.
        let grace = self.answers.settings().grace;
        for r in self.requests.drain(..) {
            if let Phase::Answering(journal) = r.phase {
                if grace.is_zero() {
                    journal.cancel(Cancel::ByClient);
                } else {
                    journal.orphan(grace);
                }
            }
        }
        if let Some(outbox) = &self.outbox {
            outbox.end();
        }
        if let Some(shard) = &self.shard {
            shard.do_send(Unregister {
                session_id: self.info.session_id.clone(),
            });
        }
        Running::Stop
    }
}

impl StreamHandler<Result<Message, ProtocolError>> for SessionActor {
    fn handle(&mut self, frame: Result<Message, ProtocolError>, ctx: &mut Context<Self>) {
        if self.closing {
            return;
        }
        self.last_heard = Instant::now();
        let message = match self.assembler.push(frame) {
            Ok(Some(message)) => message,
            Ok(None) => return,
            Err(e) => return self.on_frame_error(e, ctx),
        };
        if matches!(message, Incoming::Text(_) | Incoming::Binary(_)) {
            self.metrics.frames_in.inc();
        }
        match message {
            Incoming::Text(text) => self.on_text(&text, ctx),
            Incoming::Binary(_) => {
                let msg = "binary frames are not supported; send JSON text frames";
                self.send_error(None, ErrorReason::BinaryNotSupported, msg, ctx);
            }
            Incoming::Ping(data) => {
                if let Some(outbox) = &self.outbox {
                    outbox.pong(&data);
                }
            }
            Incoming::Pong => {}
            Incoming::Close(reason) => {
                let code = reason
                    .as_ref()
                    .map_or(close_code::NORMAL, |r| u16::from(r.code));
                self.close(Why::ClientClosed(code), "bye", ctx);
            }
        }
    }
}

impl Handler<RelayNews> for SessionActor {
    type Result = ();

    fn handle(&mut self, news: RelayNews, ctx: &mut Context<Self>) {
        match news {
            RelayNews::Ended { key } => {
                if self.take(key).is_some() {
                    self.request_ended(ctx);
                }
            }
            RelayNews::Backlog => self.check_outbox(ctx),
        }
    }
}

impl Handler<CloseSession> for SessionActor {
    type Result = ();

    fn handle(&mut self, msg: CloseSession, ctx: &mut Context<Self>) {
        let why = match msg.code {
            close_code::RESTART => Why::Restart,
            code => Why::Policy(code),
        };
        self.close(why, &msg.reason, ctx);
    }
}

impl Handler<DrainSession> for SessionActor {
    type Result = ();

    fn handle(&mut self, msg: DrainSession, ctx: &mut Context<Self>) {
        if self.draining {
            return;
        }
        self.draining = true;
        self.send_system(SystemEvent::Draining, ctx);
        self.request_ended(ctx);
        ctx.run_later(msg.timeout, |act, ctx| {
            // Answers still running end with an error (their relays queue it, then the session
            // closes once the last one reported); replays end with the connection.
            let msg = "the node shut down before this answer finished; retry elsewhere";
            let mut left = Vec::new();
            for r in std::mem::take(&mut act.requests) {
                match r.phase {
                    Phase::Admitting(mut request) => {
                        act.send_error(Some(&r.id), ErrorReason::ShuttingDown, msg, ctx);
                        act.send_early_done(&request, FinishReason::Error, ctx);
                        request.finish(FinishReason::Error, Usage::default());
                    }
                    Phase::Answering(ref journal) => {
                        journal.cancel(Cancel::Failed(ErrorReason::ShuttingDown, msg.into()));
                        left.push(r);
                    }
                    Phase::Replaying(_) | Phase::Following(_) => {}
                }
            }
            act.requests = left;
            act.requests_changed();
            act.request_ended(ctx);
            // A relay that never reports must not keep the node from stopping.
            ctx.run_later(act.config.close_grace, |act, ctx| {
                act.close(Why::Restart, "server restarting", ctx);
            });
        });
    }
}
