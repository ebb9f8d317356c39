//! What the journal adds to a fallback sale: the in-memory sale alone (the baseline, what a
//! fallback sale cost before the journal), against the same sale made durable on this
//! machine's disk, one at a time and with many sellers at once (group commit: one sync for
//! every sale that queued during the previous one).

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use ticketd::store::journal::{self, Record};
use ticketd::store::reserve::Reserve;

fn record(n: u64) -> Record {
    Record::Sale {
        event: "bench".into(),
        ticket: format!("bench-{n:07}").into_bytes(),
        purchase: format!("0123456789abcdef.1:{n}").into_bytes(),
        at_ms: n,
        by: None,
    }
}

fn fallback_sale(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    // On the disk the journal would use (the target directory), not on a tmpfs.
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let (_opened, journal) = rt.block_on(async { journal::open(dir.path()).unwrap() });
    let mut g = c.benchmark_group("fallback_sale");
    g.measurement_time(Duration::from_secs(5));
    g.bench_function("reserve_take_only", |b| {
        b.iter_custom(|iters| {
            let reserve = Reserve::new((0..iters).collect());
            let started = Instant::now();
            for n in 1..=iters {
                std::hint::black_box(reserve.take(n, n));
            }
            started.elapsed()
        })
    });
    for sellers in [1u64, 64, 1024] {
        g.bench_function(format!("journaled_{sellers}_sellers"), |b| {
            b.iter_custom(|iters| {
                let per = iters.div_ceil(sellers);
                let reserve = Arc::new(Reserve::new((0..per * sellers).collect()));
                rt.block_on(async {
                    let started = Instant::now();
                    let tasks: Vec<_> = (0..sellers)
                        .map(|s| {
                            let (reserve, journal) = (reserve.clone(), journal.clone());
                            tokio::spawn(async move {
                                for i in 0..per {
                                    let n = s * per + i + 1;
                                    let ticket = reserve.take(n, n).expect("sized for all");
                                    journal.append(record(ticket)).await.unwrap();
                                }
                            })
                        })
                        .collect();
                    for t in tasks {
                        t.await.unwrap();
                    }
                    // Per sale: the time of `per * sellers` sales scaled to `iters`.
                    started
                        .elapsed()
                        .mul_f64(iters as f64 / (per * sellers) as f64)
                })
            })
        });
    }
    g.finish();
}

criterion_group!(benches, fallback_sale);
criterion_main!(benches);
