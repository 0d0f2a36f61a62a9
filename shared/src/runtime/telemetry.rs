//! Logging and tracing set-up shared by both binaries: text or JSON lines on
//! stderr, filtered by `log.level` (overridable with `RUST_LOG`), and, when
//! `telemetry.otlp_endpoint` is set, spans exported over OTLP/HTTP with a
//! parent-based ratio sampler. JSON lines carry the fields of the spans they
//! happen in, so every line of a request names its `request_id`.

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, Registry};

use crate::config::{LogConfig, LogFormat, TelemetryConfig};

/// Keeps the span exporter alive; [`Telemetry::shutdown`] flushes it.
#[must_use = "dropping it without shutdown() may lose the last spans"]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Exports the spans still buffered and stops the exporter (call at exit).
    pub fn shutdown(self) {
        if let Some(p) = self.provider {
            if let Err(e) = p.shutdown() {
                eprintln!("telemetry: span export did not shut down cleanly: {e}");
            }
        }
    }
}

type BoxedLayer = Box<dyn Layer<Registry> + Send + Sync>;

/// Installs the global subscriber. Safe to call more than once per process (tests):
/// later calls install nothing and export nothing.
pub fn init(log: &LogConfig, t: &TelemetryConfig, default_service: &str) -> Telemetry {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&log.level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let fmt: BoxedLayer = match log.format {
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .with_writer(std::io::stderr)
            .boxed(),
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .boxed(),
    };
    let mut layers = vec![fmt];
    let mut problem = None;
    let provider = if t.otlp_endpoint.is_empty() {
        None
    } else {
        match tracer_provider(t, default_service) {
            Ok(p) => {
                let tracer = p.tracer("overwatch");
                layers.push(tracing_opentelemetry::layer().with_tracer(tracer).boxed());
                opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
                Some(p)
            }
            Err(e) => {
                problem = Some(e);
                None
            }
        }
    };
    let installed = tracing_subscriber::registry()
        .with(layers.with_filter(filter))
        .try_init()
        .is_ok();
    if let Some(e) = problem {
        tracing::error!(endpoint = %t.otlp_endpoint, error = %e, "OTLP span export is off: the exporter could not be built");
    }
    if !installed {
        // A subscriber already exists (tests): its spans never reach this provider.
        if let Some(p) = provider {
            let _ = p.shutdown();
        }
        return Telemetry { provider: None };
    }
    if provider.is_some() {
        tracing::info!(endpoint = %t.otlp_endpoint, sampling_ratio = t.sampling_ratio, "exporting spans over OTLP/HTTP");
    }
    Telemetry { provider }
}

fn tracer_provider(
    t: &TelemetryConfig,
    default_service: &str,
) -> Result<SdkTracerProvider, opentelemetry_otlp::ExporterBuildError> {
    let endpoint = format!("{}/v1/traces", t.otlp_endpoint.trim_end_matches('/'));
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_endpoint(endpoint)
        .with_timeout(std::time::Duration::from_secs(10))
        .with_headers(Default::default())
        .build()?;
    let service = if t.service_name.is_empty() {
        default_service.to_string()
    } else {
        t.service_name.clone()
    };
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
            t.sampling_ratio,
        ))))
        .with_resource(
            opentelemetry_sdk::Resource::builder()
                .with_service_name(service)
                .with_attribute(opentelemetry::KeyValue::new(
                    "service.version",
                    env!("CARGO_PKG_VERSION"),
                ))
                .build(),
        )
        .build())
}

/// Reads W3C trace context (`traceparent`, `tracestate`) from request headers.
pub struct HeaderExtractor<'a>(pub &'a http::HeaderMap);

impl opentelemetry::propagation::Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

/// The current span's W3C trace context (`traceparent`, and `tracestate` when
/// set) as header pairs, for messages that carry the trace onward; empty when
/// OTLP export is off or the span is not sampled.
pub fn trace_context() -> Vec<(String, String)> {
    use opentelemetry::trace::TraceContextExt;
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    let cx = tracing::Span::current().context();
    if !cx.span().span_context().is_valid() {
        return Vec::new();
    }
    let mut map = std::collections::HashMap::new();
    opentelemetry::global::get_text_map_propagator(|p| p.inject_context(&cx, &mut map));
    let mut pairs: Vec<(String, String)> = map.into_iter().collect();
    pairs.sort();
    pairs
}

/// Makes `span` a child of the caller's trace when the headers carry one
/// (no-op when OTLP export is off).
pub fn set_remote_parent(span: &tracing::Span, headers: &http::HeaderMap) {
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    let cx =
        opentelemetry::global::get_text_map_propagator(|p| p.extract(&HeaderExtractor(headers)));
    let _ = span.set_parent(cx);
}
