//! Logs through `tracing` (pretty or JSON, filtered by `RUST_LOG`, default `info`) and traces
//! over OTLP, configured by the standard `OTEL_*` variables:
//!
//! - `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`): where spans go,
//!   over OTLP/HTTP protobuf (Jaeger reads it natively). Unset: no export.
//! - `OTEL_SERVICE_NAME`: defaults to `ai-gateway`.
//! - `OTEL_TRACES_SAMPLER`, `OTEL_TRACES_SAMPLER_ARG`: sampling, read by the SDK.
//! - `OTEL_BSP_*`: the batch exporter's queue and timing.
//!
//! Spans are exported in batches from a thread of their own with a bounded queue: a slow or dead
//! collector drops spans, never slows a chat. Trace context always flows (W3C `traceparent`), and
//! every span carries a `trace_id` field, so JSON log lines inside a request name its trace.

use opentelemetry::{global, trace::TracerProvider as _};
use opentelemetry_sdk::{propagation::TraceContextPropagator, trace::SdkTracerProvider, Resource};
use tracing_subscriber::{layer::SubscriberExt, util::SubscriberInitExt, EnvFilter, Layer};

use crate::config::LogFormat;

const DEFAULT_SERVICE_NAME: &str = "ai-gateway";

/// Flushes and stops the span exporter when dropped.
pub struct TelemetryGuard {
    provider: SdkTracerProvider,
}

impl TelemetryGuard {
    /// Exports every finished span now.
    pub fn flush(&self) {
        let _ = self.provider.force_flush();
    }
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        let _ = self.provider.shutdown();
    }
}

fn otlp_endpoint() -> Option<String> {
    [
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        "OTEL_EXPORTER_OTLP_ENDPOINT",
    ]
    .iter()
    .find_map(|v| std::env::var(v).ok().filter(|s| !s.is_empty()))
}

/// Installs the global subscriber (logs and traces). Call once, before starting a gateway.
pub fn init(format: LogFormat) -> TelemetryGuard {
    global::set_text_map_propagator(TraceContextPropagator::new());
    let service = std::env::var("OTEL_SERVICE_NAME")
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| DEFAULT_SERVICE_NAME.to_owned());
    let mut builder = SdkTracerProvider::builder()
        .with_resource(Resource::builder().with_service_name(service).build());
    let exporting = match otlp_endpoint() {
        Some(endpoint) => match opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .build()
        {
            Ok(exporter) => {
                builder = builder.with_batch_exporter(exporter);
                Some(endpoint)
            }
            Err(e) => {
                eprintln!("ai-gateway: traces will not be exported: {e}");
                None
            }
        },
        None => None,
    };
    let provider = builder.build();
    let tracer = provider.tracer("ai-gateway");
    global::set_tracer_provider(provider.clone());

    let filter = || EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let logs = match format {
        LogFormat::Pretty => logs.boxed(),
        LogFormat::Json => logs.json().with_current_span(true).boxed(),
    };
    let traces = tracing_opentelemetry::layer().with_tracer(tracer);
    let _ = tracing_subscriber::registry()
        .with(logs.with_filter(filter()))
        .with(traces.with_filter(filter()))
        .try_init();
    if let Some(endpoint) = exporting {
        tracing::info!(endpoint, "exporting traces over OTLP");
    }
    TelemetryGuard { provider }
}
