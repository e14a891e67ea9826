//! Resumable answers: a client that loses its connection picks its answer up again with
//! `resume`, with nothing lost and nothing doubled.

use std::time::Duration;

use ai_gateway_actors::{provider::mock::MOCK_ANSWER, MockSettings};
use serde_json::{json, Value};

use crate::support::*;

/// About 80 chunks, 5 ms apart: still running when the test cuts the connection.
fn paced_mock() -> MockSettings {
    MockSettings {
        text_delay_ms: [5, 5],
        reasoning_delay_ms: [5, 5],
        ..MockSettings::instant()
    }
}

fn chat(id: &str) -> Value {
    json!({"type": "chat", "id": id, "payload": {"content": "tell me", "model": "mock"}})
}

fn resume(id: &str, stream_id: &str, after_seq: Option<u64>) -> Value {
    let mut payload = json!({ "stream_id": stream_id });
    if let Some(seq) = after_seq {
        payload["after_seq"] = json!(seq);
    }
    json!({"type": "resume", "id": id, "payload": payload})
}

/// Reads `n` chunk frames of `id`; answers them and the stream id of the first.
async fn first_chunks(ws: &mut Ws, id: &str, n: usize) -> (Vec<Value>, String) {
    let mut chunks = Vec::new();
    while chunks.len() < n {
        let f = ws.next_json().await;
        assert_eq!(
            (f["type"].as_str(), f["id"].as_str()),
            (Some("chat"), Some(id)),
            "{f}"
        );
        chunks.push(f);
    }
    let stream_id = chunks[0]["payload"]["stream_id"]
        .as_str()
        .expect("the first chunk names its stream")
        .to_owned();
    assert_eq!(stream_id.len(), 32, "128 random bits in hex");
    assert!(
        chunks[1]["payload"].get("stream_id").is_none(),
        "only on seq 0"
    );
    (chunks, stream_id)
}

fn text_of(chunks: &[Value], kind: &str) -> String {
    chunks
        .iter()
        .filter(|c| c["payload"]["type"] == kind)
        .map(|c| c["payload"]["content"].as_str().unwrap())
        .collect()
}

fn seqs(chunks: &[Value]) -> Vec<u64> {
    chunks
        .iter()
        .map(|c| c["payload"]["seq"].as_u64().unwrap())
        .collect()
}

async fn unavailable(ws: &mut Ws, id: &str, stream_id: &str) {
    ws.send_json(resume(id, stream_id, None)).await;
    let f = ws.next_json().await;
    assert_eq!(f["type"], "error", "{f}");
    assert_eq!(f["id"], id);
    assert_eq!(f["payload"]["reason"], "resume_unavailable", "{f}");
}

#[actix_rt::test]
async fn a_cut_answer_resumes_on_a_new_connection_with_nothing_lost_or_doubled() {
    let t = start_with(|c| c.mock = paced_mock()).await;
    let (_, token) = t.new_user().await;
    let mut ws = t.connect(&token).await;
    ws.send_json(chat("a1")).await;
    let (before, stream_id) = first_chunks(&mut ws, "a1", 10).await;
    drop(ws);

    let mut ws = t.connect(&token).await;
    ws.send_json(resume("r1", &stream_id, Some(9))).await;
    let after = ws.answer("r1").await;
    let mut all = before;
    all.extend(after.chunks.iter().cloned());
    assert_eq!(
        seqs(&all),
        (0..all.len() as u64).collect::<Vec<_>>(),
        "no gap, no double"
    );
    assert_eq!(text_of(&all, "text"), MOCK_ANSWER);
    assert_eq!(after.finish_reason(), "stop");
    let done = &after.done["payload"];
    assert_eq!(done["stream_id"], stream_id.as_str());
    assert_eq!(done["chunks"], all.len() as u64);
    assert!(done["usage"]["completion_tokens"].as_u64().unwrap() > 0);
}

#[actix_rt::test]
async fn a_finished_answer_replays_in_full_and_from_any_seq() {
    let t = start_with(|c| c.mock = MockSettings::instant()).await;
    let (_, token) = t.new_user().await;
    let mut ws = t.connect(&token).await;
    ws.send_json(chat("a1")).await;
    let original = ws.answer("a1").await;
    let stream_id = original.done["payload"]["stream_id"]
        .as_str()
        .unwrap()
        .to_owned();

    ws.send_json(resume("again", &stream_id, None)).await;
    let replay = ws.answer("again").await;
    replay.assert_in_order();
    let payloads =
        |a: &Answer| -> Vec<Value> { a.chunks.iter().map(|c| c["payload"].clone()).collect() };
    assert_eq!(
        payloads(&replay),
        payloads(&original),
        "the same frames, under the new id"
    );
    assert_eq!(
        replay.done["payload"]["usage"],
        original.done["payload"]["usage"]
    );

    ws.send_json(resume(
        "tail",
        &stream_id,
        Some(original.chunks.len() as u64 - 3),
    ))
    .await;
    let tail = ws.answer("tail").await;
    assert_eq!(tail.chunks.len(), 2);
    assert_eq!(tail.finish_reason(), "stop");
}

#[actix_rt::test]
async fn unknown_expired_and_foreign_streams_are_unavailable() {
    let t = start_with(|c| {
        c.mock = MockSettings::instant();
        c.resume.retention_ms = 300;
    })
    .await;
    let (_, token) = t.new_user().await;
    let mut ws = t.connect(&token).await;
    ws.send_json(chat("a1")).await;
    let done = ws.answer("a1").await.done;
    let stream_id = done["payload"]["stream_id"].as_str().unwrap().to_owned();

    let mut stranger = t.client().await;
    unavailable(&mut stranger, "x", &stream_id).await;
    unavailable(&mut ws, "y", "00000000000000000000000000000000").await;

    tokio::time::sleep(Duration::from_millis(400)).await;
    unavailable(&mut ws, "z", &stream_id).await;
    // The connection carries on.
    assert_eq!(
        ws.chat("after", "still here?").await.finish_reason(),
        "stop"
    );
}

#[actix_rt::test]
async fn a_cancelled_answer_resumes_up_to_the_cancel() {
    let t = start_with(|c| c.mock = paced_mock()).await;
    let (_, token) = t.new_user().await;
    let mut ws = t.connect(&token).await;
    ws.send_json(chat("a1")).await;
    let (_, stream_id) = first_chunks(&mut ws, "a1", 3).await;
    ws.send_json(json!({"type": "cancel", "id": "a1"})).await;
    let rest = ws.answer("a1").await;
    assert_eq!(rest.finish_reason(), "cancelled");
    let sent = rest.done["payload"]["chunks"].as_u64().unwrap();

    ws.send_json(resume("r", &stream_id, None)).await;
    let replay = ws.answer("r").await;
    assert_eq!(
        replay.chunks.len() as u64,
        sent,
        "every chunk up to the cancel"
    );
    assert_eq!(replay.finish_reason(), "cancelled");
}

#[actix_rt::test]
async fn an_answer_left_alone_runs_for_the_grace_time_then_stops_upstream() {
    let t = start_with(|c| {
        c.mock = MockSettings {
            text_repeat: 1_000,
            ..paced_mock()
        };
        c.resume.grace_ms = 300;
    })
    .await;
    let (_, token) = t.new_user().await;
    let mut ws = t.connect(&token).await;
    ws.send_json(chat("a1")).await;
    let (_, stream_id) = first_chunks(&mut ws, "a1", 3).await;
    drop(ws);
    t.wait_sessions(0, Duration::from_secs(5)).await;
    let at_disconnect = t.gw.mock().chunks_produced();
    eventually(
        Duration::from_secs(5),
        "the answer to go on without its client",
        || t.gw.mock().chunks_produced() > at_disconnect + 5,
    )
    .await;
    // Past the grace time nothing more is produced.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let stopped = t.gw.mock().chunks_produced();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(t.gw.mock().chunks_produced(), stopped, "cancelled upstream");

    let mut ws = t.connect(&token).await;
    ws.send_json(resume("r", &stream_id, None)).await;
    let replay = ws.answer("r").await;
    assert_eq!(replay.finish_reason(), "cancelled");
    assert!(
        replay.chunks.len() as u64 > at_disconnect,
        "what ran in the grace time is kept"
    );
}

#[actix_rt::test]
async fn an_answer_that_ends_with_nobody_connected_is_still_stored() {
    let t = start_with(|c| c.mock = paced_mock()).await;
    let (_, token) = t.new_user().await;
    let conversation = uuid::Uuid::new_v4().to_string();
    let mut ws = t.connect(&token).await;
    ws.send_json(json!({"type": "chat", "id": "q", "payload": {"content": "remember me", "conversation_id": conversation}}))
        .await;
    first_chunks(&mut ws, "q", 3).await;
    drop(ws);

    let path = t.url(&format!("/v1/conversations/{conversation}"));
    let mut stored = Value::Null;
    for _ in 0..100 {
        t.gw.flush_writes().await;
        let res = t.http.get(&path).bearer_auth(&token).send().await.unwrap();
        if res.status() == 200 {
            stored = res.json().await.unwrap();
            if stored["messages"].as_array().is_some_and(|m| m.len() == 2) {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(stored["messages"][0]["content"], "remember me", "{stored}");
    assert_eq!(stored["messages"][1]["content"], MOCK_ANSWER, "{stored}");
}

/// Two nodes sharing PostgreSQL and Redis, with the paced mock.
async fn two_nodes() -> (TestDatabase, TestGateway, TestGateway) {
    let db = TestDatabase::create().await;
    let prefix = redis_prefix();
    let tweak = |c: &mut ai_gateway::Config| {
        shared(c, &db, &prefix);
        c.mock = paced_mock();
    };
    let a = start_with(tweak).await;
    let b = start_with(tweak).await;
    (db, a, b)
}

#[actix_rt::test]
async fn an_answer_cut_on_one_node_resumes_on_another() {
    let (_db, a, b) = two_nodes().await;
    let (_, token) = a.new_user().await;
    let mut ws = a.connect(&token).await;
    ws.send_json(chat("a1")).await;
    let (before, stream_id) = first_chunks(&mut ws, "a1", 10).await;
    drop(ws);

    // Node B has no such answer of its own: it follows A's journal in Redis, live.
    let mut ws = b.connect(&token).await;
    ws.send_json(resume("r1", &stream_id, Some(9))).await;
    let after = ws.answer("r1").await;
    let mut all = before;
    all.extend(after.chunks.iter().cloned());
    assert_eq!(
        seqs(&all),
        (0..all.len() as u64).collect::<Vec<_>>(),
        "no gap, no double"
    );
    assert_eq!(text_of(&all, "text"), MOCK_ANSWER);
    assert_eq!(after.finish_reason(), "stop");
    assert_eq!(after.done["payload"]["chunks"], all.len() as u64);

    // Finished, it replays from B too; another user cannot have it.
    ws.send_json(resume("r2", &stream_id, None)).await;
    let replay = ws.answer("r2").await;
    assert_eq!(text_of(&replay.chunks, "text"), MOCK_ANSWER);
    let mut stranger = b.client().await;
    unavailable(&mut stranger, "x", &stream_id).await;
}

#[actix_rt::test]
async fn cancel_of_an_answer_followed_on_another_node_stops_it_at_once() {
    let (_db, a, b) = two_nodes().await;
    let (_, token) = a.new_user().await;
    let mut ws = a.connect(&token).await;
    ws.send_json(chat("a1")).await;
    let (_, stream_id) = first_chunks(&mut ws, "a1", 3).await;
    drop(ws);

    let mut ws = b.connect(&token).await;
    ws.send_json(resume("r1", &stream_id, Some(2))).await;
    let f = ws.next_json().await;
    assert_eq!(
        (f["type"].as_str(), f["id"].as_str()),
        (Some("chat"), Some("r1")),
        "{f}"
    );
    ws.send_json(json!({"type": "cancel", "id": "r1"})).await;
    let rest = ws.answer("r1").await;
    assert_eq!(
        rest.finish_reason(),
        "cancelled",
        "node A stopped it now, not after the grace time"
    );
    // Node A produced nothing more once it was cancelled.
    let stopped = a.gw.mock().chunks_produced();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(a.gw.mock().chunks_produced(), stopped, "cancelled upstream");
}

#[actix_rt::test]
async fn a_node_killed_mid_answer_leaves_the_journaled_part_and_a_clear_error() {
    let db = TestDatabase::create().await;
    let prefix = redis_prefix();
    let b = start_with(|c| shared(c, &db, &prefix)).await;
    let (_, token) = b.new_user().await;
    // The spawned node runs the seed's pacing: an answer takes seconds.
    let (mut child, base) = spawn_node(&db, &prefix, "doomed", 1_000).await;
    let (ws, _) = tokio_tungstenite::connect_async(format!("ws://{base}/chat?token={token}"))
        .await
        .unwrap();
    let mut ws = Ws::after_welcome(ws).await;
    ws.send_json(chat("a1")).await;
    let (before, stream_id) = first_chunks(&mut ws, "a1", 5).await;
    child.start_kill().unwrap(); // SIGKILL: no draining, no goodbye.
    child.wait().await.unwrap();

    let mut ws = b.connect(&token).await;
    ws.send_json(resume("r", &stream_id, None)).await;
    let mut chunks = Vec::new();
    let error = loop {
        let f = ws.next_json().await;
        match f["type"].as_str() {
            Some("chat") => chunks.push(f),
            _ => break f,
        }
    };
    // What reached Redis before the kill: the start of what the client saw (the last batch
    // or two may have died with the node), in order.
    assert!(!chunks.is_empty(), "the journaled part");
    assert_eq!(seqs(&chunks), (0..chunks.len() as u64).collect::<Vec<_>>());
    for (kept, seen) in chunks.iter().zip(&before) {
        assert_eq!(kept["payload"]["content"], seen["payload"]["content"]);
    }
    assert_eq!(error["type"], "error", "{error}");
    assert_eq!(error["payload"]["reason"], "resume_unavailable", "{error}");
    assert!(
        error["payload"]["message"]
            .as_str()
            .unwrap()
            .contains("stopped"),
        "{error}"
    );
}

#[actix_rt::test]
async fn a_draining_node_finishes_answers_that_resume_on_another_node() {
    let db = TestDatabase::create().await;
    let prefix = redis_prefix();
    let a = start_with(|c| {
        shared(c, &db, &prefix);
        c.mock = paced_mock();
        c.shutdown.drain_timeout_ms = 10_000;
    })
    .await;
    let b = start_with(|c| shared(c, &db, &prefix)).await;
    let (_, token) = a.new_user().await;
    let mut ws = a.connect(&token).await;
    ws.send_json(chat("a1")).await;
    let (mut seen, stream_id) = first_chunks(&mut ws, "a1", 5).await;

    let TestGateway { gw, .. } = a;
    let stopping = actix_rt::spawn(gw.shutdown());
    // The node says it drains; the client leaves at once for another node.
    loop {
        let f = ws.next_json().await;
        if f["type"] == "system" {
            assert_eq!(f["payload"]["event"], "draining");
            break;
        }
        seen.push(f);
    }
    drop(ws);

    let mut ws = b.connect(&token).await;
    let last = seen.len() as u64 - 1;
    ws.send_json(resume("r", &stream_id, Some(last))).await;
    let mut rest = Answer::default();
    loop {
        let f = ws.next_json().await;
        match f["type"].as_str() {
            Some("chat") => rest.chunks.push(f),
            Some("done") => {
                rest.done = f;
                break;
            }
            _ => panic!("the resume on the other node failed: {f}"),
        }
    }
    seen.extend(rest.chunks.iter().cloned());
    assert_eq!(seqs(&seen), (0..seen.len() as u64).collect::<Vec<_>>());
    assert_eq!(
        text_of(&seen, "text"),
        MOCK_ANSWER,
        "the draining node finished it"
    );
    assert_eq!(rest.finish_reason(), "stop");
    tokio::time::timeout(Duration::from_secs(15), stopping)
        .await
        .expect("the drain ends")
        .unwrap();
}
