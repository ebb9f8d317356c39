//! Buyers for the failure tests: many keep-alive connections buying until each has seen every
//! event sold out (or a time bound passes), keeping every answer for the checks afterwards.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hyper::StatusCode;

use super::Conn;

/// One answer: event, status, ticket id when sold.
pub type Answer = (String, StatusCode, Option<String>);

/// Everything the buyers saw.
#[derive(Debug, Default)]
pub struct Tally {
    /// Every HTTP answer.
    pub answers: Vec<Answer>,
    /// Requests that got no HTTP answer (connection refused, reset, ...).
    pub connection_errors: u64,
    /// Connections that stopped at the time bound before seeing every event sold out.
    pub unfinished: u64,
}

impl Tally {
    /// Tickets received, as `(event, ticket)`.
    pub fn sold(&self) -> Vec<(String, String)> {
        self.answers
            .iter()
            .filter(|a| a.1 == StatusCode::OK)
            .map(|a| (a.0.clone(), a.2.clone().expect("a sale names its ticket")))
            .collect()
    }

    /// Answers with `status`.
    pub fn count(&self, status: StatusCode) -> usize {
        self.answers.iter().filter(|a| a.1 == status).count()
    }
}

/// Runs `connections` buyers spread over `addrs` until each saw every event of `events` sold
/// out, or `limit` passes. `sold` counts sales as they happen. A `503` is retried after
/// `pause`.
pub async fn buy_until_sold_out(
    addrs: Vec<SocketAddr>,
    events: Vec<String>,
    connections: usize,
    limit: Duration,
    pause: Duration,
    sold: Arc<AtomicU64>,
) -> Tally {
    let deadline = Instant::now() + limit;
    let events = Arc::new(events);
    let tasks: Vec<_> = (0..connections)
        .map(|i| {
            let addr = addrs[i % addrs.len()];
            let events = events.clone();
            let sold = sold.clone();
            tokio::spawn(async move {
                let mut t = Tally::default();
                let mut done = vec![false; events.len()];
                let mut next = i;
                let mut conn: Option<Conn> = None;
                while done.iter().any(|d| !d) {
                    if Instant::now() > deadline {
                        t.unfinished += 1;
                        break;
                    }
                    let e = loop {
                        next = (next + 1) % events.len();
                        if !done[next] {
                            break next;
                        }
                    };
                    if conn.is_none() {
                        match Conn::open(addr).await {
                            Ok(c) => conn = Some(c),
                            Err(_) => {
                                t.connection_errors += 1;
                                tokio::time::sleep(pause).await;
                                continue;
                            }
                        }
                    }
                    let c = conn.as_mut().expect("opened above");
                    match tokio::time::timeout(Duration::from_secs(10), c.buy(&events[e])).await {
                        Ok(Ok(a)) => {
                            let ticket = a.json()["ticket"].as_str().map(str::to_owned);
                            match a.status {
                                StatusCode::OK => {
                                    sold.fetch_add(1, Ordering::Relaxed);
                                }
                                StatusCode::CONFLICT => done[e] = true,
                                StatusCode::SERVICE_UNAVAILABLE => tokio::time::sleep(pause).await,
                                _ => {}
                            }
                            t.answers.push((events[e].clone(), a.status, ticket));
                        }
                        _ => {
                            t.connection_errors += 1;
                            conn = None;
                        }
                    }
                }
                t
            })
        })
        .collect();
    let mut all = Tally::default();
    for task in tasks {
        let t = task.await.expect("buyer task");
        all.answers.extend(t.answers);
        all.connection_errors += t.connection_errors;
        all.unfinished += t.unfinished;
    }
    all
}
