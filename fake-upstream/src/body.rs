//! Streaming response bodies played from a script, counted while they are open.

use std::{io, sync::Arc, time::Duration};

use actix_web::{web::Bytes, HttpResponse};

use crate::record::State;

/// One step of a streamed body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    Send(Bytes),
    Pause(Duration),
    /// Send no more events, and never end (see [`STALL_COMMENT_INTERVAL`]).
    Stall,
    /// Fail the body: the server drops the connection without finishing the response.
    Cut,
}

impl Step {
    /// One server-sent event: an optional `event:` line, a `data:` line, a blank line.
    pub fn event(event: Option<&str>, data: &str, eol: &str) -> Step {
        let mut s = String::new();
        if let Some(event) = event {
            s.push_str(&format!("event: {event}{eol}"));
        }
        s.push_str(&format!("data: {data}{eol}{eol}"));
        Step::Send(Bytes::from(s))
    }
}

/// Counts a body as open until it is dropped; a body dropped before its script ended was
/// abandoned by the client.
struct OpenStream {
    state: Arc<State>,
    finished: bool,
}

impl OpenStream {
    fn new(state: Arc<State>) -> Self {
        state.stream_opened();
        OpenStream {
            state,
            finished: false,
        }
    }
}

impl OpenStream {
    /// The script ran to its end (a cut counts: the server chose it).
    fn mark_finished(&mut self) {
        self.finished = true;
    }
}

impl Drop for OpenStream {
    fn drop(&mut self) {
        self.state.stream_closed(self.finished);
    }
}

/// How often a stalled stream writes an SSE comment. Comments are not events, so a client still
/// sees silence; the writes are how the server notices a client that went away (actix-web does
/// not watch the socket while a body has nothing to send).
const STALL_COMMENT_INTERVAL: Duration = Duration::from_millis(100);
const STALL_COMMENT: &[u8] = b": stalled\n\n";

struct Player {
    steps: std::vec::IntoIter<Step>,
    open: OpenStream,
    stalled: bool,
}

/// A `200 text/event-stream` response that plays `steps`.
pub fn event_stream(state: Arc<State>, steps: Vec<Step>) -> HttpResponse {
    let player = Player {
        steps: steps.into_iter(),
        open: OpenStream::new(state),
        stalled: false,
    };
    let body = futures_util::stream::unfold(player, |mut p| async move {
        loop {
            if p.stalled {
                actix_rt::time::sleep(STALL_COMMENT_INTERVAL).await;
                return Some((Ok(Bytes::from_static(STALL_COMMENT)), p));
            }
            match p.steps.next() {
                None => {
                    p.open.mark_finished();
                    return None;
                }
                Some(Step::Send(bytes)) => return Some((Ok(bytes), p)),
                Some(Step::Pause(d)) => actix_rt::time::sleep(d).await,
                Some(Step::Stall) => p.stalled = true,
                Some(Step::Cut) => {
                    p.open.mark_finished();
                    let cut = io::Error::new(io::ErrorKind::ConnectionAborted, "scenario cut");
                    return Some((Err(cut), p));
                }
            }
        }
    });
    HttpResponse::Ok()
        .content_type("text/event-stream")
        .insert_header(("cache-control", "no-cache"))
        .streaming(body)
}
