//! W3C trace context across the gateway: adopted from clients (handshake header or a message's
//! metadata), carried by the session, request and provider-call spans, and passed on to
//! providers in their HTTP requests.

use std::collections::HashMap;

use opentelemetry::{global, trace::TraceContextExt};
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// Makes the client's trace (W3C `traceparent`, and `tracestate` when given) the parent of
/// `span`. Anything unreadable is ignored: the span then starts a trace of its own.
pub fn adopt(span: &tracing::Span, carrier: &HashMap<String, String>) {
    let cx = global::get_text_map_propagator(|p| p.extract(carrier));
    if cx.span().span_context().is_valid() {
        let _ = span.set_parent(cx);
    }
}

/// Records the span's OpenTelemetry trace id in its `trace_id` field, so log lines name it.
pub fn record_trace_id(span: &tracing::Span) {
    let trace_id = span.context().span().span_context().trace_id();
    span.record("trace_id", tracing::field::display(trace_id));
}

/// The headers (`traceparent`, ...) that carry the current span's context to an upstream.
pub fn current_headers() -> HashMap<String, String> {
    let cx = tracing::Span::current().context();
    let mut headers = HashMap::new();
    global::get_text_map_propagator(|p| p.inject_context(&cx, &mut headers));
    headers
}
