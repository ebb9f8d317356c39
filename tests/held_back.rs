//! Held-back reserves as an operator sees them: an instance crashes while Redis is healthy,
//! another holds its reserve back (metric, log line), `ticketd reserves` lists it, and
//! `ticketd reserves release` puts it back on sale only when confirmed.

mod support;

use std::collections::HashSet;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use support::load::buy_until_sold_out;
use support::ticketd::run_binary;
use support::{ledger, RedisServer, TicketdProcess};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_lists_and_releases_a_held_back_reserve() {
    let redis = RedisServer::start();
    let url = redis.url();
    let flags = ["--fallback-reserve", "100", "--reserve-lease", "1s"];
    let victim = TicketdProcess::on_redis(&redis, "h=1000", &flags).await;
    let survivor = TicketdProcess::on_redis(&redis, "h=1000", &flags).await;
    let claimed = |a: &support::Answer| a.json()["fallback"]["reserved"]["h"] == 100;
    victim.wait_until(claimed, "/metrics?format=json").await;
    survivor.wait_until(claimed, "/metrics?format=json").await;
    let instance = std::fs::read_to_string(victim.journal.join("instance")).unwrap();
    victim.signal("KILL");

    survivor
        .wait_until(
            |a| a.json()["fallback"]["quarantined"]["h"] == 100,
            "/metrics?format=json",
        )
        .await;
    survivor.wait_for_log("HELD BACK the reserve").await;
    let listed = run_binary(&["reserves", "--redis-url", &url]);
    let out = String::from_utf8_lossy(&listed.stdout);
    assert!(listed.status.success(), "{out}");
    let line = out
        .lines()
        .find(|l| l.contains(&instance))
        .unwrap_or_else(|| panic!("the victim is listed: {out}"));
    assert!(line.contains("100") && line.contains("HELD BACK"), "{line}");
    assert!(out.contains("100 tickets held back"), "{out}");

    let release = |yes: bool| {
        let mut args = vec![
            "reserves",
            "release",
            "--redis-url",
            &url,
            "--event",
            "h",
            "--instance",
            &instance,
        ];
        if yes {
            args.push("--yes");
        }
        run_binary(&args)
    };
    // Without --yes: the warning, and nothing done.
    let refused = release(false);
    assert_eq!(refused.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("WARNING"));
    let r = redis.client().await;
    assert_eq!(ledger::read(&r, "h").await.held_back(), 100);

    let released = release(true);
    assert!(
        released.status.success(),
        "{}",
        String::from_utf8_lossy(&released.stderr)
    );
    assert!(String::from_utf8_lossy(&released.stdout).contains("100 tickets"));
    // Releasing again finds nothing held back.
    let again = release(true);
    assert_eq!(again.status.code(), Some(1));

    // Every ticket is for sale again, and sells once.
    let tally = buy_until_sold_out(
        vec![survivor.addr],
        vec!["h".into()],
        8,
        Duration::from_secs(60),
        Duration::from_millis(50),
        Arc::new(AtomicU64::new(0)),
    )
    .await;
    let mut received = HashSet::new();
    for (_, ticket) in tally.sold() {
        assert!(received.insert(ticket.clone()), "{ticket} sold twice");
    }
    let s = ledger::check(&r, "h", 1000, &received).await;
    assert_eq!(s.held_back(), 0);
    assert_eq!(received.len(), 1000);
}
