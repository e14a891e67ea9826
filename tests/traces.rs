//! Traces over OTLP, received by an OTLP/HTTP receiver inside the test and decoded: the span tree
//! session → chat_request → provider_call, its attributes, the client's W3C trace context
//! adopted (handshake header and message metadata) and passed on to the provider.
//!
//! A test binary of its own: it installs the process-wide tracing subscriber.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use actix_web::{web, App, HttpResponse, HttpServer};
use ai_gateway::{
    config::{LogFormat, ModelSettings, ProviderSettings},
    limits::RateLimitSettings,
    Config, Gateway,
};
use ai_gateway_actors::{provider::ApiKey, MockSettings, OpenAiSettings};
use fake_upstream::FakeUpstream;
use futures_util::{SinkExt, StreamExt};
use opentelemetry_proto::tonic::{
    collector::trace::v1::ExportTraceServiceRequest, common::v1::any_value::Value as AnyValue,
};
use prost::Message;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::{client::IntoClientRequest, Message as WsMessage};

#[derive(Debug, Clone)]
struct ReceivedSpan {
    name: String,
    trace_id: String,
    span_id: String,
    parent: String,
    attributes: HashMap<String, String>,
}

type Spans = Arc<Mutex<Vec<ReceivedSpan>>>;

async fn receive(spans: web::Data<Spans>, body: web::Bytes) -> HttpResponse {
    let Ok(request) = ExportTraceServiceRequest::decode(body) else {
        return HttpResponse::BadRequest().finish();
    };
    let mut spans = spans.lock().unwrap();
    for scope in request.resource_spans.iter().flat_map(|r| &r.scope_spans) {
        for s in &scope.spans {
            let attributes = s
                .attributes
                .iter()
                .map(|kv| {
                    let value = match kv.value.as_ref().and_then(|v| v.value.clone()) {
                        Some(AnyValue::StringValue(v)) => v,
                        Some(AnyValue::IntValue(v)) => v.to_string(),
                        Some(AnyValue::BoolValue(v)) => v.to_string(),
                        Some(AnyValue::DoubleValue(v)) => v.to_string(),
                        other => format!("{other:?}"),
                    };
                    (kv.key.clone(), value)
                })
                .collect();
            spans.push(ReceivedSpan {
                name: s.name.clone(),
                trace_id: hex::encode(&s.trace_id),
                span_id: hex::encode(&s.span_id),
                parent: hex::encode(&s.parent_span_id),
                attributes,
            });
        }
    }
    HttpResponse::Ok().finish()
}

const CLIENT_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CLIENT_SPAN: &str = "00f067aa0ba902b7";
const MESSAGE_TRACE: &str = "0af7651916cd43dd8448eb211c80319c";
const MESSAGE_SPAN: &str = "b7ad6b7169203331";

async fn next_json(
    ws: &mut tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
) -> Value {
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        if let WsMessage::Text(t) = msg {
            return serde_json::from_str(t.as_str()).unwrap();
        }
    }
}

#[actix_rt::test]
async fn spans_form_a_tree_in_the_clients_trace() {
    let spans: Spans = Arc::default();
    let data = web::Data::new(spans.clone());
    let receiver = HttpServer::new(move || {
        App::new()
            .app_data(data.clone())
            .route("/v1/traces", web::post().to(receive))
    })
    .workers(1)
    .bind("127.0.0.1:0")
    .unwrap();
    let receiver_addr = receiver.addrs()[0];
    actix_rt::spawn(receiver.run());

    // SAFETY (set_var): the test is alone in its binary and sets these before any thread reads them.
    unsafe {
        std::env::set_var(
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            format!("http://{receiver_addr}"),
        );
        std::env::set_var("OTEL_BSP_SCHEDULE_DELAY", "50");
    }
    let telemetry = ai_gateway::telemetry::init(LogFormat::Json);

    let fake = FakeUpstream::start().await.unwrap();
    let mut config = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        workers: 1,
        jwt_secret: "trace-secret-trace-secret-trace-secret".into(),
        mock: MockSettings::instant(),
        rate_limits: RateLimitSettings::off(),
        ..Config::default()
    };
    config.providers.insert(
        "fake".into(),
        ProviderSettings::Openai(OpenAiSettings::new(
            fake.openai_base_url(),
            Some(ApiKey::new("sk-test")),
        )),
    );
    config.models.insert(
        "fake".into(),
        ModelSettings {
            provider: "fake".into(),
            upstream_model: "ok-3".into(),
            fallback: vec![],
            max_retries: Some(0),
            drop_params: false,
        },
    );
    let gw = Gateway::start(config).await.unwrap();
    let base = format!("http://{}", gw.local_addr());
    let http = reqwest::Client::new();
    let creds = json!({"username": "tracer", "password": "long enough password"});
    http.post(format!("{base}/register"))
        .json(&creds)
        .send()
        .await
        .unwrap();
    let login: Value = http
        .post(format!("{base}/login"))
        .json(&creds)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = login["token"].as_str().unwrap();

    let mut req = format!("ws://{}/chat?token={token}", gw.local_addr())
        .into_client_request()
        .unwrap();
    req.headers_mut().insert(
        "traceparent",
        format!("00-{CLIENT_TRACE}-{CLIENT_SPAN}-01")
            .parse()
            .unwrap(),
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
    assert_eq!(next_json(&mut ws).await["type"], "system");
    let chats = [
        json!({"type": "chat", "id": "one", "payload": {"content": "hi", "model": "fake"}}),
        json!({"type": "chat", "id": "two", "payload": {"content": "hi", "model": "fake"},
               "metadata": {"traceparent": format!("00-{MESSAGE_TRACE}-{MESSAGE_SPAN}-01")}}),
    ];
    for chat in chats {
        ws.send(WsMessage::text(chat.to_string())).await.unwrap();
        while next_json(&mut ws).await["type"] != "done" {}
    }
    ws.close(None).await.unwrap();
    while gw.session_count().await > 0 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let mut found = Vec::new();
    for _ in 0..100 {
        telemetry.flush();
        found = spans.lock().unwrap().clone();
        if found.iter().filter(|s| s.name == "chat_request").count() == 2
            && found.iter().any(|s| s.name == "session")
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let named = |name: &str| -> Vec<ReceivedSpan> {
        found.iter().filter(|s| s.name == name).cloned().collect()
    };
    let session = named("session").pop().expect("a session span");
    assert_eq!(
        session.trace_id, CLIENT_TRACE,
        "the handshake's traceparent is adopted"
    );
    assert_eq!(session.parent, CLIENT_SPAN);
    assert_eq!(
        session.attributes["trace_id"], CLIENT_TRACE,
        "logs can name the trace"
    );

    let requests = named("chat_request");
    let one = requests
        .iter()
        .find(|s| s.attributes["request.id"] == "one")
        .unwrap();
    assert_eq!(one.trace_id, CLIENT_TRACE);
    assert_eq!(one.parent, session.span_id, "request under its session");
    assert_eq!(one.attributes["model"], "fake");
    assert_eq!(
        one.attributes["provider"], "fake",
        "the configured provider"
    );
    assert_eq!(one.attributes["finish_reason"], "Stop");
    assert!(one.attributes["completion_tokens"].parse::<u64>().unwrap() > 0);
    assert!(one.attributes.contains_key("prompt_tokens"));
    assert!(one.attributes.contains_key("time_to_first_chunk_ms"));
    assert!(!one.attributes["user.id"].is_empty());

    let two = requests
        .iter()
        .find(|s| s.attributes["request.id"] == "two")
        .unwrap();
    assert_eq!(
        two.trace_id, MESSAGE_TRACE,
        "a message's traceparent is adopted"
    );
    assert_eq!(two.parent, MESSAGE_SPAN);

    let call = named("provider_call")
        .into_iter()
        .find(|s| s.parent == one.span_id)
        .expect("a provider call under request one");
    assert_eq!(
        call.attributes["provider"], "fake",
        "the configured provider"
    );
    assert_eq!(call.attributes["upstream_model"], "ok-3");

    // The provider was called inside that span, with the context passed on.
    let sent = fake.requests();
    let traceparent = sent[0]
        .header("traceparent")
        .expect("traceparent sent upstream");
    assert_eq!(
        traceparent,
        format!("00-{CLIENT_TRACE}-{}-01", call.span_id)
    );
    gw.shutdown().await;
}
