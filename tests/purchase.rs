//! The purchase service against a real, private redis-server: purchase, sold out, unknown and
//! malformed events, script cache loss, a Redis restart, and the ledger agreeing with answers.

mod support;

use std::time::{Duration, Instant};

use fred::prelude::*;
use hyper::{Method, StatusCode};
use support::{Conn, RedisServer, Ticketd};

async fn start(redis: &RedisServer, events: &str) -> Ticketd {
    let t = Ticketd::on_redis(redis, events, &[]).await;
    t.wait_ready().await;
    t
}

#[tokio::test]
async fn purchase_sold_out_and_the_ledger() {
    let redis = RedisServer::start();
    let t = start(&redis, "1=3,2=5").await;
    let mut c = Conn::open(t.addr).await.unwrap();

    let a = c.buy("1").await.unwrap();
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.headers["content-type"], "application/json");
    assert_eq!(
        a.text(),
        r#"{"event":"1","ticket":"1-000001","remaining":2}"#
    );
    assert_eq!(c.buy("1").await.unwrap().json()["ticket"], "1-000002");
    assert_eq!(c.buy("2").await.unwrap().json()["ticket"], "2-000001");
    let last = c.buy("1").await.unwrap().json();
    assert_eq!(
        (last["ticket"].as_str(), last["remaining"].as_u64()),
        (Some("1-000003"), Some(0))
    );

    let out = c.buy("1").await.unwrap();
    assert_eq!(out.status, StatusCode::CONFLICT);
    assert_eq!(out.text(), r#"{"error":"sold_out","event":"1"}"#);

    let r = redis.client().await;
    let sold: std::collections::HashMap<String, String> =
        r.hgetall("event:{1}:sold").await.unwrap();
    let mut tickets: Vec<_> = sold.keys().cloned().collect();
    tickets.sort();
    assert_eq!(tickets, ["1-000001", "1-000002", "1-000003"]);
    for record in sold.values() {
        let (purchase, ms) = record.split_once(' ').expect("'<purchase id> <ms>'");
        assert!(purchase.contains(':'), "{record}");
        assert!(ms.parse::<u64>().unwrap() > 1_700_000_000_000, "{record}");
    }
    assert_eq!(r.llen::<u64, _>("event:{1}:tickets").await.unwrap(), 0);
    assert_eq!(r.llen::<u64, _>("event:{2}:tickets").await.unwrap(), 4);
    let catalog: std::collections::HashMap<String, u64> = r.hgetall("events").await.unwrap();
    assert_eq!(catalog.get("1"), Some(&3));
    assert_eq!(catalog.get("2"), Some(&5));

    let m = t.metrics_json().await;
    assert_eq!(m["events"]["1"]["sold"], 3);
    assert_eq!(m["events"]["1"]["sold_out"], 1);
    assert_eq!(
        m["events"]["2"]["remaining"], 4,
        "remaining: the snapshot, updated by this instance's sales"
    );
    assert_eq!(m["store"], "redis");
    t.stop().await;
}

#[tokio::test]
async fn edge_answers_without_touching_redis() {
    let redis = RedisServer::start();
    let t = start(&redis, "1=1").await;
    let mut c = Conn::open(t.addr).await.unwrap();
    let a = c.buy("nope").await.unwrap();
    assert_eq!(
        (a.status, a.text().as_str()),
        (StatusCode::NOT_FOUND, r#"{"error":"unknown_event"}"#)
    );
    for path in [
        "/buy/a%7Bb%7D",
        "/buy/",
        &format!("/buy/{}", "x".repeat(65)),
        "/buy/a:b",
    ] {
        let a = c.send(Method::POST, path).await.unwrap();
        assert_eq!(
            (a.status, a.text().as_str()),
            (StatusCode::BAD_REQUEST, r#"{"error":"bad_event_id"}"#),
            "{path}"
        );
    }
    let a = c.send(Method::GET, "/buy/1").await.unwrap();
    assert_eq!(a.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(a.headers["allow"], "POST");
    let a = c.send(Method::GET, "/nowhere").await.unwrap();
    assert_eq!(
        (a.status, a.text().as_str()),
        (StatusCode::NOT_FOUND, r#"{"error":"not_found"}"#)
    );
    assert_eq!(
        c.send(Method::GET, "/healthz").await.unwrap().status,
        StatusCode::OK
    );
    assert_eq!(
        c.send(Method::GET, "/readyz").await.unwrap().status,
        StatusCode::OK
    );

    // A declared oversized body is refused before anything is read, and oversized headers get
    // 431 from hyper; raw requests, so that no client library second-guesses them.
    let big_body = "POST /buy/1 HTTP/1.1\r\nhost: x\r\ncontent-length: 10000000\r\n\r\n".to_owned();
    assert_eq!(raw_status(t.addr, &big_body).await, "413");
    let big_head = format!(
        "POST /buy/1 HTTP/1.1\r\nhost: x\r\nx-big: {}\r\n\r\n",
        "v".repeat(64 * 1024)
    );
    assert_eq!(raw_status(t.addr, &big_head).await, "431");
    let mut c3 = Conn::open(t.addr).await.unwrap();
    assert_eq!(
        c3.buy("1").await.unwrap().status,
        StatusCode::OK,
        "still serving, ticket unsold so far"
    );
    t.stop().await;
}

/// Sends `request` as it is and returns the status code of the answer.
async fn raw_status(addr: std::net::SocketAddr, request: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let _ = s.write_all(request.as_bytes()).await; // the server may close before taking it all
    let mut buf = vec![0u8; 1024];
    let n = tokio::time::timeout(std::time::Duration::from_secs(5), s.read(&mut buf))
        .await
        .expect("an answer, not a hang")
        .unwrap();
    let head = String::from_utf8_lossy(&buf[..n]).into_owned();
    head.split(' ').nth(1).unwrap_or_default().to_owned()
}

#[tokio::test]
async fn sigterm_drains_and_exits_zero() {
    let mut t =
        support::TicketdProcess::spawn(&["--store", "memory", "--events", "1=5"], &[]).await;
    let mut c = Conn::open(t.addr).await.unwrap();
    assert_eq!(c.buy("1").await.unwrap().status, StatusCode::OK);
    t.signal("TERM");
    assert_eq!(t.wait(), Some(0), "graceful shutdown exits 0");
    let log = t.log_text();
    assert!(log.contains("SIGTERM received"), "{log}");
    assert!(
        log.contains("all connections closed") || log.contains("drain bound reached"),
        "{log}"
    );
}

/// The README's run command, as a new user types it: no Redis configured, so memory mode,
/// said so; it sells, and Ctrl-C stops it with exit code 0.
#[tokio::test]
async fn the_readme_run_command_serves_from_memory_and_stops_on_sigint() {
    let mut t = support::TicketdProcess::spawn(&["--events", "1=10000,2=5000"], &[]).await;
    let mut c = Conn::open(t.addr).await.unwrap();
    let a = c.buy("1").await.unwrap();
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.json()["ticket"], "1-000001");
    t.wait_for_log("IN-MEMORY MODE").await;
    t.signal("INT");
    assert_eq!(t.wait(), Some(0), "Ctrl-C exits 0:\n{}", t.log_text());
    assert!(t.log_text().contains("SIGINT received"));
}

/// A SIGINT sent the moment the port accepts connections, before the service serves (here it
/// still builds a catalogue of 10,000 events), stops it gracefully too: the handlers are
/// installed before the port is bound.
#[tokio::test]
async fn a_sigint_right_after_start_up_is_not_lost() {
    let events: Vec<String> = (0..10_000).map(|i| format!("e{i}=1")).collect();
    let events = events.join(",");
    for _ in 0..5 {
        let mut t = support::TicketdProcess::launch(&[], &[("TICKETD_EVENTS", &events)]);
        let deadline = std::time::Instant::now() + support::WAIT;
        while std::net::TcpStream::connect(t.addr).is_err() {
            assert!(std::time::Instant::now() < deadline, "never bound");
            std::thread::sleep(std::time::Duration::from_micros(200));
        }
        t.signal("INT");
        assert_eq!(t.wait(), Some(0), "{}", t.log_text());
    }
}

#[tokio::test]
async fn script_flush_between_purchases_fails_nothing() {
    let redis = RedisServer::start();
    let t = start(&redis, "1=10").await;
    let mut c = Conn::open(t.addr).await.unwrap();
    assert_eq!(c.buy("1").await.unwrap().status, StatusCode::OK);
    let r = redis.client().await;
    let _: () = r.script_flush(false).await.unwrap();
    for _ in 0..3 {
        assert_eq!(c.buy("1").await.unwrap().status, StatusCode::OK);
    }
    let m = t.metrics_json().await;
    assert!(m["redis"]["script_reloads"].as_u64().unwrap() >= 1, "{m}");
    assert_eq!(m["events"]["1"]["sold"], 4);
    t.stop().await;
}

#[tokio::test]
async fn redis_restart_between_purchases_fails_nothing() {
    let mut redis = RedisServer::start();
    let t = start(&redis, "1=10").await;
    let mut c = Conn::open(t.addr).await.unwrap();
    assert_eq!(c.buy("1").await.unwrap().json()["ticket"], "1-000001");
    redis.restart(); // SIGKILL; AOF brings the pool back; the script cache is empty
    t.wait_ready().await;
    let a = c.buy("1").await.unwrap();
    assert_eq!(a.status, StatusCode::OK, "{}", a.text());
    assert_eq!(
        a.json()["ticket"],
        "1-000002",
        "the sale before the kill survived in the AOF"
    );
    let m = t.metrics_json().await;
    assert!(m["redis"]["script_reloads"].as_u64().unwrap() >= 1, "{m}");
    t.stop().await;
}

#[tokio::test]
async fn events_seeded_elsewhere_become_sellable() {
    let redis = RedisServer::start();
    let url = redis.url();
    let t = Ticketd::on_redis(&redis, "1=1", &["--catalog-refresh", "100ms"]).await;
    t.wait_ready().await;
    let mut c = Conn::open(t.addr).await.unwrap();
    assert_eq!(c.buy("late").await.unwrap().status, StatusCode::NOT_FOUND);
    let out = support::ticketd::run_binary(&["seed", "--redis-url", &url, "--events", "late=2"]);
    assert!(out.status.success(), "{out:?}");
    t.wait_until(
        |a| a.json()["events"]["late"]["capacity"] == 2,
        "/metrics?format=json",
    )
    .await;
    assert_eq!(c.buy("late").await.unwrap().json()["ticket"], "late-000001");
    t.stop().await;
}

/// The request future is what hyper keeps per connection: it must stay small with the Redis
/// store, or every open connection pays for the largest Redis call (design.md, Measurements).
#[tokio::test]
async fn request_future_stays_small() {
    use std::sync::Arc;
    use ticketd::store::fallback::FallbackOptions;
    use ticketd::store::ids::Ids;
    use ticketd::store::redis::{build_pool, RedisOptions, RedisStore};
    use ticketd::store::resilient::ResilientStore;
    let options = RedisOptions::new("redis://127.0.0.1:1");
    let dir = tempfile::tempdir().unwrap();
    let (_opened, journal) = ticketd::store::journal::open(dir.path()).unwrap();
    let store = ResilientStore::new(
        RedisStore::new(
            build_pool(&options).unwrap(),
            &options,
            Arc::new(ticketd::Metrics::new()),
            Ids::random(),
        ),
        Arc::new(ticketd::Catalog::default()),
        FallbackOptions {
            reserve: 0,
            lease: std::time::Duration::from_secs(5),
        },
        journal,
        Vec::new(),
        true,
    );
    let app = ticketd::App::new(
        store,
        Arc::new(ticketd::Catalog::default()),
        Arc::new(ticketd::Metrics::new()),
        ticketd::Limits::default(),
    );
    let future = app.handle(http::Request::post("/buy/1").body(()).unwrap());
    let size = std::mem::size_of_val(&future);
    assert!(size <= 2048, "request future is {size} bytes");
    // What the server keeps room for in every connection, idle or not: the future of
    // `respond`, a purchase's alone (every other route's is boxed: 1,736 bytes when it was not;
    // 728 with a fallback sale's and the end of a sale's state inline, 544 with the wait for a
    // slot under overload inline; 360 now).
    let future = app
        .clone()
        .respond(http::Request::post("/buy/1").body(()).unwrap());
    let size = std::mem::size_of_val(&future);
    assert!(size <= 448, "respond future is {size} bytes");
}

/// Script calls (`EVALSHA`, and `EVAL` after a script-cache miss) Redis ran so far.
async fn script_calls(r: &Client) -> u64 {
    let calls = support::redis::command_calls(r).await;
    calls.get("evalsha").copied().unwrap_or(0) + calls.get("eval").copied().unwrap_or(0)
}

/// Once Redis said an event is sold out, further anonymous purchases of it are answered `409`
/// from memory: Redis runs no script for them. A ticket that comes back behind ticketd's back
/// (pushed into the pool, as another instance's cancellation would) is sold again within the
/// stated bound: one `--metrics-refresh` plus the refresh's round trip.
#[tokio::test]
async fn sold_out_is_answered_from_memory_until_a_ticket_comes_back() {
    const REFRESH: Duration = Duration::from_millis(200);
    let redis = RedisServer::start();
    let t = Ticketd::on_redis(
        &redis,
        "1=3",
        &["--metrics-refresh", "200ms", "--fallback-reserve", "0"],
    )
    .await;
    t.wait_ready().await;
    let r = redis.client().await;
    let mut c = Conn::open(t.addr).await.unwrap();
    for _ in 0..3 {
        assert_eq!(c.buy("1").await.unwrap().status, StatusCode::OK);
    }
    // Redis decides this one.
    assert_eq!(c.buy("1").await.unwrap().status, StatusCode::CONFLICT);

    let scripts = script_calls(&r).await;
    let batches = t.metrics_json().await["redis"]["purchase_batches"].clone();
    for _ in 0..50 {
        let a = c.buy("1").await.unwrap();
        assert_eq!(a.status, StatusCode::CONFLICT);
        assert_eq!(a.text(), r#"{"error":"sold_out","event":"1"}"#);
    }
    assert_eq!(
        script_calls(&r).await,
        scripts,
        "sold-out answers after Redis said sold out ran scripts"
    );
    let m = t.metrics_json().await;
    assert_eq!(m["redis"]["purchase_batches"], batches);
    assert_eq!(m["events"]["1"]["sold_out"], 51, "{m}");

    // A cancellation gives ticket 2 back.
    let _: i64 = r.hdel("event:{1}:sold", "1-000002").await.unwrap();
    let _: i64 = r.lpush("event:{1}:tickets", "1-000002").await.unwrap();
    let back = Instant::now();
    let sold = loop {
        let a = c.buy("1").await.unwrap();
        if a.status == StatusCode::OK {
            break a.json();
        }
        assert_eq!(a.status, StatusCode::CONFLICT);
        // One refresh interval and its read, with room for a loaded machine.
        assert!(
            back.elapsed() < REFRESH * 2 + Duration::from_secs(1),
            "the ticket given back was not on sale again within the bound"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!(sold["ticket"], "1-000002");
    let a = c.buy("1").await.unwrap();
    assert_eq!(a.status, StatusCode::CONFLICT, "sold out again, from Redis");
}

/// With every Redis slot taken (`--redis-max-in-flight 1`, its purchase held by a paused
/// Redis), the next purchase waits for a slot for `--queue-timeout` and is then shed with
/// `503`, counted in `redis.shed`; once Redis answers, the held purchase is sold and the next
/// one takes the free slot at once.
#[tokio::test]
async fn a_purchase_that_finds_no_free_redis_slot_waits_then_is_shed() {
    let redis = RedisServer::start();
    let t = Ticketd::on_redis(
        &redis,
        "1=10",
        &[
            "--redis-max-in-flight",
            "1",
            "--queue-timeout",
            "300ms",
            "--redis-timeout",
            "5s",
            "--fallback-reserve",
            "0",
        ],
    )
    .await;
    t.wait_ready().await;
    let before = t.in_flight().await;
    redis.signal("STOP");
    let addr = t.addr;
    let held = tokio::spawn(async move { Conn::open(addr).await.unwrap().buy("1").await.unwrap() });
    t.wait_in_flight_above(before).await;
    let mut c = Conn::open(t.addr).await.unwrap();
    let started = Instant::now();
    let shed = c.buy("1").await.unwrap();
    let waited = started.elapsed();
    redis.signal("CONT");
    assert_eq!(
        shed.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        shed.text()
    );
    assert!(
        waited >= Duration::from_millis(250),
        "shed after {waited:?}, without waiting out the queue timeout"
    );
    assert_eq!(t.metrics_json().await["redis"]["shed"], 1);
    let sold = tokio::time::timeout(Duration::from_secs(10), held)
        .await
        .expect("the held purchase is answered once Redis is back")
        .unwrap();
    assert_eq!(sold.status, StatusCode::OK, "{}", sold.text());
    assert_eq!(
        c.buy("1").await.unwrap().status,
        StatusCode::OK,
        "the slot is free again"
    );
    t.stop().await;
}
