//! Distributed tracing: OpenTelemetry spans of purchases, exported over OTLP/HTTP (protobuf) to
//! a collector such as Jaeger, and free when off.
//!
//! Tracing is on only when an OTLP endpoint is configured ([`crate::config::TraceArgs`]). Off,
//! no OpenTelemetry layer is installed, [`enabled`] is `false`, and the request path builds no
//! span and reads no `traceparent`: one relaxed load of a flag per request. On, spans carry the
//! target [`TARGET`], which only the OpenTelemetry layer's own filter lets through (the log
//! filter turns it off), so tracing never turns on debug logs and logging never builds these
//! spans. Export runs on the SDK's batch processor thread behind a bounded queue
//! ([`export`]); what it drops or cannot deliver is counted in `/metrics`.
//!
//! # Layout
//! - [`export`]: the bounded queue's drop counter and the rate-limited export warning.
//! - [`propagation`]: W3C Trace Context read from request headers.
//! - [`sampling`]: whether a request is traced, decided before any span is built.
//! - [`spans`]: the spans themselves (request, purchase, script call, fallback sale).

pub mod export;
pub mod propagation;
pub mod sampling;
pub mod spans;

use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::time::Duration;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, Sampler, SdkTracerProvider,
};
use opentelemetry_sdk::Resource;

use crate::config::{SamplerKind, TraceArgs};

/// The target of every span meant for OpenTelemetry, and of nothing else.
pub const TARGET: &str = "otel_span";

/// Sampling ratio of the ratio samplers when `OTEL_TRACES_SAMPLER_ARG` is not set: one trace in
/// a hundred (design.md, Tracing, for what ratio 1 costs under a flash sale).
pub const DEFAULT_RATIO: f64 = 0.01;

/// The service name when `OTEL_SERVICE_NAME` does not give one.
pub const DEFAULT_SERVICE_NAME: &str = "ticketd";

/// Spans queued for export at most (`OTEL_BSP_MAX_QUEUE_SIZE`, the SDK's default otherwise).
const DEFAULT_QUEUE: usize = 2048;

static ON: AtomicBool = AtomicBool::new(false);

/// Whether spans are being recorded: an OpenTelemetry layer is installed.
#[inline]
pub fn enabled() -> bool {
    ON.load(Relaxed)
}

/// Why tracing could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    /// The OTLP exporter refused its settings (for example a malformed endpoint URL).
    #[error("OTEL_EXPORTER_OTLP_ENDPOINT: {0}")]
    Exporter(#[from] opentelemetry_otlp::ExporterBuildError),
    /// An `OTEL_BSP_*` setting is not a number.
    #[error("{0}: not a number")]
    Queue(&'static str),
}

/// The installed tracer provider. Shut it down before exit, so the spans still queued leave.
#[derive(Debug)]
pub struct Tracing {
    provider: SdkTracerProvider,
    endpoint: String,
}

impl Tracing {
    /// Sets up export to the configured endpoint, or returns `None` when none is configured.
    /// Call outside any async runtime (the blocking HTTP client is built here).
    ///
    /// # Errors
    /// See [`TraceError`].
    pub fn start(args: &TraceArgs) -> Result<Option<Self>, TraceError> {
        let Some(endpoint) = traces_endpoint(args) else {
            return Ok(None);
        };
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(Protocol::HttpBinary)
            .with_endpoint(endpoint.clone())
            .build()?;
        let queue = match std::env::var("OTEL_BSP_MAX_QUEUE_SIZE") {
            Ok(v) => v
                .trim()
                .parse::<usize>()
                .map_err(|_| TraceError::Queue("OTEL_BSP_MAX_QUEUE_SIZE"))?,
            Err(_) => DEFAULT_QUEUE,
        }
        .max(1);
        let queued = export::Queued::new(queue);
        let config = BatchConfigBuilder::default()
            .with_max_queue_size(queue)
            .build();
        let batch = BatchSpanProcessor::new(export::Watched::new(exporter, queued.clone()), config);
        let provider = SdkTracerProvider::builder()
            .with_span_processor(export::Bounded::new(batch, queued))
            .with_sampler(sampling::EdgeSampler {
                inner: sampler(args),
            })
            .with_resource(resource(args))
            .build();
        sampling::install(sampling::Head {
            kind: args
                .trace_sampler
                .unwrap_or(SamplerKind::ParentBasedTraceIdRatio),
            ratio: args.trace_sampler_arg.unwrap_or(DEFAULT_RATIO),
        });
        ON.store(true, Relaxed);
        Ok(Some(Self { provider, endpoint }))
    }

    /// The tracer the OpenTelemetry layer records with.
    pub fn tracer(&self) -> opentelemetry_sdk::trace::SdkTracer {
        self.provider.tracer("ticketd")
    }

    /// Where spans go.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Exports what is queued and stops, within `bound`. Blocking: call outside the runtime.
    pub fn shutdown(self, bound: Duration) {
        ON.store(false, Relaxed);
        if let Err(e) = self.provider.shutdown_with_timeout(bound) {
            tracing::warn!(error = %e, ?bound, "spans still queued may be lost: the tracer did not shut down in time");
        }
    }
}

/// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` as given, else `OTEL_EXPORTER_OTLP_ENDPOINT` with the
/// traces path appended (as the OTLP specification says); `None` when neither is set.
fn traces_endpoint(args: &TraceArgs) -> Option<String> {
    fn set(v: &Option<String>) -> Option<&str> {
        v.as_deref().map(str::trim).filter(|v| !v.is_empty())
    }
    if let Some(url) = set(&args.otlp_traces_endpoint) {
        return Some(url.to_owned());
    }
    set(&args.otlp_endpoint).map(|base| format!("{}/v1/traces", base.trim_end_matches('/')))
}

/// The sampler `OTEL_TRACES_SAMPLER` names, parent-based ratio by default.
fn sampler(args: &TraceArgs) -> Sampler {
    let ratio = args.trace_sampler_arg.unwrap_or(DEFAULT_RATIO);
    let parent_based = |root| Sampler::ParentBased(Box::new(root));
    match args
        .trace_sampler
        .unwrap_or(SamplerKind::ParentBasedTraceIdRatio)
    {
        SamplerKind::AlwaysOn => Sampler::AlwaysOn,
        SamplerKind::AlwaysOff => Sampler::AlwaysOff,
        SamplerKind::TraceIdRatio => Sampler::TraceIdRatioBased(ratio),
        SamplerKind::ParentBasedAlwaysOn => parent_based(Sampler::AlwaysOn),
        SamplerKind::ParentBasedAlwaysOff => parent_based(Sampler::AlwaysOff),
        SamplerKind::ParentBasedTraceIdRatio => parent_based(Sampler::TraceIdRatioBased(ratio)),
    }
}

/// `service.name` from `OTEL_SERVICE_NAME` (`--otel-service-name`) or `OTEL_RESOURCE_ATTRIBUTES`,
/// else `ticketd`; the other attributes of `OTEL_RESOURCE_ATTRIBUTES` and the SDK's own.
fn resource(args: &TraceArgs) -> Resource {
    let builder = Resource::builder();
    if let Some(name) = args
        .otel_service_name
        .as_deref()
        .map(str::trim)
        .filter(|n| !n.is_empty())
    {
        return builder.with_service_name(name.to_owned()).build();
    }
    let named = std::env::var("OTEL_RESOURCE_ATTRIBUTES").is_ok_and(|v| {
        v.split(',')
            .any(|kv| kv.trim().starts_with("service.name="))
    });
    if named {
        builder.build()
    } else {
        builder.with_service_name(DEFAULT_SERVICE_NAME).build()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_traces_endpoint_is_the_signal_url_or_the_base_url_plus_the_path() {
        let mut args = TraceArgs::default();
        assert_eq!(traces_endpoint(&args), None);
        args.otlp_endpoint = Some("http://c:4318/".into());
        assert_eq!(traces_endpoint(&args).unwrap(), "http://c:4318/v1/traces");
        args.otlp_traces_endpoint = Some("http://t:1/x".into());
        assert_eq!(traces_endpoint(&args).unwrap(), "http://t:1/x");
        args.otlp_traces_endpoint = Some(" ".into());
        assert_eq!(traces_endpoint(&args).unwrap(), "http://c:4318/v1/traces");
    }

    #[test]
    fn the_default_sampler_follows_the_parent_and_samples_roots_at_the_default_ratio() {
        let s = sampler(&TraceArgs::default());
        assert_eq!(
            format!("{s:?}"),
            format!(
                "{:?}",
                Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(DEFAULT_RATIO)))
            )
        );
    }
}
