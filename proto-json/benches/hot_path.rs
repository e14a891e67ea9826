//! The per-frame hot path: decoding a client frame, encoding a chunk frame.
//! `cargo bench -p ai-gateway-proto`

use std::hint::black_box;

use ai_gateway_proto::{decode_client_frame, ChunkKind, ChunkPayload, ServerMessage};
use criterion::{criterion_group, criterion_main, Criterion};

/// The seed's chat frame, as its web client sends it.
const SEED_CHAT: &str = r#"{"type":"chat","payload":{"content":"Hello AI","model":"mock"}}"#;

fn decode(c: &mut Criterion) {
    c.bench_function("decode seed chat frame", |b| {
        b.iter(|| decode_client_frame(black_box(SEED_CHAT)).expect("valid frame"))
    });
}

fn encode(c: &mut Criterion) {
    c.bench_function("encode chat chunk frame", |b| {
        b.iter(|| {
            ServerMessage::Chat {
                id: black_box("r1").into(),
                payload: ChunkPayload {
                    content: black_box("H").into(),
                    kind: ChunkKind::Text,
                    model: black_box("mock").into(),
                    stream_id: None,
                    seq: black_box(17),
                    tool_call: None,
                },
            }
            .to_json()
        })
    });
}

criterion_group!(hot_path, decode, encode);
criterion_main!(hot_path);
