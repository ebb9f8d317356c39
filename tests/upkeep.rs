//! Reserve upkeep is per event: one event whose keys Redis refuses (a damaged key) does not
//! stop the lease renewal and top-up of the others, also when one claim call carries them all
//! (a single Redis): the failed call is sent again one event at a time (and the event that
//! failed alone is claimed alone from then on), and whatever the failed call changed in the
//! reserves before the error reaches the instance.

mod support;

use std::time::{Duration, Instant};

use fred::prelude::*;
use hyper::StatusCode;
use support::{Conn, RedisServer, TicketdProcess};

/// A ticketd with reserves of 100 of `good` and `bad` (1000 tickets each; a heartbeat every
/// fifth of `lease`). Returns the instance id too.
async fn two_events(
    redis: &RedisServer,
    good: &str,
    bad: &str,
    lease: &str,
) -> (TicketdProcess, String) {
    let t = TicketdProcess::on_redis(
        redis,
        &format!("{good}=1000,{bad}=1000"),
        &["--fallback-reserve", "100", "--reserve-lease", lease],
    )
    .await;
    t.wait_until(
        |a| {
            let r = &a.json()["fallback"]["reserved"];
            r[good] == 100 && r[bad] == 100
        },
        "/metrics?format=json",
    )
    .await;
    let instance = std::fs::read_to_string(t.journal.join("instance")).unwrap();
    (t, instance)
}

/// Damages `event`'s leases key: claim.lua's `ZADD` on it fails with `WRONGTYPE` at every
/// heartbeat from then on.
const DAMAGE: &str = "redis.call('DEL', KEYS[1]); redis.call('SET', KEYS[1], 'damaged')";

/// Waits, within a few heartbeats, until `instance` renews its lease on `event`.
async fn renewed(r: &Client, t: &TicketdProcess, event: &str, instance: &str) {
    let lease = || async {
        let score: Option<f64> = r
            .custom(
                fred::cmd!("ZSCORE"),
                vec![format!("event:{{{event}}}:leases"), instance.to_owned()],
            )
            .await
            .unwrap();
        score.unwrap_or_else(|| panic!("{event} has a lease"))
    };
    let before = lease().await;
    let deadline = Instant::now() + Duration::from_secs(5);
    while lease().await <= before {
        assert!(
            Instant::now() < deadline,
            "{event}'s lease was not renewed:\n{}",
            t.log_text()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_failing_event_does_not_stop_the_others_leases() {
    let redis = RedisServer::start();
    let (t, instance) = two_events(&redis, "good", "bad", "2s").await;
    let r = redis.client().await;
    let _: () = r
        .eval(DAMAGE, vec!["event:{bad}:leases"], Vec::<String>::new())
        .await
        .unwrap();
    renewed(&r, &t, "good", &instance).await;
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
    let (t, instance) = two_events(&redis, "one", "two", "3s").await;
    let r = redis.client().await;
    let reserve = format!("event:{{one}}:reserve:{instance}");
    let old: Vec<String> = r.lrange(&reserve, 0, -1).await.unwrap();
    assert_eq!(old.len(), 100);
    // At once, between two heartbeats: one's reserve goes back to the pool, and two's leases
    // key is damaged, so the next call of both events fails in two's part, after one's
    // (catalogue order), which refills one's reserve from the head of the pool. (From then on
    // two is claimed alone.)
    let back = format!(
        "local ids = redis.call('LRANGE', KEYS[1], 0, -1); redis.call('DEL', KEYS[1]); \
         redis.call('RPUSH', KEYS[2], unpack(ids)); redis.call('DECRBY', KEYS[3], #ids); \
         {}",
        DAMAGE.replace("KEYS[1]", "KEYS[4]")
    );
    let _: () = r
        .eval(
            back,
            vec![
                reserve.clone(),
                "event:{one}:tickets".into(),
                "event:{one}:reserved".into(),
                "event:{two}:leases".into(),
            ],
            Vec::<String>::new(),
        )
        .await
        .unwrap();
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
    for _ in 0..2 {
        renewed(&r, &t, "one", &instance).await;
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
