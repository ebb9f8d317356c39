//! Known buyers' sales from one event's fallback reserves on this instance: what the instance
//! knows while Redis cannot tell it, to enforce the per-buyer limit and answer a repeated
//! `Idempotency-Key` from memory, and who each sale went to until it is settled.
//!
//! The bound this gives (design.md, Buyers): while Redis is down, one instance sells one buyer
//! at most the limit from its reserves, over all its runs (a restarted instance starts from
//! what Redis recorded of its earlier runs' sales), so a buyer may end with up to the limit
//! plus the limit per instance; settlement counts and logs every buyer over it. A key is
//! answered again only by the instance that sold it, until settlement records it in Redis.

use std::collections::HashMap;
use std::sync::Arc;

use crate::store::purchaser::{Attribution, BuyerKey, Purchaser};
use crate::store::Sale;

/// One event's known-buyer sales from this instance's reserves.
#[derive(Debug, Default)]
pub struct ReserveBuyers {
    /// Tickets sold from reserves to each buyer: by earlier runs of this instance (read from
    /// Redis before this run's first reserve, [`ReserveBuyers::seed`]) and by this run.
    counts: HashMap<Box<str>, u32>,
    /// Whether the earlier runs' counts were read.
    seeded: bool,
    /// Answers given per (buyer, key): ticket and remaining.
    keys: HashMap<BuyerKey, (u64, u64)>,
    /// Who each sale went to, by purchase number, until settled.
    by_purchase: HashMap<u64, Arc<Attribution>>,
}

/// What the instance decides before it takes a ticket for a known buyer.
#[derive(Debug, PartialEq, Eq)]
pub enum Before {
    /// Sell: a ticket may go to this buyer.
    Sell,
    /// Answer this without selling (a repeated key, the limit).
    Answer(Sale),
}

impl ReserveBuyers {
    /// Whether the earlier runs' counts are in ([`ReserveBuyers::seed`]).
    pub fn seeded(&self) -> bool {
        self.seeded
    }

    /// Adds what earlier runs of this instance sold each buyer from its reserves
    /// (`event:{id}:fallback_buyers`, written by the settlement), so that the limit holds per
    /// instance and not per process: without it, a restart between two outages would let the
    /// same instance sell a buyer the limit again. Called once, before the run's first reserve
    /// of the event is for sale.
    pub fn seed(&mut self, counts: impl IntoIterator<Item = (Box<str>, u32)>) {
        for (buyer, n) in counts {
            *self.counts.entry(buyer).or_default() += n;
        }
        self.seeded = true;
    }

    /// Whether `who` may buy one more ticket (`limit` 0: no limit); counts it as bought when
    /// so. Undo with [`ReserveBuyers::unbuy`] if no ticket is taken after all.
    pub fn before(&mut self, who: &Purchaser, limit: u32) -> Before {
        if let Some(key) = &who.key {
            if let Some(&(ticket, remaining)) = self.keys.get(&(who.buyer.clone(), key.clone())) {
                return Before::Answer(Sale::Replayed { ticket, remaining });
            }
        }
        if who.buyer.is_empty() {
            return Before::Sell; // anonymous with a key: no limit
        }
        let count = self.counts.entry(who.buyer.clone()).or_default();
        if limit > 0 && *count >= limit {
            return Before::Answer(Sale::LimitReached);
        }
        *count += 1;
        Before::Sell
    }

    /// Records that purchase number `purchase` goes to `who`, answering `remaining`: before its
    /// ticket is taken, so that the settlement never sees the sale without its buyer.
    pub fn attribute(&mut self, who: &Purchaser, purchase: u64, remaining: u64) {
        self.by_purchase.insert(
            purchase,
            Arc::new(Attribution {
                buyer: who.buyer.clone(),
                key: who.key_str().into(),
                remaining,
            }),
        );
    }

    /// Takes back [`ReserveBuyers::before`] and [`ReserveBuyers::attribute`]: no ticket was
    /// left for purchase number `purchase`.
    pub fn unbuy(&mut self, who: &Purchaser, purchase: u64) {
        if let Some(count) = self.counts.get_mut(&who.buyer) {
            *count = count.saturating_sub(1);
        }
        self.by_purchase.remove(&purchase);
    }

    /// Records the answer to `who`'s key once the sale is durable: a repeat gets it again.
    pub fn answered(&mut self, who: &Purchaser, ticket: u64, remaining: u64) {
        if let Some(key) = &who.key {
            self.keys
                .insert((who.buyer.clone(), key.clone()), (ticket, remaining));
        }
    }

    /// Who purchase number `purchase` sold to, if a known buyer.
    pub fn attribution(&self, purchase: u64) -> Option<Arc<Attribution>> {
        self.by_purchase.get(&purchase).cloned()
    }

    /// Forgets who the settled purchases went to.
    pub fn settled(&mut self, purchases: impl IntoIterator<Item = u64>) {
        for p in purchases {
            self.by_purchase.remove(&p);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limit_and_keys_from_what_this_instance_sold() {
        let mut b = ReserveBuyers::default();
        let alice = Purchaser::new("alice", Some("k1".into()));
        assert_eq!(b.before(&alice, 2), Before::Sell);
        b.attribute(&alice, 7, 99);
        b.answered(&alice, 41, 99);
        // The same key again: the same answer, nothing counted.
        assert_eq!(
            b.before(&alice, 2),
            Before::Answer(Sale::Replayed {
                ticket: 41,
                remaining: 99
            })
        );
        let again = Purchaser::new("alice", Some("k2".into()));
        assert_eq!(b.before(&again, 2), Before::Sell);
        let third = Purchaser::new("alice", None);
        assert_eq!(b.before(&third, 2), Before::Answer(Sale::LimitReached));
        b.attribute(&again, 8, 98);
        b.unbuy(&again, 8);
        assert!(b.attribution(8).is_none());
        assert_eq!(b.before(&third, 2), Before::Sell);
        assert_eq!(b.before(&Purchaser::new("bob", None), 0), Before::Sell);
        assert_eq!(b.attribution(7).unwrap().key.as_ref(), "k1");
        b.settled([7]);
        assert!(b.attribution(7).is_none());
    }

    #[test]
    fn earlier_runs_count_toward_the_limit() {
        let mut b = ReserveBuyers::default();
        assert!(!b.seeded());
        b.seed([("alice".into(), 2), ("bob".into(), 1)]);
        assert!(b.seeded());
        let alice = Purchaser::new("alice", None);
        assert_eq!(b.before(&alice, 2), Before::Answer(Sale::LimitReached));
        let bob = Purchaser::new("bob", None);
        assert_eq!(b.before(&bob, 2), Before::Sell);
        assert_eq!(b.before(&bob, 2), Before::Answer(Sale::LimitReached));
        assert_eq!(b.before(&Purchaser::new("carol", None), 2), Before::Sell);
    }
}
