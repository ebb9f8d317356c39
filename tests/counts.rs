//! The counts behind `/metrics` (unsold and held-back tickets per event), read from a real
//! redis-server: on a single Redis in a few `lua/counts.lua` calls of many events each, on a
//! cluster's shard in a pipeline of reads per event; both read the same numbers.

mod support;

use std::sync::Arc;
use std::time::Duration;

use fred::prelude::*;
use ticketd::catalog::Catalog;
use ticketd::event::{Event, EventKeys};
use ticketd::seed::seed_event;
use ticketd::store::ids::Ids;
use ticketd::store::redis::{build_pool, RedisOptions, RedisStore, COUNT_EVENTS};
use ticketd::Metrics;

use support::redis::command_calls;
use support::RedisServer;

/// Events spanning three `counts.lua` calls.
const EVENTS: u64 = 2 * COUNT_EVENTS as u64 + 10;

/// A store on `redis`, as a single Redis's (`single_node`) or a cluster shard's.
async fn store(redis: &RedisServer, single_node: bool) -> RedisStore {
    let options = RedisOptions {
        timeout: Duration::from_secs(5),
        single_node,
        ..RedisOptions::new(redis.url())
    };
    let pool = build_pool(&options).unwrap();
    pool.init().await.unwrap();
    RedisStore::new(pool, &options, Arc::new(Metrics::new()), Ids::random())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counts_of_many_events_take_a_few_script_calls_and_match_the_reads() {
    let redis = RedisServer::start();
    let r = redis.client().await;
    let specs: Vec<(String, u64)> = (1..=EVENTS).map(|i| (i.to_string(), i)).collect();
    let catalog = Catalog::new(specs.iter().map(|(id, n)| (id.as_str(), *n)));
    let events: Vec<Arc<Event>> = specs
        .iter()
        .map(|(id, _)| catalog.get(id).unwrap())
        .collect();
    let pool = build_pool(&RedisOptions::new(redis.url())).unwrap();
    pool.init().await.unwrap();
    for (id, n) in &specs {
        seed_event(&pool, id, *n, false).await.unwrap();
    }
    // Event 300 (in the second call): 5 tickets sold, 7 in live reserves; event 520 (in the
    // third): 4 + 3 held back in two expired reserves.
    let k300 = EventKeys::new("300");
    let _: Vec<String> = r.lpop(k300.tickets.clone(), Some(12)).await.unwrap();
    let _: i64 = r.incr_by(k300.reserved.clone(), 7).await.unwrap();
    let k520 = EventKeys::new("520");
    let _: i64 = r
        .hset(k520.held.clone(), [("a", 4), ("b", 3)])
        .await
        .unwrap();
    let mut expected: Vec<u64> = (1..=EVENTS).collect();
    expected[299] -= 5;

    let single = store(&redis, true).await;
    assert_eq!(single.remaining(&events).await.unwrap(), expected);
    let before = command_calls(&r).await;
    assert_eq!(single.remaining(&events).await.unwrap(), expected);
    let after = command_calls(&r).await;
    let sent = |c: &str| after.get(c).copied().unwrap_or(0) - before.get(c).copied().unwrap_or(0);
    assert_eq!(
        sent("evalsha") + sent("eval"),
        3,
        "one call per {COUNT_EVENTS} events"
    );
    assert_eq!(events[519].metrics.held_back(), 7);
    assert_eq!(events[0].metrics.held_back(), 0);

    let shard = store(&redis, false).await;
    events[519].metrics.set_held_back(0);
    assert_eq!(shard.remaining(&events).await.unwrap(), expected);
    assert_eq!(events[519].metrics.held_back(), 7);
}
