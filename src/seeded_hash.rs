//! A fast seeded hash for the in-process maps whose keys are long strings a client sends
//! (tokens, buyer ids with their `Idempotency-Key`): 8 bytes at a time with a folded multiply
//! and splitmix64's finaliser, a few instructions per word where SipHash spends about 500 on a
//! 200-byte token (design.md, Findings), and [`Prehashed`], the maps' hasher for keys that are
//! such a hash already.
//!
//! Not a defence against chosen collisions. Where it is used, none is needed: the seed is random
//! per process, and what a collision costs is bounded (a cache miss; a `409` the client may
//! retry), never a wrong answer.

use std::hash::{BuildHasherDefault, Hasher};

/// A hash of byte strings under a seed drawn at random when it is made.
#[derive(Debug, Clone, Copy)]
pub struct SeededHash {
    seed: u64,
}

impl Default for SeededHash {
    fn default() -> Self {
        Self {
            seed: rand::random::<u64>() | 1,
        }
    }
}

impl SeededHash {
    /// The hash of `bytes`.
    pub fn bytes(&self, bytes: &[u8]) -> u64 {
        finish(absorb(self.seed, bytes))
    }

    /// The hash of the pair (`a`, `b`): each part's length is mixed in, so no two pairs of
    /// different parts share an input.
    pub fn pair(&self, a: &[u8], b: &[u8]) -> u64 {
        finish(absorb(absorb(self.seed, a), b))
    }
}

/// `state` with `bytes` and their length folded in.
fn absorb(state: u64, bytes: &[u8]) -> u64 {
    let mut h = state ^ bytes.len() as u64;
    let mut words = bytes.chunks_exact(8);
    for w in &mut words {
        let w = u64::from_le_bytes(w.try_into().expect("8 bytes"));
        h = fold(h ^ w, 0xa076_1d64_78bd_642f);
    }
    let mut last = [0u8; 8];
    last[..words.remainder().len()].copy_from_slice(words.remainder());
    fold(h ^ u64::from_le_bytes(last), 0xe703_7ed1_a0b4_28db)
}

/// splitmix64's finaliser: one folded multiply leaves the top bits nearly alike for inputs that
/// differ in a few low bytes, and a shard is picked from them.
fn finish(h: u64) -> u64 {
    let h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    let h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// The high and low halves of the 128-bit product, xored: the mixing step of wyhash and
/// foldhash.
fn fold(a: u64, b: u64) -> u64 {
    let p = u128::from(a) * u128::from(b);
    (p as u64) ^ ((p >> 64) as u64)
}

/// The hasher of a map keyed by a [`SeededHash`] value: the key is mixed once more (hashbrown
/// takes its control bits from the top and its bucket from the bottom), not hashed again.
#[derive(Debug, Default)]
pub struct Prehashed(u64);

/// [`Prehashed`] for `HashMap` and `HashSet`.
pub type BuildPrehashed = BuildHasherDefault<Prehashed>;

impl Hasher for Prehashed {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Not called for u64 keys; correct all the same.
        for &b in bytes {
            self.0 = fold(self.0 ^ u64::from(b), 0x9e37_79b9_7f4a_7c15);
        }
    }

    fn write_u64(&mut self, h: u64) {
        self.0 = fold(h, 0x9e37_79b9_7f4a_7c15);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_byte_and_the_length_count() {
        let h = SeededHash::default();
        let token = b"eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJidXllci0xIn0.c2lnbmF0dXJl".to_vec();
        let base = h.bytes(&token);
        for i in 0..token.len() {
            let mut other = token.clone();
            other[i] ^= 1;
            assert_ne!(h.bytes(&other), base, "byte {i}");
        }
        assert_ne!(h.bytes(&token[..token.len() - 1]), base);
        assert_ne!(
            h.bytes(b"ab\0"),
            h.bytes(b"ab"),
            "zero padding is not the length"
        );
    }

    #[test]
    fn a_pair_is_not_its_concatenation_split_elsewhere() {
        let h = SeededHash::default();
        assert_ne!(h.pair(b"ab", b"c"), h.pair(b"a", b"bc"));
        assert_ne!(h.pair(b"", b"abc"), h.pair(b"abc", b""));
        assert_ne!(h.pair(b"alice", b"k-1"), h.pair(b"alice", b"k-2"));
        assert_eq!(h.pair(b"alice", b"k-1"), h.pair(b"alice", b"k-1"));
    }

    #[test]
    fn two_seeds_hash_apart() {
        let (a, b) = (SeededHash::default(), SeededHash::default());
        assert_ne!(a.bytes(b"token"), b.bytes(b"token"));
    }
}
