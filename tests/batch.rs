//! Purchases in batches, against a real redis-server: one script call sells a whole batch with
//! every purchase id exact (re-sent, cancelled, fresh, pool running out, event missing);
//! concurrent purchases share script calls and get `remaining` as if sold one by one; a buyer
//! gone before the answer gets nothing sent, and one gone during the call has its ticket put
//! back.

mod support;

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use fred::prelude::*;
use ticketd::catalog::Catalog;
use ticketd::event::{Event, EventKeys};
use ticketd::seed::seed_event;
use ticketd::store::batch::SCRIPT_MAX;
use ticketd::store::redis::{build_pool, RedisOptions, RedisStore};
use ticketd::store::scripts::{LuaScript, PURCHASE};
use ticketd::store::Sale;
use ticketd::Metrics;

use support::{RedisServer, WAIT};

/// A store with a pool of `pool_size` on `redis`, with `id` seeded with `capacity` tickets.
async fn store(
    redis: &RedisServer,
    id: &str,
    capacity: u64,
    pool_size: usize,
) -> (RedisStore, Arc<Event>, Arc<Metrics>) {
    let options = RedisOptions {
        pool_size,
        timeout: Duration::from_secs(5),
        ..RedisOptions::new(redis.url())
    };
    let pool = build_pool(&options).unwrap();
    pool.init().await.unwrap();
    seed_event(&pool, id, capacity, false).await.unwrap();
    let metrics = Arc::new(Metrics::new());
    let event = Catalog::new([(id, capacity)]).get(id).unwrap();
    (
        RedisStore::new(pool, &options, metrics.clone()),
        event,
        metrics,
    )
}

/// The script's reply, flattened to strings.
async fn call(r: &Client, id: &str, purchase_ids: &[&str]) -> Vec<String> {
    let args = purchase_ids.iter().map(|p| Value::from(*p)).collect();
    let reply: Value = LuaScript::new(PURCHASE)
        .run(r, EventKeys::new(id).script_keys(), args, || {})
        .await
        .unwrap();
    let Value::Array(items) = reply else {
        panic!("not an array: {reply:?}")
    };
    items
        .iter()
        .map(|v| v.as_string().expect("integer or string"))
        .collect()
}

/// Polls `fut` once: far enough for a purchase to queue its order.
async fn poll_once<F: Future>(fut: Pin<&mut F>) {
    let mut fut = Some(fut);
    std::future::poll_fn(|cx| {
        let done = fut.take().unwrap().poll(cx).is_ready();
        assert!(!done, "the purchase cannot finish before a batcher ran");
        Poll::Ready(())
    })
    .await;
}

#[tokio::test]
async fn one_call_sells_a_batch_and_keeps_every_purchase_id_exact() {
    let redis = RedisServer::start();
    let (_store, _event, _) = store(&redis, "1", 3, 1).await;
    let r = redis.client().await;

    // Two fresh purchases: one ticket each, `remaining` as if sold one after the other.
    assert_eq!(
        call(&r, "1", &["a", "b"]).await,
        ["1", "1-000001", "2", "1", "1-000002", "1"]
    );
    // A re-sent id gets its ticket again, a cancelled one nothing, and the pool runs out in the
    // middle of the batch: one more sale, then "empty" with no ticket held in reserves.
    let _: () = r.hset("event:{1}:purchases", ("x", "!")).await.unwrap();
    assert_eq!(
        call(&r, "1", &["a", "x", "c", "d", "e"]).await,
        ["2", "1-000001", "0", "-1", "", "0", "1", "1-000003", "0", "0", "", "0", "0", "", "0"]
    );
    let sold: HashMap<String, String> = r.hgetall("event:{1}:sold").await.unwrap();
    let mut buyers: Vec<_> = sold
        .iter()
        .map(|(t, record)| (t.as_str(), record.split(' ').next().unwrap()))
        .collect();
    buyers.sort();
    assert_eq!(
        buyers,
        [("1-000001", "a"), ("1-000002", "b"), ("1-000003", "c")]
    );
    let index: HashMap<String, String> = r.hgetall("event:{1}:purchases").await.unwrap();
    assert_eq!(index.len(), 4, "{index:?}"); // a, b, c and the cancelled x; d and e hold nothing
    assert_eq!(index["x"], "!");

    // Empty pool while reserves hold tickets: the count says how many (not sold out).
    let _: () = r
        .set("event:{1}:reserved", 5, None, None, false)
        .await
        .unwrap();
    assert_eq!(call(&r, "1", &["f"]).await, ["0", "", "5"]);
    // An event Redis does not have: its own status, never "sold out".
    assert_eq!(
        call(&r, "nope", &["g", "h"]).await,
        ["-2", "", "0", "-2", "", "0"]
    );
}

// A current-thread runtime: every purchase below queues its order before any batcher runs.
#[tokio::test]
async fn concurrent_purchases_share_script_calls() {
    let redis = RedisServer::start();
    let capacity = 1000;
    let (store, event, metrics) = store(&redis, "1", capacity, 2).await;
    let n = 600;
    let mut purchases: Vec<_> = (0..n).map(|_| Box::pin(store.purchase(&event))).collect();
    for p in &mut purchases {
        poll_once(p.as_mut()).await;
    }
    let sales = futures_util::future::join_all(purchases).await;

    let mut tickets = HashSet::new();
    let mut remaining = HashSet::new();
    for sale in sales {
        let Sale::Sold {
            ticket,
            remaining: left,
        } = sale.unwrap()
        else {
            panic!("sold out early")
        };
        assert!(tickets.insert(ticket), "ticket {ticket} sold twice");
        assert!(remaining.insert(left), "remaining {left} answered twice");
    }
    assert_eq!(tickets.len(), n);
    // Exactly the counts of selling one by one, though the purchases ran in a few calls.
    assert_eq!(remaining, (capacity - n as u64..capacity).collect());
    // Two batchers (one per pooled connection) took n/2 orders each, in calls of SCRIPT_MAX.
    let expected = 2 * (n / 2).div_ceil(SCRIPT_MAX) as u64;
    assert_eq!(metrics.redis_batches(), expected);

    let r = redis.client().await;
    assert_eq!(r.hlen::<u64, _>("event:{1}:sold").await.unwrap(), n as u64);
    assert_eq!(
        r.llen::<u64, _>("event:{1}:tickets").await.unwrap(),
        capacity - n as u64
    );
}

#[tokio::test]
async fn a_buyer_gone_before_the_call_is_owed_nothing() {
    let redis = RedisServer::start();
    let (store, event, metrics) = store(&redis, "1", 5, 1).await;
    {
        let gone = store.purchase(&event);
        tokio::pin!(gone);
        poll_once(gone).await; // queued, then dropped: the buyer disconnected
    }
    // The next purchase gets the first ticket: nothing was sent for the one that left.
    assert!(matches!(
        store.purchase(&event).await.unwrap(),
        Sale::Sold { ticket: 1, .. }
    ));
    assert_eq!(metrics.redis_batches(), 1);
    assert_eq!(metrics.cancelled(), 0);
}

#[tokio::test]
async fn a_buyer_gone_during_the_call_gets_its_ticket_put_back() {
    let redis = RedisServer::start();
    let (store, event, metrics) = store(&redis, "1", 5, 1).await;
    redis.signal("STOP"); // the call will wait in the socket
    {
        let gone = store.purchase(&event);
        tokio::pin!(gone);
        poll_once(gone).await;
        let deadline = Instant::now() + WAIT;
        while metrics.redis_batches() == 0 {
            assert!(Instant::now() < deadline, "the batch was never sent");
            tokio::task::yield_now().await;
        }
    } // the buyer leaves while the call is in Redis
    redis.signal("CONT");

    // The script sells a ticket that nobody receives; the batcher makes that purchase void.
    let deadline = Instant::now() + WAIT;
    while metrics.cancelled() < 1 || store.pending_cancels() > 0 {
        assert!(Instant::now() < deadline, "never cancelled");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let r = redis.client().await;
    assert_eq!(r.llen::<u64, _>("event:{1}:tickets").await.unwrap(), 5);
    assert_eq!(r.hlen::<u64, _>("event:{1}:sold").await.unwrap(), 0);
    let index: HashMap<String, String> = r.hgetall("event:{1}:purchases").await.unwrap();
    assert_eq!(index.values().collect::<Vec<_>>(), ["!"]);
}
