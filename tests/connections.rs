//! The slow-loris bound (`--header-timeout`), on raw TCP so that no client library hides what
//! the server did: a connection that does not finish a request head in time is closed, whether
//! it trickles its head or sits idle after an answer, and a client that keeps asking in time is
//! never cut off. In memory mode: the bound is the server's, whatever the store.

mod support;

use std::time::{Duration, Instant};

use support::Ticketd;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The bound the tests run ticketd with: long enough that a loaded machine's scheduling delays
/// stay far below it, short enough to keep the tests quick.
const BOUND: Duration = Duration::from_secs(2);
/// How much later than the bound a connection may be closed (a coarse timer, a busy machine).
const SLACK: Duration = Duration::from_secs(3);
/// How much sooner than the bound, by the client's clock, a connection may be seen closed: the
/// server counts from when its answer was ready, the client from when it had read it.
const EARLY: Duration = Duration::from_millis(500);

async fn start() -> Ticketd {
    Ticketd::start(&[
        "--store",
        "memory",
        "--events",
        "1=100",
        "--header-timeout",
        "2s",
    ])
    .await
}

const REQUEST: &[u8] = b"POST /buy/1 HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\n\r\n";

/// Reads until one whole answer to [`REQUEST`] is in (its head and its `content-length` bytes)
/// and returns its status code.
async fn answer(s: &mut TcpStream) -> String {
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let n = tokio::time::timeout_at(deadline.into(), s.read(&mut buf))
            .await
            .expect("an answer within 5 s")
            .expect("read");
        assert!(n > 0, "the server closed instead of answering");
        got.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&got).into_owned();
        if let Some(end) = text.find("\r\n\r\n") {
            let length: usize = text[..end]
                .lines()
                .find_map(|l| l.strip_prefix("content-length: "))
                .expect("content-length")
                .trim()
                .parse()
                .unwrap();
            if got.len() >= end + 4 + length {
                return text.split(' ').nth(1).unwrap().to_owned();
            }
        }
    }
}

/// Waits, within `within`, for the server to close `s`; returns how long that took, or `None`
/// if the connection was still open at the end.
async fn closed_within(s: &mut TcpStream, within: Duration) -> Option<Duration> {
    let start = Instant::now();
    let mut buf = [0u8; 64];
    match tokio::time::timeout(within, s.read(&mut buf)).await {
        Err(_) => None,
        Ok(Ok(0) | Err(_)) => Some(start.elapsed()),
        Ok(Ok(_)) => panic!("the server sent bytes nobody asked for"),
    }
}

#[tokio::test]
async fn a_head_trickled_slower_than_the_bound_is_cut_off() {
    let t = start().await;
    let mut s = TcpStream::connect(t.addr).await.unwrap();
    let opened = Instant::now();
    s.write_all(b"POST /buy/1 HTTP/1.1\r\n").await.unwrap();
    // One header byte every 100 ms: the head never ends, each byte is progress on the socket.
    let mut closed = None;
    for _ in 0..((BOUND + SLACK).as_millis() / 100) {
        if s.write_all(b"x").await.is_err() {
            closed = Some(opened.elapsed());
            break;
        }
        if let Some(after) = closed_within(&mut s, Duration::from_millis(100)).await {
            closed = Some(opened.elapsed().max(after));
            break;
        }
    }
    let closed = closed.expect("a trickled head is cut off within the bound and its slack");
    assert!(
        closed >= BOUND - EARLY,
        "cut off after {closed:?}, before the {BOUND:?} bound"
    );
    // The trickle cost the server nothing it keeps: a fresh connection is served.
    let mut c = TcpStream::connect(t.addr).await.unwrap();
    c.write_all(REQUEST).await.unwrap();
    assert_eq!(answer(&mut c).await, "200");
    t.stop().await;
}

/// Asserts that the server closes `s`, which sends nothing more, at the bound: not before
/// (less [`EARLY`]), and not later than its [`SLACK`].
async fn closed_at_the_bound(s: &mut TcpStream, what: &str) {
    let idle = closed_within(s, BOUND + SLACK)
        .await
        .unwrap_or_else(|| panic!("{what} is closed within the bound and its slack"));
    assert!(
        idle >= BOUND - EARLY,
        "{what} closed after {idle:?}, before the {BOUND:?} bound"
    );
}

#[tokio::test]
async fn a_connection_idle_after_its_answer_is_closed_after_the_bound() {
    let t = start().await;
    let mut s = TcpStream::connect(t.addr).await.unwrap();
    s.write_all(REQUEST).await.unwrap();
    assert_eq!(answer(&mut s).await, "200");
    closed_at_the_bound(&mut s, "an idle keep-alive connection").await;
    t.stop().await;
}

#[tokio::test]
async fn a_connection_opened_and_never_used_is_closed_after_the_bound() {
    let t = start().await;
    let mut s = TcpStream::connect(t.addr).await.unwrap();
    closed_at_the_bound(&mut s, "a silent connection").await;
    t.stop().await;
}

#[tokio::test]
async fn a_client_that_keeps_asking_in_time_is_never_cut_off() {
    let t = start().await;
    let mut s = TcpStream::connect(t.addr).await.unwrap();
    // Twelve requests 0.6 s apart (three bounds in all) on one connection, each head sent in
    // two halves 0.3 s apart: every head ends well within the bound of the last answer.
    let (head, rest) = REQUEST.split_at(20);
    for i in 0..12 {
        s.write_all(head).await.unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        s.write_all(rest)
            .await
            .unwrap_or_else(|e| panic!("request {i}: {e}"));
        assert_eq!(answer(&mut s).await, "200", "request {i}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    t.stop().await;
}

/// Graceful shutdown closes an idle keep-alive connection at once: it does not wait out the
/// drain bound (60 s here) for a client that will never send another request, and the
/// slow-loris bound (60 s too) cannot be what closes it.
#[tokio::test]
async fn a_shutdown_closes_idle_keep_alive_connections_at_once() {
    let t = Ticketd::start(&[
        "--store",
        "memory",
        "--events",
        "1=100",
        "--shutdown-timeout",
        "60s",
        "--header-timeout",
        "60s",
    ])
    .await;
    let mut idle = Vec::new();
    for _ in 0..3 {
        let mut s = TcpStream::connect(t.addr).await.unwrap();
        s.write_all(REQUEST).await.unwrap();
        assert_eq!(answer(&mut s).await, "200");
        idle.push(s);
    }
    tokio::time::timeout(Duration::from_secs(10), t.stop())
        .await
        .expect("stopped long before the 60 s drain bound (and the 60 s slow-loris bound)");
    for mut s in idle {
        assert!(
            closed_within(&mut s, Duration::from_secs(5))
                .await
                .is_some(),
            "each idle connection was closed"
        );
    }
}

/// A purchase in flight when shutdown starts is answered, not cut off, and the service stops
/// only after it. Redis stays paused throughout, so the purchase waits out its Redis timeout.
/// (The store's own shutdown also waits for purchases in flight, so this cannot tell the drain
/// from it; `drain`'s unit tests pin that the drain waits for every open connection.)
#[tokio::test]
async fn a_purchase_in_flight_at_shutdown_is_answered_before_serving_stops() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let redis = support::RedisServer::start();
    let t = Ticketd::on_redis(
        &redis,
        "1=10",
        &[
            "--redis-timeout",
            "1500ms",
            "--fallback-reserve",
            "0",
            "--shutdown-timeout",
            "6s",
        ],
    )
    .await;
    t.wait_ready().await;
    let before = t.in_flight().await;
    redis.signal("STOP");
    let answered = Arc::new(AtomicBool::new(false));
    let client = tokio::spawn({
        let (addr, answered) = (t.addr, Arc::clone(&answered));
        async move {
            let mut s = TcpStream::connect(addr).await.unwrap();
            s.write_all(REQUEST).await.unwrap();
            let status = answer(&mut s).await;
            answered.store(true, Ordering::SeqCst);
            status
        }
    });
    t.wait_in_flight_above(before).await;
    let stopped = tokio::time::timeout(Duration::from_secs(20), t.stop()).await;
    let in_time = answered.load(Ordering::SeqCst);
    redis.signal("CONT");
    stopped.expect("stopped within the drain bound and the store's");
    assert!(
        in_time,
        "the server stopped serving before the purchase in flight was answered"
    );
    let status = client.await.unwrap();
    assert!(
        status == "503" || status == "200",
        "an answer, not a cut connection: {status}"
    );
}
