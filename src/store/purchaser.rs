//! Who buys: a known buyer (from a verified token or a trusted gateway header) and the
//! purchase's `Idempotency-Key`, as the stores see them, and the per-buyer rules every store
//! enforces (the limit per event, how long keys are remembered).
//!
//! Anonymous purchases carry none of this and pay nothing for it: the stores' anonymous path is
//! the one it always was.

use std::time::Duration;

/// A (buyer, `Idempotency-Key`) pair, as the in-memory maps key it.
pub type BuyerKey = (Box<str>, Box<str>);

/// A purchase by a known buyer.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Purchaser {
    /// The buyer id: 1 to 256 bytes without control characters (so `\n` can separate it from
    /// a ticket or a key in Redis).
    pub buyer: Box<str>,
    /// The `Idempotency-Key`: at most one purchase happens per (buyer, key).
    pub key: Option<Box<str>>,
}

impl Purchaser {
    /// A purchase by `buyer`, with `key` if the request carried one.
    pub fn new(buyer: impl Into<Box<str>>, key: Option<Box<str>>) -> Self {
        Self {
            buyer: buyer.into(),
            key,
        }
    }

    /// The key, or the empty string (how the scripts and the journal spell "none").
    pub fn key_str(&self) -> &str {
        self.key.as_deref().unwrap_or("")
    }

    /// `buyer:{<length>:<buyer>}:key:<key>`: the STRING that binds a key to the event it was
    /// first used for on a Redis Cluster, so that the same key sent for another event is
    /// refused (`422`) on any instance (one Redis binds it with its answer). The buyer's length
    /// in front keeps two (buyer, key) pairs from ever naming one key (`a` with `b}:key:c`
    /// against `a}:key:b` with `c`).
    pub fn claim_key(&self) -> Option<String> {
        // Built by hand: `format!` cost about 1,000 instructions per keyed purchase here.
        let key = self.key.as_deref()?;
        let mut len = itoa::Buffer::new();
        let len = len.format(self.buyer.len());
        let mut s = String::with_capacity(16 + len.len() + self.buyer.len() + key.len());
        for part in ["buyer:{", len, ":", &self.buyer, "}:key:", key] {
            s.push_str(part);
        }
        Some(s)
    }
}

/// Who a sale from a fallback reserve went to, kept until it is settled into the ledger (and
/// journaled with the sale): the buyer, the key (empty: none) and the remaining count the buyer
/// was told, which a repeated key answers again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attribution {
    /// The buyer id.
    pub buyer: Box<str>,
    /// The `Idempotency-Key`, or empty.
    pub key: Box<str>,
    /// The remaining count in the buyer's answer.
    pub remaining: u64,
}

/// The rules on known buyers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BuyerPolicy {
    /// Most tickets of one event one buyer may hold; `None`: no limit.
    pub max_per_buyer: Option<u32>,
    /// How long a key's answer is remembered.
    pub key_ttl: Duration,
}

impl Default for BuyerPolicy {
    fn default() -> Self {
        Self {
            max_per_buyer: None,
            key_ttl: Duration::from_secs(24 * 3600),
        }
    }
}

impl BuyerPolicy {
    /// The limit as the scripts take it (0: none).
    pub fn limit(&self) -> u32 {
        self.max_per_buyer.unwrap_or(0)
    }

    /// The key lifetime in milliseconds, as the scripts take it.
    pub fn key_ttl_ms(&self) -> i64 {
        self.key_ttl.as_millis().min(i64::MAX as u128) as i64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claim_keys_name_buyer_and_key() {
        let p = Purchaser::new("alice", Some("k-1".into()));
        assert_eq!(p.claim_key().as_deref(), Some("buyer:{5:alice}:key:k-1"));
        let tricky = Purchaser::new("a", Some("b}:key:c".into()));
        let other = Purchaser::new("a}:key:b", Some("c".into()));
        assert_ne!(tricky.claim_key(), other.claim_key());
        assert_eq!(p.key_str(), "k-1");
        let anon_key = Purchaser::new("bob", None);
        assert_eq!(anon_key.claim_key(), None);
        assert_eq!(anon_key.key_str(), "");
        assert_eq!(BuyerPolicy::default().limit(), 0);
    }
}
