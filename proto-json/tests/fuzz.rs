//! Fuzz target `client_frame`: any text frame a client sends goes through the two-step decoder
//! without a panic, and what comes back is either a frame or an error frame that encodes.
//! Corpus: `fuzz/corpus/client_frame/`; longer runs: `FUZZ_CASES=100000`.

use ai_gateway_proto::{decode_client_frame, ErrorPayload, ServerMessage, MAX_REQUEST_ID_BYTES};

#[test]
fn fuzz_client_frame() {
    ai_gateway_fuzz::fuzz("client_frame", |input| {
        let text = ai_gateway_fuzz::text(input);
        match decode_client_frame(&text) {
            Ok(frame) => drop(format!("{frame:?}")),
            Err((id, e)) => {
                assert!(id.as_ref().is_none_or(|i| i.len() <= MAX_REQUEST_ID_BYTES));
                let reply = ServerMessage::Error {
                    id: id.as_deref().map(Into::into),
                    payload: ErrorPayload {
                        code: e.status_code(),
                        reason: e.reason(),
                        message: e.message().into(),
                    },
                };
                serde_json::from_str::<serde_json::Value>(&reply.to_json())
                    .expect("the error frame is JSON");
            }
        }
    });
}
