//! Reads one event's final state out of the run's private Redis: the ledger, the pool, every
//! reserve, the optional tombstone set and quarantine counts of newer builds, and the buyer
//! index of builds that know buyers.

use std::collections::{BTreeMap, HashMap, HashSet};

use fred::prelude::{Client, ClientLike, HashesInterface, ListInterface, SetsInterface};

use crate::error::HarnessError;

/// One event as Redis holds it at the end of a run.
#[derive(Debug, Clone, Default)]
pub struct EventState {
    /// The event id.
    pub id: String,
    /// Its capacity (`--events`).
    pub capacity: u64,
    /// `event:{ID}:sold`: ticket -> sale record.
    pub sold: HashMap<String, String>,
    /// `event:{ID}:tickets`: the pool.
    pub pool: Vec<String>,
    /// `event:{ID}:reserve:<instance>`: key -> tickets.
    pub reserves: BTreeMap<String, Vec<String>>,
    /// `event:{ID}:stale`: tickets in the ledger that may still sit in the pool or a reserve
    /// (absent in old builds).
    pub stale: HashSet<String>,
    /// `event:{ID}:held`: instance -> quarantined tickets (absent in old builds).
    pub held: BTreeMap<String, u64>,
    /// `event:{ID}:buyers`: the members `<buyer>\n<ticket>` of the buyer index (absent without
    /// known buyers).
    pub buyers: Vec<String>,
}

/// The buyer and the `Idempotency-Key` a ledger record names: a record is
/// `<purchase> <unix ms>[ fallback]`, followed by `\n<buyer>\n<key>` for a known buyer
/// (purchase.lua, settle.lua). `None` for an anonymous sale.
pub fn record_buyer(record: &str) -> Option<(&str, &str)> {
    let mut parts = record.splitn(3, '\n');
    let _sale = parts.next()?;
    let buyer = parts.next()?;
    let key = parts.next().unwrap_or("");
    Some((buyer, key))
}

impl EventState {
    /// Tickets in every reserve.
    pub fn reserved(&self) -> usize {
        self.reserves.values().map(Vec::len).sum()
    }

    /// Quarantined tickets over all instances.
    pub fn held_total(&self) -> u64 {
        self.held.values().sum()
    }
}

/// Reads event `id` of `capacity` tickets.
///
/// # Errors
/// A Redis command failed.
pub async fn read(r: &Client, id: &str, capacity: u64) -> Result<EventState, HarnessError> {
    let key = |suffix: &str| format!("event:{{{id}}}:{suffix}");
    let sold: HashMap<String, String> = r.hgetall(key("sold")).await?;
    let pool: Vec<String> = r.lrange(key("tickets"), 0, -1).await?;
    let keys: Vec<String> = r.custom(fred::cmd!("KEYS"), vec![key("reserve:*")]).await?;
    let mut reserves = BTreeMap::new();
    for k in keys {
        let ids: Vec<String> = r.lrange(&k, 0, -1).await?;
        reserves.insert(k, ids);
    }
    let stale: HashSet<String> = r.smembers(key("stale")).await?;
    let held: HashMap<String, String> = r.hgetall(key("held")).await?;
    let buyers: Vec<String> = r
        .custom(
            fred::cmd!("ZRANGE"),
            vec![key("buyers"), "0".into(), "-1".into()],
        )
        .await?;
    let held = held
        .into_iter()
        .map(|(instance, n)| (instance, n.trim().parse().unwrap_or(0)))
        .collect();
    Ok(EventState {
        id: id.to_owned(),
        capacity,
        sold,
        pool,
        reserves,
        stale,
        held,
        buyers,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_names_its_buyer_and_key() {
        assert_eq!(record_buyer("i.1:7 1700000000000"), None);
        assert_eq!(
            record_buyer("i.1:7 1700000000000\nbuyer-3\nk1-4"),
            Some(("buyer-3", "k1-4"))
        );
        assert_eq!(
            record_buyer("i.1:7 1700000000000 fallback\nbuyer-3\n"),
            Some(("buyer-3", ""))
        );
    }
}
