//! What the fake saw: every request, and the answer streams it has open.

use std::{
    collections::BTreeMap,
    sync::{
        atomic::{AtomicU64, AtomicUsize, Ordering},
        Mutex,
    },
};

use actix_web::HttpRequest;

use crate::server::FakeOptions;

/// One request as the fake received it.
#[derive(Debug, Clone, PartialEq)]
pub struct RecordedRequest {
    pub method: String,
    pub path: String,
    /// The raw query string, without `?`.
    pub query: String,
    /// Header names in lower case; repeated headers keep the last value.
    pub headers: BTreeMap<String, String>,
    /// The body as JSON (`Null` when it was empty or not JSON).
    pub body: serde_json::Value,
}

impl RecordedRequest {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(&name.to_ascii_lowercase())
            .map(String::as_str)
    }
}

/// State shared by the fake's handlers.
#[derive(Debug, Default)]
pub(crate) struct State {
    pub options: FakeOptions,
    requests: Mutex<Vec<RecordedRequest>>,
    flaky_requests: AtomicU64,
    open_streams: AtomicUsize,
    abandoned_streams: AtomicUsize,
}

impl State {
    pub fn new(options: FakeOptions) -> Self {
        State {
            options,
            ..Default::default()
        }
    }

    pub fn record(&self, req: &HttpRequest, body: &[u8]) -> RecordedRequest {
        let recorded = RecordedRequest {
            method: req.method().to_string(),
            path: req.path().to_owned(),
            query: req.query_string().to_owned(),
            headers: req
                .headers()
                .iter()
                .map(|(k, v)| {
                    let v = String::from_utf8_lossy(v.as_bytes()).into_owned();
                    (k.as_str().to_ascii_lowercase(), v)
                })
                .collect(),
            body: serde_json::from_slice(body).unwrap_or(serde_json::Value::Null),
        };
        self.requests.lock().unwrap().push(recorded.clone());
        recorded
    }

    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.requests.lock().unwrap().clone()
    }

    /// Counts one request of a `flaky-N` scenario; returns how many came before it.
    pub fn next_flaky(&self) -> u64 {
        self.flaky_requests.fetch_add(1, Ordering::SeqCst)
    }

    pub fn open_streams(&self) -> usize {
        self.open_streams.load(Ordering::SeqCst)
    }

    pub fn abandoned_streams(&self) -> usize {
        self.abandoned_streams.load(Ordering::SeqCst)
    }

    pub fn stream_opened(&self) {
        self.open_streams.fetch_add(1, Ordering::SeqCst);
    }

    pub fn stream_closed(&self, finished: bool) {
        self.open_streams.fetch_sub(1, Ordering::SeqCst);
        if !finished {
            self.abandoned_streams.fetch_add(1, Ordering::SeqCst);
        }
    }
}
