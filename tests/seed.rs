//! `ticketd seed`: creates missing events, leaves existing ones alone, `--reset` replaces the pool
//! and ledger; and bad configuration exits 64 with one line naming the setting.

mod support;

use fred::prelude::*;
use support::ticketd::run_binary;
use support::RedisServer;

fn seed(url: &str, extra: &[&str]) -> String {
    let mut args = vec!["seed", "--redis-url", url];
    args.extend_from_slice(extra);
    let out = run_binary(&args);
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout).unwrap()
}

#[tokio::test]
async fn seeding_is_idempotent_and_reset_replaces() {
    let redis = RedisServer::start();
    let url = redis.url();
    let r = redis.client().await;

    let out = seed(&url, &["--events", "1=1000,2=3"]);
    assert!(out.contains("event 1: created with 1000 tickets"), "{out}");
    assert!(out.contains("event 2: created with 3 tickets"), "{out}");
    assert_eq!(r.llen::<u64, _>("event:{1}:tickets").await.unwrap(), 1000);
    let first: String = r.lindex("event:{1}:tickets", 0).await.unwrap();
    let last: String = r.lindex("event:{1}:tickets", -1).await.unwrap();
    assert_eq!((first.as_str(), last.as_str()), ("1-000001", "1-001000"));

    // Sell one by hand through the ledger, as the service would.
    let t: String = r.lpop("event:{1}:tickets", None).await.unwrap();
    let _: () = r
        .hset("event:{1}:sold", (t.as_str(), "x:1 0"))
        .await
        .unwrap();

    let out = seed(&url, &["--events", "1=50"]);
    assert!(
        out.contains("event 1: exists already (1000 tickets), left as it is"),
        "{out}"
    );
    assert_eq!(
        r.llen::<u64, _>("event:{1}:tickets").await.unwrap(),
        999,
        "nothing re-seeded"
    );
    assert_eq!(
        r.hlen::<u64, _>("event:{1}:sold").await.unwrap(),
        1,
        "ledger kept"
    );

    let out = seed(&url, &["--events", "1=50", "--reset"]);
    assert!(out.contains("event 1: reset to 50 tickets"), "{out}");
    assert_eq!(r.llen::<u64, _>("event:{1}:tickets").await.unwrap(), 50);
    assert_eq!(
        r.hlen::<u64, _>("event:{1}:sold").await.unwrap(),
        0,
        "ledger cleared"
    );
    assert_eq!(r.hget::<u64, _, _>("events", "1").await.unwrap(), 50);
    assert_eq!(
        r.ttl::<i64, _>("event:{1}:tickets").await.unwrap(),
        -1,
        "pool never expires"
    );
    let keys: Vec<String> = r
        .custom(fred::cmd!("KEYS"), vec!["event:{1}:seed:*"])
        .await
        .unwrap();
    assert!(keys.is_empty(), "no temporary key left: {keys:?}");

    let out = seed(&url, &["--events", "empty=0"]);
    assert!(out.contains("created with 0 tickets"), "{out}");
}

#[tokio::test]
async fn a_million_tickets_seed_quickly() {
    let redis = RedisServer::start();
    let out = seed(&redis.url(), &["--events", "big=1000000"]);
    assert!(out.contains("created with 1000000 tickets"), "{out}");
    let r = redis.client().await;
    assert_eq!(
        r.llen::<u64, _>("event:{big}:tickets").await.unwrap(),
        1_000_000
    );
}

#[test]
fn bad_configuration_exits_64_with_one_line() {
    for (args, needle) in [
        (&["--events", "1=x"][..], "--events"),
        (&["--events", "a{b=1"][..], "--events"),
        (&["--redis-url", "http://x"][..], "--redis-url"),
        (&["--listen", "nowhere"][..], "--listen"),
        (&["--redis-timeout", "soon"][..], "--redis-timeout"),
        (&["--store", "disk"][..], "--store"),
    ] {
        let out = run_binary(args);
        assert_eq!(out.status.code(), Some(64), "{args:?}: {out:?}");
        let err = String::from_utf8(out.stderr).unwrap();
        assert_eq!(err.trim_end().lines().count(), 1, "{args:?}: {err}");
        assert!(err.contains(needle), "{args:?}: {err}");
    }
    let help = run_binary(&["--help"]);
    assert!(help.status.success());
    let text = String::from_utf8(help.stdout).unwrap();
    for flag in [
        "--listen",
        "--redis-url",
        "--events",
        "--store",
        "--redis-pool-size",
        "--redis-timeout",
        "TICKETD_LISTEN",
        "REDIS_URL",
    ] {
        assert!(text.contains(flag), "--help lacks {flag}");
    }
}
