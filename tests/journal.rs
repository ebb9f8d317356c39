//! The journal directory at start-up, with the real binary: a directory another live process
//! holds, one that cannot be used, and one that is corrupt each stop start-up with exit code 64
//! and a message naming it, never a silent fresh start; and cancellations that a shutdown could
//! not send are done by the next run on the same directory.

mod support;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use hyper::StatusCode;
use support::{ledger, Conn, RedisServer, TicketdProcess};

fn flags(url: &str) -> Vec<String> {
    [
        "--store",
        "redis",
        "--redis-url",
        url,
        "--events",
        "j=100",
        "--redis-timeout",
        "250ms",
        "--stats-interval",
        "0",
    ]
    .map(String::from)
    .to_vec()
}

/// Runs ticketd with `args` until it exits; its exit code and stderr.
fn start_fails(args: &[String]) -> (Option<i32>, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ticketd"))
        .args(["--listen", "127.0.0.1:0"])
        .args(args)
        .env_remove("REDIS_URL")
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn a_journal_directory_that_cannot_be_used_stops_start_up() {
    let redis = RedisServer::start();
    let base = flags(&redis.url());
    let args = |dir: &std::path::Path| {
        let mut a = base.clone();
        a.extend(["--journal-dir".into(), dir.to_str().unwrap().into()]);
        a
    };

    // Held by a live instance.
    let live =
        TicketdProcess::spawn(&base.iter().map(String::as_str).collect::<Vec<_>>(), &[]).await;
    let (code, err) = start_fails(&args(&live.journal));
    assert_eq!(code, Some(64), "{err}");
    assert!(err.contains("in use by another live ticketd"), "{err}");

    // Not a directory.
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("a-file");
    std::fs::write(&file, "x").unwrap();
    let (code, err) = start_fails(&args(&file));
    assert_eq!(code, Some(64), "{err}");
    assert!(err.contains("--journal-dir"), "{err}");

    // Corrupt beyond a torn tail: a damaged record followed by a whole one.
    let dir = tmp.path().join("corrupt");
    std::fs::create_dir(&dir).unwrap();
    let mut frames = Vec::new();
    for n in 1..=2u64 {
        ticketd::store::journal::Record::Sale {
            event: "j".into(),
            ticket: format!("j-{n:06}").into_bytes(),
            purchase: b"0000000000000001.1:1".to_vec(),
            by: None,
            at_ms: n,
        }
        .encode(&mut frames);
    }
    frames[12] ^= 0xff;
    std::fs::write(dir.join("journal-00000000000000000001.log"), &frames).unwrap();
    let (code, err) = start_fails(&args(&dir));
    assert_eq!(code, Some(64), "{err}");
    assert!(err.contains("is corrupt"), "{err}");
    assert!(
        dir.join("journal-00000000000000000001.log").exists(),
        "left as it was"
    );
}

/// A shutdown while Redis does not answer cannot make void the purchase call that Redis may
/// still run: it is in the journal, and the next run on the same directory makes it void, so
/// the ticket it took is sold to somebody in the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancellations_a_shutdown_could_not_send_are_done_by_the_next_run() {
    shutdown_leaves_its_cancellations_to_the_next_run(10).await;
}

/// The same without reserves: nothing to hand back, so nothing stands between the shutdown
/// and a journal checkpoint that must not let the cancellation's record go.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_reserves_too() {
    shutdown_leaves_its_cancellations_to_the_next_run(0).await;
}

async fn shutdown_leaves_its_cancellations_to_the_next_run(reserve: u64) {
    let redis = RedisServer::start();
    let mut f = flags(&redis.url());
    let reserve_flag = reserve.to_string();
    f.extend(["--shutdown-timeout".into(), "1s".into()]);
    f.extend(["--fallback-reserve".into(), reserve_flag]);
    let f: Vec<&str> = f.iter().map(String::as_str).collect();
    let mut t = TicketdProcess::spawn(&f, &[]).await;
    t.wait_ready().await;
    t.wait_until(
        |a| a.json()["fallback"]["reserved"]["j"] == reserve,
        "/metrics?format=json",
    )
    .await;
    redis.signal("STOP");
    // The call goes to Redis and times out (it may run later); the buyer gets a reserve ticket,
    // or 503 without reserves.
    let mut c = Conn::open(t.addr).await.unwrap();
    let a = c.buy("j").await.unwrap();
    let mut received = HashSet::new();
    if reserve > 0 {
        assert_eq!(a.status, StatusCode::OK);
        received.insert(a.json()["ticket"].as_str().unwrap().to_owned());
    } else {
        assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE);
    }
    drop(c);
    t.signal("TERM"); // Redis still paused: the shutdown cannot send the cancellation
    assert_eq!(t.wait(), Some(0), "{}", t.log_text());
    redis.signal("CONT"); // the late call runs now: a ticket sold to nobody
    let log = t.log_text();
    assert!(log.contains("done by the next run"), "{log}");
    let r = redis.client().await;
    let deadline = Instant::now() + support::WAIT;
    while ledger::read(&r, "j")
        .await
        .sold
        .keys()
        .all(|k| received.contains(k))
    {
        assert!(Instant::now() < deadline, "the late call never ran");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    t.restart().await;
    t.wait_ready().await;
    let deadline = Instant::now() + support::WAIT;
    loop {
        let s = ledger::read(&r, "j").await;
        if s.sold.keys().all(|k| received.contains(k)) {
            break; // the late call's ticket is back
        }
        assert!(
            Instant::now() < deadline,
            "a ticket stays sold to nobody: {:?}",
            s.sold
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut c = Conn::open(t.addr).await.unwrap();
    loop {
        let a = c.buy("j").await.unwrap();
        match a.status {
            StatusCode::OK => {
                let ticket = a.json()["ticket"].as_str().unwrap().to_owned();
                assert!(received.insert(ticket.clone()), "{ticket} sold twice");
            }
            StatusCode::CONFLICT => break,
            StatusCode::SERVICE_UNAVAILABLE => tokio::time::sleep(Duration::from_millis(50)).await,
            s => panic!("{s}"),
        }
    }
    assert_eq!(received.len(), 100, "every ticket sold, once");
    ledger::check(&r, "j", 100, &received).await;
}
