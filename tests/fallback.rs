//! The fallback against a real redis-server that is killed, restarted and paused: every request
//! gets an answer, no ticket goes to two buyers, every ticket a buyer received is in the ledger,
//! and ledger + pool + reserves == capacity, with one instance or two, and when an instance
//! crashes.

mod support;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hyper::StatusCode;
use support::load::{buy_until_sold_out, Tally};
use support::{ledger, Conn, RedisServer, Ticketd, TicketdProcess};

const EVENTS: [(&str, u64); 4] = [("a", 1500), ("b", 1500), ("c", 1000), ("d", 1000)];

fn events_flag() -> String {
    support::events_flag(&EVENTS)
}

fn event_ids() -> Vec<String> {
    EVENTS.iter().map(|e| e.0.to_owned()).collect()
}

async fn start(redis: &RedisServer, reserve: &str) -> Ticketd {
    let t = Ticketd::on_redis(
        redis,
        &events_flag(),
        &[
            "--fallback-reserve",
            reserve,
            "--reserve-lease",
            "3s",
            "--redis-timeout",
            "250ms",
        ],
    )
    .await;
    t.wait_ready().await;
    // Reserves claimed for every event before the load starts.
    let want: u64 = reserve.parse().unwrap();
    t.wait_until(
        |a| {
            EVENTS
                .iter()
                .all(|(id, _)| a.json()["fallback"]["reserved"][id].as_u64() == Some(want))
        },
        "/metrics?format=json",
    )
    .await;
    t
}

/// No ticket twice across all buyers; returns the tickets per event.
fn unique_tickets(tally: &Tally) -> HashMap<String, HashSet<String>> {
    let mut by_event: HashMap<String, HashSet<String>> = HashMap::new();
    for (event, ticket) in tally.sold() {
        assert!(
            ticket.starts_with(&format!("{event}-")),
            "{ticket} of {event}"
        );
        assert!(
            by_event.entry(event).or_default().insert(ticket.clone()),
            "ticket {ticket} went to two buyers"
        );
    }
    by_event
}

fn assert_answers(tally: &Tally) {
    assert_eq!(
        tally.connection_errors, 0,
        "every request gets an HTTP answer"
    );
    assert_eq!(
        tally.unfinished, 0,
        "every buyer saw every event sold out in time"
    );
    for a in &tally.answers {
        assert!(
            matches!(
                a.1,
                StatusCode::OK | StatusCode::CONFLICT | StatusCode::SERVICE_UNAVAILABLE
            ),
            "unexpected answer {:?}",
            a
        );
    }
}

/// Outage under load, through `instances` ticketd processes on one Redis.
async fn outage_under_load(instances: usize) {
    let mut redis = RedisServer::start();
    let mut servers = Vec::new();
    // Reserves are claimed only while the pool holds more than four reserves' worth.
    let reserve = if instances == 1 { "200" } else { "100" };
    for _ in 0..instances {
        servers.push(start(&redis, reserve).await);
    }
    let addrs = servers.iter().map(|t| t.addr).collect();
    let sold = Arc::new(AtomicU64::new(0));
    let load = tokio::spawn(buy_until_sold_out(
        addrs,
        event_ids(),
        2000,
        Duration::from_secs(90),
        Duration::from_millis(20),
        sold.clone(),
    ));
    let deadline = Instant::now() + Duration::from_secs(30);
    while sold.load(Ordering::Relaxed) < 1500 {
        assert!(Instant::now() < deadline, "load never got going");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    redis.kill(); // SIGKILL mid-load
    let at_kill = sold.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let during = sold.load(Ordering::Relaxed) - at_kill;
    redis.start_again(); // same port and directory: the AOF brings the data back
    let tally = tokio::time::timeout(Duration::from_secs(120), load)
        .await
        .expect("bounded")
        .unwrap();

    assert_answers(&tally);
    assert!(
        during > 0,
        "sales went on from the reserves while Redis was down"
    );
    let received = unique_tickets(&tally);
    let total: u64 = EVENTS.iter().map(|e| e.1).sum();
    assert_eq!(
        tally.sold().len() as u64,
        total,
        "everything sold in the end, exactly once"
    );

    let mut activations = 0;
    for t in &servers {
        t.wait_until(
            |a| a.json()["fallback"]["active"] == false,
            "/metrics?format=json",
        )
        .await;
        let m = t.metrics_json().await;
        activations += m["fallback"]["activations"].as_u64().unwrap();
        assert_eq!(m["fallback"]["conflicts"], 0, "{m}");
    }
    assert!(activations >= 1, "the outage switched to the fallback");

    let r = redis.client().await;
    // Purchases cut off by the kill are made void in the background; wait for the ledger to
    // match the answers exactly.
    let deadline = Instant::now() + Duration::from_secs(20);
    for (id, cap) in EVENTS {
        let got = received.get(id).cloned().unwrap_or_default();
        loop {
            let s = ledger::check(&r, id, cap, &got).await;
            if s.sold.len() == got.len() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "event {id}: ledger {} != received {}",
                s.sold.len(),
                got.len()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    for t in servers {
        t.stop().await; // graceful: reserves go back
    }
    for (id, cap) in EVENTS {
        let s = ledger::check(&r, id, cap, &received[id]).await;
        assert_eq!(
            s.reserved(),
            0,
            "event {id}: graceful stop handed every reserve back"
        );
        assert_eq!(s.sold.len() as u64 + s.pool.len() as u64, cap);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_under_load_one_instance() {
    outage_under_load(1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_under_load_two_instances() {
    outage_under_load(2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_instance_reserve_returns_after_its_lease() {
    let redis = RedisServer::start();
    let url = redis.url();
    let flags = [
        "--store",
        "redis",
        "--redis-url",
        &url,
        "--events",
        "x=1000",
        "--fallback-reserve",
        "100",
        "--reserve-lease",
        "2s",
    ];
    let victim = TicketdProcess::spawn(&flags, &[]).await;
    let survivor = Ticketd::start(&flags).await;
    survivor.wait_ready().await;
    let claimed = |a: &support::Answer| a.json()["fallback"]["reserved"]["x"] == 100;
    survivor.wait_until(claimed, "/metrics?format=json").await;
    support::ticketd::wait_until(victim.addr, claimed, "/metrics?format=json").await;
    victim.signal("KILL");

    let sold = Arc::new(AtomicU64::new(0));
    let tally = buy_until_sold_out(
        vec![survivor.addr],
        vec!["x".into()],
        8,
        Duration::from_secs(60),
        Duration::from_millis(50),
        sold,
    )
    .await;
    assert_answers(&tally);
    let received = unique_tickets(&tally);
    assert_eq!(
        received["x"].len(),
        1000,
        "every ticket, the dead instance's reserve included, was sold"
    );
    let m = survivor.metrics_json().await;
    assert!(
        m["fallback"]["reserves_reaped"].as_u64().unwrap() >= 1,
        "{m}"
    );
    let r = redis.client().await;
    let s = ledger::check(&r, "x", 1000, &received["x"]).await;
    assert_eq!(s.sold.len(), 1000);
    survivor.stop().await;
}

#[tokio::test]
async fn no_redis_at_start_runs_standalone_and_sells_exactly_the_capacity() {
    let nobody = format!("redis://127.0.0.1:{}", support::redis::free_port());
    let t = TicketdProcess::spawn(
        &[
            "--redis-url",
            &nobody,
            "--connect-timeout",
            "300ms",
            "--events",
            "z=50",
        ],
        &[],
    )
    .await;
    let mut c = Conn::open(t.addr).await.unwrap();
    let mut tickets = HashSet::new();
    let mut sold_out = 0;
    for _ in 0..60 {
        let a = c.buy("z").await.unwrap();
        match a.status {
            StatusCode::OK => {
                assert!(tickets.insert(a.json()["ticket"].as_str().unwrap().to_owned()))
            }
            StatusCode::CONFLICT => sold_out += 1,
            s => panic!("{s}"),
        }
    }
    assert_eq!((tickets.len(), sold_out), (50, 10));
    let log = t.log_text();
    assert!(
        log.contains("IN-MEMORY MODE"),
        "a loud warning says nothing is persisted:\n{log}"
    );
    assert!(log.contains("did not answer"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_redis_falls_back_within_the_timeout() {
    let redis = RedisServer::start();
    let t = Ticketd::on_redis(
        &redis,
        "s=2000",
        &[
            "--fallback-reserve",
            "200",
            "--reserve-lease",
            "5s",
            "--redis-timeout",
            "200ms",
        ],
    )
    .await;
    t.wait_ready().await;
    t.wait_until(
        |a| a.json()["fallback"]["reserved"]["s"] == 200,
        "/metrics?format=json",
    )
    .await;
    let mut c = Conn::open(t.addr).await.unwrap();
    let first = c.buy("s").await.unwrap();
    assert_eq!(first.status, StatusCode::OK);
    let mut received = HashSet::new();
    received.insert(first.json()["ticket"].as_str().unwrap().to_owned());

    redis.signal("STOP"); // Redis accepts nothing and answers nothing
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let addr = t.addr;
            tokio::spawn(async move {
                let mut c = Conn::open(addr).await.unwrap();
                let mut got = Vec::new();
                for _ in 0..5 {
                    let started = Instant::now();
                    let a = tokio::time::timeout(Duration::from_secs(3), c.buy("s"))
                        .await
                        .expect("no request hangs")
                        .unwrap();
                    got.push((
                        a.status,
                        a.json()["ticket"].as_str().map(str::to_owned),
                        started.elapsed(),
                    ));
                }
                got
            })
        })
        .collect();
    let mut slowest = Duration::ZERO;
    for task in tasks {
        for (status, ticket, took) in task.await.unwrap() {
            assert_eq!(status, StatusCode::OK, "served from the reserve");
            assert!(received.insert(ticket.unwrap()), "no ticket twice");
            slowest = slowest.max(took);
        }
    }
    // The first requests wait out the 200 ms timeout once; the rest skip Redis.
    assert!(
        slowest < Duration::from_millis(1500),
        "fell back within the timeout, not queued: {slowest:?}"
    );
    let m = t.metrics_json().await;
    assert_eq!(m["fallback"]["active"], true);
    assert!(
        m["paths"]["fallback"]["sold"].as_u64().unwrap() >= 99,
        "{m}"
    );

    redis.signal("CONT");
    t.wait_until(
        |a| a.json()["fallback"]["active"] == false,
        "/metrics?format=json",
    )
    .await;
    let r = redis.client().await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let s = ledger::check(&r, "s", 2000, &received).await;
        if s.sold.len() == received.len() {
            break; // the calls queued while Redis was paused were made void
        }
        assert!(
            Instant::now() < deadline,
            "ledger {} != received {}",
            s.sold.len(),
            received.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    t.stop().await;
}
