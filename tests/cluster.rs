//! ticketd on a loopback Redis Cluster of six real `redis-server` processes (three primaries,
//! three replicas), with two ticketd instances as real processes: a primary fails under the load
//! of 2000 connections and its replica takes over. Every request gets an answer, no ticket goes
//! to two buyers, every ticket a buyer received is in its event's ledger on the new primary,
//! ledger + pool + reserves == capacity for every event, and the events on the other primaries
//! never answer `503` while the failing one fails over.

mod support;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fred::prelude::*;
use hyper::StatusCode;
use support::cluster::key_slot;
use support::load::{buy_until_sold_out, Tally};
use support::{ledger, Conn, RedisCluster, TicketdProcess};

/// Tickets of each event on the failing primary.
const DOOMED: u64 = 3000;
/// Tickets of each event on the other primaries: enough that none is near its end (where `503`
/// is a normal answer while other instances hand reserves back) during the failover.
const HEALTHY: u64 = 10_000;

/// One cluster test at a time: two clusters, four instances and their buyers at once starve a
/// 2-core machine into timeouts that are not what these tests are about.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn start(cluster: &RedisCluster, events: &str, extra: &[&str]) -> TicketdProcess {
    let url = cluster.url();
    let mut args = vec![
        "--store",
        "redis",
        "--redis-url",
        &url,
        "--events",
        events,
        "--stats-interval",
        "0",
        "--fallback-reserve",
        "100",
        // A primary that is killed is seen at once (its connections close). The bound only
        // decides when a slow round counts as a failure, and a debug build under 2000
        // connections on two cores has rounds slower than the default 250ms: that would send
        // healthy shards to the fallback, which is not what these tests are about.
        "--redis-timeout",
        "1s",
    ];
    args.extend_from_slice(extra);
    let t = TicketdProcess::spawn(&args, &[]).await;
    t.wait_ready().await;
    t
}

/// A client on the node `port` (to read the keys of the slots it serves).
async fn node(port: u16) -> Client {
    let config = Config::from_url(&format!("redis://127.0.0.1:{port}")).unwrap();
    let c = Builder::from_config(config).build().unwrap();
    c.init().await.unwrap();
    c
}

/// Buys `events` one after another on one connection until `stop`. Returns every `503` (and
/// every request left without an answer) with the event and when it came, and the tickets
/// bought as (event, ticket).
async fn probe(
    addr: std::net::SocketAddr,
    events: Vec<String>,
    stop: Arc<AtomicBool>,
) -> (Vec<(String, Instant, String)>, Vec<(String, String)>) {
    let mut conn = Conn::open(addr).await.unwrap();
    let mut bad = Vec::new();
    let mut bought = Vec::new();
    let mut i = 0;
    while !stop.load(Ordering::Relaxed) {
        let e = &events[i % events.len()];
        i += 1;
        match tokio::time::timeout(Duration::from_secs(5), conn.buy(e)).await {
            Ok(Ok(a)) if a.status == StatusCode::OK => {
                let ticket = a.json()["ticket"].as_str().unwrap().to_owned();
                bought.push((e.clone(), ticket));
            }
            Ok(Ok(a)) if a.status != StatusCode::SERVICE_UNAVAILABLE => {}
            Ok(Ok(a)) => bad.push((e.clone(), Instant::now(), a.status.to_string())),
            _ => bad.push((e.clone(), Instant::now(), "no answer".to_owned())),
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    (bad, bought)
}

/// Polls the pool of each of `events` on its primary (`ports`) every 10 ms until `stop`, and
/// returns when each first held fewer than `end` tickets: from then on the end of that event's
/// sale may answer `503` by design (the rest sits in the other instance's reserve until it is
/// handed back), whatever the failover does.
async fn watch_ends(
    events: Vec<(String, u16)>,
    end: i64,
    stop: Arc<AtomicBool>,
) -> HashMap<String, Instant> {
    let mut clients = Vec::new();
    for (id, port) in &events {
        clients.push((id.clone(), node(*port).await));
    }
    let mut ends = HashMap::new();
    while !stop.load(Ordering::Relaxed) {
        for (id, c) in &clients {
            if ends.contains_key(id) {
                continue;
            }
            let read = c.llen::<i64, _>(format!("event:{{{id}}}:tickets"));
            if let Ok(Ok(n)) = tokio::time::timeout(Duration::from_secs(1), read).await {
                if n < end {
                    ends.insert(id.clone(), Instant::now());
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    ends
}

/// No ticket twice across all buyers (the load's and `more`); returns the tickets per event.
fn unique_tickets(tally: &Tally, more: Vec<(String, String)>) -> HashMap<String, HashSet<String>> {
    let mut by_event: HashMap<String, HashSet<String>> = HashMap::new();
    for (event, ticket) in tally.sold().into_iter().chain(more) {
        assert!(
            by_event.entry(event).or_default().insert(ticket.clone()),
            "ticket {ticket} went to two buyers"
        );
    }
    by_event
}

/// The end of a test: every request answered, no ticket twice (the load's and `more`), the
/// instances stopped gracefully (exit 0), and for every event, read from the primary serving
/// it now: the ledger invariants, nothing held back or left in a reserve, every ticket sold
/// exactly once. Returns both instances' logs.
async fn stop_and_check(
    cluster: &RedisCluster,
    instances: [TicketdProcess; 2],
    tally: &Tally,
    more: Vec<(String, String)>,
    ids: &[String],
    capacity: impl Fn(&str) -> u64,
) -> String {
    assert_eq!(
        tally.connection_errors, 0,
        "every request gets an HTTP answer"
    );
    assert_eq!(tally.unfinished, 0, "every event sold out in time");
    let received = unique_tickets(tally, more);
    let mut log = String::new();
    for mut t in instances {
        t.signal("TERM");
        assert_eq!(t.wait(), Some(0), "{}", t.log_text());
        log += &t.log_text();
    }
    for id in ids {
        let r = node(cluster.primary_for_slot(key_slot(&format!("{{{id}}}")))).await;
        let got = received.get(id).cloned().unwrap_or_default();
        let state = ledger::check(&r, id, capacity(id), &got).await;
        assert_eq!(state.held_back(), 0, "event {id}: nothing held back");
        assert_eq!(state.reserved(), 0, "event {id}: every reserve handed back");
        let nobody: Vec<String> = state
            .sold
            .iter()
            .filter(|(t, _)| !got.contains(*t))
            .map(|(t, r)| format!("{t} {r}"))
            .collect();
        assert_eq!(
            got.len() as u64,
            capacity(id),
            "event {id}: every ticket sold, once; sold to nobody: {nobody:?}\n{log}"
        );
    }
    log
}

/// The replica of one primary stops and loses its link; the primary sells on and is killed; the
/// replica, which never received those sales, takes over. Buyers hear of a sale only once a
/// replica holds it (`--redis-replica-acks`, 1 on a cluster), so the buyers of that window were
/// never told of one, and nothing is sold twice.
async fn primary_killed_after_answering(extra: &[&str]) {
    let mut cluster = RedisCluster::start();
    let ids = cluster.events_on_each_primary(3);
    assert_eq!(ids.len(), 9);
    let victim = cluster.primary_for_slot(key_slot(&format!("{{{}}}", ids[0])));
    let (doomed, healthy): (Vec<String>, Vec<String>) = ids
        .iter()
        .cloned()
        .partition(|id| cluster.primary_for_slot(key_slot(&format!("{{{id}}}"))) == victim);
    assert_eq!(doomed.len(), 3);
    let capacity = |id: &str| {
        if doomed.iter().any(|d| d == id) {
            DOOMED
        } else {
            HEALTHY
        }
    };
    let events: Vec<(&str, u64)> = ids.iter().map(|id| (id.as_str(), capacity(id))).collect();
    let flag = support::events_flag(&events);
    let a = start(&cluster, &flag, extra).await;
    let b = start(&cluster, &flag, extra).await;
    let replica = cluster.replicas_of(victim)[0];

    let sold = Arc::new(AtomicU64::new(0));
    let load = tokio::spawn(buy_until_sold_out(
        vec![a.addr, b.addr],
        ids.clone(),
        2000,
        Duration::from_secs(150),
        Duration::from_millis(20),
        sold.clone(),
    ));
    let wait_sold = |n: u64| {
        let sold = sold.clone();
        async move {
            let deadline = Instant::now() + Duration::from_secs(60);
            while sold.load(Ordering::Relaxed) < n {
                assert!(Instant::now() < deadline, "load stalled below {n} sales");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    };
    wait_sold(2000).await;

    let stop = Arc::new(AtomicBool::new(false));
    let probes =
        [a.addr, b.addr].map(|addr| tokio::spawn(probe(addr, healthy.clone(), stop.clone())));
    // Each instance holds a reserve of 100 and hands it back once the pool is under 200: the
    // end of a sale starts below four reserves' worth, well before the pool is empty.
    let on_primaries = healthy
        .iter()
        .map(|id| {
            (
                id.clone(),
                cluster.primary_for_slot(key_slot(&format!("{{{id}}}"))),
            )
        })
        .collect();
    let ends = tokio::spawn(watch_ends(on_primaries, 400, stop.clone()));
    // The replica stops and its link is cut; the primary goes on answering, replicating to no one.
    cluster.pause(replica);
    assert_eq!(cluster.detach_replicas(victim), 1);
    let at_pause = sold.load(Ordering::Relaxed);
    wait_sold(at_pause + 1500).await;
    cluster.kill(victim);
    cluster.resume(replica);
    let promoted = cluster.wait_for_failover(victim);
    assert_eq!(promoted, replica);
    // The old primary comes back as the new one's replica: writes are acknowledged again.
    cluster.restart(victim);
    let at_back = sold.load(Ordering::Relaxed);
    wait_sold(at_back + 1000).await;
    stop.store(true, Ordering::Relaxed);
    let mut probed = Vec::new();
    let ends = ends.await.unwrap();
    for p in probes {
        let (bad, bought) = p.await.unwrap();
        probed.extend(bought);
        // A 503 after its event's sale reached its end is the end game's, not the failover's.
        let total = bad.len();
        let bad: Vec<String> = bad
            .into_iter()
            .filter(|(e, at, _)| ends.get(e).is_none_or(|end| at < end))
            .map(|(e, _, what)| format!("event {e}: {what}"))
            .collect();
        println!(
            "probe: {} answers 503 at the end of their event's sale (allowed), {} before it",
            total - bad.len(),
            bad.len()
        );
        if !bad.is_empty() {
            // Every 503 has one code: the metrics tell a shed purchase (queue timeout), a shard
            // on its fallback and a Redis error apart.
            let (ma, mb) = (a.metrics_json().await, b.metrics_json().await);
            panic!(
                "events on the healthy primaries answered 503 during the failover: {bad:?}\nmetrics a: {ma}\nmetrics b: {mb}\n{}{}",
                a.log_text(),
                b.log_text()
            );
        }
    }

    let tally = tokio::time::timeout(Duration::from_secs(180), load)
        .await
        .expect("bounded")
        .unwrap();
    let log = stop_and_check(&cluster, [a, b], &tally, probed, &ids, capacity).await;
    assert!(
        log.contains("REDIS CLUSTER FAILOVER"),
        "the failover was seen: {log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_primary_killed_after_answering_loses_no_sale() {
    let _one = ONE_AT_A_TIME.lock().await;
    primary_killed_after_answering(&[]).await;
}

/// One event's slot, with its keys, moves to another primary while two instances sell it
/// (`CLUSTER SETSLOT` and `MIGRATE`, two keys at a time, so purchases meet the slot half moved).
/// Buyers of that event get `503` meanwhile and retry; then both instances follow the slot to
/// its new primary, take the event's reserve state along, and every ticket is sold once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_event_moved_to_another_primary_under_load_sells_each_ticket_once() {
    let _one = ONE_AT_A_TIME.lock().await;
    let cluster = RedisCluster::start();
    let ids = cluster.events_on_each_primary(2);
    let events: Vec<(&str, u64)> = ids.iter().map(|id| (id.as_str(), DOOMED)).collect();
    let flag = support::events_flag(&events);
    let a = start(&cluster, &flag, &[]).await;
    let b = start(&cluster, &flag, &[]).await;

    let sold = Arc::new(AtomicU64::new(0));
    let load = tokio::spawn(buy_until_sold_out(
        vec![a.addr, b.addr],
        ids.clone(),
        500,
        Duration::from_secs(120),
        Duration::from_millis(20),
        sold.clone(),
    ));
    let deadline = Instant::now() + Duration::from_secs(60);
    while sold.load(Ordering::Relaxed) < 1500 {
        assert!(Instant::now() < deadline, "load never got going");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let slot = key_slot(&format!("{{{}}}", ids[0]));
    let from = cluster.primary_for_slot(slot);
    let to = *cluster.primaries().iter().find(|&&p| p != from).unwrap();
    cluster.move_slot(slot, to, 2);

    let tally = tokio::time::timeout(Duration::from_secs(150), load)
        .await
        .expect("bounded")
        .unwrap();
    let log = stop_and_check(&cluster, [a, b], &tally, Vec::new(), &ids, |_| DOOMED).await;
    assert!(
        log.contains("RESHARDED"),
        "both instances followed the slot: {log}"
    );
}

/// Known buyers on a cluster: the key's binding lives in the buyer's slot, on whichever shard
/// serves it, so a key first used for an event on one shard is refused for an event on another;
/// a repeat is answered from the event's shard; the limit and the list work per event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn buyers_and_keys_across_shards() {
    let _one = ONE_AT_A_TIME.lock().await;
    let cluster = RedisCluster::start();
    let ids = cluster.events_on_each_primary(1);
    let events: Vec<String> = ids.iter().map(|id| format!("{id}=100")).collect();
    let t = start(
        &cluster,
        &events.join(","),
        &["--buyer-header", "x-buyer", "--max-per-buyer", "2"],
    )
    .await;
    let send = |path: String, method: hyper::Method, key: Option<&'static str>| {
        let addr = t.addr;
        async move {
            let mut headers = vec![("x-buyer", "alice")];
            if let Some(k) = key {
                headers.push(("idempotency-key", k));
            }
            Conn::open(addr)
                .await
                .unwrap()
                .send_with(method, &path, &headers)
                .await
                .unwrap()
        }
    };
    let buy = |event: &str, key| send(format!("/buy/{event}"), hyper::Method::POST, key);
    let (a, b) = (&ids[0], &ids[1]);
    let first = buy(a, Some("\"k-1\"")).await;
    assert_eq!(first.status, StatusCode::OK, "{}", first.text());
    let again = buy(a, Some("\"k-1\"")).await;
    assert_eq!(
        again.body, first.body,
        "the same answer from the event's shard"
    );
    let other = buy(b, Some("\"k-1\"")).await;
    assert_eq!(
        other.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "the binding is found on its own shard: {}",
        other.text()
    );
    assert_eq!(buy(a, None).await.status, StatusCode::OK);
    let over = buy(a, None).await;
    assert_eq!(over.status, StatusCode::CONFLICT, "{}", over.text());
    assert_eq!(over.json()["error"], "limit_reached");
    // Another event, on another shard, has its own limit.
    assert_eq!(buy(b, None).await.status, StatusCode::OK);
    let list = send(format!("/events/{a}/tickets"), hyper::Method::GET, None).await;
    assert_eq!(
        list.json()["tickets"].as_array().unwrap().len(),
        2,
        "{}",
        list.text()
    );
    let mut t = t;
    t.stop();
}
