//! Tokens verified before, kept until they expire, so that a buyer's next purchases with the
//! same token cost a lookup instead of a signature check (HS256 about 4.3 µs, EdDSA about
//! 60 µs, RS256 and ES256 about 0.4 ms: design.md, Buyers: verifying tokens).
//!
//! Only a token that passed every check goes in, keyed by its exact bytes (compared in full,
//! never by a hash alone), with its buyer and the last second it is valid (`exp` plus the
//! leeway). A hit past that second is a miss, and the token is checked again (and refused). The
//! claims checked besides the signature cannot turn false later: issuer and audience are fixed
//! and `nbf` only ever passes once it did.
//!
//! Bounded: `capacity` tokens at most, in [`SHARDS`] shards, each with two generations: a shard
//! whose current generation is full drops its previous one and starts a new one; a hit in the
//! previous generation moves the token to the current. So a token in use stays, one not seen
//! for a while goes, and neither a flood of valid tokens nor expired ones grow the cache.

use std::collections::HashMap;
use std::hash::BuildHasher;

use crossbeam_utils::CachePadded;
use parking_lot::Mutex;

use super::Buyer;

/// Shards of the cache: purchases on different cores seldom wait for the same lock.
pub const SHARDS: usize = 16;

/// Verified tokens by their bytes.
pub struct TokenCache {
    shards: Box<[CachePadded<Mutex<Shard>>]>,
    /// Most tokens in one generation of one shard.
    per_generation: usize,
    hasher: std::hash::RandomState,
}

#[derive(Default)]
struct Shard {
    current: HashMap<Box<[u8]>, Entry>,
    previous: HashMap<Box<[u8]>, Entry>,
}

struct Entry {
    buyer: Buyer,
    /// Last unix second the token is valid in (`exp` + leeway).
    until: u64,
}

impl std::fmt::Debug for TokenCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The tokens stay out of logs.
        f.debug_struct("TokenCache")
            .field("capacity", &(self.per_generation * 2 * SHARDS))
            .finish_non_exhaustive()
    }
}

impl TokenCache {
    /// A cache of at most `capacity` tokens (`None` for 0: no cache).
    pub fn new(capacity: usize) -> Option<TokenCache> {
        if capacity == 0 {
            return None;
        }
        let per_generation = capacity.div_ceil(2 * SHARDS);
        Some(TokenCache {
            shards: (0..SHARDS).map(|_| CachePadded::default()).collect(),
            per_generation,
            hasher: std::hash::RandomState::new(),
        })
    }

    fn shard(&self, token: &[u8]) -> &Mutex<Shard> {
        // The shard's map hashes the token again; this hash only spreads tokens over shards.
        let i = self.hasher.hash_one(token) as usize % SHARDS;
        &self.shards[i]
    }

    /// The buyer of `token` if it was verified before and is still valid at unix second `now`.
    pub fn get(&self, token: &[u8], now: u64) -> Option<Buyer> {
        let mut shard = self.shard(token).lock();
        if let Some(e) = shard.current.get(token) {
            return (now <= e.until).then(|| e.buyer.clone());
        }
        let (token, entry) = shard.previous.remove_entry(token)?;
        if now > entry.until {
            return None;
        }
        let buyer = entry.buyer.clone();
        shard.insert(token, entry, self.per_generation);
        Some(buyer)
    }

    /// Keeps `token`, verified now, for `buyer` until unix second `until` (its `exp` plus the
    /// leeway).
    pub fn insert(&self, token: &[u8], buyer: Buyer, until: u64) {
        self.shard(token)
            .lock()
            .insert(token.into(), Entry { buyer, until }, self.per_generation);
    }

    /// Tokens held now (tests).
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| {
                let s = s.lock();
                s.current.len() + s.previous.len()
            })
            .sum()
    }

    /// Whether no token is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Shard {
    fn insert(&mut self, token: Box<[u8]>, entry: Entry, per_generation: usize) {
        if self.current.len() >= per_generation && !self.current.contains_key(&token) {
            self.previous = std::mem::take(&mut self.current);
        }
        self.current.insert(token, entry);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn buyer(id: &str) -> Buyer {
        Buyer::new(id).unwrap()
    }

    #[test]
    fn a_kept_token_names_its_buyer_until_it_expires() {
        let c = TokenCache::new(100).unwrap();
        assert!(c.get(b"t1", 10).is_none());
        c.insert(b"t1", buyer("b-1"), 20);
        assert_eq!(c.get(b"t1", 10), Some(buyer("b-1")));
        assert_eq!(
            c.get(b"t1", 20),
            Some(buyer("b-1")),
            "valid through its last second"
        );
        assert_eq!(c.get(b"t1", 21), None, "expired: checked again");
        assert_eq!(
            c.get(b"t1x", 10),
            None,
            "another token, even one extending it"
        );
        assert_eq!(c.get(b"t", 10), None);
    }

    #[test]
    fn it_holds_at_most_its_capacity_and_keeps_tokens_in_use() {
        let capacity = 320;
        let c = TokenCache::new(capacity).unwrap();
        c.insert(b"hot", buyer("hot"), u64::MAX);
        for i in 0..10_000u32 {
            c.insert(format!("token-{i}").as_bytes(), buyer("b"), u64::MAX);
            if i % 50 == 0 {
                assert!(c.get(b"hot", 0).is_some(), "a token in use stays (at {i})");
            }
            assert!(c.len() <= capacity, "{} > {capacity}", c.len());
        }
        assert!(c.get(b"token-0", 0).is_none(), "one not seen for long went");
        assert!(c.get(b"token-9999", 0).is_some());
    }

    #[test]
    fn no_capacity_no_cache() {
        assert!(TokenCache::new(0).is_none());
    }
}
