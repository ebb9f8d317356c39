//! A Redis purchase round trip (the Lua script through the fred pool) against a private
//! redis-server on a free port, 1 and 64 purchases in flight, beside a bare PING on the same
//! pool as the baseline.

use std::hint::black_box;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use fred::interfaces::ClientLike;
use fred::types::Value;
use ticketd::catalog::Catalog;
use ticketd::seed::seed_event;
use ticketd::store::redis::{build_pool, RedisOptions, RedisStore};
use ticketd::Metrics;

struct Redis(Child);

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_redis(dir: &std::path::Path) -> (Redis, String) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .arg("--dir")
        .arg(dir)
        .stdout(Stdio::null())
        .spawn()
        .expect("redis-server on PATH");
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "redis-server did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    (Redis(child), format!("redis://127.0.0.1:{port}"))
}

fn purchase(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let (_redis, url) = start_redis(dir.path());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let options = RedisOptions {
        timeout: Duration::from_secs(5),
        ..RedisOptions::new(url)
    };
    let (store, event) = rt.block_on(async {
        let pool = build_pool(&options).unwrap();
        pool.init().await.unwrap();
        seed_event(&pool, "bench", 3_000_000, false).await.unwrap();
        let catalog = Catalog::new([("bench", 3_000_000)]);
        let store = Arc::new(RedisStore::new(
            pool,
            &options,
            Arc::new(Metrics::new()),
            ticketd::store::ids::Ids::random(),
        ));
        (store, catalog.get("bench").unwrap())
    });
    let mut g = c.benchmark_group("redis_round_trip");
    g.measurement_time(Duration::from_secs(5));
    for in_flight in [1usize, 64] {
        g.bench_function(format!("ping_{in_flight}_in_flight"), |b| {
            b.to_async(&rt).iter_custom(|iters| {
                let store = store.clone();
                async move {
                    run(iters, in_flight, move || {
                        let store = store.clone();
                        async move {
                            black_box(store.pool().next().ping::<Value>(None).await.unwrap());
                        }
                    })
                    .await
                }
            })
        });
        g.bench_function(format!("purchase_{in_flight}_in_flight"), |b| {
            b.to_async(&rt).iter_custom(|iters| {
                let (store, event) = (store.clone(), event.clone());
                async move {
                    run(iters, in_flight, move || {
                        let (store, event) = (store.clone(), event.clone());
                        async move {
                            black_box(store.purchase(&event).await.unwrap());
                        }
                    })
                    .await
                }
            })
        });
    }
    g.finish();
}

/// `iters` operations with `in_flight` of them running at once; returns the wall time, so the
/// reported time is per operation at that concurrency (throughput, not latency, when > 1).
async fn run<F, Fut>(iters: u64, in_flight: usize, op: F) -> Duration
where
    F: Fn() -> Fut + Send + Sync + Clone + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let per = iters.div_ceil(in_flight as u64);
    let start = Instant::now();
    let tasks: Vec<_> = (0..in_flight)
        .map(|_| {
            let op = op.clone();
            tokio::spawn(async move {
                for _ in 0..per {
                    op().await;
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    start.elapsed()
}

criterion_group!(benches, purchase);
criterion_main!(benches);
