//! The fallback against a real redis-server that is killed, restarted and paused, with ticketd
//! instances as real processes that are killed, paused and restarted on their journal: every
//! request gets an answer, no ticket goes to two buyers, every ticket a buyer received is in the
//! ledger, and ledger + pool + reserves (live or held back) == capacity.

mod support;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fred::interfaces::ClientLike;
use hyper::StatusCode;
use support::load::{buy_until_sold_out, Tally};
use support::{ledger, Conn, RedisServer, TicketdProcess};

const EVENTS: [(&str, u64); 4] = [("a", 1500), ("b", 1500), ("c", 1000), ("d", 1000)];

fn events_flag() -> String {
    support::events_flag(&EVENTS)
}

fn event_ids() -> Vec<String> {
    EVENTS.iter().map(|e| e.0.to_owned()).collect()
}

async fn start(redis: &RedisServer, reserve: &str) -> TicketdProcess {
    let t = TicketdProcess::on_redis(
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
    for mut t in servers {
        t.stop(); // graceful: reserves go back
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

/// Two instances on `redis` selling `event` (1000 tickets) with reserves of 100 and `lease`,
/// each with every reserve claimed.
async fn two_instances(
    redis: &RedisServer,
    event: &str,
    lease: &str,
) -> (TicketdProcess, TicketdProcess) {
    let events = format!("{event}=1000");
    let flags = [
        "--fallback-reserve",
        "100",
        "--reserve-lease",
        lease,
        "--redis-timeout",
        "250ms",
    ];
    let a = TicketdProcess::on_redis(redis, &events, &flags).await;
    let b = TicketdProcess::on_redis(redis, &events, &flags).await;
    let claimed = |x: &support::Answer| x.json()["fallback"]["reserved"][event] == 100;
    for t in [&a, &b] {
        t.wait_ready().await;
        t.wait_until(claimed, "/metrics?format=json").await;
    }
    (a, b)
}

/// Buys `n` tickets of `event` on `addr`, one connection; every answer must be 200.
async fn buy_n(addr: std::net::SocketAddr, event: &str, n: usize) -> HashSet<String> {
    let mut c = Conn::open(addr).await.unwrap();
    let mut got = HashSet::new();
    for _ in 0..n {
        let a = tokio::time::timeout(Duration::from_secs(5), c.buy(event))
            .await
            .expect("answered")
            .unwrap();
        assert_eq!(a.status, StatusCode::OK, "{:?}", a.json());
        assert!(got.insert(a.json()["ticket"].as_str().unwrap().to_owned()));
    }
    got
}

async fn sell_out(addrs: Vec<std::net::SocketAddr>, event: &str) -> Tally {
    buy_until_sold_out(
        addrs,
        vec![event.into()],
        8,
        Duration::from_secs(60),
        Duration::from_millis(50),
        Arc::new(AtomicU64::new(0)),
    )
    .await
}

/// The crash the lease used to get wrong: an instance sells from its reserve during an outage
/// and is SIGKILLed before it can settle. Its reserve is held back, never returned to the pool,
/// so nobody resells what it sold; restarted on its journal, it settles those sales, takes its
/// reserve back and hands the rest back at its graceful stop. Every ticket is sold exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_killed_during_an_outage_loses_and_doubles_nothing() {
    let redis = RedisServer::start();
    let (mut victim, survivor) = two_instances(&redis, "x", "2s").await;

    redis.signal("STOP");
    let during = buy_n(victim.addr, "x", 30).await; // from the victim's reserve, journaled
    victim.signal("KILL");
    redis.signal("CONT");

    // The survivor sells everything but the victim's reserve, which it holds back.
    let first = sell_out(vec![survivor.addr], "x").await;
    assert_answers(&first);
    // Within one refresh of the remaining snapshot (--metrics-refresh) after the hold-back.
    survivor
        .wait_until(
            |a| a.json()["fallback"]["quarantined"]["x"] == 100,
            "/metrics?format=json",
        )
        .await;
    let m = survivor.metrics_json().await;
    assert!(
        m["fallback"]["reserves_held_back"].as_u64().unwrap() >= 1,
        "{m}"
    );
    let text = support::http::request(survivor.addr, hyper::Method::GET, "/metrics").await;
    assert!(
        String::from_utf8_lossy(&text.body)
            .contains("ticketd_tickets_quarantined{event=\"x\"} 100"),
        "the gauge shows the held-back tickets"
    );
    let r = redis.client().await;
    let mut received: HashSet<String> = during.clone();
    for (_, ticket) in first.sold() {
        assert!(received.insert(ticket.clone()), "{ticket} sold twice");
    }
    // All but the victim's 70 unsold, less what its cut-off Redis call sold to nobody (Redis
    // ran it after the kill): that call's void is in the victim's journal.
    assert!(
        (925..=930).contains(&received.len()),
        "all but the victim's unsold 70: {}",
        received.len()
    );

    // The victim comes back on its journal: it settles its 30 sales and takes its reserve back.
    victim.restart().await;
    victim.wait_ready().await;
    victim
        .wait_for_log("previous run left work to settle")
        .await;
    let s = ledger::check(&r, "x", 1000, &received).await;
    assert_eq!(s.held_back(), 0, "the owner took its reserve back");
    victim.stop(); // hands the 70 unsold tickets back to the pool
                   // The survivor answered sold out from memory since it sold out: the tickets another
                   // instance handed back are on sale there again within one refresh of its snapshot.
    let deadline = std::time::Instant::now() + support::WAIT;
    loop {
        let m = survivor.metrics_json().await;
        if m["events"]["x"]["remaining"].as_u64() > Some(0) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{m}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let last = sell_out(vec![survivor.addr], "x").await;
    assert_answers(&last);
    for (_, ticket) in last.sold() {
        assert!(received.insert(ticket.clone()), "{ticket} sold twice");
    }
    assert_eq!(received.len(), 1000, "every ticket sold, once");
    let s = ledger::check(&r, "x", 1000, &received).await;
    assert_eq!(s.sold.len(), 1000);
    assert_eq!(survivor.metrics_json().await["fallback"]["conflicts"], 0);
}

/// The stall the lease watch used to get wrong: right after a Redis outage, one instance stops
/// for half a lease. The other must not count its own outage as time it watched the stalled
/// instance's lease, and whatever it does with that lease, no ticket is sold twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_stalled_after_an_outage_keeps_its_reserve() {
    let redis = RedisServer::start();
    let (stalled, other) = two_instances(&redis, "y", "3s").await;
    redis.signal("STOP");
    let mut received = buy_n(stalled.addr, "y", 40).await;
    received.extend(buy_n(other.addr, "y", 40).await);
    tokio::time::sleep(Duration::from_millis(2500)).await; // the outage lasts 2.5 s
    redis.signal("CONT");
    stalled.signal("STOP");
    // The other instance recovers and sells while the stalled one is stopped.
    other
        .wait_until(
            |a| a.json()["fallback"]["active"] == false,
            "/metrics?format=json",
        )
        .await;
    let sold_meanwhile = buy_n(other.addr, "y", 100).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stalled.signal("CONT");
    for t in sold_meanwhile {
        assert!(received.insert(t.clone()), "{t} sold twice");
    }
    let rest = sell_out(vec![stalled.addr, other.addr], "y").await;
    assert_answers(&rest);
    for (_, ticket) in rest.sold() {
        assert!(received.insert(ticket.clone()), "{ticket} sold twice");
    }
    assert_eq!(received.len(), 1000, "every ticket sold, once");
    let r = redis.client().await;
    let s = ledger::check(&r, "y", 1000, &received).await;
    assert_eq!(s.sold.len(), 1000);
    for t in [&stalled, &other] {
        assert_eq!(t.metrics_json().await["fallback"]["conflicts"], 0);
    }
}

/// No Redis configured at all: the in-memory mode, said loudly.
#[tokio::test]
async fn no_redis_configured_runs_in_memory_and_sells_exactly_the_capacity() {
    let t = TicketdProcess::spawn(&["--events", "z=50"], &[]).await;
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
    // A loud warning says nothing is persisted, and why.
    let log = t.wait_for_log("IN-MEMORY MODE").await;
    assert!(log.contains("no Redis configured"), "{log}");
}

/// A Redis that is configured but not up yet (the default `--store auto`): 503 meanwhile,
/// never a sale from memory, and normal sales from Redis once it is up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_redis_gets_503_meanwhile_never_memory_sales() {
    let port = support::redis::free_port();
    let url = format!("redis://127.0.0.1:{port}");
    let t = TicketdProcess::spawn(
        &[
            "--redis-url",
            &url,
            "--connect-timeout",
            "300ms",
            "--events",
            "late=5",
            "--fallback-reserve",
            "0",
        ],
        &[],
    )
    .await;
    let mut c = Conn::open(t.addr).await.unwrap();
    for _ in 0..3 {
        let a = c.buy("late").await.unwrap();
        assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE, "{:?}", a.json());
        assert!(a.headers.contains_key("retry-after"));
    }
    assert_eq!(
        support::http::request(t.addr, hyper::Method::GET, "/readyz")
            .await
            .status,
        StatusCode::SERVICE_UNAVAILABLE
    );
    let log = t.wait_for_log("cannot reach Redis").await;
    assert!(!log.contains("IN-MEMORY MODE"), "{log}");
    assert!(log.contains("refused"), "the log says why: {log}");

    let redis = RedisServer::start_on(port);
    t.wait_ready().await;
    // The catalogue is prepared in the background once Redis answers.
    let deadline = Instant::now() + support::WAIT;
    let first = loop {
        let a = c.buy("late").await.unwrap();
        if a.status == StatusCode::OK {
            break a;
        }
        assert!(
            Instant::now() < deadline,
            "never sold from Redis: {:?}",
            a.json()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let ticket = first.json()["ticket"].as_str().unwrap().to_owned();
    let r = redis.client().await;
    let s = ledger::check(&r, "late", 5, &HashSet::from([ticket])).await;
    assert_eq!(s.sold.len(), 1, "the sale is in Redis, not in memory");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_redis_falls_back_within_the_timeout() {
    let redis = RedisServer::start();
    let mut t = TicketdProcess::on_redis(
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
    // The calls queued while Redis was paused were made void.
    wait_for_ledger(&redis, "s", 2000, &received).await;
    t.stop();
}

/// ticketd on `redis` selling `event` (1,000 tickets) with a reserve of 50, claimed before it
/// returns, and `--redis-timeout timeout`.
async fn with_small_reserve(redis: &RedisServer, event: &str, timeout: &str) -> TicketdProcess {
    let events = format!("{event}=1000");
    let flags = ["--fallback-reserve", "50", "--reserve-lease", "5s"];
    let mut args = flags.to_vec();
    args.extend(["--redis-timeout", timeout]);
    let t = TicketdProcess::on_redis(redis, &events, &args).await;
    t.wait_ready().await;
    t.wait_until(
        |a| a.json()["fallback"]["reserved"][event] == 50,
        "/metrics?format=json",
    )
    .await;
    t
}

/// Waits (bounded) until the ledger of `event` holds exactly the `received` tickets (calls of
/// unknown outcome made void, reserve sales settled), with no ticket twice.
async fn wait_for_ledger(
    redis: &RedisServer,
    event: &str,
    capacity: u64,
    received: &HashSet<String>,
) {
    let r = redis.client().await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let s = ledger::check(&r, event, capacity, received).await;
        if s.sold.len() == received.len() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "ledger {} != received {}",
            s.sold.len(),
            received.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A purchase that times out while Redis is healthy again a moment later (paused shorter than
/// the probe that follows the timeout) does not open the breaker: the probe finds Redis
/// answering, and the purchase is sold in Redis on its second try. The fallback would be safe
/// for tickets, but would loosen limits and keys to one instance for nothing. The pause ends
/// as soon as the timeout is counted, well within the probe's bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timeout_redis_answers_right_after_does_not_open_the_breaker() {
    let m = stall_past_first_timeout("h", Duration::ZERO).await;
    assert!(m["redis"]["outages_unconfirmed"].as_u64() >= Some(1), "{m}");
}

/// A stall of a healthy Redis longer than two call timeouts (the timeout, then a probe bounded
/// like a call, would both expire in it) does not open the breaker either: the confirming probe
/// waits two call timeouts (`store::fallback::probe_bound`). The cluster chaos schedule at seed
/// 1431 saw such a stall on healthy primaries, and the breaker it opened let a repeated key buy
/// a second ticket. The pause is the fault itself, held 1.5 call timeouts past the first
/// timeout; it fails with the probe bounded by the call timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stall_longer_than_two_call_timeouts_does_not_open_the_breaker() {
    stall_past_first_timeout("s", Duration::from_millis(750)).await;
}

/// One ticketd (500 ms timeout) on a Redis that is SIGSTOPped while a purchase of `event` is
/// sent, until that purchase's timeout is counted and `hold` more (the fault itself), then
/// continued: the purchase must be sold in Redis with the breaker closed, and the timed-out
/// call made void. Returns the metrics after it.
async fn stall_past_first_timeout(event: &'static str, hold: Duration) -> serde_json::Value {
    let redis = RedisServer::start();
    let mut t = with_small_reserve(&redis, event, "500ms").await;
    let mut c = Conn::open(t.addr).await.unwrap();
    let first = c.buy(event).await.unwrap();
    assert_eq!(first.status, StatusCode::OK);
    let mut received = HashSet::from([first.json()["ticket"].as_str().unwrap().to_owned()]);

    redis.signal("STOP");
    let addr = t.addr;
    let stalled = tokio::spawn(async move {
        let mut c = Conn::open(addr).await.unwrap();
        tokio::time::timeout(Duration::from_secs(8), c.buy(event))
            .await
            .expect("no request hangs")
            .unwrap()
    });
    t.wait_until(
        |a| a.json()["redis"]["errors"]["timeout"].as_u64() >= Some(1),
        "/metrics?format=json",
    )
    .await;
    tokio::time::sleep(hold).await;
    redis.signal("CONT");
    let a = stalled.await.unwrap();
    assert_eq!(
        a.status,
        StatusCode::OK,
        "sold in Redis after the stall: {a:?}"
    );
    assert!(received.insert(a.json()["ticket"].as_str().unwrap().to_owned()));

    let m = t.metrics_json().await;
    assert_eq!(
        m["fallback"]["activations"], 0,
        "the breaker stayed closed: {m}"
    );
    assert_eq!(m["paths"]["fallback"]["sold"], 0, "{m}");
    // The timed-out call was made void.
    wait_for_ledger(&redis, event, 1000, &received).await;
    t.stop();
    m
}

/// Redis answering reads but no purchase (`CLIENT PAUSE WRITE`: the probe's read answers, the
/// purchase script waits) is an outage for buyers: the first timeout is forgiven once the
/// probe answers, the purchase's second try times out as well, and that opens the breaker, so
/// the buyer gets a reserve ticket instead of a 503 after three timeouts. (The probe's read
/// can also land on the connection whose purchase call is stuck and time out itself, which
/// opens the breaker at the first timeout; either way it opens on a timeout, before fred closes
/// the stuck connections as unresponsive. The rule alone is tested in `store::fallback`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_answering_reads_but_not_purchases_opens_the_breaker() {
    let redis = RedisServer::start();
    let mut t = with_small_reserve(&redis, "w", "300ms").await;
    let admin = redis.client().await;
    let client = |args: Vec<&'static str>| {
        let admin = admin.clone();
        async move {
            admin
                .custom::<fred::types::Value, _>(fred::cmd!("CLIENT"), args)
                .await
                .unwrap()
        }
    };
    client(vec!["PAUSE", "20000", "WRITE"]).await;
    let mut c = Conn::open(t.addr).await.unwrap();
    let a = tokio::time::timeout(Duration::from_secs(5), c.buy("w"))
        .await
        .expect("no request hangs")
        .unwrap();
    client(vec!["UNPAUSE"]).await;
    assert_eq!(a.status, StatusCode::OK, "sold from the reserve: {a:?}");
    // Opened by the purchase's second timeout, not later by fred closing the connection as
    // unresponsive (which reads as "not connected").
    let log = t.wait_for_log("REDIS FAILED").await;
    let tripped = log.lines().find(|l| l.contains("REDIS FAILED")).unwrap();
    assert!(
        tripped.contains("no answer from Redis within 300ms"),
        "{log}"
    );
    let m = t.metrics_json().await;
    assert_eq!(m["fallback"]["activations"], 1, "{m}");
    assert_eq!(m["paths"]["fallback"]["sold"], 1, "{m}");
    t.wait_until(
        |a| a.json()["fallback"]["active"] == false,
        "/metrics?format=json",
    )
    .await;
    // The reserve sale settled, the timed-out calls were made void.
    let received = HashSet::from([a.json()["ticket"].as_str().unwrap().to_owned()]);
    wait_for_ledger(&redis, "w", 1000, &received).await;
    t.stop();
}

/// An instance stopped for longer than its lease, while the other one sells the event out: the
/// stopped instance's reserve, with the tickets it sold before, is held back, never resold, and
/// comes back to it when it resumes; then the last tickets sell, each once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_stopped_past_its_lease_is_held_back_not_resold() {
    let redis = RedisServer::start();
    let (stopped, other) = two_instances(&redis, "w", "2s").await;
    // Sales from the stopped instance's reserve that it has not settled yet.
    redis.signal("STOP");
    let mut received = buy_n(stopped.addr, "w", 40).await;
    stopped.signal("STOP");
    redis.signal("CONT");
    // The other instance sells everything it may while the first is stopped.
    let first = sell_out(vec![other.addr], "w").await;
    assert_answers(&first);
    for (_, ticket) in first.sold() {
        assert!(received.insert(ticket.clone()), "{ticket} sold twice");
    }
    // Within one refresh of the remaining snapshot (--metrics-refresh) after the hold-back.
    other
        .wait_until(
            |a| a.json()["fallback"]["quarantined"]["w"] == 100,
            "/metrics?format=json",
        )
        .await;
    stopped.signal("CONT");
    let rest = sell_out(vec![stopped.addr, other.addr], "w").await;
    assert_answers(&rest);
    for (_, ticket) in rest.sold() {
        assert!(received.insert(ticket.clone()), "{ticket} sold twice");
    }
    let r = redis.client().await;
    ledger::check(&r, "w", 1000, &received).await;
    // What the stopped instance's first Redis call sold to nobody, if Redis ran it, comes back
    // once that call is made void; every other ticket is sold, once.
    let deadline = Instant::now() + support::WAIT;
    while received.len() < 1000 && Instant::now() < deadline {
        for (_, ticket) in sell_out(vec![other.addr], "w").await.sold() {
            assert!(received.insert(ticket.clone()), "{ticket} sold twice");
        }
    }
    assert_eq!(received.len(), 1000, "every ticket sold, once");
    for t in [&stopped, &other] {
        assert_eq!(t.metrics_json().await["fallback"]["conflicts"], 0);
    }
}
