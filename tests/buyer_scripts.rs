//! Known buyers in the purchase script, against a real redis-server and without HTTP: the
//! per-buyer limit holds under concurrent purchases of one buyer, a key sells once and answers
//! the same ticket again, and `lua/cancel.lua` forgets a key whose sale it makes void, unless a
//! repeat was already answered with that ticket (then the ticket stays sold: its buyer knows it).

mod support;

use std::sync::Arc;
use std::time::Duration;

use fred::prelude::*;
use ticketd::catalog::Catalog;
use ticketd::event::{Event, EventKeys};
use ticketd::seed::seed_event;
use ticketd::store::ids::Ids;
use ticketd::store::purchaser::{BuyerPolicy, Purchaser};
use ticketd::store::redis::{build_pool, RedisOptions, RedisStore};
use ticketd::store::scripts::{LuaScript, CANCEL, PURCHASE, SETTLE};
use ticketd::store::Sale;
use ticketd::Metrics;

use support::RedisServer;

async fn store(
    redis: &RedisServer,
    id: &str,
    capacity: u64,
    limit: Option<u32>,
) -> (RedisStore, Arc<Event>) {
    store_with(redis, id, capacity, limit, Duration::from_secs(86_400)).await
}

async fn store_with(
    redis: &RedisServer,
    id: &str,
    capacity: u64,
    limit: Option<u32>,
    key_ttl: Duration,
) -> (RedisStore, Arc<Event>) {
    let options = RedisOptions {
        pool_size: 2,
        timeout: Duration::from_secs(5),
        buyers: BuyerPolicy {
            max_per_buyer: limit,
            key_ttl,
        },
        ..RedisOptions::new(redis.url())
    };
    let pool = build_pool(&options).unwrap();
    pool.init().await.unwrap();
    seed_event(&pool, id, capacity, false).await.unwrap();
    let event = Catalog::new([(id, capacity)]).get(id).unwrap();
    (
        RedisStore::new(pool, &options, Arc::new(Metrics::new()), Ids::random()),
        event,
    )
}

fn who(buyer: &str, key: Option<&str>) -> Option<Arc<Purchaser>> {
    Some(Arc::new(Purchaser::new(buyer, key.map(Into::into))))
}

#[tokio::test]
async fn two_hundred_concurrent_purchases_of_one_buyer_sell_exactly_the_limit() {
    let redis = RedisServer::start();
    let (store, event) = store(&redis, "lim", 1000, Some(2)).await;
    let alice = who("alice", None);
    let buys = (0..200).map(|_| store.purchase_as(&event, alice.clone()));
    let answers = futures_util::future::join_all(buys).await;
    let sold = answers
        .iter()
        .filter(|a| matches!(a, Ok(Sale::Sold { .. })))
        .count();
    let refused = answers
        .iter()
        .filter(|a| matches!(a, Ok(Sale::LimitReached)))
        .count();
    assert_eq!((sold, refused), (2, 198), "{answers:?}");
    // Another buyer is not affected, and an anonymous purchase has no limit.
    assert!(matches!(
        store.purchase_as(&event, who("bob", None)).await,
        Ok(Sale::Sold { .. })
    ));
    for _ in 0..3 {
        assert!(matches!(
            store.purchase(&event).await,
            Ok(Sale::Sold { .. })
        ));
    }
    let mut mine: Vec<String> = store
        .tickets(&event, "alice")
        .await
        .unwrap()
        .iter()
        .map(|t| String::from_utf8(t.to_vec()).unwrap())
        .collect();
    mine.sort();
    assert_eq!(mine.len(), 2);
    let r = redis.client().await;
    for t in &mine {
        let record: String = r.hget("event:{lim}:sold", t).await.unwrap();
        assert!(record.ends_with("\nalice\n"), "{record:?}");
    }
}

#[tokio::test]
async fn a_key_sells_once_and_answers_the_same_ticket_again() {
    let redis = RedisServer::start();
    let (store, event) = store(&redis, "key", 100, None).await;
    let first = store
        .purchase_as(&event, who("alice", Some("k-1")))
        .await
        .unwrap();
    let Sale::Sold { ticket, remaining } = first else {
        panic!("{first:?}");
    };
    // Sales in between change the pool, not the answer.
    store.purchase(&event).await.unwrap();
    for _ in 0..3 {
        assert_eq!(
            store
                .purchase_as(&event, who("alice", Some("k-1")))
                .await
                .unwrap(),
            Sale::Replayed { ticket, remaining }
        );
    }
    // The same key of another buyer is another purchase.
    let bob = store
        .purchase_as(&event, who("bob", Some("k-1")))
        .await
        .unwrap();
    assert!(
        matches!(bob, Sale::Sold { ticket: t, .. } if t != ticket),
        "{bob:?}"
    );
    // One batch holding the same key twice sells once.
    let twice = futures_util::future::join_all(
        (0..2).map(|_| store.purchase_as(&event, who("carol", Some("k")))),
    )
    .await;
    let sold = twice
        .iter()
        .filter(|a| matches!(a, Ok(Sale::Sold { .. })))
        .count();
    assert_eq!(sold, 1, "{twice:?}");
    let r = redis.client().await;
    let sold: u64 = r.hlen("event:{key}:sold").await.unwrap();
    assert_eq!(sold, 4, "alice, the anonymous one, bob, carol");
}

/// Runs `purchase.lua` for one buyer with a key as batch `batch`; the reply as strings.
async fn buy(r: &Client, batch: &str, buyer: &str, key: &str) -> Vec<String> {
    let args = [batch, "1", "0", "86400000", "", buyer, key]
        .iter()
        .map(|a| Value::from(*a))
        .collect();
    let reply: Vec<Value> = LuaScript::new(PURCHASE)
        .run(r, EventKeys::new("v").buyer_script_keys(), args, || {})
        .await
        .unwrap();
    reply.iter().map(|v| v.as_string().unwrap()).collect()
}

async fn void(r: &Client, batch: &str) -> i64 {
    LuaScript::new(CANCEL)
        .run(
            r,
            EventKeys::new("v").buyer_script_keys(),
            vec![Value::from(batch)],
            || {},
        )
        .await
        .unwrap()
}

#[tokio::test]
async fn a_void_sale_forgets_its_key_unless_a_repeat_was_answered() {
    let redis = RedisServer::start();
    let (_store, _event) = store(&redis, "v", 10, None).await;
    let r = redis.client().await;
    let sold = buy(&r, "i.1:1", "alice", "k").await;
    assert_eq!((sold[0].as_str(), sold[4].as_str()), ("1", "S"), "{sold:?}");
    let ticket = sold[3].clone();
    // The batch's outcome was never learned: made void, the ticket goes back, the key and the
    // buyer's ticket are forgotten, so a retry buys afresh.
    assert_eq!(void(&r, "i.1:1").await, 1);
    let held: u64 = r
        .custom(fred::cmd!("ZCARD"), vec!["event:{v}:buyers"])
        .await
        .unwrap();
    assert_eq!(held, 0);
    let retry = buy(&r, "i.1:2", "alice", "k").await;
    assert_eq!(retry[4], "S", "{retry:?}");
    assert_ne!(retry[3], "", "{retry:?}");
    // Now a repeat is answered with the ticket before the sale is made void: the buyer was told
    // of it, so it stays sold.
    let second = retry[3].clone();
    let repeat = buy(&r, "j.1:1", "alice", "k").await;
    // (The voided ticket went back to the head of the pool, so the retry got it again.)
    assert_eq!(second, ticket);
    assert_eq!(repeat[4], format!("R:{second}:9"), "{repeat:?}");
    // The key expires (or is swept) before the cancellation runs, as it may when a cut-off
    // instance comes back late or runs its journal again: the ticket still stays sold.
    let _: () = r.hdel("event:{v}:keys", "alice\nk").await.unwrap();
    assert_eq!(void(&r, "i.1:2").await, 0);
    let record: Option<String> = r.hget("event:{v}:sold", &second).await.unwrap();
    assert!(
        record
            .as_deref()
            .is_some_and(|r| r.starts_with("=i.1:2 ") && r.ends_with("\nalice\nk")),
        "{record:?}"
    );
    let pool: Vec<String> = r.lrange("event:{v}:tickets", 0, -1).await.unwrap();
    assert!(!pool.contains(&second), "{pool:?}");
    assert_eq!(pool.len(), 9);
}

#[tokio::test]
async fn a_key_expires_after_its_lifetime_and_then_buys_afresh() {
    let redis = RedisServer::start();
    let (store, event) = store_with(&redis, "ttl", 100, None, Duration::from_millis(200)).await;
    let first = store
        .purchase_as(&event, who("alice", Some("k")))
        .await
        .unwrap();
    let Sale::Sold { ticket, .. } = first else {
        panic!("{first:?}");
    };
    let r = redis.client().await;
    // Bounded wait for the binding to expire (Redis's clock decides).
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let left: i64 = r.pttl("buyer:{5:alice}:key:k").await.unwrap();
        if left < 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the binding never expired"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let again = store
        .purchase_as(&event, who("alice", Some("k")))
        .await
        .unwrap();
    assert!(
        matches!(again, Sale::Sold { ticket: t, .. } if t != ticket),
        "an expired key is a new purchase: {again:?}"
    );
    // The expired answer was dropped by that call: only the new one is left.
    let answers: u64 = r.hlen("event:{ttl}:keys").await.unwrap();
    assert_eq!(answers, 1);
}

/// Runs `settle.lua` for one fallback sale of `ticket` to alice with key `k`, as instance
/// `inst`; the reply's lists of buyers over the limit and keys used twice.
async fn settle_one(r: &Client, ticket: &str) -> Vec<Value> {
    let keys: Vec<String> = [
        "reserve:inst",
        "reserved",
        "sold",
        "held",
        "stale",
        "buyers",
        "keys",
        "keys:ttl",
        "fallback_buyers",
    ]
    .iter()
    .map(|k| format!("event:{{v}}:{k}"))
    .collect();
    let args: Vec<Value> = [
        "inst", "0", "86400000", ticket, "inst.1:9", "1", "alice", "k", "7",
    ]
    .iter()
    .map(|a| Value::from(*a))
    .collect();
    LuaScript::new(SETTLE)
        .run(r, keys, args, || {})
        .await
        .unwrap()
}

#[tokio::test]
async fn a_fallback_answer_replaces_an_unconfirmed_one_and_survives_its_void() {
    let redis = RedisServer::start();
    let (_store, _event) = store(&redis, "v", 10, None).await;
    let r = redis.client().await;
    // A sale in Redis whose outcome the instance never learned (to be made void)...
    let sold = buy(&r, "i.1:1", "alice", "k").await;
    let first = sold[3].clone();
    // ...and the buyer's retry, sold from the reserve while Redis was unreachable, settled
    // before the cancellation runs.
    let reply = settle_one(&r, "v-000010").await;
    assert!(
        matches!(&reply[5], Value::Array(twice) if twice.len() == 1),
        "reported as a key with two sales: {reply:?}"
    );
    let answer: String = r.hget("event:{v}:keys", "alice\nk").await.unwrap();
    assert_eq!(
        answer, "v-000010 7 *",
        "the key answers the ticket its buyer was told"
    );
    assert_eq!(void(&r, "i.1:1").await, 1, "the unconfirmed sale goes back");
    let answer: String = r.hget("event:{v}:keys", "alice\nk").await.unwrap();
    assert_eq!(
        answer, "v-000010 7 *",
        "and the key still answers the told one"
    );
    let pool: Vec<String> = r.lrange("event:{v}:tickets", 0, -1).await.unwrap();
    assert!(pool.contains(&first));
}
