//! Reserve upkeep is per event: one event whose keys Redis refuses (a damaged key) does not
//! stop the lease renewal and top-up of the others, also when one claim call carries them all
//! (a single Redis): the failed call is sent again one event at a time.

mod support;

use std::time::{Duration, Instant};

use fred::prelude::*;
use hyper::StatusCode;
use support::{Conn, RedisServer, TicketdProcess};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_failing_event_does_not_stop_the_others_leases() {
    let redis = RedisServer::start();
    let t = TicketdProcess::on_redis(
        &redis,
        "bad=1000,good=1000",
        &["--fallback-reserve", "100", "--reserve-lease", "2s"],
    )
    .await;
    t.wait_until(
        |a| {
            let r = &a.json()["fallback"]["reserved"];
            r["bad"] == 100 && r["good"] == 100
        },
        "/metrics?format=json",
    )
    .await;
    let instance = std::fs::read_to_string(t.journal.join("instance")).unwrap();
    let r = redis.client().await;
    // claim.lua's ZADD on this key fails with WRONGTYPE at every heartbeat from now on.
    let _: () = r.del("event:{bad}:leases").await.unwrap();
    let _: () = r
        .set("event:{bad}:leases", "damaged", None, None, false)
        .await
        .unwrap();
    let lease = || async {
        let score: Option<f64> = r
            .custom(
                fred::cmd!("ZSCORE"),
                vec!["event:{good}:leases".to_owned(), instance.clone()],
            )
            .await
            .unwrap();
        score.expect("good has a lease")
    };
    let before = lease().await;
    // A heartbeat is 400 ms here: the good event's lease is renewed within a few of them.
    let deadline = Instant::now() + Duration::from_secs(5);
    while lease().await <= before {
        assert!(
            Instant::now() < deadline,
            "the good event's lease was not renewed:\n{}",
            t.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The failing event is logged.
    t.wait_for_log("the other events go on").await;
}

/// A claim of several events that fails in one event's part has done the parts before it: a
/// reserve list Redis changed there must still reach the instance, though its length looks
/// unchanged when the event is claimed again alone. Here event one's reserve went back to
/// the pool in Redis (as an operator's release would put it); the failing call refills it with
/// other tickets, and the retry alone then finds the length the instance believes, but a newer
/// generation of the list than the one it acted on. Without the whole list on that retry, the
/// instance would go on holding the old tickets, which Redis has back in its pool, and sell
/// them during an outage: each to a second buyer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reserve_changed_by_a_failed_claim_of_several_events_still_reaches_the_instance() {
    let redis = RedisServer::start();
    let t = TicketdProcess::on_redis(
        &redis,
        "one=1000,two=1000",
        &["--fallback-reserve", "100", "--reserve-lease", "3s"],
    )
    .await;
    t.wait_until(
        |a| {
            let r = &a.json()["fallback"]["reserved"];
            r["one"] == 100 && r["two"] == 100
        },
        "/metrics?format=json",
    )
    .await;
    let instance = std::fs::read_to_string(t.journal.join("instance")).unwrap();
    let r = redis.client().await;
    let reserve = format!("event:{{one}}:reserve:{instance}");
    // Every call of both events now fails in two's part, after one's (catalogue order).
    let _: () = r.del("event:{two}:leases").await.unwrap();
    let _: () = r
        .set("event:{two}:leases", "damaged", None, None, false)
        .await
        .unwrap();
    t.wait_for_log("the other events go on").await;
    let old: Vec<String> = r.lrange(&reserve, 0, -1).await.unwrap();
    assert_eq!(old.len(), 100);
    let _: () = r.del(&reserve).await.unwrap();
    let _: () = r.rpush("event:{one}:tickets", old.clone()).await.unwrap();
    let _: i64 = r.decr_by("event:{one}:reserved", 100).await.unwrap();
    // The next failing call refills the reserve from the head of the pool.
    let deadline = Instant::now() + Duration::from_secs(10);
    let new: Vec<String> = loop {
        let list: Vec<String> = r.lrange(&reserve, 0, -1).await.unwrap();
        if list.len() == 100 {
            break list;
        }
        assert!(Instant::now() < deadline, "the reserve was not refilled");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(
        new.iter().all(|t| !old.contains(t)),
        "refilled with other tickets"
    );
    // Two more rounds: the retry alone of the round that refilled, and one after it.
    let lease = || async {
        let score: Option<f64> = r
            .custom(
                fred::cmd!("ZSCORE"),
                vec!["event:{one}:leases".to_owned(), instance.clone()],
            )
            .await
            .unwrap();
        score.expect("one has a lease")
    };
    for _ in 0..2 {
        let before = lease().await;
        let deadline = Instant::now() + Duration::from_secs(5);
        while lease().await <= before {
            assert!(Instant::now() < deadline, "no renewal:\n{}", t.log_text());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    // An outage: the instance sells from what it believes is its reserve.
    redis.signal("STOP");
    let mut c = Conn::open(t.addr).await.unwrap();
    let mut sold = Vec::new();
    for _ in 0..5 {
        let a = tokio::time::timeout(Duration::from_secs(5), c.buy("one"))
            .await
            .expect("answered")
            .unwrap();
        assert_eq!(a.status, StatusCode::OK, "{}", a.text());
        sold.push(a.json()["ticket"].as_str().unwrap().to_owned());
    }
    redis.signal("CONT");
    for ticket in &sold {
        assert!(
            new.contains(ticket),
            "{ticket} sold from the reserve is not in it (it is back in Redis's pool: {})",
            old.contains(ticket)
        );
    }
}
