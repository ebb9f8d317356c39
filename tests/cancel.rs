//! Purchases sold to nobody, given back against a real redis-server: a cancellation Redis
//! refuses is given up (logged, counted) instead of keeping the instance in limbo for ever, and
//! one queued while Redis is down waits, unsent, until Redis is back.

mod support;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use fred::prelude::*;
use ticketd::catalog::Catalog;
use ticketd::seed::seed_event;
use ticketd::store::ids::Ids;
use ticketd::store::redis::{build_pool, RedisOptions, RedisStore};
use ticketd::Metrics;

use support::{RedisServer, WAIT};

async fn store(redis: &RedisServer) -> (RedisStore, Arc<ticketd::event::Event>, Arc<Metrics>) {
    let options = RedisOptions {
        pool_size: 1,
        timeout: Duration::from_millis(250),
        ..RedisOptions::new(redis.url())
    };
    let pool = build_pool(&options).unwrap();
    pool.init().await.unwrap();
    seed_event(&pool, "c", 10, false).await.unwrap();
    let metrics = Arc::new(Metrics::new());
    let event = Catalog::new([("c", 10)]).get("c").unwrap();
    let store = RedisStore::new(pool, &options, metrics.clone(), Ids::random());
    (store, event, metrics)
}

async fn until(what: &str, ok: impl Fn() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !ok() {
        assert!(Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn a_cancellation_redis_refuses_is_given_up_not_retried_for_ever() {
    let redis = RedisServer::start();
    let (store, event, metrics) = store(&redis).await;
    let r = redis.client().await;
    // A damaged key: cancel.lua's HGET on it fails with WRONGTYPE, every time.
    let _: () = r
        .set("event:{c}:batches", "not a hash", None, None, false)
        .await
        .unwrap();
    store.cancels().void(&event, Bytes::from_static(b"b:1"), 1);
    assert_eq!(event.limbo.load(Ordering::Relaxed), 1, "in limbo meanwhile");
    until("the cancellation is given up", || {
        store.pending_cancels() == 0
    })
    .await;
    assert_eq!(metrics.failures().0, 1, "counted");
    assert_eq!(event.limbo.load(Ordering::Relaxed), 0, "no longer in limbo");
}

#[tokio::test]
async fn a_cancellation_waits_for_redis_and_then_runs() {
    let mut redis = RedisServer::start();
    let (store, event, metrics) = store(&redis).await;
    redis.kill();
    store.cancels().void(&event, Bytes::from_static(b"b:2"), 1);
    // Redis is down: it stays queued (nothing is sent, nothing is given up).
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(store.pending_cancels(), 1);
    assert_eq!(metrics.failures().0, 0);
    redis.start_again();
    until("the cancellation ran", || store.pending_cancels() == 0).await;
    assert_eq!(metrics.failures().0, 0);
    let r = redis.client().await;
    let mark: Option<String> = r.hget("event:{c}:batches", "b:2").await.unwrap();
    assert_eq!(mark.as_deref(), Some("!"), "the batch is void");
}
