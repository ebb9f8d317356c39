//! Purchases with an `Idempotency-Key` in flight on this instance: a repeat that arrives while
//! the first is still unanswered gets `409 idempotency_key_in_use` instead of waiting, as the
//! Idempotency-Key draft asks.
//!
//! Across instances there is no "in flight": the purchase script answers a key atomically, so
//! a repeat on another instance gets either the first answer again or, if it runs first, makes
//! the sale itself and the first is answered with it (design.md, Buyers). Either way at most
//! one ticket is sold per (buyer, key).

use std::collections::HashSet;

use parking_lot::Mutex;

use crate::seeded_hash::{BuildPrehashed, SeededHash};

/// Shards of the set, so that keyed purchases on different cores rarely share a lock.
const SHARDS: usize = 16;

/// The (buyer, key) pairs of purchases not yet answered, by a 64-bit hash of the pair (a
/// [`SeededHash`], its seed random per process): nothing is allocated per purchase. Two pairs
/// of the same hash would make the second wait for the first's answer (a `409` it can retry),
/// with a chance of about one in 2^64 per pair in flight.
#[derive(Debug)]
pub struct KeysInFlight {
    shards: [Mutex<HashSet<u64, BuildPrehashed>>; SHARDS],
    hasher: SeededHash,
}

impl Default for KeysInFlight {
    fn default() -> Self {
        Self {
            shards: std::array::from_fn(|_| Mutex::default()),
            hasher: Default::default(),
        }
    }
}

/// Holds one (buyer, key) in flight until dropped (answered, or the client went away).
#[derive(Debug)]
pub struct InFlight<'a> {
    set: &'a KeysInFlight,
    shard: usize,
    hash: u64,
}

impl KeysInFlight {
    /// Marks (`buyer`, `key`) in flight, or `None` when it is already.
    pub fn enter(&self, buyer: &str, key: &str) -> Option<InFlight<'_>> {
        let hash = self.hasher.pair(buyer.as_bytes(), key.as_bytes());
        let shard = hash as usize % SHARDS;
        if !self.shards[shard].lock().insert(hash) {
            return None;
        }
        Some(InFlight {
            set: self,
            shard,
            hash,
        })
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.set.shards[self.shard].lock().remove(&self.hash);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_at_a_time_per_buyer_and_key() {
        let keys = KeysInFlight::default();
        let first = keys.enter("alice", "k").expect("free");
        assert!(keys.enter("alice", "k").is_none());
        assert!(keys.enter("bob", "k").is_some());
        assert!(keys.enter("alice", "k2").is_some());
        drop(first);
        assert!(keys.enter("alice", "k").is_some());
    }
}
