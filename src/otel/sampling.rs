//! Head sampling at the edge: whether a request is traced is decided before any span is built,
//! from its `traceparent` and the configured sampler, so an unsampled request costs what an
//! untraced one does (a header lookup and a random number), not two spans built and thrown away.
//!
//! The SDK still has a sampler ([`EdgeSampler`]): a server span exists only because the edge
//! said yes, so it is recorded; a span under a recorded span is recorded with it; every other
//! root (the background work) is sampled by the configured sampler.

use std::sync::OnceLock;

use opentelemetry::trace::{Link, SpanKind, TraceContextExt, TraceId};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::trace::{Sampler, SamplingDecision, SamplingResult, ShouldSample};

use crate::config::SamplerKind;

/// The configured sampler, as the edge applies it.
#[derive(Debug, Clone, Copy)]
pub struct Head {
    /// Which sampler.
    pub kind: SamplerKind,
    /// The ratio of the ratio samplers.
    pub ratio: f64,
}

static HEAD: OnceLock<Head> = OnceLock::new();

/// Sets the sampler the edge applies (once, when tracing starts).
pub(crate) fn install(head: Head) {
    let _ = HEAD.set(head);
}

/// Whether a request with these headers is traced: `Some(caller's context, if any)`, or `None`.
pub fn decide(headers: &http::HeaderMap) -> Option<Option<Context>> {
    decide_for(HEAD.get()?, headers)
}

fn decide_for(head: &Head, headers: &http::HeaderMap) -> Option<Option<Context>> {
    let parent = super::propagation::remote_parent(headers);
    let parent_sampled = parent
        .as_ref()
        .map(|cx| cx.span().span_context().is_sampled());
    let coin = || head.ratio > 0.0 && (head.ratio >= 1.0 || rand::random::<f64>() < head.ratio);
    let traced = match head.kind {
        SamplerKind::AlwaysOn => true,
        SamplerKind::AlwaysOff => false,
        SamplerKind::TraceIdRatio => coin(),
        SamplerKind::ParentBasedAlwaysOn => parent_sampled.unwrap_or(true),
        SamplerKind::ParentBasedAlwaysOff => parent_sampled.unwrap_or(false),
        SamplerKind::ParentBasedTraceIdRatio => parent_sampled.unwrap_or_else(coin),
    };
    traced.then_some(parent)
}

/// The SDK's sampler: server spans and their descendants as the edge decided, other roots by
/// `inner`.
#[derive(Debug, Clone)]
pub struct EdgeSampler {
    /// The sampler for the spans the edge did not decide (background work).
    pub inner: Sampler,
}

impl ShouldSample for EdgeSampler {
    fn should_sample(
        &self,
        parent_context: Option<&Context>,
        trace_id: TraceId,
        name: &str,
        span_kind: &SpanKind,
        attributes: &[KeyValue],
        links: &[Link],
    ) -> SamplingResult {
        let parent = parent_context
            .filter(|cx| cx.has_active_span())
            .map(|cx| cx.span().span_context().clone());
        let decided =
            *span_kind == SpanKind::Server || parent.as_ref().is_some_and(|p| p.is_sampled());
        if decided {
            return SamplingResult {
                decision: SamplingDecision::RecordAndSample,
                attributes: Vec::new(),
                trace_state: parent.map(|p| p.trace_state().clone()).unwrap_or_default(),
            };
        }
        self.inner
            .should_sample(parent_context, trace_id, name, span_kind, attributes, links)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_edge_follows_the_parent_and_samples_roots_at_the_ratio() {
        let traced = |kind, ratio, traceparent: Option<&str>| {
            let mut h = http::HeaderMap::new();
            if let Some(tp) = traceparent {
                h.insert("traceparent", tp.parse().unwrap());
            }
            decide_for(&Head { kind, ratio }, &h).map(|parent| parent.is_some())
        };
        let yes = Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
        let no = Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00");
        use SamplerKind::*;
        assert_eq!(traced(ParentBasedTraceIdRatio, 0.0, yes), Some(true));
        assert_eq!(traced(ParentBasedTraceIdRatio, 1.0, no), None);
        assert_eq!(traced(ParentBasedTraceIdRatio, 1.0, None), Some(false));
        assert_eq!(traced(ParentBasedTraceIdRatio, 0.0, None), None);
        assert_eq!(traced(ParentBasedAlwaysOff, 1.0, None), None);
        assert_eq!(traced(ParentBasedAlwaysOn, 0.0, None), Some(false));
        assert_eq!(traced(AlwaysOn, 0.0, no), Some(true));
        assert_eq!(traced(AlwaysOff, 1.0, yes), None);
        assert_eq!(traced(TraceIdRatio, 0.0, yes), None);
        // About the ratio of roots.
        let n = (0..10_000)
            .filter(|_| traced(ParentBasedTraceIdRatio, 0.1, None).is_some())
            .count();
        assert!((700..1300).contains(&n), "{n}");
    }
}
