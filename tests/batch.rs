//! Purchases in batches, against a real redis-server: one script call sells a whole batch, and
//! its batch id makes a re-sent call answer the same tickets and a cancelled one sell nothing
//! (`lua/cancel.lua` gives back exactly what nobody received); concurrent purchases share
//! script calls and get `remaining` as if sold one by one; a buyer gone before the call is not
//! sent, and one gone during the call has its ticket put back; on a single Redis one call sells
//! the purchases of several events, each event's part as if called alone.

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
use ticketd::store::ids::Ids;
use ticketd::store::redis::{build_pool, RedisOptions, RedisStore};
use ticketd::store::scripts::{LuaScript, CANCEL, PURCHASE};
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
        RedisStore::new(pool, &options, metrics.clone(), Ids::random()),
        event,
        metrics,
    )
}

/// Runs `script` on event `id` with `args`; the reply flattened to strings.
async fn call(r: &Client, script: &'static str, id: &str, args: &[&str]) -> Vec<String> {
    let args = args.iter().map(|a| Value::from(*a)).collect();
    let reply: Value = LuaScript::new(script)
        .run(r, EventKeys::new(id).script_keys(), args, || {})
        .await
        .unwrap();
    match reply {
        Value::Array(items) => items
            .iter()
            .map(|v| v.as_string().expect("integer or string"))
            .collect(),
        other => vec![other.as_string().expect("integer")],
    }
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
async fn one_call_sells_a_batch_and_each_batch_id_is_exact() {
    let redis = RedisServer::start();
    let (_store, _event, _) = store(&redis, "1", 3, 1).await;
    let r = redis.client().await;
    let buy = |batch: &'static str, n: &'static str| {
        let r = r.clone();
        async move { call(&r, PURCHASE, "1", &[batch, n]).await }
    };
    let ledger = || async {
        let sold: HashMap<String, String> = r.hgetall("event:{1}:sold").await.unwrap();
        let mut sold: Vec<(String, String)> = sold
            .into_iter()
            .map(|(t, record)| (t, record.split(' ').next().unwrap().to_string()))
            .collect();
        sold.sort();
        sold
    };

    // {status, unsold after, reserved, tickets}: two tickets for a batch of two.
    assert_eq!(buy("b1", "2").await, ["1", "1", "0", "1-000001 1-000002"]);
    // The same call again (fred re-sending after a reconnect): the same tickets, nothing popped.
    assert_eq!(buy("b1", "2").await, ["2", "1", "0", "1-000001 1-000002"]);
    // The pool runs out within a batch: the first purchase gets the last ticket.
    assert_eq!(buy("b2", "3").await, ["1", "0", "0", "1-000003"]);
    // Empty pool while reserves hold tickets: not sold out, the count says how many.
    let _: () = r
        .set("event:{1}:reserved", 5, None, None, false)
        .await
        .unwrap();
    assert_eq!(buy("b3", "1").await, ["1", "5", "5", ""]);
    let _: () = r.del("event:{1}:reserved").await.unwrap();
    assert_eq!(
        ledger().await,
        [
            ("1-000001".into(), "b1".into()),
            ("1-000002".into(), "b1".into()),
            ("1-000003".into(), "b2".into())
        ]
    );
    // An event Redis does not have: its own status, never "sold out".
    assert_eq!(
        call(&r, PURCHASE, "nope", &["b4", "2"]).await,
        ["-2", "0", "0", ""]
    );

    // The buyer of 1-000002 left: that ticket goes back, once.
    assert_eq!(call(&r, CANCEL, "1", &["b1", "1-000002"]).await, ["1"]);
    assert_eq!(call(&r, CANCEL, "1", &["b1", "1-000002"]).await, ["0"]);
    // Batch b2's outcome was unknown: void, its ticket back, and a late copy sells nothing.
    assert_eq!(call(&r, CANCEL, "1", &["b2"]).await, ["1"]);
    assert_eq!(buy("b2", "3").await, ["-1", "2", "0", ""]);
    // A batch made void before it ran (the call was still queued somewhere) never sells.
    assert_eq!(call(&r, CANCEL, "1", &["b5"]).await, ["0"]);
    assert_eq!(buy("b5", "1").await, ["-1", "2", "0", ""]);
    assert_eq!(ledger().await, [("1-000001".into(), "b1".into())]);
    assert_eq!(r.llen::<u64, _>("event:{1}:tickets").await.unwrap(), 2);
    // A given-back ticket sold again is not taken back by the old batch's cancellation.
    assert_eq!(buy("b6", "2").await, ["1", "0", "0", "1-000003 1-000002"]);
    assert_eq!(call(&r, CANCEL, "1", &["b1", "1-000002"]).await, ["0"]);
    assert_eq!(call(&r, CANCEL, "1", &["b2"]).await, ["0"]);
    assert_eq!(ledger().await.len(), 3);
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

    // The script sells a ticket that nobody receives; the batcher gives it back.
    let deadline = Instant::now() + WAIT;
    while metrics.cancelled() < 1 || store.pending_cancels() > 0 {
        assert!(Instant::now() < deadline, "never cancelled");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let r = redis.client().await;
    assert_eq!(r.llen::<u64, _>("event:{1}:tickets").await.unwrap(), 5);
    assert_eq!(r.hlen::<u64, _>("event:{1}:sold").await.unwrap(), 0);
    let batches: HashMap<String, String> = r.hgetall("event:{1}:batches").await.unwrap();
    assert_eq!(batches.values().collect::<Vec<_>>(), ["1-000001"]); // what a re-sent call answers
}

/// Runs `purchase.lua` anonymously for several events in one call (`args`: the batch id and the
/// events' counts, space-separated); the reply as one `status|unsold|reserved|tickets` per event.
async fn call_events(r: &Client, ids: &[&str], args: &[&str]) -> Vec<String> {
    let keys: Vec<_> = ids
        .iter()
        .flat_map(|id| EventKeys::new(id).script_keys())
        .collect();
    let args = args.iter().map(|a| Value::from(*a)).collect();
    let reply: Vec<Value> = LuaScript::new(PURCHASE)
        .run(r, keys, args, || {})
        .await
        .unwrap();
    let values: Vec<String> = reply
        .iter()
        .map(|v| v.as_string().expect("integer or string"))
        .collect();
    values.chunks(4).map(|part| part.join("|")).collect()
}

#[tokio::test]
async fn one_call_sells_several_events_each_as_if_alone() {
    let redis = RedisServer::start();
    let (_store, _event, _) = store(&redis, "1", 3, 1).await;
    let r = redis.client().await;
    let pool = build_pool(&RedisOptions::new(redis.url())).unwrap();
    pool.init().await.unwrap();
    seed_event(&pool, "2", 2, false).await.unwrap();
    let buy = |batch: &'static str| {
        let r = r.clone();
        async move { call_events(&r, &["1", "2", "nope"], &[batch, "2 3 1"]).await }
    };

    // Per event, in turn: two tickets of event 1, the last two of event 2 (the third purchase
    // found the pool empty), and the event Redis does not have.
    let first = [
        "1|1|0|1-000001 1-000002",
        "1|0|0|2-000001 2-000002",
        "-2|0|0|",
    ];
    assert_eq!(buy("m1").await, first);
    // Re-sent: each event answers the same tickets again, nothing popped.
    let again = [
        "2|1|0|1-000001 1-000002",
        "2|0|0|2-000001 2-000002",
        "-2|0|0|",
    ];
    assert_eq!(buy("m1").await, again);
    // The batch id is recorded per event: voiding it in event 2 leaves event 1's sale.
    assert_eq!(call(&r, CANCEL, "2", &["m1"]).await, ["2"]);
    let voided = ["2|1|0|1-000001 1-000002", "-1|2|0|", "-2|0|0|"];
    assert_eq!(buy("m1").await, voided);
    assert_eq!(r.hlen::<u64, _>("event:{1}:sold").await.unwrap(), 2);
    assert_eq!(r.hlen::<u64, _>("event:{2}:sold").await.unwrap(), 0);
    assert_eq!(r.llen::<u64, _>("event:{2}:tickets").await.unwrap(), 2);
}

// A current-thread runtime: every purchase below queues its order before any batcher runs.
#[tokio::test]
async fn purchases_of_many_events_share_script_calls() {
    let redis = RedisServer::start();
    let (events, per) = (100, 3);
    let ids: Vec<String> = (0..events).map(|e| format!("e{e}")).collect();
    let options = RedisOptions {
        pool_size: 1,
        timeout: Duration::from_secs(5),
        ..RedisOptions::new(redis.url())
    };
    let pool = build_pool(&options).unwrap();
    pool.init().await.unwrap();
    for id in &ids {
        seed_event(&pool, id, 10, false).await.unwrap();
    }
    let metrics = Arc::new(Metrics::new());
    let catalog = Catalog::new(ids.iter().map(|id| (id.as_str(), 10)));
    let store = RedisStore::new(pool, &options, metrics.clone(), Ids::random());
    let wanted: Vec<Arc<Event>> = ids
        .iter()
        .flat_map(|id| std::iter::repeat_n(catalog.get(id).unwrap(), per))
        .collect();
    let mut purchases: Vec<_> = wanted
        .iter()
        .map(|event| Box::pin(store.purchase(event)))
        .collect();
    for p in &mut purchases {
        poll_once(p.as_mut()).await;
    }
    let sales = futures_util::future::join_all(purchases).await;

    let mut sold: HashMap<&str, HashSet<u64>> = HashMap::new();
    for (event, sale) in wanted.iter().zip(sales) {
        let Sale::Sold { ticket, remaining } = sale.unwrap() else {
            panic!("sold out early")
        };
        let mine = sold.entry(&event.id).or_default();
        assert!(mine.insert(ticket), "{} sold {ticket} twice", event.id);
        assert_eq!(remaining, 10 - mine.len() as u64, "as if sold one by one");
    }
    // 300 purchases of 100 events: one call per 64 events (192 purchases), not one per event.
    assert_eq!(metrics.redis_batches(), 2);
    let r = redis.client().await;
    for id in &ids {
        assert_eq!(sold[id.as_str()], (1..=per as u64).collect());
        let key = format!("event:{{{id}}}:sold");
        assert_eq!(r.hlen::<u64, _>(key).await.unwrap(), per as u64);
    }
}
