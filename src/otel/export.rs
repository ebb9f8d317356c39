//! The export queue, bounded and watched: a span that would overflow the queue is dropped and
//! counted (never waited for), and a collector that does not take spans costs one WARN per
//! interval, with the count held back.
//!
//! The SDK's batch processor drops on a full queue too, but neither exposes the count nor says
//! more than once that it drops. So [`Bounded`] counts the spans handed to it and not yet
//! exported ([`Queued`]), and drops itself, before the processor's channel could fill;
//! [`Watched`] (the exporter the processor calls) gives the count back when a batch leaves,
//! delivered or not. The counters are process-wide, as the tracer provider is; `/metrics` reads
//! them ([`dropped`], [`failed`]).

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use opentelemetry::Context;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{Span, SpanData, SpanExporter, SpanProcessor};
use opentelemetry_sdk::Resource;

use crate::throttle::Throttle;

static DROPPED: AtomicU64 = AtomicU64::new(0);
static FAILED: AtomicU64 = AtomicU64::new(0);

/// Spans dropped because the export queue was full, since start.
pub fn dropped() -> u64 {
    DROPPED.load(Relaxed)
}

/// Spans the collector did not take (export failed or timed out), since start.
pub fn failed() -> u64 {
    FAILED.load(Relaxed)
}

/// Spans handed to the batch processor and not yet through its exporter, and the bound.
#[derive(Debug, Clone)]
pub struct Queued {
    count: Arc<AtomicUsize>,
    capacity: usize,
}

impl Queued {
    /// An empty queue of `capacity` spans.
    pub fn new(capacity: usize) -> Self {
        Self {
            count: Arc::new(AtomicUsize::new(0)),
            capacity,
        }
    }

    /// Takes a place for one span; `false` when the queue is full.
    fn enter(&self) -> bool {
        if self.count.fetch_add(1, Relaxed) >= self.capacity {
            self.count.fetch_sub(1, Relaxed);
            return false;
        }
        true
    }

    fn leave(&self, n: usize) {
        self.count.fetch_sub(n, Relaxed);
    }
}

/// A span processor that drops (and counts) what would overflow the queue of `inner`.
#[derive(Debug)]
pub struct Bounded<P> {
    inner: P,
    queued: Queued,
}

impl<P> Bounded<P> {
    /// `inner`, whose exporter is a [`Watched`] on the same `queued`.
    pub fn new(inner: P, queued: Queued) -> Self {
        Self { inner, queued }
    }
}

impl<P: SpanProcessor> SpanProcessor for Bounded<P> {
    fn on_start(&self, span: &mut Span, cx: &Context) {
        self.inner.on_start(span, cx);
    }

    fn on_end(&self, span: SpanData) {
        if self.queued.enter() {
            self.inner.on_end(span);
        } else {
            DROPPED.fetch_add(1, Relaxed);
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

/// An exporter that frees the queue places of what it exported and warns, rate-limited, when
/// the collector does not take a batch.
#[derive(Debug)]
pub struct Watched<E> {
    inner: E,
    queued: Queued,
    warn: Throttle,
}

impl<E> Watched<E> {
    /// `inner`, freeing places of `queued`.
    pub fn new(inner: E, queued: Queued) -> Self {
        Self {
            inner,
            queued,
            warn: Throttle::new(Duration::from_secs(30)),
        }
    }
}

impl<E: SpanExporter> SpanExporter for Watched<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let n = batch.len();
        let result = self.inner.export(batch).await;
        self.queued.leave(n);
        if let Err(e) = &result {
            FAILED.fetch_add(n as u64, Relaxed);
            if let Some(held_back) = self.warn.allow() {
                tracing::warn!(error = %e, spans = n, held_back, "cannot export spans to the trace collector; they are lost (purchases are not affected)");
            }
        }
        result
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_queue_refuses_past_its_capacity_and_frees_what_left() {
        let q = Queued::new(2);
        assert!(q.enter() && q.enter());
        assert!(!q.enter());
        q.leave(2);
        assert!(q.enter());
    }
}
