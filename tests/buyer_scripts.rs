//! Known buyers in the purchase script, against a real redis-server and without HTTP: the
//! per-buyer limit holds under concurrent purchases of one buyer, a key sells once and answers
//! the same ticket again, and `lua/cancel.lua` forgets a key whose sale it makes void, unless a
//! repeat was already answered with that ticket (then the ticket stays sold: its buyer knows it).

mod support;

use std::sync::Arc;
use std::time::Duration;

use fred::prelude::*;
use ticketd::catalog::Catalog;
use ticketd::event::{Answers, Event, EventKeys};
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
        .run(
            r,
            EventKeys::new("v").buyer_script_keys(Answers::PerEvent),
            args,
            || {},
        )
        .await
        .unwrap();
    reply.iter().map(|v| v.as_string().unwrap()).collect()
}

async fn void(r: &Client, batch: &str) -> i64 {
    LuaScript::new(CANCEL)
        .run(
            r,
            EventKeys::new("v").buyer_script_keys(Answers::PerEvent),
            vec![Value::from(batch)],
            || {},
        )
        .await
        .unwrap()
}

/// The answer buckets of a family (`event:{v}:idempotency` or `idempotency`), named by Redis.
async fn buckets(r: &Client, family: &str) -> Vec<String> {
    let mut names: Vec<String> = r
        .custom(fred::cmd!("KEYS"), vec![format!("{family}:*")])
        .await
        .unwrap();
    names.retain(|n| !n.ends_with(":widths"));
    names.sort();
    names
}

/// The newest record of `field` in a family's buckets (`<event> <ticket> <remaining> <batch>
/// <written> <install>`), and its bucket.
async fn answer(r: &Client, family: &str, field: &str) -> Option<(String, String)> {
    let mut newest: Option<(u64, String, String)> = None;
    for name in buckets(r, family).await {
        let rec: Option<String> = r.hget(&name, field).await.unwrap();
        if let Some(rec) = rec {
            let at = written(&rec);
            if newest.as_ref().is_none_or(|(n, ..)| at > *n) {
                newest = Some((at, rec, name));
            }
        }
    }
    newest.map(|(_, rec, name)| (rec, name))
}

/// Lists buckets of `width` written with key lifetime `life` (ms) in a family, as a writer
/// with that lifetime would have by writing into the current bucket.
async fn width_in_use(r: &Client, family: &str, width: u64, life: u64) {
    let expiry = (redis_ms(r).await / width + 1) * width + life;
    let _: () = r
        .custom(
            fred::cmd!("ZADD"),
            vec![
                format!("{family}:widths"),
                expiry.to_string(),
                format!("{width}:{life}"),
            ],
        )
        .await
        .unwrap();
}

/// The name of an event's current pool, which answers carry.
async fn install(r: &Client, event: &str) -> String {
    r.hget(format!("event:{{{event}}}:meta"), "install")
        .await
        .unwrap()
}

/// The record without its write time and install count (the rest is what a test can predict).
fn told(record: &str) -> &str {
    record.rsplitn(3, ' ').nth(2).unwrap()
}

/// The write time of a record.
fn written(record: &str) -> u64 {
    record.rsplit(' ').nth(1).unwrap().parse().unwrap()
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
    let (record, _) = answer(&r, "event:{v}:idempotency", "alice\nk")
        .await
        .unwrap();
    assert_eq!(told(&record), "v - 0 -", "bound, no ticket: {record:?}");
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
    let (_, bucket) = answer(&r, "event:{v}:idempotency", "alice\nk")
        .await
        .unwrap();
    let _: () = r.hdel(&bucket, "alice\nk").await.unwrap();
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
    let life = Duration::from_millis(1000);
    let (store, event) = store_with(&redis, "ttl", 100, None, life).await;
    let first = store
        .purchase_as(&event, who("alice", Some("k")))
        .await
        .unwrap();
    let Sale::Sold { ticket, .. } = first else {
        panic!("{first:?}");
    };
    let r = redis.client().await;
    // A single Redis: one family for every event, where the answer also binds the key.
    let (record, _) = answer(&r, "idempotency", "alice\nk").await.unwrap();
    let written = written(&record);
    assert!(
        record.starts_with(&format!("ttl ttl-{ticket:06} 99 ")),
        "{record:?}"
    );
    // Still within its lifetime: the same answer.
    let again = store
        .purchase_as(&event, who("alice", Some("k")))
        .await
        .unwrap();
    let redis_now = |r: Client| async move {
        let t: Vec<u64> = r
            .custom(fred::cmd!("TIME"), Vec::<String>::new())
            .await
            .unwrap();
        t[0] * 1000 + t[1] / 1000
    };
    if redis_now(r.clone()).await < written + 1000 {
        assert!(matches!(again, Sale::Replayed { .. }), "{again:?}");
    }
    // Bounded wait for the lifetime to pass on Redis's clock, which decides.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while redis_now(r.clone()).await < written + 1000 {
        assert!(
            std::time::Instant::now() < deadline,
            "Redis's clock stood still"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let after = store
        .purchase_as(&event, who("alice", Some("k")))
        .await
        .unwrap();
    assert!(
        matches!(after, Sale::Sold { ticket: t, .. } if t != ticket),
        "an expired key is a new purchase: {after:?}"
    );
    // Nothing is kept for good: every bucket, and the width, expire as a whole, at most one
    // width (1 s at this lifetime) plus one lifetime from now.
    let widths: Vec<String> = r
        .custom(fred::cmd!("ZRANGE"), vec!["idempotency:widths", "0", "-1"])
        .await
        .unwrap();
    assert_eq!(widths, ["1000:1000"], "half the lifetime, at least 1 s");
    let names = buckets(&r, "idempotency").await;
    assert!(!names.is_empty());
    for name in names
        .iter()
        .map(String::as_str)
        .chain(["idempotency:widths"])
    {
        let left: i64 = r.pttl(name).await.unwrap();
        assert!(left > 0 && left <= 2000, "{name} expires in {left} ms");
    }
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
        "idempotency:widths",
        "meta",
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
    let (told_now, _) = answer(&r, "event:{v}:idempotency", "alice\nk")
        .await
        .unwrap();
    assert_eq!(
        told(&told_now),
        "v v-000010 7 *",
        "the key answers the ticket its buyer was told"
    );
    assert_eq!(void(&r, "i.1:1").await, 1, "the unconfirmed sale goes back");
    let (still, _) = answer(&r, "event:{v}:idempotency", "alice\nk")
        .await
        .unwrap();
    assert_eq!(still, told_now, "and the key still answers the told one");
    let pool: Vec<String> = r.lrange("event:{v}:tickets", 0, -1).await.unwrap();
    assert!(pool.contains(&first));
}

/// Runs `purchase.lua` as [`buy`] does, with key lifetime `life_ms`; the reply, or Redis's error.
async fn buy_living(
    r: &Client,
    batch: &str,
    buyer: &str,
    key: &str,
    life_ms: u64,
) -> Result<Vec<String>, Error> {
    let life = life_ms.to_string();
    let args = [batch, "1", "0", &life, "", buyer, key]
        .iter()
        .map(|a| Value::from(*a))
        .collect();
    let reply: Vec<Value> = LuaScript::new(PURCHASE)
        .run(
            r,
            EventKeys::new("v").buyer_script_keys(Answers::PerEvent),
            args,
            || {},
        )
        .await?;
    Ok(reply.iter().map(|v| v.as_string().unwrap()).collect())
}

/// Redis's clock, unix ms.
async fn redis_ms(r: &Client) -> u64 {
    let t: Vec<u64> = r
        .custom(fred::cmd!("TIME"), Vec::<String>::new())
        .await
        .unwrap();
    t[0] * 1000 + t[1] / 1000
}

#[tokio::test]
async fn an_answer_counts_in_any_bucket_of_its_lifetime_and_not_after_it() {
    let redis = RedisServer::start();
    let (_store, _event) = store(&redis, "v", 10, None).await;
    let r = redis.client().await;
    // Buckets of 1 s, keys living 3 s: records written 1.5 s and 2.9 s ago sit in earlier
    // buckets than the current one, and still count; one written at the start of the oldest
    // bucket read does not.
    width_in_use(&r, "event:{v}:idempotency", 1000, 3000).await;
    let pool = install(&r, "v").await;
    let now = redis_ms(&r).await;
    width_in_use(&r, "event:{v}:idempotency", 2000, 3000).await;
    let plant = |field: &'static str, ticket: &'static str, age: u64, width: u64| {
        let (r, pool) = (r.clone(), pool.clone());
        async move {
            let at = now - age;
            let bucket = format!("event:{{v}}:idempotency:{width}:{}", at / width);
            let record = format!("v {ticket} 5 i.0:1 {at} {pool}");
            let _: () = r.hset(bucket, (field, record)).await.unwrap();
        }
    };
    plant("alice\nk", "v-000101", 1500, 1000).await;
    plant("bob\nk", "v-000102", 2900, 1000).await;
    plant("carol\nk", "v-000103", 3000 + (now - 3000) % 1000, 1000).await;
    // Two records of one key: the newer wins, in one width or across two (the buckets of 1 s
    // are read first).
    plant("dave\nk", "v-000104", 2900, 1000).await;
    plant("dave\nk", "v-000105", 100, 1000).await;
    plant("erin\nk", "v-000106", 2000, 1000).await;
    plant("erin\nk", "v-000108", 100, 2000).await;
    for (buyer, ticket) in [
        ("alice", "v-000101"),
        ("bob", "v-000102"),
        ("dave", "v-000105"),
        ("erin", "v-000108"),
    ] {
        let reply = buy_living(&r, &format!("b.{buyer}"), buyer, "k", 3000)
            .await
            .unwrap();
        assert_eq!(reply[4], format!("R:{ticket}:5"), "{buyer}: {reply:?}");
    }
    let carol = buy_living(&r, "b.carol", "carol", "k", 3000).await.unwrap();
    assert_eq!(
        carol[4], "S",
        "an expired answer is a new purchase: {carol:?}"
    );
    // The replayed answers are marked where they are, in their own buckets.
    let (alice, bucket) = answer(&r, "event:{v}:idempotency", "alice\nk")
        .await
        .unwrap();
    assert_eq!(told(&alice), "v v-000101 5 *");
    assert_eq!(
        bucket,
        format!("event:{{v}}:idempotency:1000:{}", (now - 1500) / 1000)
    );
}

#[tokio::test]
async fn a_changed_lifetime_reads_the_buckets_of_the_old_one_and_starts_its_own() {
    let redis = RedisServer::start();
    let (_store, _event) = store(&redis, "v", 10, None).await;
    let r = redis.client().await;
    // Instances with a lifetime of 1 s wrote buckets of 1 s; now the lifetime is 300 s.
    width_in_use(&r, "event:{v}:idempotency", 1000, 1000).await;
    let pool = install(&r, "v").await;
    let at = redis_ms(&r).await - 300;
    let bucket = format!("event:{{v}}:idempotency:1000:{}", at / 1000);
    let record = format!("v v-000107 4 i.0:1 {at} {pool}");
    let _: () = r.hset(&bucket, ("alice\nk", record)).await.unwrap();
    let again = buy_living(&r, "b.1", "alice", "k", 300_000).await.unwrap();
    assert_eq!(again[4], "R:v-000107:4", "{again:?}");
    // A new key goes to a bucket of the new width (150 s), listed beside the old one.
    let fresh = buy_living(&r, "b.2", "bob", "k", 300_000).await.unwrap();
    assert_eq!(fresh[4], "S", "{fresh:?}");
    let (_, bucket) = answer(&r, "event:{v}:idempotency", "bob\nk").await.unwrap();
    assert!(
        bucket.starts_with("event:{v}:idempotency:150000:"),
        "{bucket}"
    );
    let widths: Vec<String> = r
        .custom(
            fred::cmd!("ZRANGE"),
            vec!["event:{v}:idempotency:widths", "0", "-1"],
        )
        .await
        .unwrap();
    let mut widths = widths;
    widths.sort();
    assert_eq!(widths, ["1000:1000", "150000:300000"]);
}

#[tokio::test]
async fn answers_written_before_the_clock_stepped_back_are_still_found() {
    let redis = RedisServer::start();
    let (_store, _event) = store(&redis, "v", 10, None).await;
    let r = redis.client().await;
    // A failover to a replica whose clock is 5 s behind the old primary's: the last answers
    // were written "5 s from now", in a bucket after the current one.
    let pool = install(&r, "v").await;
    let at = redis_ms(&r).await + 5000;
    let bucket = format!("event:{{v}}:idempotency:1500:{}", at / 1500);
    let record = format!("v v-000109 2 i.0:1 {at} {pool}");
    let _: () = r.hset(&bucket, ("alice\nk", record)).await.unwrap();
    let expiry = (at / 1500 + 1) * 1500 + 3000;
    let _: () = r
        .custom(
            fred::cmd!("ZADD"),
            vec![
                "event:{v}:idempotency:widths".to_owned(),
                expiry.to_string(),
                "1500:3000".to_owned(),
            ],
        )
        .await
        .unwrap();
    let again = buy_living(&r, "b.1", "alice", "k", 3000).await.unwrap();
    assert_eq!(again[4], "R:v-000109:2", "{again:?}");
}

/// How an event gets a new pool under the same id.
enum NewPool {
    /// The operator resets it (instances stopped).
    Reset,
    /// Every key of the event goes (an operator, or lost data) and it is seeded again: its
    /// install count starts over, and the answers outside the event's keys remain.
    DeletedAndSeeded,
}

/// Alice buys ticket 1 of a fresh event with a key; the event gets a new pool (`how`); Bob buys
/// its ticket 1. Alice's key must not answer ticket 1 (Bob's now): her retry is a new purchase.
async fn a_new_pool_does_not_answer_keys_with_its_tickets(how: NewPool) {
    let redis = RedisServer::start();
    let (store, event) = store(&redis, "np", 10, None).await;
    let first = store
        .purchase_as(&event, who("alice", Some("k")))
        .await
        .unwrap();
    assert!(matches!(first, Sale::Sold { ticket: 1, .. }), "{first:?}");
    let reset = match how {
        NewPool::Reset => true,
        NewPool::DeletedAndSeeded => {
            let r = redis.client().await;
            let keys: Vec<String> = r
                .custom(fred::cmd!("KEYS"), vec!["event:{np}:*"])
                .await
                .unwrap();
            let _: () = r.del(keys).await.unwrap();
            let (kept, _) = answer(&r, "idempotency", "alice\nk").await.unwrap();
            assert!(kept.starts_with("np np-000001 "), "{kept:?}");
            false
        }
    };
    let pool = build_pool(&RedisOptions::new(redis.url())).unwrap();
    pool.init().await.unwrap();
    seed_event(&pool, "np", 10, reset).await.unwrap();
    let bob = store.purchase_as(&event, who("bob", None)).await.unwrap();
    assert!(matches!(bob, Sale::Sold { ticket: 1, .. }), "{bob:?}");
    let again = store
        .purchase_as(&event, who("alice", Some("k")))
        .await
        .unwrap();
    assert!(
        matches!(again, Sale::Sold { ticket: 2, .. }),
        "a new purchase, not bob's ticket: {again:?}"
    );
}

#[tokio::test]
async fn a_reset_event_does_not_answer_keys_with_tickets_of_its_old_pool() {
    a_new_pool_does_not_answer_keys_with_its_tickets(NewPool::Reset).await;
}

#[tokio::test]
async fn an_event_deleted_and_seeded_again_does_not_answer_keys_with_its_new_tickets() {
    a_new_pool_does_not_answer_keys_with_its_tickets(NewPool::DeletedAndSeeded).await;
}

#[tokio::test]
async fn answers_of_the_layout_before_buckets_are_still_replayed_voided_and_swept() {
    let redis = RedisServer::start();
    let (_store, _event) = store(&redis, "v", 10, None).await;
    let r = redis.client().await;
    // What an older ticketd left: two sales with keys (one answered, one whose batch is to be
    // made void) and an answer whose lifetime is over.
    let now = redis_ms(&r).await;
    for (ticket, batch, buyer) in [
        ("v-000010", "old.1:1", "alice"),
        ("v-000009", "old.1:2", "bob"),
    ] {
        let _: String = r.rpop("event:{v}:tickets", None).await.unwrap();
        let record = format!("{batch} {now}\n{buyer}\nk");
        let _: () = r.hset("event:{v}:sold", (ticket, record)).await.unwrap();
        let _: () = r.hset("event:{v}:batches", (batch, ticket)).await.unwrap();
        let _: () = r
            .hset(
                "event:{v}:keys",
                (format!("{buyer}\nk"), format!("{ticket} 8 {batch}")),
            )
            .await
            .unwrap();
        let expiry = (now + 86_400_000).to_string();
        let _: () = r
            .custom(
                fred::cmd!("ZADD"),
                vec![
                    "event:{v}:keys:ttl".to_owned(),
                    expiry,
                    format!("{buyer}\nk"),
                ],
            )
            .await
            .unwrap();
    }
    let _: () = r
        .hset("event:{v}:keys", ("carol\nk", "v-000001 9 old.1:0"))
        .await
        .unwrap();
    let expired = (now - 1).to_string();
    let _: () = r
        .custom(
            fred::cmd!("ZADD"),
            vec!["event:{v}:keys:ttl", &expired, "carol\nk"],
        )
        .await
        .unwrap();
    let alice = buy(&r, "new.1:1", "alice", "k").await;
    assert_eq!(alice[4], "R:v-000010:8", "{alice:?}");
    let old: String = r.hget("event:{v}:keys", "alice\nk").await.unwrap();
    assert_eq!(old, "v-000010 8 *", "marked as told, where it is");
    let sale: String = r.hget("event:{v}:sold", "v-000010").await.unwrap();
    assert!(sale.starts_with("=old.1:1 "), "{sale:?}");
    let swept: bool = r.hexists("event:{v}:keys", "carol\nk").await.unwrap();
    assert!(!swept, "an expired old answer is swept as before");
    for old in ["event:{v}:keys", "event:{v}:keys:ttl"] {
        let left: i64 = r.pttl(old).await.unwrap();
        assert!(
            left > 0 && left <= 86_400_000,
            "{old} goes within one lifetime: {left} ms"
        );
    }
    // Voiding an old batch forgets its old answer: the retry buys afresh.
    assert_eq!(void(&r, "old.1:2").await, 1);
    let gone: bool = r.hexists("event:{v}:keys", "bob\nk").await.unwrap();
    assert!(!gone);
    let bob = buy(&r, "new.1:2", "bob", "k").await;
    assert_eq!(bob[4], "S", "{bob:?}");
    // Its new answer is in the buckets; the old hash is never written anew.
    let (record, _) = answer(&r, "event:{v}:idempotency", "bob\nk").await.unwrap();
    assert!(record.starts_with("v v-000009 "), "{record:?}");
    let old_len: u64 = r.hlen("event:{v}:keys").await.unwrap();
    assert_eq!(old_len, 1, "only alice's old answer is left");
}

#[tokio::test]
async fn a_void_sale_in_an_older_bucket_of_one_redis_keeps_the_binding_and_gives_the_ticket_back() {
    let redis = RedisServer::start();
    let (store, event) = store_with(&redis, "w", 10, None, Duration::from_secs(3)).await;
    let r = redis.client().await;
    // One Redis: every event's answers in one family. A sale made 1.5 s ago, in a bucket before
    // the current one (buckets of 1 s), whose outcome its instance never learned.
    width_in_use(&r, "idempotency", 1000, 3000).await;
    let pool = install(&r, "w").await;
    let at = redis_ms(&r).await - 1500;
    let ticket: String = r.lpop("event:{w}:tickets", None).await.unwrap();
    let sale = format!("old.1:1 {at}\nalice\nk");
    let _: () = r.hset("event:{w}:sold", (&ticket, sale)).await.unwrap();
    let _: () = r
        .hset("event:{w}:batches", ("old.1:1", &ticket))
        .await
        .unwrap();
    let bucket = format!("idempotency:1000:{}", at / 1000);
    let record = format!("w {ticket} 9 old.1:1 {at} {pool}");
    let _: () = r.hset(&bucket, ("alice\nk", record)).await.unwrap();
    let back: i64 = LuaScript::new(CANCEL)
        .run(
            &r,
            EventKeys::new("w").buyer_script_keys(Answers::Shared),
            vec![Value::from("old.1:1")],
            || {},
        )
        .await
        .unwrap();
    assert_eq!(back, 1, "the ticket goes back");
    let kept: String = r.hget(&bucket, "alice\nk").await.unwrap();
    assert_eq!(
        kept,
        format!("w - 0 - {at} {pool}"),
        "bound to w, no ticket"
    );
    let retry = store
        .purchase_as(&event, who("alice", Some("k")))
        .await
        .unwrap();
    assert!(
        matches!(retry, Sale::Sold { .. }),
        "a retry buys afresh: {retry:?}"
    );
}

#[tokio::test]
async fn a_settlement_after_a_reset_replaces_an_answer_of_the_old_pool() {
    let redis = RedisServer::start();
    let (_store, _event) = store(&redis, "v", 10, None).await;
    let r = redis.client().await;
    // A confirmed answer written under an earlier pool (install 0: before a reset); the pool
    // now is a later one (seeded anew).
    let width = 43_200_000u64;
    width_in_use(&r, "event:{v}:idempotency", width, 86_400_000).await;
    let now = redis_ms(&r).await;
    let bucket = format!("event:{{v}}:idempotency:{width}:{}", now / width);
    let record = format!("v v-000005 3 * {now} 0");
    let _: () = r.hset(&bucket, ("alice\nk", record)).await.unwrap();
    let reply = settle_one(&r, "v-000010").await;
    assert!(
        matches!(&reply[5], Value::Array(twice) if twice.is_empty()),
        "a ticket of the old pool is no second sale: {reply:?}"
    );
    let (now_told, _) = answer(&r, "event:{v}:idempotency", "alice\nk")
        .await
        .unwrap();
    assert_eq!(told(&now_told), "v v-000010 7 *", "the fallback's ticket");
}
