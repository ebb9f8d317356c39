//! Reserve upkeep is per event: one event whose keys Redis refuses (a damaged key) does not
//! stop the lease renewal and top-up of the others, also when one claim call carries them all
//! (a single Redis): the failed call is sent again one event at a time.

mod support;

use std::time::{Duration, Instant};

use fred::prelude::*;
use support::{RedisServer, TicketdProcess};

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
