//! Tokens verified before, kept until they expire, so that a buyer's next purchases with the
//! same token cost a lookup instead of a signature check (HS256 about 4.3 µs, EdDSA about
//! 60 µs, RS256 and ES256 about 0.4 ms: design.md, Buyers: verifying tokens).
//!
//! Only a token that passed every check goes in, keyed by the hash of its bytes and compared
//! in full on every hit (a hash alone never answers), with its buyer and the last second it is
//! valid (`exp` plus the leeway). A hit past that second is a miss, and the token is checked
//! again (and refused). The claims checked besides the signature cannot turn false later:
//! issuer and audience are fixed and `nbf` only ever passes once it did.
//!
//! Bounded: `capacity` tokens at most, in [`SHARDS`] shards, each with two generations: a shard
//! whose current generation is full drops its previous one and starts a new one; a hit in the
//! previous generation moves the token to the current. So a token in use stays, one not seen
//! for a while goes, and neither a flood of valid tokens nor expired ones grow the cache.

use std::collections::HashMap;

use crossbeam_utils::CachePadded;
use parking_lot::Mutex;

use super::Buyer;
use crate::seeded_hash::{BuildPrehashed, SeededHash};

/// Shards of the cache: purchases on different cores seldom wait for the same lock.
pub const SHARDS: usize = 16;

// A shard is picked by the hash's top 4 bits ([`TokenCache::shard_of`]).
const _: () = assert!(SHARDS <= 16);

/// Verified tokens by their bytes.
pub struct TokenCache {
    shards: Box<[CachePadded<Mutex<Shard>>]>,
    /// Most tokens in one generation of one shard.
    per_generation: usize,
    /// The tokens' hash, once per lookup for the shard and its map both. Random per process,
    /// so which tokens share a bucket cannot be known outside; and only tokens that passed the
    /// signature check go in, so nobody without the key chooses what the maps hold.
    hasher: SeededHash,
}

/// Tokens by the hash of their bytes (`TokenCache::hasher`, computed once per lookup for the
/// shard and the map both). Two tokens of one hash keep the later: a miss costs a check.
type Tokens = HashMap<u64, Entry, BuildPrehashed>;

#[derive(Default)]
struct Shard {
    current: Tokens,
    previous: Tokens,
}

struct Entry {
    token: Box<[u8]>,
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
            hasher: SeededHash::default(),
        })
    }

    fn shard(&self, hash: u64) -> &Mutex<Shard> {
        &self.shards[Self::shard_of(hash)]
    }

    /// The top bits: the map's own mixing of the hash starts from all of it.
    fn shard_of(hash: u64) -> usize {
        (hash >> 60) as usize % SHARDS
    }

    /// The buyer of `token` if it was verified before and is still valid at unix second `now`.
    pub fn get(&self, token: &[u8], now: u64) -> Option<Buyer> {
        let hash = self.hasher.bytes(token);
        let mut shard = self.shard(hash).lock();
        if let Some(e) = shard.current.get(&hash) {
            return (now <= e.until && *e.token == *token).then(|| e.buyer.clone());
        }
        let e = shard.previous.get(&hash)?;
        if now > e.until || *e.token != *token {
            return None;
        }
        let entry = shard.previous.remove(&hash).expect("just found");
        let buyer = entry.buyer.clone();
        shard.insert(hash, entry, self.per_generation);
        Some(buyer)
    }

    /// Keeps `token`, verified now, for `buyer` until unix second `until` (its `exp` plus the
    /// leeway).
    pub fn insert(&self, token: &[u8], buyer: Buyer, until: u64) {
        let hash = self.hasher.bytes(token);
        let entry = Entry {
            token: token.into(),
            buyer,
            until,
        };
        self.shard(hash)
            .lock()
            .insert(hash, entry, self.per_generation);
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
    fn insert(&mut self, hash: u64, entry: Entry, per_generation: usize) {
        if self.current.len() >= per_generation && !self.current.contains_key(&hash) {
            self.previous = std::mem::take(&mut self.current);
        }
        self.current.insert(hash, entry);
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
    fn a_token_whose_hash_another_holds_is_a_miss() {
        let c = TokenCache::new(100).unwrap();
        c.insert(b"t1", buyer("b-1"), 20);
        // What a collision would leave: t2's hash naming t1's entry, in either generation.
        let (h1, h2) = (c.hasher.bytes(b"t1"), c.hasher.bytes(b"t2"));
        assert_ne!(h1, h2);
        for generation in [false, true] {
            let mut shard = c.shard(h2).lock();
            let entry = Entry {
                token: b"t1".as_slice().into(),
                buyer: buyer("b-1"),
                until: 20,
            };
            if generation {
                shard.previous.insert(h2, entry);
            } else {
                shard.current.insert(h2, entry);
            }
            drop(shard);
            assert_eq!(c.get(b"t2", 10), None, "compared in full");
            let mut shard = c.shard(h2).lock();
            shard.current.remove(&h2);
            shard.previous.remove(&h2);
        }
        assert_eq!(c.get(b"t1", 10), Some(buyer("b-1")));
    }

    #[test]
    fn tokens_alike_but_for_a_few_bytes_spread_over_the_shards() {
        // Tokens differing only in their last bytes (as a client's counter makes them) must
        // not crowd one shard: that would evict tokens in use.
        let c = TokenCache::new(100).unwrap();
        let shards: Vec<usize> = (0..10_000u32)
            .map(|i| TokenCache::shard_of(c.hasher.bytes(format!("token-{i}").as_bytes())))
            .collect();
        let alike = shards.windows(2).filter(|w| w[0] == w[1]).count();
        // 625 expected (1 in 16), with a standard deviation of 24.
        assert!(alike < 800, "{alike} of 9,999 neighbours share a shard");
    }

    #[test]
    fn no_capacity_no_cache() {
        assert!(TokenCache::new(0).is_none());
    }
}
