//! Metrics costs: a scrape of a registry with 1,000 events (text and JSON), and a contended
//! per-event counter increment beside a bare atomic baseline.

use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};

mod common;
use common::contended;
use ticketd::catalog::Catalog;
use ticketd::metrics::{Metrics, Outcome, StorePath};
use ticketd::metrics_render::{render_json, render_text, Snapshot};

fn registry(events: usize) -> (Metrics, Catalog) {
    let ids: Vec<String> = (0..events).map(|i| format!("event-{i}")).collect();
    let catalog = Catalog::new(ids.iter().map(|id| (id.as_str(), 10_000)));
    let m = Metrics::new();
    for (i, e) in catalog.events().iter().enumerate() {
        for _ in 0..(i % 7) {
            e.metrics.record(Outcome::Sold);
        }
        m.record_purchase(
            StorePath::Redis,
            Outcome::Sold,
            Duration::from_micros(300 + i as u64),
        );
    }
    (m, catalog)
}

fn scrape(c: &mut Criterion) {
    let (m, catalog) = registry(1000);
    let events = catalog.events();
    let remaining: Vec<u64> = events.iter().map(|e| e.metrics.remaining()).collect();
    let reserved = vec![0; events.len()];
    let snapshot = Snapshot {
        events: &events,
        remaining: &remaining,
        remaining_age: 0.5,
        reserved: &reserved,
        store: "redis",
    };
    let mut g = c.benchmark_group("scrape_1000_events");
    let mut buf = Vec::with_capacity(1 << 20);
    g.bench_function("text", |b| {
        b.iter(|| {
            buf.clear();
            render_text(&mut buf, &m, &snapshot);
            black_box(buf.len())
        })
    });
    g.bench_function("json", |b| {
        b.iter(|| {
            buf.clear();
            render_json(&mut buf, &m, &snapshot);
            black_box(buf.len())
        })
    });
    g.finish();
}

fn counters(c: &mut Criterion) {
    let mut g = c.benchmark_group("counter_increment_2_threads");
    g.bench_function("bare_atomic", |b| {
        b.iter_custom(|iters| {
            let a = Arc::new(AtomicU64::new(0));
            contended(
                2,
                iters / 2 + 1,
                Arc::new(move || {
                    black_box(a.fetch_add(1, Ordering::Relaxed));
                }),
            )
        })
    });
    g.bench_function("event_metric", |b| {
        b.iter_custom(|iters| {
            let catalog = Catalog::new([("1", 10)]);
            let e = catalog.get("1").unwrap();
            contended(
                2,
                iters / 2 + 1,
                Arc::new(move || e.metrics.record(black_box(Outcome::Sold))),
            )
        })
    });
    g.bench_function("purchase_record_with_latency", |b| {
        b.iter_custom(|iters| {
            let m = Arc::new(Metrics::new());
            contended(
                2,
                iters / 2 + 1,
                Arc::new(move || {
                    m.record_purchase(
                        StorePath::Redis,
                        Outcome::Sold,
                        black_box(Duration::from_micros(420)),
                    )
                }),
            )
        })
    });
    g.finish();
}

criterion_group!(benches, scrape, counters);
criterion_main!(benches);
