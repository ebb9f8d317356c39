//! Reads an event's whole state out of the test's Redis and checks the invariants that make
//! "never sold twice" true: every ticket in exactly one place (pool, a reserve, or the ledger),
//! the ledger and the purchase index agreeing, the counters matching the lists.

use std::collections::{HashMap, HashSet};

use fred::prelude::*;

/// One event as Redis holds it.
#[derive(Debug)]
pub struct EventState {
    pub sold: HashMap<String, String>,
    /// The pool, less tickets marked stale (recorded as sold by a late settlement).
    pub pool: Vec<String>,
    /// Every reserve, live or held back, less stale tickets.
    pub reserves: HashMap<String, Vec<String>>,
    pub reserved_counter: i64,
    /// Instance -> tickets of its held-back reserve.
    pub held: HashMap<String, i64>,
}

impl EventState {
    /// Tickets held in all reserves.
    pub fn reserved(&self) -> usize {
        self.reserves.values().map(Vec::len).sum()
    }

    /// Tickets held back in reserves whose lease expired.
    pub fn held_back(&self) -> i64 {
        self.held.values().sum()
    }
}

/// Reads event `id`.
pub async fn read(r: &Client, id: &str) -> EventState {
    let sold: HashMap<String, String> = r.hgetall(format!("event:{{{id}}}:sold")).await.unwrap();
    let stale: HashSet<String> = r.smembers(format!("event:{{{id}}}:stale")).await.unwrap();
    let mut pool: Vec<String> = r
        .lrange(format!("event:{{{id}}}:tickets"), 0, -1)
        .await
        .unwrap();
    pool.retain(|t| !stale.contains(t));
    let keys: Vec<String> = r
        .custom(
            fred::cmd!("KEYS"),
            vec![format!("event:{{{id}}}:reserve:*")],
        )
        .await
        .unwrap();
    let mut reserves = HashMap::new();
    for k in keys {
        let mut ids: Vec<String> = r.lrange(&k, 0, -1).await.unwrap();
        ids.retain(|t| !stale.contains(t));
        reserves.insert(k, ids);
    }
    let reserved_counter: Option<i64> = r.get(format!("event:{{{id}}}:reserved")).await.unwrap();
    let held: HashMap<String, i64> = r.hgetall(format!("event:{{{id}}}:held")).await.unwrap();
    EventState {
        sold,
        pool,
        reserves,
        reserved_counter: reserved_counter.unwrap_or(0),
        held,
    }
}

/// Checks event `id` of `capacity` tickets against the tickets the clients received.
/// Returns the state for further checks.
pub async fn check(r: &Client, id: &str, capacity: u64, received: &HashSet<String>) -> EventState {
    let s = read(r, id).await;
    let mut everywhere: Vec<&String> = s
        .sold
        .keys()
        .chain(&s.pool)
        .chain(s.reserves.values().flatten())
        .collect();
    let n = everywhere.len();
    everywhere.sort();
    everywhere.dedup();
    assert_eq!(
        everywhere.len(),
        n,
        "event {id}: a ticket sits in two places (pool, reserves, ledger)"
    );
    assert_eq!(
        n as u64,
        capacity,
        "event {id}: ledger {} + pool {} + reserves {} == capacity",
        s.sold.len(),
        s.pool.len(),
        s.reserved()
    );
    assert_eq!(
        s.reserved_counter + s.held_back(),
        s.reserved() as i64,
        "event {id}: the reserved and held-back counters match the reserve lists"
    );
    for t in received {
        assert!(
            s.sold.contains_key(t),
            "event {id}: ticket {t} was received by a client but is not in the ledger"
        );
    }
    // Redis sales name the batch that made them, whose record (what a re-sent call answers)
    // lists the ticket; fallback sales name their own purchase id, one ticket each.
    let batches: HashMap<String, String> =
        r.hgetall(format!("event:{{{id}}}:batches")).await.unwrap();
    let mut fallback = HashSet::new();
    for (ticket, record) in &s.sold {
        // A known buyer's record continues on further lines; a leading "=" marks a ticket whose
        // key a retry was answered with.
        let first = record.lines().next().unwrap_or("");
        let first = first.strip_prefix('=').unwrap_or(first);
        let pid = first.split(' ').next().unwrap();
        if first.ends_with(" fallback") {
            assert!(
                fallback.insert(pid),
                "event {id}: fallback purchase {pid} holds two tickets"
            );
        } else {
            assert!(
                batches
                    .get(pid)
                    .is_some_and(|b| b.split(' ').any(|t| t == ticket)),
                "event {id}: ticket {ticket} is in the record of batch {pid} that sold it"
            );
        }
    }
    s
}
