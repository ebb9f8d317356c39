//! The purchase hot path without a socket: routing, response building, the memory store under
//! contention beside a bare atomic baseline, and a whole request through the service.

use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion};

mod common;
use common::contended;
use http::{Method, Request};
use ticketd::catalog::Catalog;
use ticketd::response::sale_body;
use ticketd::router::route;
use ticketd::store::memory::MemoryStore;
use ticketd::{App, Limits, Metrics};

fn router(c: &mut Criterion) {
    let mut g = c.benchmark_group("router");
    g.bench_function("buy", |b| {
        b.iter(|| route(black_box(&Method::POST), black_box("/buy/spring_gala-2027")))
    });
    g.bench_function("bad_id", |b| {
        b.iter(|| route(black_box(&Method::POST), black_box("/buy/a%7Bb%7D")))
    });
    g.bench_function("healthz", |b| {
        b.iter(|| route(black_box(&Method::GET), black_box("/healthz")))
    });
    g.finish();
}

fn response(c: &mut Criterion) {
    let catalog = Catalog::new([("spring_gala-2027", 1_000_000)]);
    let event = catalog.get("spring_gala-2027").unwrap();
    let mut g = c.benchmark_group("response");
    g.bench_function("sale_body_itoa", |b| {
        b.iter(|| sale_body(black_box(&event), black_box(424_242), black_box(575_758)))
    });
    // Baseline: the same body through format!.
    g.bench_function("sale_body_format", |b| {
        b.iter(|| {
            format!(
                r#"{{"event":"{}","ticket":"{}-{:07}","remaining":{}}}"#,
                black_box(&event.id),
                event.id,
                black_box(424_242),
                black_box(575_758)
            )
        })
    });
    g.finish();
}

fn memory_store(c: &mut Criterion) {
    let mut g = c.benchmark_group("memory_store_2_threads");
    g.bench_function("bare_atomic_fetch_add", |b| {
        b.iter_custom(|iters| {
            let counter = Arc::new(AtomicU64::new(0));
            contended(
                2,
                iters / 2 + 1,
                Arc::new(move || {
                    black_box(counter.fetch_add(1, Ordering::Relaxed));
                }),
            )
        })
    });
    g.bench_function("purchase", |b| {
        b.iter_custom(|iters| {
            let catalog = Catalog::new([("1", u64::MAX / 4)]);
            let store = Arc::new(MemoryStore::new(&catalog));
            let event = catalog.get("1").unwrap();
            contended(
                2,
                iters / 2 + 1,
                Arc::new(move || {
                    black_box(store.sell(&event).unwrap());
                }),
            )
        })
    });
    g.finish();
}

fn service(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let catalog = Arc::new(Catalog::new([("1", u64::MAX / 4)]));
    let store = MemoryStore::new(&catalog);
    let app = App::new(store, catalog, Arc::new(Metrics::new()), Limits::default());
    let mut g = c.benchmark_group("service");
    g.bench_function("healthz", |b| {
        b.to_async(&rt).iter(|| async {
            let req = Request::get("/healthz").body(()).unwrap();
            black_box(app.handle(req).await)
        })
    });
    g.bench_function("buy_memory", |b| {
        b.to_async(&rt).iter(|| async {
            let req = Request::post("/buy/1").body(()).unwrap();
            black_box(app.handle(req).await)
        })
    });
    g.finish();
}

criterion_group!(benches, router, response, memory_store, service);
criterion_main!(benches);
