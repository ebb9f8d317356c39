//! What operators see: the live scrape passes the real `promtool`, a real Prometheus server
//! scrapes ticketd and answers queries with its numbers, and the log carries the statistics
//! line, one WARN per Redis outage (not one per request), and parseable JSON.

mod support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use fred::interfaces::{ClientLike, ListInterface};
use hyper::{Method, StatusCode};
use support::http::request;
use support::redis::{command_calls, free_port};
use support::{Conn, RedisServer, Ticketd, TicketdProcess};

#[tokio::test]
async fn promtool_accepts_a_live_scrape() {
    support::require("promtool");
    let t = Ticketd::start(&["--store", "memory", "--events", "1=5,vip=2"]).await;
    let mut c = Conn::open(t.addr).await.unwrap();
    for _ in 0..7 {
        c.buy("1").await.unwrap();
    }
    c.send(Method::GET, "/nowhere").await.unwrap();
    let a = c.send(Method::GET, "/metrics").await.unwrap();
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(
        a.headers["content-type"],
        "text/plain; version=0.0.4; charset=utf-8"
    );
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    promtool.stdin.take().unwrap().write_all(&a.body).unwrap();
    let out = promtool.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let text = a.text();
    assert!(
        text.contains("ticketd_tickets_sold_total{event=\"1\"} 5\n"),
        "{text}"
    );
    assert!(
        text.contains("ticketd_purchases_total{event=\"1\",outcome=\"sold_out\"} 2\n"),
        "{text}"
    );
    assert!(
        text.contains("ticketd_tickets_remaining{event=\"vip\"} 2\n"),
        "{text}"
    );
    assert!(
        text.contains("ticketd_http_requests_total{route=\"not_found\",code=\"404\"} 1\n"),
        "{text}"
    );
    // JSON on request, with the same numbers.
    let j = c
        .send_with(Method::GET, "/metrics", &[("accept", "application/json")])
        .await
        .unwrap();
    assert_eq!(j.headers["content-type"], "application/json");
    assert_eq!(j.json()["events"]["1"]["sold"], 5);
    t.stop().await;
}

/// A real Prometheus server on loopback scrapes ticketd every second; its query API returns the
/// sold count.
#[tokio::test]
async fn prometheus_scrapes_and_answers_queries() {
    support::require("prometheus");
    let t = Ticketd::start(&["--store", "memory", "--events", "1=100"]).await;
    let mut c = Conn::open(t.addr).await.unwrap();
    for _ in 0..42 {
        assert_eq!(c.buy("1").await.unwrap().status, StatusCode::OK);
    }
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: ticketd\n    static_configs:\n      - targets: ['{}']\n",
            t.addr
        ),
    )
    .unwrap();
    let port = free_port();
    let _prometheus = Kill(
        Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start prometheus"),
    );
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let query = "/api/v1/query?query=ticketd_tickets_sold_total%7Bevent%3D%221%22%7D";
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(mut conn) = Conn::open(addr).await {
            if let Ok(a) = conn.send(Method::GET, query).await {
                let v = a.json();
                if let Some(value) = v["data"]["result"][0]["value"][1].as_str() {
                    assert_eq!(value, "42", "{v}");
                    break;
                }
            }
        }
        assert!(
            Instant::now() < deadline,
            "Prometheus never returned the sold count"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    t.stop().await;
}

/// A scrape reads the snapshot that one background task refreshes: 200 scrapes, in both
/// formats, send Redis nothing beyond what the refresh sends in the same time. Then Redis
/// changes behind ticketd's back (another instance selling) and the snapshot follows within a
/// refresh, its age gauge staying below a couple of intervals.
#[tokio::test]
async fn scrapes_cost_redis_nothing() {
    const EVENTS: u64 = 3;
    let redis = RedisServer::start();
    let t = Ticketd::on_redis(
        &redis,
        "1=50,2=50,3=50",
        &["--metrics-refresh", "200ms", "--fallback-reserve", "0"],
    )
    .await;
    t.wait_ready().await;
    let r = redis.client().await;
    let mut c = Conn::open(t.addr).await.unwrap();
    let before = command_calls(&r).await;
    let started = Instant::now();
    for i in 0..200 {
        let path = if i % 2 == 0 {
            "/metrics"
        } else {
            "/metrics?format=json"
        };
        assert_eq!(
            c.send(Method::GET, path).await.unwrap().status,
            StatusCode::OK
        );
    }
    let elapsed = started.elapsed();
    let after = command_calls(&r).await;
    // A refresh reads each event once (LLEN of the pool, GET of its reserves, HVALS of the
    // held-back ones; inside one counts.lua call on a single Redis): the refreshes that fit
    // into the elapsed time, one in flight at each end.
    let refreshes = (elapsed.as_secs_f64() / 0.2).ceil() as u64 + 2;
    for command in ["llen", "get", "hvals"] {
        let sent =
            after.get(command).copied().unwrap_or(0) - before.get(command).copied().unwrap_or(0);
        assert!(
            sent <= refreshes * EVENTS,
            "200 scrapes in {elapsed:?} sent {sent} {command} to Redis; the refresh explains at most {}",
            refreshes * EVENTS
        );
    }

    // Another instance sells 7 tickets of event 2: the snapshot follows.
    let _: Vec<String> = r.lpop("event:{2}:tickets", Some(7)).await.unwrap();
    let deadline = Instant::now() + support::WAIT;
    loop {
        let m = t.metrics_json().await;
        let age = m["totals"]["remaining_age_seconds"].as_f64().unwrap();
        assert!(age < 2.0, "the snapshot is {age}s old with a 200ms refresh");
        if m["events"]["2"]["remaining"] == 43 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the snapshot never followed Redis: {m}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let text = request(t.addr, Method::GET, "/metrics").await.text();
    assert!(
        text.lines()
            .any(|l| l.starts_with("ticketd_remaining_snapshot_age_seconds ")),
        "{text}"
    );
    t.stop().await;
}

/// Kills the child process when dropped, also when the test fails.
struct Kill(std::process::Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn json_lines(log: &str) -> Vec<serde_json::Value> {
    log.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON line ({e}): {l}")))
        .collect()
}

#[tokio::test]
async fn statistics_line_and_json_logs() {
    let t = TicketdProcess::spawn(
        &[
            "--store",
            "memory",
            "--events",
            "1=10,2=5",
            "--log-format",
            "json",
            "--stats-interval",
            "200ms",
        ],
        &[("RUST_LOG", "info")],
    )
    .await;
    let mut c = Conn::open(t.addr).await.unwrap();
    for _ in 0..3 {
        c.buy("1").await.unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let lines = json_lines(&t.log_text());
        let stats: Vec<_> = lines
            .iter()
            .filter(|l| l["message"] == "purchase statistics")
            .collect();
        if let Some(last) = stats.iter().rev().find(|l| l["sold"] == 3) {
            assert_eq!(last["level"], "INFO");
            assert_eq!(last["remaining"], "1=7,2=5");
            assert_eq!(last["mode"], "memory");
            assert!(last["rate_per_s"].is_number());
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no statistics line with sold=3:\n{}",
            t.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(json_lines(&t.log_text()).iter().any(|l| l["message"]
        .as_str()
        .unwrap_or("")
        .contains("IN-MEMORY MODE")
        && l["level"] == "WARN"));
    // Idle from now on: no line repeats what the last one said. Five intervals, then count.
    let lines = |t: &TicketdProcess| {
        json_lines(&t.log_text())
            .iter()
            .filter(|l| l["message"] == "purchase statistics")
            .count()
    };
    let before = lines(&t);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(lines(&t), before, "an idle service logs no statistics");
    c.buy("2").await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while lines(&t) == before {
        assert!(Instant::now() < deadline, "a sale is reported again");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_warning_per_outage_not_per_request() {
    let mut redis = RedisServer::start();
    let url = redis.url();
    let t = TicketdProcess::spawn(
        &[
            "--store",
            "redis",
            "--redis-url",
            &url,
            "--events",
            "1=5000",
            "--log-format",
            "json",
            "--stats-interval",
            "0",
            "--reserve-lease",
            "5s",
        ],
        &[("RUST_LOG", "info")],
    )
    .await;
    support::ticketd::wait_until(
        t.addr,
        |a| a.json()["fallback"]["reserved"]["1"] == 200,
        "/metrics?format=json",
    )
    .await;
    redis.kill();
    let mut c = Conn::open(t.addr).await.unwrap();
    for _ in 0..300 {
        let a = c.buy("1").await.unwrap();
        assert!(
            a.status == StatusCode::OK || a.status == StatusCode::SERVICE_UNAVAILABLE,
            "{}",
            a.status
        );
    }
    redis.start_again();
    support::ticketd::wait_until(
        t.addr,
        |a| a.json()["fallback"]["active"] == false,
        "/metrics?format=json",
    )
    .await;
    let lines = json_lines(&t.log_text());
    let down: Vec<_> = lines
        .iter()
        .filter(|l| {
            l["message"]
                .as_str()
                .unwrap_or("")
                .starts_with("REDIS FAILED")
        })
        .collect();
    assert_eq!(
        down.len(),
        1,
        "one WARN for the outage, not one per request:\n{}",
        t.log_text()
    );
    assert_eq!(down[0]["level"], "WARN");
    assert!(
        down[0]["cause"].as_str().is_some(),
        "the WARN names the cause"
    );
    let up: Vec<_> = lines
        .iter()
        .filter(|l| {
            l["message"]
                .as_str()
                .unwrap_or("")
                .starts_with("REDIS IS BACK")
        })
        .collect();
    assert_eq!(up.len(), 1, "{}", t.log_text());
    assert_eq!(up[0]["level"], "INFO");
    assert_eq!(
        up[0]["reconciled"], 200,
        "the reserve's 200 fallback sales were written to the ledger"
    );
    let m = request(t.addr, Method::GET, "/metrics?format=json")
        .await
        .json();
    assert_eq!(m["fallback"]["activations"], 1);
}

/// A Redis that may lose what it acknowledged (AOF synced once a second) is named at start-up:
/// its crash would sell the lost sales' tickets again.
#[tokio::test]
async fn a_redis_that_may_lose_acknowledged_sales_is_warned_about() {
    let redis = RedisServer::start();
    let r = redis.client().await;
    let durable = TicketdProcess::on_redis(&redis, "d=10", &[]).await;
    durable.wait_for_log("ticketd is listening").await;
    let _: () = r
        .custom(fred::cmd!("CONFIG"), vec!["SET", "appendfsync", "everysec"])
        .await
        .unwrap();
    let t = TicketdProcess::on_redis(&redis, "d=10", &[]).await;
    let log = t.wait_for_log("REDIS MAY LOSE ACKNOWLEDGED SALES").await;
    assert!(log.contains("everysec"), "{log}");
    assert!(
        !durable.log_text().contains("MAY LOSE"),
        "not said of a durable Redis"
    );
}
