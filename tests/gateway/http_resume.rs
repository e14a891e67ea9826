//! Resuming a streamed completion of the OpenAI-compatible front: its events carry
//! `id: <stream_id>:<seq>`, and `GET /v1/chat/completions/{stream_id}/events` picks the answer up
//! after `Last-Event-ID` (or `?after_seq=`), on any node.

use std::time::Duration;

use ai_gateway_actors::{provider::mock::MOCK_ANSWER, MockSettings};
use futures_util::StreamExt;
use serde_json::{json, Value};

use crate::support::*;

/// About 80 chunks, 5 ms apart: still running when the test cuts the response.
fn paced(c: &mut ai_gateway::Config) {
    c.mock = MockSettings {
        text_delay_ms: [5, 5],
        reasoning_delay_ms: [5, 5],
        ..MockSettings::instant()
    };
}

/// One SSE event: its `id:` and its `data:`.
#[derive(Debug, Clone)]
struct Event {
    id: Option<String>,
    data: String,
}

/// The complete events of an SSE text; what follows the last blank line is left out.
fn events(text: &str) -> Vec<Event> {
    let complete = match text.rfind("\n\n") {
        Some(end) => &text[..end],
        None => "",
    };
    complete
        .split("\n\n")
        .filter(|e| !e.is_empty())
        .map(|e| {
            let mut ev = Event {
                id: None,
                data: String::new(),
            };
            for line in e.lines() {
                if let Some(id) = line.strip_prefix("id: ") {
                    ev.id = Some(id.to_owned());
                } else if let Some(d) = line.strip_prefix("data: ") {
                    ev.data = d.to_owned();
                }
            }
            ev
        })
        .collect()
}

fn json_of(e: &Event) -> Value {
    serde_json::from_str(&e.data).unwrap_or_else(|_| panic!("{e:?}"))
}

/// The seq of a chunk event, checking that its id names `stream_id`.
fn seq_of(e: &Event, stream_id: &str) -> u64 {
    let id = e.id.as_deref().expect("a chunk's event has an id");
    let (stream, seq) = id.split_once(':').expect("<stream_id>:<seq>");
    assert_eq!(stream, stream_id);
    seq.parse().unwrap()
}

fn chunk_events(all: &[Event]) -> Vec<Event> {
    all.iter().filter(|e| e.id.is_some()).cloned().collect()
}

fn content_of(chunks: &[Event]) -> String {
    chunks
        .iter()
        .filter_map(|e| {
            json_of(e)["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_owned)
        })
        .collect()
}

fn finish_of(all: &[Event]) -> Option<String> {
    all.iter().filter(|e| e.data != "[DONE]").find_map(|e| {
        json_of(e)["choices"][0]["finish_reason"]
            .as_str()
            .map(str::to_owned)
    })
}

/// Starts a streamed completion and reads until `n` chunk events came; answers them and the
/// stream id, then drops the response (the client went away).
async fn cut_after(t: &TestGateway, token: &str, n: usize) -> (Vec<Event>, String) {
    let res = t
        .http
        .post(t.url("/v1/chat/completions"))
        .bearer_auth(token)
        .json(&json!({"model": "mock", "stream": true,
            "messages": [{"role": "user", "content": "tell me"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let stream_id = res.headers()["x-gateway-stream-id"]
        .to_str()
        .unwrap()
        .to_owned();
    assert_eq!(stream_id.len(), 32, "128 random bits in hex");
    let mut body = res.bytes_stream();
    let mut text = String::new();
    loop {
        let chunks = chunk_events(&events(&text));
        if chunks.len() >= n {
            return (chunks, stream_id);
        }
        let piece = body.next().await.expect("more body").unwrap();
        text.push_str(std::str::from_utf8(&piece).unwrap());
    }
}

/// The chunks seen before the cut and those of the resumed stream are the whole answer, in
/// order, nothing doubled.
fn assert_whole(before: Vec<Event>, after: &[Event], stream_id: &str) {
    let mut all = before;
    all.extend(chunk_events(after));
    let seqs: Vec<u64> = all.iter().map(|e| seq_of(e, stream_id)).collect();
    assert_eq!(
        seqs,
        (0..all.len() as u64).collect::<Vec<_>>(),
        "no gap, no double"
    );
    assert_eq!(content_of(&all), MOCK_ANSWER);
}

async fn resume(
    t: &TestGateway,
    token: &str,
    stream_id: &str,
    last: Option<&str>,
) -> reqwest::Response {
    let mut req = t
        .http
        .get(t.url(&format!("/v1/chat/completions/{stream_id}/events")))
        .bearer_auth(token);
    if let Some(last) = last {
        req = req.header("Last-Event-ID", last);
    }
    req.send().await.unwrap()
}

#[actix_rt::test]
async fn a_cut_stream_resumes_after_its_last_event_with_nothing_lost_or_doubled() {
    let t = start_with(paced).await;
    let (_, token) = t.new_user().await;
    let (before, stream_id) = cut_after(&t, &token, 5).await;
    let last = before.last().unwrap().id.clone().unwrap();

    let res = resume(&t, &token, &stream_id, Some(&last)).await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["content-type"], "text/event-stream");
    let after = events(&res.text().await.unwrap());
    assert_eq!(after.last().unwrap().data, "[DONE]");
    assert_eq!(finish_of(&after).as_deref(), Some("stop"));
    assert!(
        after.iter().all(|e| !e.data.contains("\"role\"")),
        "no second start after Last-Event-ID"
    );
    assert_whole(before, &after, &stream_id);
    let usage = after.iter().find_map(|e| {
        (e.data != "[DONE]")
            .then(|| json_of(e))
            .filter(|v| v["usage"].is_object())
    });
    assert!(usage.is_some(), "a resumed stream ends with its usage");
}

#[actix_rt::test]
async fn an_abandoned_stream_runs_to_its_end_and_replays_from_any_point() {
    let t = start_with(paced).await;
    let (_, token) = t.new_user().await;
    let (before, stream_id) = cut_after(&t, &token, 3).await;
    // Replayed in a later second than it started: every event still shows the answer's start
    // (`created`), as the first rendering did.
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    // Nobody reads it, yet it runs on: in a while it has ended, whole.
    let mut whole = Vec::new();
    for _ in 0..100 {
        let res = resume(&t, &token, &stream_id, None).await;
        assert_eq!(res.status(), 200);
        whole = events(&res.text().await.unwrap());
        if finish_of(&whole).is_some() {
            break;
        }
    }
    assert_eq!(finish_of(&whole).as_deref(), Some("stop"));
    assert!(
        whole[0].data.contains("\"role\":\"assistant\""),
        "from the start: {:?}",
        whole[0]
    );
    let chunks = chunk_events(&whole);
    assert_eq!(content_of(&chunks), MOCK_ANSWER);
    assert_eq!(
        chunks[..before.len()]
            .iter()
            .map(|e| e.data.clone())
            .collect::<Vec<_>>(),
        before.iter().map(|e| e.data.clone()).collect::<Vec<_>>(),
        "the same events as the first time"
    );

    // `?after_seq=` does what Last-Event-ID does; a bare seq is a Last-Event-ID too.
    let res = t
        .http
        .get(t.url(&format!(
            "/v1/chat/completions/{stream_id}/events?after_seq=9"
        )))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    let rest = chunk_events(&events(&res.text().await.unwrap()));
    assert_eq!(seq_of(&rest[0], &stream_id), 10);
    assert_eq!(rest.len(), chunks.len() - 10);
    let res = resume(&t, &token, &stream_id, Some("9")).await;
    assert_eq!(
        chunk_events(&events(&res.text().await.unwrap())).len(),
        rest.len()
    );
}

#[actix_rt::test]
async fn unknown_foreign_and_malformed_resumes_are_refused_in_openai_shape() {
    let t = start_with(paced).await;
    let (_, token) = t.new_user().await;
    let (_, stream_id) = cut_after(&t, &token, 2).await;

    let (_, stranger) = t.new_user().await;
    for (who, id) in [
        (&stranger, stream_id.as_str()),
        (&token, "00112233445566778899aabbccddeeff"),
    ] {
        let res = resume(&t, who, id, None).await;
        assert_eq!(res.status(), 404);
        let body: Value = res.json().await.unwrap();
        assert_eq!(body["error"]["code"], "resume_unavailable", "{body}");
        assert_eq!(body["error"]["type"], "invalid_request_error", "{body}");
    }
    let res = resume(&t, &token, &stream_id, Some("another:3")).await;
    assert_eq!(res.status(), 400);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["error"]["param"], "Last-Event-ID", "{body}");
    let res = t
        .http
        .get(t.url(&format!("/v1/chat/completions/{stream_id}/events")))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401, "no anonymous access");
}

#[actix_rt::test]
async fn with_no_grace_a_dropped_stream_is_cancelled_and_resumes_as_cancelled() {
    let t = start_with(|c| {
        paced(c);
        c.mock.text_repeat = 1_000;
        c.resume.grace_ms = 0;
    })
    .await;
    let (_, token) = t.new_user().await;
    let (before, stream_id) = cut_after(&t, &token, 3).await;
    // The upstream stops once the gateway sees the client gone.
    let mut produced = t.gw.mock().chunks_produced();
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = t.gw.mock().chunks_produced();
        if now == produced {
            break;
        }
        produced = now;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        t.gw.mock().chunks_produced(),
        produced,
        "cancelled upstream"
    );
    let res = resume(&t, &token, &stream_id, None).await;
    let replay = events(&res.text().await.unwrap());
    assert_eq!(finish_of(&replay).as_deref(), Some("cancelled"));
    assert!(chunk_events(&replay).len() >= before.len());
}

#[actix_rt::test]
async fn a_stream_cut_on_one_node_resumes_on_another() {
    let db = TestDatabase::create().await;
    let prefix = redis_prefix();
    let tweak = |c: &mut ai_gateway::Config| {
        shared(c, &db, &prefix);
        paced(c);
    };
    let a = start_with(tweak).await;
    let b = start_with(tweak).await;
    let (_, token) = a.new_user().await;
    let (before, stream_id) = cut_after(&a, &token, 5).await;
    let last = before.last().unwrap().id.clone().unwrap();

    let res = resume(&b, &token, &stream_id, Some(&last)).await;
    assert_eq!(res.status(), 200);
    let after = events(&res.text().await.unwrap());
    assert_eq!(finish_of(&after).as_deref(), Some("stop"));
    assert_whole(before, &after, &stream_id);
}
