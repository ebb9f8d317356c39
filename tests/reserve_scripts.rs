//! The reserve scripts' guards against a stale picture, on a real redis-server: a claim tells an
//! instance that its reserve is empty (not only when it holds tickets), and an owner's hand-back
//! re-sent late, after a claim changed the list, does nothing.

mod support;

use fred::prelude::*;
use fred::types::Value;
use ticketd::seed::seed_event;
use ticketd::store::redis::{build_pool, RedisOptions};
use ticketd::store::scripts::{LuaScript, CLAIM, RELEASE};

use support::RedisServer;

fn keys(names: &[&str]) -> Vec<String> {
    names.iter().map(|n| format!("event:{{r}}:{n}")).collect()
}

async fn claim(client: &Client, size: i64, believed: i64) -> Vec<Value> {
    LuaScript::new(CLAIM)
        .run(
            client,
            keys(&[
                "tickets",
                "reserve:i",
                "leases",
                "reserved",
                "meta",
                "held",
                "stale",
            ]),
            vec![
                Value::from("i"),
                Value::Integer(size),
                Value::Integer(10_000),
                Value::Integer(believed),
            ],
            || (),
        )
        .await
        .unwrap()
}

async fn release(client: &Client, expected: i64) -> i64 {
    LuaScript::new(RELEASE)
        .run(
            client,
            keys(&["tickets", "reserve:i", "leases", "reserved", "held"]),
            vec![Value::from("i"), Value::Integer(expected)],
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

    // A first claim moves 10 tickets and lists them.
    let reply = claim(client, 10, 0).await;
    assert_eq!(reply[3].as_i64(), Some(10), "moved");
    assert_eq!(reply[5].as_i64(), Some(1), "listed");
    assert_eq!(reply.len(), 6 + 10);
    // A heartbeat that changes nothing lists nothing.
    let reply = claim(client, 10, 10).await;
    assert_eq!((reply[5].as_i64(), reply.len()), (Some(0), 6));

    // A hand-back of the 10 the owner settled: done.
    assert_eq!(release(client, 10).await, 10);
    // The owner still believes it holds 10: the claim says, explicitly, that it holds none.
    let reply = claim(client, 0, 10).await;
    assert_eq!(
        (reply[5].as_i64(), reply.len()),
        (Some(1), 6),
        "an empty list is news"
    );

    // A late copy of a hand-back, after a claim changed the list, finds another length and
    // leaves it alone.
    let reply = claim(client, 10, 0).await;
    assert_eq!(reply[3].as_i64(), Some(10));
    assert_eq!(release(client, 3).await, -2);
    let held: i64 = client.llen("event:{r}:reserve:i").await.unwrap();
    assert_eq!(held, 10, "the reserve is still there");
    let reserved: i64 = client.get("event:{r}:reserved").await.unwrap();
    assert_eq!(reserved, 10);
}
