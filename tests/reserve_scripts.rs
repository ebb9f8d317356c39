//! The reserve scripts' guards against a stale picture, on a real redis-server: a claim tells an
//! instance that its reserve is empty (not only when it holds tickets), and an owner's hand-back
//! re-sent late, after a claim changed the list, does nothing.

mod support;

use fred::prelude::*;
use fred::types::Value;
use ticketd::event::EventKeys;
use ticketd::seed::seed_event;
use ticketd::store::redis::{build_pool, RedisOptions};
use ticketd::store::scripts::{LuaScript, CLAIM, RELEASE};

use support::RedisServer;

fn keys(names: &[&str]) -> Vec<String> {
    names.iter().map(|n| format!("event:{{r}}:{n}")).collect()
}

async fn try_claim(
    client: &Client,
    size: i64,
    believed: i64,
    generation: i64,
) -> Result<Vec<Value>, fred::error::Error> {
    LuaScript::new(CLAIM)
        .run(
            client,
            claim_keys("r"),
            vec![
                Value::from("i"),
                Value::Integer(size),
                Value::Integer(10_000),
                Value::Integer(believed),
                Value::Integer(generation),
            ],
            || (),
        )
        .await
}

async fn claim(client: &Client, size: i64, believed: i64, generation: i64) -> Vec<Value> {
    try_claim(client, size, believed, generation).await.unwrap()
}

async fn release(client: &Client, expected: i64, generation: i64) -> i64 {
    LuaScript::new(RELEASE)
        .run(
            client,
            keys(&[
                "tickets",
                "reserve:i",
                "leases",
                "reserved",
                "held",
                "reserve_gen",
            ]),
            vec![
                Value::from("i"),
                Value::Integer(expected),
                Value::Integer(generation),
            ],
            || (),
        )
        .await
        .unwrap()
}

#[tokio::test]
async fn claims_say_empty_and_stale_hand_backs_do_nothing() {
    let redis = RedisServer::start();
    let pool = build_pool(&RedisOptions::new(redis.url())).unwrap();
    pool.init().await.unwrap();
    seed_event(&pool, "r", 100, false).await.unwrap();
    let client = pool.next();

    // An instance that never acted on a claim hands back an empty reserve (no generation to
    // name: -1).
    assert_eq!(release(client, 0, -1).await, 0);
    // A first claim moves 10 tickets and lists them, as generation 1 of the list.
    let reply = claim(client, 10, 0, -1).await;
    assert_eq!(reply[3].as_i64(), Some(10), "moved");
    assert_eq!(reply[5].as_i64(), Some(1), "listed");
    assert_eq!(reply[6].as_i64(), Some(1), "generation");
    assert_eq!(reply.len(), 9 + 10);
    // A heartbeat that changes nothing lists nothing.
    let reply = claim(client, 10, 10, 1).await;
    assert_eq!((reply[5].as_i64(), reply.len()), (Some(0), 9));

    // A hand-back of the 10 the owner settled: done.
    assert_eq!(release(client, 10, 1).await, 10);
    // The owner still believes it holds 10: the claim says, explicitly, that it holds none.
    let reply = claim(client, 0, 10, 1).await;
    assert_eq!(
        (reply[5].as_i64(), reply.len()),
        (Some(1), 9),
        "an empty list is news"
    );

    // A late copy of a hand-back, after a claim changed the list, finds another length and
    // leaves it alone.
    let reply = claim(client, 10, 0, 1).await;
    assert_eq!(reply[3].as_i64(), Some(10));
    assert_eq!(reply[6].as_i64(), Some(2), "a refill is a new generation");
    assert_eq!(release(client, 3, 2).await, -2);
    // So does one of the same length as the refill, but of the list before it.
    assert_eq!(release(client, 10, 1).await, -2);
    let held: i64 = client.llen("event:{r}:reserve:i").await.unwrap();
    assert_eq!(held, 10, "the reserve is still there");
    let reserved: i64 = client.get("event:{r}:reserved").await.unwrap();
    assert_eq!(reserved, 10);

    // An owner that never acted on that refill's reply (lost, or its call failed in another
    // event's part) still believes 10 of generation 1: the same length, but not its list.
    let reply = claim(client, 10, 10, 1).await;
    assert_eq!((reply[3].as_i64(), reply[5].as_i64()), (Some(0), Some(1)));
    assert_eq!(reply.len(), 9 + 10, "the whole list of generation 2");
    let reply = claim(client, 10, 10, 2).await;
    assert_eq!((reply[5].as_i64(), reply.len()), (Some(0), 9));
}

#[tokio::test]
async fn a_claim_that_cannot_count_the_generation_up_changes_nothing() {
    let redis = RedisServer::start();
    let pool = build_pool(&RedisOptions::new(redis.url())).unwrap();
    pool.init().await.unwrap();
    seed_event(&pool, "r", 100, false).await.unwrap();
    let client = pool.next();
    let reply = claim(client, 10, 0, -1).await;
    assert_eq!(reply[6].as_i64(), Some(1));
    let list: Vec<String> = client.lrange("event:{r}:reserve:i", 0, -1).await.unwrap();
    // A late settlement marked one of the reserve's tickets sold, and the generation field is
    // damaged: the claim would swap that ticket for a fresh one at the same length, so it must
    // fail before it writes anything, not after.
    let _: i64 = client.sadd("event:{r}:stale", &list[3]).await.unwrap();
    // Not an integer, though Lua's tonumber reads it (HINCRBY would refuse it).
    let _: i64 = client
        .hset("event:{r}:reserve_gen", ("i", "1.5"))
        .await
        .unwrap();
    assert!(try_claim(client, 10, 10, 1).await.is_err());
    let after: Vec<String> = client.lrange("event:{r}:reserve:i", 0, -1).await.unwrap();
    assert_eq!(after, list, "the reserve is as it was");
    let still: bool = client.sismember("event:{r}:stale", &list[3]).await.unwrap();
    assert!(still, "the ticket is still marked");
    let pool_left: i64 = client.llen("event:{r}:tickets").await.unwrap();
    assert_eq!(pool_left, 90);
}

/// The eight keys of event `id` for instance `i`, in claim.lua's order.
fn claim_keys(id: &str) -> Vec<Key> {
    EventKeys::new(id)
        .claim_keys(&EventKeys::reserve(id, "i"))
        .into()
}

#[tokio::test]
async fn one_claim_of_several_events_does_for_each_what_a_claim_of_it_alone_does() {
    let redis = RedisServer::start();
    let pool = build_pool(&RedisOptions::new(redis.url())).unwrap();
    pool.init().await.unwrap();
    seed_event(&pool, "e1", 100, false).await.unwrap();
    seed_event(&pool, "e2", 100, false).await.unwrap();
    let client = pool.next();
    // Another instance holds a lease on e2.
    let _: i64 = client
        .custom(
            fred::cmd!("ZADD"),
            vec!["event:{e2}:leases", "1000000", "j"],
        )
        .await
        .unwrap();
    let keys: Vec<Key> = ["e1", "gone", "e2"]
        .iter()
        .flat_map(|id| claim_keys(id))
        .collect();
    // Each event: believed length 0, no generation acted on yet.
    let mut args = vec![Value::from("i"), Value::Integer(10), Value::Integer(10_000)];
    for _ in 0..3 {
        args.extend([Value::Integer(0), Value::Integer(-1)]);
    }
    let reply: Vec<Value> = LuaScript::new(CLAIM)
        .run(client, keys, args, || ())
        .await
        .unwrap();
    let ints = |r: &[Value]| r.iter().map(|v| v.as_i64().unwrap()).collect::<Vec<_>>();
    // e1: claimed, 10 moved and listed, no other lease.
    assert_eq!(ints(&reply[..1]), [1]);
    assert_eq!(ints(&reply[2..9]), [90, 10, 0, 1, 1, 10, 0]);
    let e1: Vec<String> = reply[9..19]
        .iter()
        .map(|v| v.as_string().unwrap())
        .collect();
    let reserve: Vec<String> = client.lrange("event:{e1}:reserve:i", 0, -1).await.unwrap();
    assert_eq!(e1, reserve);
    // gone: not in Redis, nothing written.
    assert_eq!(ints(&reply[19..28]), [-2, 0, 0, 0, 0, 0, 0, 0, 0]);
    let exists: i64 = client.exists(claim_keys("gone")).await.unwrap();
    assert_eq!(exists, 0);
    // e2: claimed as e1 was, and j's lease (not this instance's own) reported.
    assert_eq!(ints(&reply[28..29]), [1]);
    assert_eq!(ints(&reply[30..37]), [90, 10, 0, 1, 1, 10, 1]);
    assert_eq!(reply.len(), 37 + 10 + 2);
    assert_eq!(reply[47].as_string().as_deref(), Some("j"));
    assert_eq!(reply[48].as_i64(), Some(1_000_000));
    for id in ["e1", "e2"] {
        let reserved: i64 = client
            .get(format!("event:{{{id}}}:reserved"))
            .await
            .unwrap();
        assert_eq!(reserved, 10, "{id}");
        let lease: Option<f64> = client
            .custom(
                fred::cmd!("ZSCORE"),
                vec![format!("event:{{{id}}}:leases"), "i".into()],
            )
            .await
            .unwrap();
        assert!(lease.is_some(), "{id}: this instance's lease");
    }
}
