//! Logging set-up: tracing-subscriber with a `RUST_LOG` filter (default `info,fred=error`: the
//! Redis client's own warnings repeat what ticketd logs once per failure), human lines or
//! JSON, written through a non-blocking writer so a slow stdout never stalls a request.
//!
//! With tracing on ([`crate::otel`]), an OpenTelemetry layer sits beside the log layer, each
//! with its own filter: the log filter never passes the trace spans (target
//! [`crate::otel::TARGET`]), and the trace layer passes nothing else, so turning tracing on
//! turns on no debug log, and logging builds no trace span.

use tracing::Level;
use tracing_appender::non_blocking::WorkerGuard;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, Registry};

use crate::config::LogFormat;
use crate::otel::Tracing;

/// Installs the global subscriber, with the OpenTelemetry layer when `tracing` is given. Keep
/// the guard alive until exit: dropping it flushes the lines still queued.
pub fn init(format: LogFormat, tracing: Option<&Tracing>) -> WorkerGuard {
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(true)
        .finish(std::io::stdout());
    let filter = log_filter();
    let Some(tracing) = tracing else {
        let builder = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(writer)
            .with_target(false);
        match format {
            LogFormat::Text => builder.init(),
            LogFormat::Json => builder.json().flatten_event(true).init(),
        }
        return guard;
    };
    let log = tracing_subscriber::fmt::layer()
        .with_writer(writer)
        .with_target(false);
    let log: Box<dyn Layer<Registry> + Send + Sync> = match format {
        LogFormat::Text => Box::new(log),
        LogFormat::Json => Box::new(log.json().flatten_event(true)),
    };
    let spans = tracing_opentelemetry::layer()
        .with_tracer(tracing.tracer())
        .with_location(false)
        .with_threads(false)
        .with_target(false)
        .with_level(false)
        .with_tracked_inactivity(false)
        // INFO, the level of every trace span: a TRACE here would raise the process-wide
        // maximum level, and with it `log`'s, so that every trace line of the Redis client would
        // be formatted into a record and filtered per call (measured: 1 us per purchase).
        .with_filter(Targets::new().with_target(crate::otel::TARGET, Level::INFO));
    tracing_subscriber::registry()
        .with(log.with_filter(filter))
        .with(spans)
        .init();
    guard
}

/// `RUST_LOG`, or `info,fred=error`; never the trace spans.
fn log_filter() -> EnvFilter {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,fred=error"));
    filter.add_directive(
        format!("{}=off", crate::otel::TARGET)
            .parse()
            .expect("a valid directive"),
    )
}
