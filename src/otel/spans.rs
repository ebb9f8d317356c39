//! The spans ticketd records, built only while tracing is on ([`super::enabled`]): the HTTP
//! request (continuing the caller's trace), the purchase inside it, each Redis script call of a
//! batch (a child of the first sampled purchase it carried, linked to all of them), and a sale
//! from the fallback reserve. Background work (settle, claim, reap, cancel) opens its spans
//! where it runs, with the same [`TARGET`].
//!
//! Field names follow the OpenTelemetry semantic conventions where one exists (`http.*`,
//! `db.*`); ticketd's own carry a `ticketd.` prefix. Errors set the span status ([`record_error`]); `tracing-opentelemetry` reads `otel.name` and
//! `otel.kind` as the name and kind.

use http::{Method, StatusCode};
use opentelemetry::trace::{SpanContext, Status, TraceContextExt};
use opentelemetry::Context;
use tracing::field::Empty;
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use super::TARGET;
use crate::event::Event;
use crate::metrics::{Outcome, StorePath};
use crate::router::Route;
use crate::store::{Sale, StoreError};

/// The server span of one request the edge decided to trace ([`super::sampling::decide`]), a
/// child of `parent`, the caller's span, when there is one.
pub fn request(method: &Method, route: &Route<'_>, parent: Option<Context>) -> Span {
    // Static names: no allocation per request. The method is the route's (a HEAD on
    // /healthz is named GET; `http.request.method` says HEAD).
    let (name, template, event) = match route {
        Route::Buy(id) => ("POST /buy/:eventId", "/buy/:eventId", Some(*id)),
        Route::BadEventId => ("POST /buy/:eventId", "/buy/:eventId", None),
        Route::Tickets(id) => (
            "GET /events/:eventId/tickets",
            "/events/:eventId/tickets",
            Some(*id),
        ),
        Route::Healthz => ("GET /healthz", "/healthz", None),
        Route::Readyz => ("GET /readyz", "/readyz", None),
        Route::Metrics => ("GET /metrics", "/metrics", None),
        Route::MethodNotAllowed(_) | Route::NotFound => ("HTTP", "", None),
    };
    let span = tracing::info_span!(
        target: TARGET,
        "request",
        otel.name = name,
        otel.kind = "server",
        http.request.method = method.as_str(),
        http.route = template,
        ticketd.event = event,
        http.response.status_code = Empty,
    );
    if let Some(parent) = parent {
        let _ = span.set_parent(parent);
    }
    span
}

/// Whether the current task runs inside a traced request: then its work gets spans too.
pub fn in_trace() -> bool {
    super::enabled()
        && Span::current()
            .metadata()
            .is_some_and(|m| m.target() == TARGET)
}

/// Records the answer of `request`: its status, and an error status for a 5xx.
pub fn record_response(span: &Span, status: StatusCode) {
    span.record("http.response.status_code", status.as_u16());
    if status.is_server_error() {
        span.set_status(Status::error(status.as_str().to_owned()));
    }
}

/// The span of one purchase of `event`, inside the request span.
pub fn purchase(event: &Event) -> Span {
    tracing::info_span!(
        target: TARGET,
        "purchase",
        ticketd.event = &*event.id,
        ticketd.store.path = Empty,
        ticketd.outcome = Empty,
        ticketd.ticket = Empty,
    )
}

/// Records what the store decided on `purchase`: the path, the outcome, the ticket, the error.
pub fn record_purchase(
    span: &Span,
    event: &Event,
    path: StorePath,
    outcome: Outcome,
    result: &Result<Sale, StoreError>,
) {
    span.record("ticketd.store.path", path.label());
    span.record("ticketd.outcome", outcome.label());
    match result {
        Ok(Sale::Sold { ticket, .. } | Sale::Replayed { ticket, .. }) => {
            span.record("ticketd.ticket", event.ticket_id(*ticket));
        }
        Ok(_) => {}
        Err(e) => record_error(span, e),
    }
}

/// Marks `span` failed by `error` (its status, with the error as the description).
pub fn record_error(span: &Span, error: &dyn std::fmt::Display) {
    if span.is_disabled() {
        return;
    }
    span.set_status(Status::error(error.to_string()));
}

/// Runs `call` inside `span` (a background span: disabled, and nearly free, while tracing is
/// off), recording its error on the span.
pub async fn traced<T, E: std::fmt::Display>(
    span: Span,
    call: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, E> {
    let result = tracing::Instrument::instrument(call, span.clone()).await;
    if let Err(e) = &result {
        record_error(&span, e);
    }
    result
}

/// The span context of the current span when it is sampled: what a batch links to.
pub fn current_link() -> Option<Box<SpanContext>> {
    if !in_trace() {
        return None;
    }
    let cx = Span::current().context();
    let span = cx.span();
    let sc = span.span_context();
    sc.is_sampled().then(|| Box::new(sc.clone()))
}

/// The span of one purchase script call for `event`, carrying `size` purchases of which
/// `carried` were sampled: a child of the first of them, linked to each. `Span::none()` when
/// none was sampled (nobody would see the call).
pub fn script_call<'a>(
    event: &Event,
    size: usize,
    mut carried: impl Iterator<Item = &'a SpanContext>,
) -> Span {
    let Some(first) = carried.next() else {
        return Span::none();
    };
    let span = tracing::info_span!(
        target: TARGET,
        "redis purchase script",
        otel.name = "EVALSHA purchase",
        otel.kind = "client",
        db.system.name = "redis",
        db.operation.name = "EVALSHA",
        ticketd.event = &*event.id,
        ticketd.batch.size = size,
        ticketd.batch.sold = Empty,
    );
    let _ = span.set_parent(Context::new().with_remote_span_context(first.clone()));
    span.add_link(first.clone());
    for sc in carried {
        span.add_link(sc.clone());
    }
    span
}

/// The span of a sale from this instance's fallback reserve, journaled before it counts.
pub fn fallback_sale(event: &Event) -> Span {
    tracing::info_span!(
        target: TARGET,
        "fallback sale",
        ticketd.event = &*event.id,
        ticketd.ticket = Empty,
    )
}
