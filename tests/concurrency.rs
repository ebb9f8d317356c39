//! The concurrency proof: 2000 keep-alive connections buy 8000 times from four events holding
//! 5000 tickets in all. Exactly the capacity is sold, every other answer is `sold_out`, no ticket
//! id comes twice, and the Redis ledger agrees with what the clients received.

mod support;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use fred::prelude::*;
use hyper::StatusCode;
use support::{Conn, RedisServer, Ticketd};
use tokio::sync::Barrier;

const CONNECTIONS: usize = 2000;
const PER_CONNECTION: usize = 4;
const EVENTS: [(&str, u64); 4] = [("1", 1700), ("2", 1500), ("3", 1200), ("4", 600)];

fn events_flag() -> String {
    support::events_flag(&EVENTS)
}

/// Every answer: (event, status, ticket id if sold).
async fn storm(addr: std::net::SocketAddr) -> Vec<(String, StatusCode, Option<String>)> {
    let barrier = Arc::new(Barrier::new(CONNECTIONS));
    let tasks: Vec<_> = (0..CONNECTIONS)
        .map(|i| {
            let barrier = barrier.clone();
            tokio::spawn(async move {
                let mut conn = Conn::open(addr).await.expect("connect");
                barrier.wait().await; // all connections open before the first purchase
                let mut answers = Vec::with_capacity(PER_CONNECTION);
                for j in 0..PER_CONNECTION {
                    let event = EVENTS[(i + j) % EVENTS.len()].0;
                    let a = conn.buy(event).await.expect("every request gets an answer");
                    let ticket = a.json()["ticket"].as_str().map(str::to_owned);
                    answers.push((event.to_owned(), a.status, ticket));
                }
                answers
            })
        })
        .collect();
    let mut all = Vec::with_capacity(CONNECTIONS * PER_CONNECTION);
    for t in tasks {
        all.extend(
            tokio::time::timeout(support::WAIT * 3, t)
                .await
                .expect("bounded")
                .unwrap(),
        );
    }
    all
}

/// Checks the answers; returns the tickets received per event.
fn check(answers: &[(String, StatusCode, Option<String>)]) -> HashMap<String, HashSet<String>> {
    assert_eq!(answers.len(), CONNECTIONS * PER_CONNECTION);
    let mut sold: HashMap<String, HashSet<String>> = HashMap::new();
    let mut sold_out = 0;
    for (event, status, ticket) in answers {
        match *status {
            StatusCode::OK => {
                let t = ticket.clone().expect("a sale names its ticket");
                assert!(
                    t.starts_with(&format!("{event}-")),
                    "{t} is not of event {event}"
                );
                assert!(
                    sold.entry(event.clone()).or_default().insert(t.clone()),
                    "ticket {t} sold twice"
                );
            }
            StatusCode::CONFLICT => sold_out += 1,
            other => panic!("unexpected answer {other} for event {event}"),
        }
    }
    let capacity: u64 = EVENTS.iter().map(|e| e.1).sum();
    for (id, cap) in EVENTS {
        assert_eq!(
            sold.get(id).map_or(0, HashSet::len) as u64,
            cap,
            "event {id} sold exactly its capacity"
        );
    }
    assert_eq!(
        sold_out as u64,
        (CONNECTIONS * PER_CONNECTION) as u64 - capacity
    );
    sold
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_ticket_twice_on_redis_under_2000_connections() {
    let redis = RedisServer::start();
    let t = Ticketd::on_redis(&redis, &events_flag(), &["--redis-timeout", "5s"]).await;
    t.wait_ready().await;
    let answers = storm(t.addr).await;
    let sold = check(&answers);

    let r = redis.client().await;
    for (id, cap) in EVENTS {
        let ledger: HashMap<String, String> =
            r.hgetall(format!("event:{{{id}}}:sold")).await.unwrap();
        assert_eq!(ledger.len() as u64, cap, "every ticket of event {id} sold");
        let ledger_tickets: HashSet<String> = ledger.keys().cloned().collect();
        assert_eq!(
            &ledger_tickets, &sold[id],
            "ledger of event {id} == tickets the clients received"
        );
        assert_eq!(
            r.llen::<u64, _>(format!("event:{{{id}}}:tickets"))
                .await
                .unwrap(),
            0
        );
        // Each Redis sale is recorded under the batch that made it, and the batch records list
        // exactly those tickets, each once: no batch sold a ticket its record hides. The last
        // tickets of a sale may come from this instance's reserve, settled as fallback sales
        // with a purchase id each.
        let batches: HashMap<String, String> =
            r.hgetall(format!("event:{{{id}}}:batches")).await.unwrap();
        let mut from_redis = HashSet::new();
        let mut reserve_ids = HashSet::new();
        for (ticket, record) in &ledger {
            let pid = record.split(' ').next().unwrap();
            if record.ends_with(" fallback") {
                assert!(
                    reserve_ids.insert(pid),
                    "reserve sale {pid} holds two tickets"
                );
                continue;
            }
            assert!(
                batches
                    .get(pid)
                    .is_some_and(|b| b.split(' ').any(|t| t == ticket)),
                "ticket {ticket} ({record}) is in the record of its batch"
            );
            from_redis.insert(ticket.clone());
        }
        let listed: Vec<&str> = batches.values().flat_map(|b| b.split(' ')).collect();
        assert_eq!(
            listed.len(),
            from_redis.len(),
            "batch records list each sale once"
        );
        assert_eq!(
            listed.into_iter().map(String::from).collect::<HashSet<_>>(),
            from_redis
        );
    }
    let m = t.metrics_json().await;
    assert_eq!(m["totals"]["sold"], 5000);
    assert_eq!(m["totals"]["unavailable"], 0);
    // 8000 purchases from 2000 connections at once: concurrent purchases shared script calls.
    let calls = m["redis"]["purchase_batches"].as_u64().unwrap();
    assert!(
        (1..=4000).contains(&calls),
        "{calls} script calls for 8000 purchases"
    );
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_ticket_twice_in_memory_under_2000_connections() {
    let t = Ticketd::start(&["--store", "memory", "--events", &events_flag()]).await;
    let answers = storm(t.addr).await;
    check(&answers);
    let m = t.metrics_json().await;
    assert_eq!(m["totals"]["remaining"], 0);
    assert_eq!(m["store"], "memory");
    t.stop().await;
}
