//! The Redis side of the verification: capacities from the `events` catalogue, and after the
//! run, that every ticket the clients received is recorded in `event:{ID}:sold`.
//!
//! The answers alone cannot show a sale the server made but never recorded (a seat that could
//! be sold again). The ledger check closes that gap. It also counts the sales recorded that
//! this run did not receive (legitimate for other clients, or for requests that timed out) and
//! whether sold + pool + instance reserves add up to the capacity.
//!
//! Sales an instance made from its fallback reserve while Redis was failing reach the ledger
//! later, so received tickets missing from it are re-checked for `--ledger-wait` first.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use fred::prelude::*;
use serde::Serialize;

/// Ticket ids asked for in one `HMGET`.
const CHUNK: usize = 1000;

/// Examples of missing tickets kept for the report.
const EXAMPLES: usize = 10;

/// A connection to the Redis that holds the server's ledger.
pub struct Ledger {
    client: Client,
}

/// The ledger check of one event.
#[derive(Debug, Clone, Serialize)]
pub struct EventLedger {
    /// Event id.
    pub event: String,
    /// Distinct tickets the clients received.
    pub received: u64,
    /// Of those, how many the ledger records as sold.
    pub recorded: u64,
    /// Received but not in the ledger (a failure).
    pub missing: u64,
    /// Some of the missing ticket ids.
    pub missing_examples: Vec<String>,
    /// Sales recorded in the ledger in all.
    pub ledger_sold: u64,
    /// Recorded sales this run did not receive.
    pub not_received: u64,
    /// Tickets left in the shared pool (`event:{ID}:tickets`).
    pub pool: u64,
    /// Tickets held in instances' reserves (`event:{ID}:reserve:*`).
    pub reserves: u64,
    /// Capacity − (sold + pool + reserves), when the capacity is known: 0 when every ticket is
    /// accounted for.
    pub unaccounted: Option<i64>,
    /// Whether the counts stopped changing before they were read (they are read one after the
    /// other, so a server still at work can make them disagree for a moment).
    pub settled: bool,
}

impl Ledger {
    /// Connects (within 5 s).
    ///
    /// # Errors
    /// A bad URL or an unreachable Redis.
    pub async fn connect(url: &str) -> Result<Ledger, String> {
        let config = Config::from_url(url).map_err(|e| format!("--redis-url {url:?}: {e}"))?;
        let client = Builder::from_config(config)
            .with_connection_config(|c| {
                c.connection_timeout = Duration::from_secs(5);
            })
            .with_performance_config(|p| {
                p.default_command_timeout = Duration::from_secs(30);
            })
            .build()
            .map_err(|e| format!("--redis-url {url:?}: {e}"))?;
        match tokio::time::timeout(Duration::from_secs(5), client.init()).await {
            Ok(Ok(_)) => Ok(Ledger { client }),
            Ok(Err(e)) => Err(format!("cannot connect to Redis at {url}: {e}")),
            Err(_) => Err(format!("cannot connect to Redis at {url}: timed out")),
        }
    }

    /// Capacities of every event in the `events` catalogue hash.
    ///
    /// # Errors
    /// A Redis error or a capacity that is not a number.
    pub async fn capacities(&self) -> Result<HashMap<String, u64>, String> {
        let raw: HashMap<String, String> = self
            .client
            .hgetall("events")
            .await
            .map_err(|e| format!("HGETALL events: {e}"))?;
        raw.into_iter()
            .map(|(id, cap)| {
                cap.trim()
                    .parse()
                    .map(|c| (id.clone(), c))
                    .map_err(|_| format!("events[{id}] is not a capacity: {cap:?}"))
            })
            .collect()
    }

    /// Checks one event's received tickets against its ledger.
    ///
    /// # Errors
    /// A Redis error.
    pub async fn check_event(
        &self,
        event: &str,
        received: &HashSet<Box<str>>,
        capacity: Option<u64>,
        wait: Duration,
    ) -> Result<EventLedger, String> {
        let sold_key = format!("event:{{{event}}}:sold");
        let mut missing = self.missing(&sold_key, received.iter()).await?;
        let deadline = tokio::time::Instant::now() + wait;
        while !missing.is_empty() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(250)).await;
            missing = self.missing(&sold_key, missing.iter()).await?;
        }
        // The server may still be settling (purchases it answered 503 are made void a moment
        // later): read the counts until two reads 250 ms apart agree, within the wait.
        let deadline = tokio::time::Instant::now() + wait;
        let mut counts = self.counts(event).await?;
        let settled = loop {
            if tokio::time::Instant::now() >= deadline {
                break false;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
            let again = self.counts(event).await?;
            if again == counts {
                break true;
            }
            counts = again;
        };
        let (ledger_sold, pool, reserves) = counts;
        let recorded = received.len() as u64 - missing.len() as u64;
        let unaccounted = capacity.map(|cap| {
            i64::try_from(cap).unwrap_or(i64::MAX)
                - i64::try_from(ledger_sold + pool + reserves).unwrap_or(i64::MAX)
        });
        let mut missing_examples: Vec<String> = missing
            .iter()
            .take(EXAMPLES)
            .map(|t| t.to_string())
            .collect();
        missing_examples.sort();
        Ok(EventLedger {
            event: event.to_string(),
            received: received.len() as u64,
            recorded,
            missing: missing.len() as u64,
            missing_examples,
            ledger_sold,
            not_received: ledger_sold.saturating_sub(recorded),
            pool,
            reserves,
            unaccounted,
            settled,
        })
    }

    /// `(sold, pool, reserves)` of `event`, read one after the other (not atomically).
    async fn counts(&self, event: &str) -> Result<(u64, u64, u64), String> {
        let sold_key = format!("event:{{{event}}}:sold");
        let sold: u64 = self
            .client
            .hlen(&sold_key)
            .await
            .map_err(|e| format!("HLEN {sold_key}: {e}"))?;
        let pool_key = format!("event:{{{event}}}:tickets");
        let pool: u64 = self
            .client
            .llen(&pool_key)
            .await
            .map_err(|e| format!("LLEN {pool_key}: {e}"))?;
        let reserves = self.reserves(event).await?;
        Ok((sold, pool, reserves))
    }

    /// The tickets among `tickets` that `event:{ID}:sold` has no record of.
    async fn missing<'a>(
        &self,
        sold_key: &str,
        tickets: impl Iterator<Item = &'a Box<str>>,
    ) -> Result<Vec<Box<str>>, String> {
        let tickets: Vec<&Box<str>> = tickets.collect();
        let mut missing = Vec::new();
        for chunk in tickets.chunks(CHUNK) {
            let fields: Vec<String> = chunk.iter().map(|t| t.to_string()).collect();
            let records: Vec<Option<String>> = self
                .client
                .hmget(sold_key, fields)
                .await
                .map_err(|e| format!("HMGET {sold_key}: {e}"))?;
            missing.extend(
                chunk
                    .iter()
                    .zip(records)
                    .filter(|(_, r)| r.is_none())
                    .map(|(t, _)| (*t).clone()),
            );
        }
        Ok(missing)
    }

    /// Tickets in every instance reserve of `event`.
    async fn reserves(&self, event: &str) -> Result<u64, String> {
        let pattern = format!("event:{{{event}}}:reserve:*");
        let mut cursor = "0".to_string();
        let mut total = 0u64;
        loop {
            let (next, keys): (String, Vec<String>) = self
                .client
                .scan_page(cursor, pattern.clone(), Some(1000), None)
                .await
                .map_err(|e| format!("SCAN {pattern}: {e}"))?;
            for key in keys {
                let n: u64 = self
                    .client
                    .llen(&key)
                    .await
                    .map_err(|e| format!("LLEN {key}: {e}"))?;
                total += n;
            }
            if next == "0" {
                return Ok(total);
            }
            cursor = next;
        }
    }

    /// Closes the connection.
    pub async fn close(self) {
        let _ = self.client.quit().await;
    }
}
