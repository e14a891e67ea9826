//! The HTTP providers against `fake-upstream` over loopback, each driven through a real
//! `ProviderStream` and `ChunkSink` inside an actix system, as the gateway runs them.

use std::{sync::Arc, time::Duration};

use actix::prelude::*;
use ai_gateway_actors::{
    provider::{
        chat::joined_tool_calls, mock::MOCK_ANSWER, ChunkReceiver, Finish, Message, ProviderStream,
        Role, Seal, ToolCall, ToolCallDelta, MAX_BATCH_CHUNKS,
    },
    AnthropicProvider, AnthropicSettings, ApiKey, ChunkSink, FlowControl, GeminiProvider,
    GeminiSettings, MockProvider, MockSettings, OpenAiProvider, OpenAiSettings, Provider,
    ProviderError, ProviderRequest, StreamHandle, Timeouts,
};
use ai_gateway_proto::{ChunkKind, ErrorReason, FinishReason, Usage};
use fake_upstream::{text_piece, FakeUpstream, REASONING_PIECES};

/// Long enough for any test answer; a test that waits this long has failed.
const EVENT_WAIT: Duration = Duration::from_secs(10);
/// Short timeouts so the timeout tests are quick.
const SHORT_TIMEOUT_MS: u64 = 300;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Api {
    OpenAi,
    Anthropic,
    Gemini,
}

#[derive(Clone, Copy)]
struct Setup {
    timeouts: Timeouts,
    reasoning: bool,
}

impl Default for Setup {
    fn default() -> Self {
        Setup {
            timeouts: Timeouts {
                connect_timeout_ms: 2_000,
                first_chunk_timeout_ms: 5_000,
                idle_chunk_timeout_ms: 5_000,
                total_timeout_ms: 0,
            },
            reasoning: true,
        }
    }
}

fn provider(api: Api, fake: &FakeUpstream, setup: Setup) -> Arc<dyn Provider> {
    provider_at(api, &fake.base_url(), setup)
}

fn provider_at(api: Api, base_url: &str, setup: Setup) -> Arc<dyn Provider> {
    let t = setup.timeouts;
    match api {
        Api::OpenAi => {
            let mut s = OpenAiSettings::new(format!("{base_url}/v1"), Some(ApiKey::new("sk-test")));
            (s.connect_timeout_ms, s.first_chunk_timeout_ms) =
                (t.connect_timeout_ms, t.first_chunk_timeout_ms);
            (s.idle_chunk_timeout_ms, s.total_timeout_ms) =
                (t.idle_chunk_timeout_ms, t.total_timeout_ms);
            OpenAiProvider::new(s).unwrap()
        }
        Api::Anthropic => {
            let mut s = AnthropicSettings::new(base_url, ApiKey::new("sk-ant-test"));
            s.thinking_budget_tokens = setup.reasoning.then_some(1024);
            (s.connect_timeout_ms, s.first_chunk_timeout_ms) =
                (t.connect_timeout_ms, t.first_chunk_timeout_ms);
            (s.idle_chunk_timeout_ms, s.total_timeout_ms) =
                (t.idle_chunk_timeout_ms, t.total_timeout_ms);
            AnthropicProvider::new(s).unwrap()
        }
        Api::Gemini => {
            let mut s = GeminiSettings::new(base_url, ApiKey::new("AIza-test"));
            s.include_thoughts = setup.reasoning;
            (s.connect_timeout_ms, s.first_chunk_timeout_ms) =
                (t.connect_timeout_ms, t.first_chunk_timeout_ms);
            (s.idle_chunk_timeout_ms, s.total_timeout_ms) =
                (t.idle_chunk_timeout_ms, t.total_timeout_ms);
            GeminiProvider::new(s).unwrap()
        }
    }
}

fn request(model: &str) -> ProviderRequest {
    ProviderRequest {
        model: "client-name".into(),
        upstream_model: model.into(),
        system: Some("be brief".into()),
        messages: vec![
            Message::text(Role::User, "hello there"),
            Message::text(Role::Assistant, "hi"),
            Message::text(Role::User, "words please"),
        ],
        ..ProviderRequest::default()
    }
}

/// A running request and what it has sent so far.
struct Running {
    handle: StreamHandle,
    events: ChunkReceiver,
    reasoning: String,
    text: String,
    /// Tool-call pieces, in order.
    calls: Vec<(ToolCallDelta, String)>,
    /// Seals of reasoning (signatures, redacted thinking), in order.
    seals: Vec<Seal>,
    chunks: usize,
    /// The end, once its batch came.
    end: Option<Result<Finish, ProviderError>>,
}

impl Running {
    fn start(provider: Arc<dyn Provider>, request: ProviderRequest) -> Running {
        let (sink, events) = ChunkSink::channel(1, FlowControl::new(usize::MAX));
        let handle = ProviderStream::start_on(&Arbiter::current(), provider, request, sink);
        Running {
            handle,
            events,
            reasoning: String::new(),
            text: String::new(),
            calls: Vec::new(),
            seals: Vec::new(),
            chunks: 0,
            end: None,
        }
    }

    /// Takes events until the stream ends (`Some`) or at least `chunks` chunks have come
    /// (`None`).
    async fn until(&mut self, chunks: Option<usize>) -> Option<Result<Finish, ProviderError>> {
        loop {
            if let Some(end) = self.end.take() {
                return Some(end);
            }
            if chunks.is_some_and(|n| self.chunks >= n) {
                return None;
            }
            let event = tokio::time::timeout(EVENT_WAIT, self.events.recv())
                .await
                .expect("the stream went quiet")
                .expect("the stream ended without an end");
            for chunk in event.chunks {
                self.chunks += 1;
                if let Some(seal) = chunk.seal {
                    self.seals.push(*seal);
                    continue;
                }
                match chunk.kind {
                    ChunkKind::Reasoning => self.reasoning.push_str(&chunk.text),
                    ChunkKind::Text => self.text.push_str(&chunk.text),
                    ChunkKind::ToolCall => self
                        .calls
                        .push((*chunk.tool_call.expect("a tool call piece"), chunk.text)),
                }
            }
            self.end = event.end;
        }
    }

    async fn end(&mut self) -> Result<Finish, ProviderError> {
        self.until(None).await.unwrap()
    }
}

async fn run(
    api: Api,
    fake: &FakeUpstream,
    setup: Setup,
    request: ProviderRequest,
) -> (Running, Result<Finish, ProviderError>) {
    let mut running = Running::start(provider(api, fake, setup), request);
    let result = running.end().await;
    (running, result)
}

async fn fails(api: Api, model: &str, setup: Setup) -> (usize, ProviderError) {
    let fake = FakeUpstream::start().await.unwrap();
    let (running, result) = run(api, &fake, setup, request(model)).await;
    (running.chunks, result.expect_err("must fail"))
}

fn text(pieces: usize) -> String {
    (0..pieces).map(text_piece).collect()
}

async fn answers_with_reasoning_text_and_usage(api: Api) {
    let fake = FakeUpstream::start().await.unwrap();
    let (running, result) = run(api, &fake, Setup::default(), request("ok-5")).await;
    let finish = result.unwrap();
    assert_eq!(running.reasoning, REASONING_PIECES.concat());
    assert_eq!(running.text, text(5));
    assert_eq!(finish.reason, FinishReason::Stop);
    // Prompt words: "be brief", "hello there", "hi", "words please".
    assert_eq!(
        finish.usage,
        Usage {
            prompt_tokens: 7,
            completion_tokens: 8,
            total_tokens: 15,
            estimated: false
        }
    );
    let sent = &fake.requests()[0];
    let body = &sent.body;
    match api {
        Api::OpenAi => {
            assert_eq!(sent.path, "/v1/chat/completions");
            assert_eq!(sent.header("authorization"), Some("Bearer sk-test"));
            assert_eq!(body["model"], "ok-5");
            assert_eq!(body["stream_options"]["include_usage"], true);
            assert_eq!(
                body["messages"][0],
                serde_json::json!({"role": "system", "content": "be brief"})
            );
            assert_eq!(body["messages"][2]["role"], "assistant");
        }
        Api::Anthropic => {
            assert_eq!(sent.header("x-api-key"), Some("sk-ant-test"));
            assert_eq!(sent.header("anthropic-version"), Some("2023-06-01"));
            assert_eq!(body["system"], "be brief");
            assert_eq!(body["messages"].as_array().unwrap().len(), 3);
            assert_eq!(body["thinking"]["budget_tokens"], 1024);
        }
        Api::Gemini => {
            assert_eq!(sent.path, "/v1beta/models/ok-5:streamGenerateContent");
            assert_eq!(sent.query, "alt=sse");
            assert_eq!(sent.header("x-goog-api-key"), Some("AIza-test"));
            assert_eq!(body["systemInstruction"]["parts"][0]["text"], "be brief");
            assert_eq!(body["contents"][1]["role"], "model");
        }
    }
}

async fn max_tokens_ends_with_length(api: Api) {
    let fake = FakeUpstream::start().await.unwrap();
    let setup = Setup {
        reasoning: false,
        ..Setup::default()
    };
    let mut req = request("ok-10");
    req.max_tokens = Some(4);
    req.temperature = Some(0.2);
    let (running, result) = run(api, &fake, setup, req).await;
    let finish = result.unwrap();
    assert_eq!(finish.reason, FinishReason::Length);
    assert_eq!(running.chunks, 4);
    // The fake's OpenAI always reasons; the others only when asked.
    let (reasoning, pieces) = match api {
        Api::OpenAi => (REASONING_PIECES.concat(), 1),
        _ => (String::new(), 4),
    };
    assert_eq!(running.reasoning, reasoning);
    assert_eq!(running.text, text(pieces));
}

async fn rate_limit_keeps_retry_after(api: Api) {
    let (_, e) = fails(api, "fail-429", Setup::default()).await;
    assert!(
        matches!(
            e,
            ProviderError::RateLimited {
                retry_after_ms: Some(1000),
                ..
            }
        ),
        "{e:?}"
    );
    assert_eq!(e.reason(), ErrorReason::RateLimited);
    assert!(e.is_retryable());
}

async fn server_errors_carry_the_providers_message(api: Api) {
    for status in [500u16, 503] {
        let (_, e) = fails(api, &format!("fail-{status}"), Setup::default()).await;
        let ProviderError::Upstream {
            status: got,
            message,
            ..
        } = &e
        else {
            panic!("{e:?}")
        };
        assert_eq!(*got, status);
        let expected = match (api, status) {
            (Api::OpenAi, 500) => "server_error: The server had an error",
            (Api::OpenAi, _) => "server_error: The engine is currently overloaded",
            (Api::Anthropic, _) => "api_error: Internal server error",
            (Api::Gemini, 500) => "INTERNAL: An internal error has occurred",
            (Api::Gemini, _) => "UNAVAILABLE: The model is overloaded",
        };
        assert!(message.starts_with(expected), "{message}");
        assert_eq!(e.reason(), ErrorReason::ProviderError);
        assert!(e.is_retryable());
    }
}

async fn bad_key_is_not_retryable(api: Api) {
    let (_, e) = fails(api, "fail-401", Setup::default()).await;
    assert!(
        matches!(e, ProviderError::Upstream { status: 401, .. }),
        "{e:?}"
    );
    assert!(!e.is_retryable());
}

async fn midstream_error_event_fails_the_answer(api: Api) {
    let (chunks, e) = fails(api, "midstream-error", Setup::default()).await;
    assert_eq!(chunks, 3);
    let expected = match api {
        Api::OpenAi => 500,
        Api::Anthropic => 529,
        Api::Gemini => 503,
    };
    assert!(
        matches!(e, ProviderError::Upstream { status, .. } if status == expected),
        "{e:?}"
    );
}

async fn malformed_line_is_a_protocol_error(api: Api) {
    let (chunks, e) = fails(api, "malformed", Setup::default()).await;
    assert_eq!(chunks, 3);
    assert!(
        matches!(&e, ProviderError::Protocol { message, .. } if message.contains("invalid JSON")),
        "{e:?}"
    );
}

async fn cut_connection_is_never_a_success(api: Api) {
    let (chunks, e) = fails(api, "cut", Setup::default()).await;
    assert_eq!(chunks, 3);
    assert!(
        matches!(
            e,
            ProviderError::Unavailable { .. } | ProviderError::Protocol { .. }
        ),
        "{e:?}"
    );
}

/// A provider's content filter ends the answer with finish reason `content_filter` (OpenAI's
/// `content_filter`, Anthropic's `refusal`, Gemini's `SAFETY`), after the pieces it let through.
async fn filtered_answer_ends_with_content_filter(api: Api) {
    let fake = FakeUpstream::start().await.unwrap();
    let (running, result) = run(api, &fake, Setup::default(), request("filtered")).await;
    let finish = result.expect("a filtered answer is not an error");
    assert_eq!(finish.reason, FinishReason::ContentFilter);
    assert!(running.chunks > 0, "what came before the filter");
}

async fn stall_fires_the_first_chunk_timeout(api: Api) {
    let mut setup = Setup::default();
    setup.timeouts.first_chunk_timeout_ms = SHORT_TIMEOUT_MS;
    let (chunks, e) = fails(api, "stall", setup).await;
    assert_eq!(chunks, 0);
    assert!(
        matches!(&e, ProviderError::Timeout { message, .. } if message.contains("first_chunk_timeout_ms")),
        "{e:?}"
    );
    assert_eq!(e.reason(), ErrorReason::ProviderTimeout);
}

async fn stall_after_n_fires_the_idle_timeout(api: Api) {
    let mut setup = Setup::default();
    setup.timeouts.idle_chunk_timeout_ms = SHORT_TIMEOUT_MS;
    let (chunks, e) = fails(api, "stall-after-2", setup).await;
    assert_eq!(chunks, 2);
    assert!(
        matches!(&e, ProviderError::Timeout { message, .. } if message.contains("idle_chunk_timeout_ms")),
        "{e:?}"
    );
}

async fn slow_drip_fires_the_total_timeout(api: Api) {
    let mut setup = Setup::default();
    setup.timeouts.total_timeout_ms = SHORT_TIMEOUT_MS;
    let (chunks, e) = fails(api, "slow-drip", setup).await;
    assert!(chunks < 4, "{chunks}");
    assert!(
        matches!(&e, ProviderError::Timeout { message, .. } if message.contains("total_timeout_ms")),
        "{e:?}"
    );
}

async fn refused_connection_is_unavailable(api: Api) {
    // A port that was just free: bind, note it, close.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let provider = provider_at(api, &format!("http://127.0.0.1:{port}"), Setup::default());
    let mut running = Running::start(provider, request("ok"));
    let e = running.end().await.unwrap_err();
    assert!(
        matches!(&e, ProviderError::Unavailable { message, .. } if message.contains("connect")),
        "{e:?}"
    );
}

async fn cancel_aborts_the_upstream_request(api: Api) {
    let fake = FakeUpstream::start().await.unwrap();
    let mut running = Running::start(
        provider(api, &fake, Setup::default()),
        request("stall-after-2"),
    );
    assert!(running.until(Some(2)).await.is_none());
    assert_eq!(fake.open_streams(), 1);
    running.handle.cancel();
    for _ in 0..100 {
        if fake.open_streams() == 0 {
            break;
        }
        actix_rt::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(fake.open_streams(), 0, "the upstream stream is still open");
    assert_eq!(fake.abandoned_streams(), 1);
    // A cancelled stream sends nothing more, not even Done.
    assert!(running.events.try_recv().is_err());
}

/// What is ready travels together: an answer produced without a pause reaches its receiver in
/// full batches, not one message per chunk, and in order.
#[actix_rt::test]
async fn ready_chunks_travel_in_batches() {
    let mock = MockProvider::new(MockSettings {
        text_repeat: 4,
        ..MockSettings::instant()
    });
    let (sink, mut events) = ChunkSink::channel(7, FlowControl::new(usize::MAX));
    let _handle = ProviderStream::start_on(&Arbiter::current(), mock, request("mock"), sink);
    let (mut messages, mut chunks, mut text) = (0, 0, String::new());
    loop {
        let event = tokio::time::timeout(EVENT_WAIT, events.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(event.key, 7);
        messages += 1;
        chunks += event.chunks.len();
        text.extend(
            event
                .chunks
                .iter()
                .filter(|c| c.kind == ChunkKind::Text)
                .map(|c| c.text.as_str()),
        );
        assert_eq!(
            event.charge,
            event.chunks.iter().map(|c| c.charge()).sum::<usize>()
        );
        if let Some(end) = event.end {
            assert_eq!(end.unwrap().reason, FinishReason::Stop);
            break;
        }
    }
    assert_eq!(text, MOCK_ANSWER.repeat(4));
    assert!(chunks > 2 * MAX_BATCH_CHUNKS, "{chunks} chunks");
    assert_eq!(
        messages,
        chunks.div_ceil(MAX_BATCH_CHUNKS),
        "{chunks} chunks"
    );
}

macro_rules! provider_tests {
    ($module:ident, $api:expr) => {
        mod $module {
            use super::*;

            #[actix_rt::test]
            async fn answers_with_reasoning_text_and_usage() {
                super::answers_with_reasoning_text_and_usage($api).await
            }
            #[actix_rt::test]
            async fn max_tokens_ends_with_length() {
                super::max_tokens_ends_with_length($api).await
            }
            #[actix_rt::test]
            async fn rate_limit_keeps_retry_after() {
                super::rate_limit_keeps_retry_after($api).await
            }
            #[actix_rt::test]
            async fn server_errors_carry_the_providers_message() {
                super::server_errors_carry_the_providers_message($api).await
            }
            #[actix_rt::test]
            async fn bad_key_is_not_retryable() {
                super::bad_key_is_not_retryable($api).await
            }
            #[actix_rt::test]
            async fn midstream_error_event_fails_the_answer() {
                super::midstream_error_event_fails_the_answer($api).await
            }
            #[actix_rt::test]
            async fn malformed_line_is_a_protocol_error() {
                super::malformed_line_is_a_protocol_error($api).await
            }
            #[actix_rt::test]
            async fn cut_connection_is_never_a_success() {
                super::cut_connection_is_never_a_success($api).await
            }
            #[actix_rt::test]
            async fn filtered_answer_ends_with_content_filter() {
                super::filtered_answer_ends_with_content_filter($api).await
            }
            #[actix_rt::test]
            async fn stall_fires_the_first_chunk_timeout() {
                super::stall_fires_the_first_chunk_timeout($api).await
            }
            #[actix_rt::test]
            async fn stall_after_n_fires_the_idle_timeout() {
                super::stall_after_n_fires_the_idle_timeout($api).await
            }
            #[actix_rt::test]
            async fn slow_drip_fires_the_total_timeout() {
                super::slow_drip_fires_the_total_timeout($api).await
            }
            #[actix_rt::test]
            async fn refused_connection_is_unavailable() {
                super::refused_connection_is_unavailable($api).await
            }
            #[actix_rt::test]
            async fn cancel_aborts_the_upstream_request() {
                super::cancel_aborts_the_upstream_request($api).await
            }
        }
    };
}

provider_tests!(openai, Api::OpenAi);
provider_tests!(anthropic, Api::Anthropic);
provider_tests!(gemini, Api::Gemini);

/// A request with a tool the model may call.
fn weather_request(model: &str) -> ProviderRequest {
    let mut req = request(model);
    req.tools = vec![ai_gateway_actors::provider::Tool {
        name: "get_weather".into(),
        description: Some("The weather in a city".into()),
        parameters: serde_json::json!({"type": "object",
            "properties": {"city": {"type": "string"}}, "required": ["city"]}),
        strict: None,
    }];
    req
}

#[actix_rt::test]
async fn openai_streams_tool_call_pieces_and_finishes_with_tool_calls() {
    let fake = FakeUpstream::start().await.unwrap();
    let (running, result) = run(
        Api::OpenAi,
        &fake,
        Setup::default(),
        weather_request("ok-5"),
    )
    .await;
    assert_eq!(result.unwrap().reason, FinishReason::ToolCalls);
    assert!(running.text.is_empty());
    assert!(running.calls.len() > 2, "arguments come in pieces");
    let calls = joined_tool_calls(&running.calls);
    assert_eq!(
        calls,
        [ToolCall {
            id: "call_fake_0".into(),
            name: "get_weather".into(),
            arguments: r#"{"city":"fake"}"#.into(),
        }]
    );
    let body = &fake.requests()[0].body;
    assert_eq!(body["tools"][0]["type"], "function");
    assert_eq!(body["tools"][0]["function"]["name"], "get_weather");
    assert_eq!(
        body["tools"][0]["function"]["parameters"]["required"][0],
        "city"
    );
}

#[actix_rt::test]
async fn openai_receives_every_parameter_faithfully() {
    use ai_gateway_actors::provider::{ImageSource, Part, ResponseFormat, ToolChoice};
    let fake = FakeUpstream::start().await.unwrap();
    let mut req = weather_request("ok-5");
    req.messages = vec![
        Message {
            content: vec![
                Part::Text("what is this?".into()),
                Part::Image {
                    source: ImageSource::from_url("data:image/png;base64,iVBORw0KGgo="),
                    detail: Some("low".into()),
                },
            ],
            ..Message::text(Role::User, "")
        },
        Message {
            content: vec![],
            tool_calls: vec![ToolCall {
                id: "call_1".into(),
                name: "get_weather".into(),
                arguments: r#"{"city":"Paris"}"#.into(),
            }],
            ..Message::text(Role::Assistant, "")
        },
        Message {
            tool_call_id: Some("call_1".into()),
            ..Message::text(Role::Tool, "sunny")
        },
    ];
    req.max_tokens = Some(100);
    req.temperature = Some(0.5);
    req.top_p = Some(0.9);
    req.seed = Some(42);
    req.stop = vec!["END".into()];
    req.presence_penalty = Some(0.1);
    req.frequency_penalty = Some(0.2);
    req.reasoning_effort = Some("low".into());
    req.user = Some("u-1".into());
    req.tool_choice = Some(ToolChoice::Auto);
    req.parallel_tool_calls = Some(false);
    req.response_format = Some(ResponseFormat::JsonSchema {
        name: "answer".into(),
        description: None,
        schema: serde_json::json!({"type": "object", "properties": {"ok": {"type": "boolean"}}}),
        strict: Some(true),
    });
    req.extra
        .insert("logprobs".into(), serde_json::Value::Bool(true));
    // The gateway's own fields win over a client's extra of the same name.
    req.extra
        .insert("stream".into(), serde_json::Value::Bool(false));
    let (running, result) = run(Api::OpenAi, &fake, Setup::default(), req).await;
    assert_eq!(result.unwrap().reason, FinishReason::Stop);
    // The last message is a tool result, so the structured answer follows the schema.
    assert_eq!(running.text, r#"{"ok":true}"#);
    let body = &fake.requests()[0].body;
    let expected = serde_json::json!({
        "max_completion_tokens": 100, "temperature": 0.5, "top_p": 0.9, "seed": 42,
        "stop": ["END"], "presence_penalty": 0.1, "frequency_penalty": 0.2,
        "reasoning_effort": "low", "user": "u-1", "tool_choice": "auto",
        "parallel_tool_calls": false, "logprobs": true, "stream": true,
        "response_format": {"type": "json_schema",
            "json_schema": {"name": "answer", "strict": true,
                "schema": {"type": "object", "properties": {"ok": {"type": "boolean"}}}}},
    });
    for (k, v) in expected.as_object().unwrap() {
        assert_eq!(&body[k], v, "{k}: {body}");
    }
    assert!(body.get("max_tokens").is_none());
    assert_eq!(
        body["messages"][1]["content"],
        serde_json::json!([{"type": "text", "text": "what is this?"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo=", "detail": "low"}}])
    );
    assert_eq!(body["messages"][2]["tool_calls"][0]["id"], "call_1");
    assert!(body["messages"][2].get("content").is_none());
    assert_eq!(
        body["messages"][3],
        serde_json::json!({"role": "tool", "content": "sunny", "tool_call_id": "call_1"})
    );
}

/// The last message's answer when it is a tool result, by API: the fakes echo the call.
fn tool_said(api: Api, id: &str) -> String {
    match api {
        Api::Gemini => "Tool get_weather said: sunny".into(),
        _ => format!("Tool {id} said: sunny"),
    }
}

async fn tools_round_trip(api: Api) {
    let fake = FakeUpstream::start().await.unwrap();
    let setup = Setup {
        reasoning: false,
        ..Setup::default()
    };
    let (running, result) = run(api, &fake, setup, weather_request("ok-5")).await;
    assert_eq!(result.unwrap().reason, FinishReason::ToolCalls, "{api:?}");
    let calls = joined_tool_calls(&running.calls);
    assert_eq!(calls.len(), 1, "{api:?}: {calls:?}");
    assert_eq!(calls[0].name, "get_weather");
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&calls[0].arguments).unwrap(),
        serde_json::json!({"city": "fake"}),
        "{api:?}"
    );
    // The call and its result go back; the fakes check them as each API does (Anthropic: the
    // tool_use id; Gemini: the function name and its thought signature).
    let mut req = weather_request("ok-5");
    req.messages.push(Message {
        content: vec![],
        tool_calls: calls.clone(),
        ..Message::text(Role::Assistant, "")
    });
    req.messages.push(Message {
        tool_call_id: Some(calls[0].id.clone()),
        ..Message::text(Role::Tool, "sunny")
    });
    let (running, result) = run(api, &fake, setup, req).await;
    assert_eq!(result.unwrap().reason, FinishReason::Stop, "{api:?}");
    assert_eq!(running.text, tool_said(api, &calls[0].id), "{api:?}");
}

async fn images_are_seen(api: Api) {
    use ai_gateway_actors::provider::{ImageSource, Part};
    let fake = FakeUpstream::start().await.unwrap();
    let mut req = request("ok-5");
    req.messages.push(Message {
        content: vec![
            Part::Text("and this?".into()),
            Part::Image {
                source: ImageSource::from_url("data:image/png;base64,iVBORw0KGgo="),
                detail: None,
            },
        ],
        ..Message::text(Role::User, "")
    });
    let setup = Setup {
        reasoning: false,
        ..Setup::default()
    };
    let (running, result) = run(api, &fake, setup, req).await;
    result.unwrap();
    assert_eq!(running.text, "I see 1 image(s).", "{api:?}");
    let body = &fake.requests()[0].body;
    match api {
        Api::OpenAi => {}
        // The two user turns in a row are merged into one.
        Api::Anthropic => assert_eq!(
            body["messages"][2]["content"][2],
            serde_json::json!({"type": "image", "source": {"type": "base64",
                "media_type": "image/png", "data": "iVBORw0KGgo="}})
        ),
        Api::Gemini => assert_eq!(
            body["contents"][2]["parts"][2],
            serde_json::json!({"inlineData": {"mimeType": "image/png", "data": "iVBORw0KGgo="}})
        ),
    }
}

macro_rules! translation_tests {
    ($name:ident, $api:expr) => {
        mod $name {
            #[actix_rt::test]
            async fn tools_round_trip() {
                super::tools_round_trip($api).await
            }
            #[actix_rt::test]
            async fn images_are_seen() {
                super::images_are_seen($api).await
            }
        }
    };
}

translation_tests!(openai_translation, super::Api::OpenAi);
translation_tests!(anthropic_translation, super::Api::Anthropic);
translation_tests!(gemini_translation, super::Api::Gemini);

#[actix_rt::test]
async fn anthropic_and_gemini_get_their_own_parameters() {
    use ai_gateway_actors::provider::{ResponseFormat, ToolChoice};
    let fake = FakeUpstream::start().await.unwrap();
    let mut req = weather_request("ok-5");
    req.top_p = Some(0.5);
    req.stop = vec!["END".into()];
    req.tool_choice = Some(ToolChoice::Tool("get_weather".into()));
    let mut anthropic = req.clone();
    anthropic.user = Some("u-1".into());
    anthropic.parallel_tool_calls = Some(false);
    run(Api::Anthropic, &fake, Setup::default(), anthropic)
        .await
        .1
        .unwrap();
    let b = &fake.requests()[0].body;
    assert_eq!(b["top_p"], 0.5);
    assert_eq!(b["stop_sequences"], serde_json::json!(["END"]));
    assert_eq!(b["metadata"]["user_id"], "u-1");
    assert_eq!(
        b["tool_choice"],
        serde_json::json!({"type": "tool", "name": "get_weather", "disable_parallel_tool_use": true})
    );
    assert_eq!(b["tools"][0]["input_schema"]["required"][0], "city");

    let mut gemini = req;
    gemini.seed = Some(3);
    gemini.presence_penalty = Some(0.25);
    gemini.frequency_penalty = Some(0.5);
    run(Api::Gemini, &fake, Setup::default(), gemini)
        .await
        .1
        .unwrap();
    let b = &fake.requests()[1].body;
    let g = &b["generationConfig"];
    assert_eq!(g["topP"], 0.5);
    assert_eq!(g["seed"], 3);
    assert_eq!(g["stopSequences"], serde_json::json!(["END"]));
    assert_eq!(g["presencePenalty"], 0.25);
    assert_eq!(g["frequencyPenalty"], 0.5);
    assert_eq!(
        b["toolConfig"],
        serde_json::json!({"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["get_weather"]}})
    );
    let declaration = &b["tools"][0]["functionDeclarations"][0];
    assert_eq!(declaration["name"], "get_weather");
    assert_eq!(declaration["parameters"]["type"], "OBJECT");

    // Structured output: responseMimeType and responseSchema, without the keywords Gemini's
    // schema does not know.
    let mut structured = request("ok-5");
    structured.response_format = Some(ResponseFormat::JsonSchema {
        name: "person".into(),
        description: None,
        schema: serde_json::json!({"type": "object", "additionalProperties": false,
            "properties": {"name": {"type": "string"}, "age": {"type": ["integer", "null"]}},
            "required": ["name", "age"]}),
        strict: Some(true),
    });
    let (running, result) = run(Api::Gemini, &fake, Setup::default(), structured).await;
    result.unwrap();
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&running.text).unwrap(),
        serde_json::json!({"name": "fake", "age": 1})
    );
    let g = &fake.requests()[2].body["generationConfig"];
    assert_eq!(g["responseMimeType"], "application/json");
    assert_eq!(
        g["responseSchema"],
        serde_json::json!({"type": "OBJECT", "required": ["name", "age"], "properties": {
            "name": {"type": "STRING"}, "age": {"type": "INTEGER", "nullable": true}}})
    );
}

#[actix_rt::test]
async fn providers_that_cannot_take_a_parameter_refuse_it_by_name() {
    use ai_gateway_actors::provider::{ImageSource, Part, ResponseFormat};
    let fake = FakeUpstream::start().await.unwrap();
    let mut seeded = request("ok-5");
    seeded.seed = Some(1);
    let mut structured = request("ok-5");
    structured.response_format = Some(ResponseFormat::JsonObject);
    let mut by_user = request("ok-5");
    by_user.user = Some("u".into());
    let mut linked_image = request("ok-5");
    linked_image.messages[0].content.push(Part::Image {
        source: ImageSource::Url("https://example.com/cat.png".into()),
        detail: None,
    });
    let mut extra = request("ok-5");
    extra
        .extra
        .insert("logprobs".into(), serde_json::json!(true));
    for (api, req, param) in [
        (Api::Anthropic, seeded, "seed"),
        (Api::Anthropic, structured, "response_format"),
        (Api::Anthropic, extra.clone(), "logprobs"),
        (Api::Gemini, by_user, "user"),
        (Api::Gemini, linked_image, "messages[0].content[1]"),
        (Api::Gemini, extra, "logprobs"),
    ] {
        let (_, result) = run(api, &fake, Setup::default(), req).await;
        match result {
            Err(e @ ProviderError::Unsupported { .. }) => {
                assert_eq!(e.reason(), ErrorReason::InvalidPayload);
                let ProviderError::Unsupported { param: p, .. } = e else {
                    unreachable!()
                };
                assert_eq!(p, param, "{api:?}");
            }
            other => panic!("{api:?} {param}: {other:?}"),
        }
    }
    assert!(fake.requests().is_empty(), "nothing reached the upstream");
}

#[test]
fn dropping_params_keeps_what_a_provider_takes() {
    let mut req = weather_request("ok-5");
    req.seed = Some(1);
    req.top_p = Some(0.5);
    req.extra.insert("logprobs".into(), serde_json::json!(true));
    req.drop_unsupported(ai_gateway_actors::provider::anthropic::SUPPORTED);
    assert_eq!(req.seed, None);
    assert!(req.extra.is_empty());
    assert_eq!(req.top_p, Some(0.5));
    assert_eq!(req.tools.len(), 1);
    assert!(req
        .refuse_unsupported(
            "anthropic",
            ai_gateway_actors::provider::anthropic::SUPPORTED
        )
        .is_ok());
}

// --- real provider streams, replayed -------------------------------------------------------

/// Where the recorded provider streams are (`/work/shared/provider-transcripts`, beside the
/// project's checkout); they are read there, never copied into the project.
fn transcript(name: &str) -> String {
    let dir = std::env::var("PROVIDER_TRANSCRIPTS").unwrap_or_else(|_| {
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../shared/provider-transcripts"
        )
        .to_owned()
    });
    let path = format!("{dir}/{name}");
    std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!("{path}: {e} (set PROVIDER_TRANSCRIPTS to the recorded provider streams)")
    })
}

/// Serves `body` as the event stream of every request, on a loopback port; answers its URL.
async fn replay(body: String) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    actix_rt::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let body = body.clone();
            actix_rt::spawn(async move {
                // Read the request: headers, then as much body as Content-Length says.
                let mut seen = Vec::new();
                let mut buf = [0u8; 8192];
                loop {
                    let Ok(n) = socket.read(&mut buf).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    seen.extend_from_slice(&buf[..n]);
                    let text = String::from_utf8_lossy(&seen).to_ascii_lowercase();
                    if let Some(end) = text.find("\r\n\r\n") {
                        let length = text
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .and_then(|v| v.trim().parse::<usize>().ok())
                            .unwrap_or(0);
                        if seen.len() >= end + 4 + length {
                            break;
                        }
                    }
                }
                let head = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n";
                let _ = socket.write_all(head.as_bytes()).await;
                let _ = socket.write_all(body.as_bytes()).await;
                let _ = socket.shutdown().await;
            });
        }
    });
    format!("http://{addr}")
}

async fn replayed(api: Api, name: &str) -> (Running, Finish) {
    let url = replay(transcript(name)).await;
    let mut running = Running::start(provider_at(api, &url, Setup::default()), request("m"));
    let finish = running.end().await.unwrap();
    (running, finish)
}

#[actix_rt::test]
async fn recorded_openai_tool_call() {
    let (running, finish) = replayed(Api::OpenAi, "openai-tool-call.sse").await;
    assert_eq!(finish.reason, FinishReason::ToolCalls);
    assert_eq!(
        finish.usage,
        Usage {
            prompt_tokens: 54,
            completion_tokens: 20,
            total_tokens: 74,
            estimated: false
        }
    );
    assert!(running.text.is_empty());
    let calls = joined_tool_calls(&running.calls);
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].id, "call_1EYWDzueHEp8OsB8jJSEp7WB");
    assert_eq!(calls[0].name, "multiply");
    assert_eq!(calls[0].arguments, r#"{"a":1231,"b":2331}"#);
}

#[actix_rt::test]
async fn recorded_anthropic_tool_use_skips_server_tools() {
    let (running, finish) = replayed(Api::Anthropic, "anthropic-tool-use.sse").await;
    assert_eq!(finish.reason, FinishReason::ToolCalls);
    assert!(
        running.text.starts_with("Let me search"),
        "{}",
        running.text
    );
    let calls = joined_tool_calls(&running.calls);
    assert_eq!(
        calls.len(),
        1,
        "the server_tool_use block is not the client's: {calls:?}"
    );
    assert_eq!(calls[0].id, "toolu_01EFn5wTNBYA8Reni8rbmnHT");
    assert_eq!(calls[0].name, "get_exchange_rate");
    let args: serde_json::Value = serde_json::from_str(&calls[0].arguments).unwrap();
    assert!(args.is_object(), "{args}");
    // message_delta's cumulative input count wins over message_start's.
    assert_eq!(finish.usage.prompt_tokens, 1591);
}

#[actix_rt::test]
async fn recorded_anthropic_parallel_tool_calls() {
    let (running, finish) = replayed(Api::Anthropic, "anthropic-tool-only.sse").await;
    assert_eq!(finish.reason, FinishReason::ToolCalls);
    assert!(running.text.is_empty());
    let calls = joined_tool_calls(&running.calls);
    assert_eq!(calls.len(), 2);
    assert_eq!(calls[0].id, "toolu_01LtHJmixrs9NcWQkK8hu8hj");
    assert_eq!(calls[1].id, "toolu_01N8a4jWyf116qKTMqKKmjyt");
    assert!(calls.iter().all(|c| c.name == "pelican_name_generator"));
    assert_eq!(
        (finish.usage.prompt_tokens, finish.usage.completion_tokens),
        (542, 62)
    );
}

#[actix_rt::test]
async fn recorded_gemini_function_call_keeps_its_thought_signature() {
    let (running, finish) = replayed(Api::Gemini, "gemini-function-call.sse").await;
    assert_eq!(finish.reason, FinishReason::ToolCalls, "Gemini says STOP");
    let calls = joined_tool_calls(&running.calls);
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].name, "get_country");
    assert_eq!(calls[0].arguments, "{}");
    assert!(
        calls[0].id.starts_with("call_0~sig~EpwICpkI"),
        "{}",
        calls[0].id
    );
    assert_eq!(
        (finish.usage.prompt_tokens, finish.usage.completion_tokens),
        (29, 212)
    );
}

#[actix_rt::test]
async fn recorded_anthropic_thinking_keeps_its_signature() {
    let (running, finish) = replayed(Api::Anthropic, "anthropic-thinking.sse").await;
    assert_eq!(finish.reason, FinishReason::Stop);
    assert!(!running.reasoning.is_empty());
    assert!(!running.text.is_empty());
    assert_eq!(running.seals.len(), 1, "{:?}", running.seals);
    assert!(
        matches!(&running.seals[0], Seal::Signature(s) if s.starts_with("EvoCCkYICxgCKkCY593D")),
        "{:?}",
        running.seals
    );
}

#[actix_rt::test]
async fn recorded_anthropic_redacted_thinking_is_kept_for_the_next_turn() {
    let (running, finish) = replayed(Api::Anthropic, "anthropic-redacted-thinking.sse").await;
    assert_eq!(finish.reason, FinishReason::Stop);
    assert!(running.reasoning.is_empty(), "nothing readable");
    assert_eq!(running.seals.len(), 2, "{:?}", running.seals);
    assert!(
        matches!(&running.seals[0], Seal::Redacted(d) if d.starts_with("EqkECkYIBxgCKkA8")),
        "{:?}",
        running.seals
    );
}

/// docs/PROVIDERS.md's parameter table says, for each parameter and provider, whether it is
/// passed, translated or refused; each provider's `supported_params` must agree.
#[test]
fn the_parameter_table_is_true() {
    use ai_gateway_actors::provider::PARAMS;
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/PROVIDERS.md"))
        .unwrap();
    let table = doc
        .split("### Parameters by provider")
        .nth(1)
        .expect("the parameter table");
    let at = |api| provider_at(api, "http://127.0.0.1:9", Setup::default());
    let mock: Arc<dyn Provider> = MockProvider::new(MockSettings::default());
    let supported: [(&str, &[&str]); 4] = [
        ("OpenAI-compatible", at(Api::OpenAi).supported_params()),
        ("Anthropic", at(Api::Anthropic).supported_params()),
        ("Gemini", at(Api::Gemini).supported_params()),
        ("mock", mock.supported_params()),
    ];
    let mut seen = Vec::new();
    for line in table.lines().skip_while(|l| !l.starts_with('|')) {
        if !line.starts_with('|') {
            break;
        }
        let cells: Vec<&str> = line.trim_matches('|').split('|').map(str::trim).collect();
        let Some(param) = cells[0].split('`').nth(1).filter(|p| PARAMS.contains(p)) else {
            continue;
        };
        seen.push(param);
        for (column, (provider, takes)) in supported.iter().enumerate() {
            let cell = cells[column + 1];
            let refused = cell.starts_with("refused");
            assert_eq!(
                refused,
                !takes.contains(&param),
                "{param} on {provider}: the table says {cell:?}"
            );
            if *provider == "OpenAI-compatible" {
                assert!(cell.starts_with("passed"), "{param}: {cell}");
            }
        }
    }
    let mut all = PARAMS.to_vec();
    all.sort_unstable();
    seen.sort_unstable();
    assert_eq!(seen, all, "every parameter has its row");
}

#[actix_rt::test]
async fn anthropic_takes_reasoning_effort_as_a_thinking_budget() {
    let fake = FakeUpstream::start().await.unwrap();
    let setup = Setup {
        reasoning: false,
        ..Setup::default()
    };
    let mut req = request("ok-5");
    req.reasoning_effort = Some("medium".into());
    req.max_tokens = Some(100);
    let (running, result) = run(Api::Anthropic, &fake, setup, req).await;
    result.unwrap();
    assert!(!running.reasoning.is_empty(), "thinking is on");
    let b = &fake.requests()[0].body;
    assert_eq!(b["thinking"]["budget_tokens"], 4096);
    assert_eq!(
        b["max_tokens"], 4196,
        "the budget comes on top of the client's limit"
    );
}
