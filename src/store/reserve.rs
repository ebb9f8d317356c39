//! One instance's fallback reserve of one event: the ticket numbers it claimed from the pool
//! while Redis was healthy, sold lock-free when Redis is not.
//!
//! A sale is one atomic add on the cursor plus two stores into the sale's own slot (purchase
//! number and time); the seller then makes it durable in the on-disk journal
//! ([`crate::store::journal`]) before the buyer hears of it. The slots are what the supervisor
//! settles from: it reads the sales it has not settled yet, writes them into the Redis ledger
//! when Redis is back, and moves its mark past them. The reserve is replaced (closed, then
//! swapped) only by the supervisor.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::store::cursor::Cursor;

/// Largest accepted `--fallback-reserve` (a Lua script moves a whole reserve in one call).
pub const MAX_RESERVE: u64 = 5000;

/// A sale made from a reserve, waiting to be written into the ledger.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FallbackSale {
    /// The ticket number.
    pub ticket: u64,
    /// The purchase number (the purchase id is `<instance>:<number>`).
    pub purchase: u64,
    /// When it was sold, unix ms.
    pub at_ms: u64,
}

#[derive(Debug, Default)]
struct Slot {
    /// 0 until the sale is written.
    purchase: AtomicU64,
    at_ms: AtomicU64,
}

/// Claimed tickets and the sales made from them.
#[derive(Debug)]
pub struct Reserve {
    tickets: Vec<u64>,
    cursor: Cursor,
    slots: Box<[Slot]>,
    /// Sales below this index are settled in Redis. Written by the supervisor only.
    settled: AtomicU64,
}

impl Reserve {
    /// A reserve over `tickets`.
    pub fn new(tickets: Vec<u64>) -> Self {
        let len = tickets.len() as u64;
        Self {
            slots: (0..tickets.len()).map(|_| Slot::default()).collect(),
            tickets,
            cursor: Cursor::new(len),
            settled: AtomicU64::new(0),
        }
    }

    /// An empty reserve.
    pub fn empty() -> Self {
        Self::new(Vec::new())
    }

    /// Sells one ticket to purchase number `purchase` (never 0), or `None` when none is left or
    /// the reserve is closed.
    pub fn take(&self, purchase: u64, at_ms: u64) -> Option<u64> {
        debug_assert_ne!(purchase, 0);
        let i = self.cursor.take()? as usize;
        let slot = &self.slots[i];
        slot.at_ms.store(at_ms, Ordering::Relaxed);
        slot.purchase.store(purchase, Ordering::Release);
        Some(self.tickets[i])
    }

    /// Stops sales from this reserve. Returns how many were made in all.
    pub fn close(&self) -> u64 {
        self.cursor.close()
    }

    /// Whether the supervisor closed this reserve (it is being swapped or handed back).
    pub fn is_closed(&self) -> bool {
        self.cursor.is_closed()
    }

    /// Tickets not sold yet.
    pub fn unsold(&self) -> u64 {
        self.cursor.remaining()
    }

    /// Every ticket of the reserve, sold or not.
    pub fn tickets(&self) -> &[u64] {
        &self.tickets
    }

    /// Tickets still held in Redis's reserve list, as far as this reserve knows: all but the
    /// settled sales.
    pub fn held_in_redis(&self) -> u64 {
        self.tickets.len() as u64 - self.settled.load(Ordering::Acquire)
    }

    /// The sales not settled yet, in order, and the mark to pass to [`Reserve::mark_settled`]
    /// once they are. Waits (briefly, bounded) for a sale whose slot is still being written.
    pub fn unsettled(&self) -> (Vec<FallbackSale>, u64) {
        let from = self.settled.load(Ordering::Acquire);
        let to = self.cursor.taken();
        let mut out = Vec::with_capacity((to - from) as usize);
        for i in from..to {
            let slot = &self.slots[i as usize];
            let mut purchase = slot.purchase.load(Ordering::Acquire);
            let mut spins = 0u32;
            while purchase == 0 {
                // The seller took the index and is about to write it (no await in between).
                spins += 1;
                if spins < 64 {
                    std::hint::spin_loop();
                } else {
                    std::thread::sleep(Duration::from_micros(50));
                }
                purchase = slot.purchase.load(Ordering::Acquire);
            }
            out.push(FallbackSale {
                ticket: self.tickets[i as usize],
                purchase,
                at_ms: slot.at_ms.load(Ordering::Relaxed),
            });
        }
        (out, to)
    }

    /// Whether a sale of this reserve is not settled yet.
    pub fn has_unsettled(&self) -> bool {
        self.settled.load(Ordering::Acquire) < self.cursor.taken()
    }

    /// Records that every sale below `mark` is in the ledger.
    pub fn mark_settled(&self, mark: u64) {
        self.settled.fetch_max(mark, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::sync::Arc;

    #[test]
    fn sells_journals_and_settles() {
        let r = Reserve::new(vec![10, 11, 12]);
        assert_eq!(r.take(7, 1000), Some(10));
        assert_eq!(r.take(8, 1001), Some(11));
        let (sales, mark) = r.unsettled();
        assert_eq!(
            sales,
            [
                FallbackSale {
                    ticket: 10,
                    purchase: 7,
                    at_ms: 1000
                },
                FallbackSale {
                    ticket: 11,
                    purchase: 8,
                    at_ms: 1001
                }
            ]
        );
        r.mark_settled(mark);
        assert_eq!(r.held_in_redis(), 1);
        assert_eq!(r.unsettled().0, []);
        assert_eq!(r.take(9, 1002), Some(12));
        assert_eq!(r.take(10, 1003), None);
        assert_eq!(r.unsettled().0.len(), 1);
    }

    #[test]
    fn a_closed_reserve_sells_nothing_more() {
        let r = Reserve::new(vec![1, 2, 3]);
        r.take(1, 0);
        assert_eq!(r.close(), 1);
        assert_eq!(r.take(2, 0), None);
        assert_eq!(
            r.unsettled().0.len(),
            1,
            "the sale before the close is still journaled"
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]
        /// Threads selling at once never get the same ticket; sold + unsold == claimed; every
        /// sale is journaled exactly once across interleaved settlements.
        #[test]
        fn concurrent_sales_are_unique_and_journaled(len in 0usize..1500, threads in 1usize..6, per in 0usize..500) {
            let tickets: Vec<u64> = (1000..1000 + len as u64).collect();
            let r = Arc::new(Reserve::new(tickets));
            let next = Arc::new(AtomicU64::new(1));
            let sellers: Vec<_> = (0..threads).map(|_| {
                let (r, next) = (r.clone(), next.clone());
                std::thread::spawn(move || (0..per).filter_map(|_| {
                    let p = next.fetch_add(1, Ordering::Relaxed);
                    r.take(p, 0).map(|t| (t, p))
                }).collect::<Vec<_>>())
            }).collect();
            // Settle while they sell.
            let mut journal = Vec::new();
            for _ in 0..5 {
                let (sales, mark) = r.unsettled();
                journal.extend(sales);
                r.mark_settled(mark);
            }
            let mut sold: Vec<(u64, u64)> = sellers.into_iter().flat_map(|h| h.join().unwrap()).collect();
            let (sales, mark) = r.unsettled();
            journal.extend(sales);
            r.mark_settled(mark);
            let n = sold.len();
            sold.sort_unstable();
            let mut tickets: Vec<u64> = sold.iter().map(|s| s.0).collect();
            tickets.dedup();
            prop_assert_eq!(tickets.len(), n, "a ticket was sold twice");
            prop_assert_eq!(n as u64 + r.unsold(), len as u64, "sold + unsold == claimed");
            let mut journaled: Vec<(u64, u64)> = journal.iter().map(|s| (s.ticket, s.purchase)).collect();
            journaled.sort_unstable();
            prop_assert_eq!(journaled, sold, "the journal holds every sale once");
            prop_assert_eq!(r.held_in_redis(), r.unsold());
        }
    }
}
