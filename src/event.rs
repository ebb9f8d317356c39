//! Events and their tickets: id validation, the Redis keys of one event (prepared once), and the
//! ticket id format `<event>-<number>` shared by the seeder, the stores and the responses.
//!
//! Event ids are 1 to 64 characters of `[A-Za-z0-9_-]`, so a `{` or `}` can never reach a key and
//! break its Redis Cluster hash tag.

use fred::types::Key;

use crate::metrics::EventMetrics;

/// Longest accepted event id, in bytes.
pub const MAX_EVENT_ID_LEN: usize = 64;

/// Smallest number of digits in a ticket number (`1-000042`).
const MIN_TICKET_DIGITS: usize = 6;

/// Why an event id was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum EventIdError {
    /// The id is empty.
    #[error("event id is empty")]
    Empty,
    /// The id is longer than [`MAX_EVENT_ID_LEN`].
    #[error("event id is longer than 64 characters")]
    TooLong,
    /// The id holds a character outside `[A-Za-z0-9_-]`.
    #[error("event id may only hold A-Z, a-z, 0-9, '_' and '-'")]
    BadChar,
}

/// Checks an event id: 1 to 64 characters of `[A-Za-z0-9_-]`.
///
/// ```
/// use ticketd::event::{validate_event_id, EventIdError};
/// assert_eq!(validate_event_id("spring_gala-2027"), Ok(()));
/// assert_eq!(validate_event_id("a{b}"), Err(EventIdError::BadChar));
/// assert_eq!(validate_event_id(""), Err(EventIdError::Empty));
/// ```
///
/// # Errors
/// The first rule the id breaks.
pub fn validate_event_id(id: &str) -> Result<(), EventIdError> {
    if id.is_empty() {
        return Err(EventIdError::Empty);
    }
    if id.len() > MAX_EVENT_ID_LEN {
        return Err(EventIdError::TooLong);
    }
    if !id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        return Err(EventIdError::BadChar);
    }
    Ok(())
}

/// The Redis Cluster hash slot of every key of event `id` (they share the `{id}` tag).
pub fn slot_of(id: &str) -> u16 {
    fred::util::redis_keyslot(format!("{{{id}}}").as_bytes())
}

/// The Redis keys of one event. All share the `{<id>}` hash tag, so one Redis Cluster slot holds
/// them and one script may touch them all. Built once per event; cloning a [`Key`] only bumps a
/// reference count.
#[derive(Debug, Clone)]
pub struct EventKeys {
    /// `event:{id}:tickets`: LIST of the ticket ids not yet sold.
    pub tickets: Key,
    /// `event:{id}:sold`: HASH ticket id -> sale record `<batch id> <unix ms>`, or
    /// `<purchase id> <unix ms> fallback` for a sale from a reserve.
    pub sold: Key,
    /// `event:{id}:batches`: HASH batch id -> the ticket ids it sold (or `!` once cancelled), so a
    /// re-sent or late purchase call can never sell twice.
    pub batches: Key,
    /// `event:{id}:meta`: HASH `capacity` -> N; its presence says the event was seeded.
    pub meta: Key,
    /// `event:{id}:leases`: ZSET instance -> lease expiry of its fallback reserve (unix ms).
    pub leases: Key,
    /// `event:{id}:reserved`: STRING, tickets held in all instances' live (leased) reserves.
    pub reserved: Key,
    /// `event:{id}:held`: HASH instance -> tickets of its reserve held back after its lease
    /// expired: not for sale until the owner settles its journal or an operator releases them.
    pub held: Key,
    /// `event:{id}:stale`: SET of tickets a late settlement recorded as sold while they sat in
    /// the pool (after an operator's release); skipped when popped.
    pub stale: Key,
    /// `event:{id}:buyers`: ZSET (scores 0) of `<buyer>\n<ticket>`: each known buyer's
    /// tickets, one lexicographic range per buyer.
    pub buyers: Key,
    /// `event:{id}:keys`: HASH `<buyer>\n<Idempotency-Key>` -> `<ticket> <remaining> <batch id>`,
    /// the answers as the layout before time buckets kept them: read (and swept) while it
    /// exists, never written anew.
    pub idempotency: Key,
    /// `event:{id}:keys:ttl`: ZSET `<buyer>\n<Idempotency-Key>` -> expiry (unix ms), the same.
    pub idempotency_ttl: Key,
    /// `event:{id}:idempotency:widths`: ZSET of the widths of this event's answer buckets
    /// (`event:{id}:idempotency:<width>:<bucket>`) in use, on a cluster ([`Answers::PerEvent`]).
    pub answers_widths: Key,
    /// `event:{id}:fallback_buyers`: HASH `<instance>\n<buyer>` -> tickets that instance's
    /// reserves sold the buyer (written by `settle.lua`), so that a restarted instance holds a
    /// buyer to the limit from what all its runs sold, not only this one.
    pub fallback_buyers: Key,
    /// `event:{id}:reserve_gen`: HASH instance -> generation of its reserve list, counted up by
    /// `claim.lua` whenever it changes the list's contents, so that a change whose reply was
    /// lost is never hidden behind a length that looks unchanged.
    pub reserve_gen: Key,
    /// `event:{id}:fence`: a counter written right before a `WAIT`, so that the WAIT covers
    /// every earlier write of the node (only with `--redis-replica-acks` above 0).
    pub fence: Key,
}

impl EventKeys {
    /// The keys of event `id`.
    pub fn new(id: &str) -> Self {
        Self {
            tickets: Key::from(format!("event:{{{id}}}:tickets")),
            sold: Key::from(format!("event:{{{id}}}:sold")),
            batches: Key::from(format!("event:{{{id}}}:batches")),
            meta: Key::from(format!("event:{{{id}}}:meta")),
            leases: Key::from(format!("event:{{{id}}}:leases")),
            reserved: Key::from(format!("event:{{{id}}}:reserved")),
            held: Key::from(format!("event:{{{id}}}:held")),
            stale: Key::from(format!("event:{{{id}}}:stale")),
            reserve_gen: Key::from(format!("event:{{{id}}}:reserve_gen")),
            fence: Key::from(format!("event:{{{id}}}:fence")),
            buyers: Key::from(format!("event:{{{id}}}:buyers")),
            idempotency: Key::from(format!("event:{{{id}}}:keys")),
            idempotency_ttl: Key::from(format!("event:{{{id}}}:keys:ttl")),
            answers_widths: Key::from(format!("event:{{{id}}}:idempotency:widths")),
            fallback_buyers: Key::from(format!("event:{{{id}}}:fallback_buyers")),
        }
    }

    /// The fence key in the slot of `key` (`event:{id}:...` gives `event:{id}:fence`).
    pub fn fence_of(key: &Key) -> Option<Key> {
        let k = key.as_bytes();
        let end = k.iter().position(|&b| b == b'}')?;
        let mut fence = k[..=end].to_vec();
        fence.extend_from_slice(b":fence");
        Some(Key::from(bytes::Bytes::from(fence)))
    }

    /// `event:{id}:reserve:<instance>`: LIST of the tickets `instance` holds back for when Redis
    /// fails.
    pub fn reserve(id: &str, instance: &str) -> Key {
        Key::from(format!("event:{{{id}}}:reserve:{instance}"))
    }

    /// The keys in the order `purchase.lua` expects them for anonymous purchases
    /// (`KEYS[1..6]`).
    pub fn script_keys(&self) -> Vec<Key> {
        vec![
            self.tickets.clone(),
            self.sold.clone(),
            self.batches.clone(),
            self.meta.clone(),
            self.reserved.clone(),
            self.stale.clone(),
        ]
    }

    /// One event's eight keys in a `claim.lua` call, in its order, with `reserve` the
    /// instance's reserve list ([`Self::reserve`]).
    pub fn claim_keys(&self, reserve: &Key) -> [Key; 8] {
        [
            self.tickets.clone(),
            reserve.clone(),
            self.leases.clone(),
            self.reserved.clone(),
            self.meta.clone(),
            self.held.clone(),
            self.stale.clone(),
            self.reserve_gen.clone(),
        ]
    }

    /// The keys of `purchase.lua` with buyers, and of `cancel.lua` (`KEYS[1..10]`), for a store
    /// that keeps its answers as `answers` says.
    pub fn buyer_script_keys(&self, answers: Answers) -> Vec<Key> {
        let mut keys = self.script_keys();
        keys.extend([
            self.buyers.clone(),
            self.idempotency.clone(),
            self.idempotency_ttl.clone(),
            self.answers_widths(answers),
        ]);
        keys
    }

    /// The key naming the answer buckets this event's keyed purchases use.
    pub fn answers_widths(&self, answers: Answers) -> Key {
        match answers {
            Answers::Shared => SHARED_ANSWERS_WIDTHS,
            Answers::PerEvent => self.answers_widths.clone(),
        }
    }
}

/// The key naming the answer buckets shared by all events on a single Redis.
const SHARED_ANSWERS_WIDTHS: Key = Key::from_static_str("idempotency:widths");

/// Where a store keeps the answers to `Idempotency-Key`s: hashes of time buckets, listed by
/// width in a `widths` key (`lua/purchase.lua`, "The answers"; design.md, the key layout).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answers {
    /// One family for every event, `idempotency:<width>:<bucket>`: a single Redis, where a key's answer
    /// also binds it to the event it was first used for, in the purchase script.
    Shared,
    /// Each event's own, `event:{id}:idempotency:<width>:<bucket>`, in the event's slot: a Redis
    /// Cluster, where ticketd binds a key in its buyer's slot before the call.
    PerEvent,
}

impl Answers {
    /// The layout of a store that is (`true`) or is not one Redis node.
    pub fn of_single_node(single_node: bool) -> Self {
        if single_node {
            Self::Shared
        } else {
            Self::PerEvent
        }
    }
}

/// One event as this process knows it.
#[derive(Debug)]
pub struct Event {
    /// The event id, already validated.
    pub id: Box<str>,
    /// How many tickets the event has in all.
    pub capacity: u64,
    /// Position in the catalogue; indexes per-event metrics.
    pub index: usize,
    /// Zero-padded width of the ticket number.
    digits: usize,
    /// The Redis keys, prepared once.
    pub keys: EventKeys,
    /// The Redis Cluster hash slot of every key of the event (they share the `{id}` tag).
    pub slot: u16,
    /// This event's counters.
    pub metrics: EventMetrics,
    /// Cancellations of this event queued on this instance and not done yet: tickets that may
    /// come back to the pool, so this instance tells no buyer "sold out" meanwhile.
    pub limbo: std::sync::atomic::AtomicU64,
    /// Whether the store said this event is sold out, and no ticket may have come back since:
    /// anonymous purchases are then answered from memory ([`crate::sold_out`]).
    pub sold_out: crate::sold_out::SoldOut,
}

impl Event {
    /// An event with `capacity` tickets numbered `1..=capacity`.
    ///
    /// # Panics
    /// If `id` is not a valid event id: callers validate ids where they enter the process.
    pub fn new(id: &str, capacity: u64, index: usize) -> Self {
        assert!(validate_event_id(id).is_ok(), "event id {id:?} is invalid");
        Self {
            id: id.into(),
            capacity,
            index,
            digits: ticket_digits(capacity),
            keys: EventKeys::new(id),
            slot: slot_of(id),
            metrics: EventMetrics::with_remaining(capacity),
            limbo: std::sync::atomic::AtomicU64::new(0),
            sold_out: crate::sold_out::SoldOut::default(),
        }
    }

    /// Appends the id of ticket `number` (`<event>-<zero-padded number>`) to `out`.
    pub fn write_ticket_id(&self, number: u64, out: &mut Vec<u8>) {
        write_ticket_id(&self.id, self.digits, number, out);
    }

    /// The id of ticket `number` as a string (seeding and tests; the hot path uses
    /// [`Event::write_ticket_id`]).
    ///
    /// ```
    /// let event = ticketd::event::Event::new("1", 10_000, 0);
    /// assert_eq!(event.ticket_id(42), "1-000042");
    /// assert_eq!(event.parse_ticket_id(b"1-000042"), Some(42));
    /// ```
    pub fn ticket_id(&self, number: u64) -> String {
        let mut out = Vec::with_capacity(self.id.len() + 1 + self.digits);
        self.write_ticket_id(number, &mut out);
        String::from_utf8(out).expect("ticket ids are ASCII")
    }

    /// The ticket number inside a ticket id of this event, or `None` if the id is not one of ours.
    pub fn parse_ticket_id(&self, ticket: &[u8]) -> Option<u64> {
        let rest = ticket
            .strip_prefix(self.id.as_bytes())?
            .strip_prefix(b"-")?;
        if rest.is_empty() || rest.len() > 20 || !rest.iter().all(u8::is_ascii_digit) {
            return None;
        }
        std::str::from_utf8(rest).ok()?.parse().ok()
    }
}

/// Digits of the ticket number for an event of `capacity` tickets: at least six, more when the
/// capacity needs them, so that ids of one event sort in sale order.
fn ticket_digits(capacity: u64) -> usize {
    let mut buf = itoa::Buffer::new();
    buf.format(capacity).len().max(MIN_TICKET_DIGITS)
}

fn write_ticket_id(id: &str, digits: usize, number: u64, out: &mut Vec<u8>) {
    let mut buf = itoa::Buffer::new();
    let n = buf.format(number).as_bytes();
    out.extend_from_slice(id.as_bytes());
    out.push(b'-');
    out.extend(std::iter::repeat_n(b'0', digits.saturating_sub(n.len())));
    out.extend_from_slice(n);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_follow_the_rules() {
        assert_eq!(validate_event_id("1"), Ok(()));
        assert_eq!(validate_event_id("spring_gala-2027"), Ok(()));
        assert_eq!(validate_event_id(&"a".repeat(64)), Ok(()));
        assert_eq!(
            validate_event_id(&"a".repeat(65)),
            Err(EventIdError::TooLong)
        );
        assert_eq!(validate_event_id(""), Err(EventIdError::Empty));
        for bad in ["a{b", "a}b", "a b", "a/b", "é", "a%7B", "a:b"] {
            assert_eq!(validate_event_id(bad), Err(EventIdError::BadChar), "{bad}");
        }
    }

    #[test]
    fn keys_carry_the_hash_tag() {
        let keys = EventKeys::new("42");
        assert_eq!(keys.tickets.as_str(), Some("event:{42}:tickets"));
        assert_eq!(keys.sold.as_str(), Some("event:{42}:sold"));
        assert_eq!(keys.batches.as_str(), Some("event:{42}:batches"));
    }

    #[test]
    fn ticket_ids_are_padded_and_parse_back() {
        let small = Event::new("1", 1000, 0);
        assert_eq!(small.ticket_id(42), "1-000042");
        assert_eq!(small.parse_ticket_id(b"1-000042"), Some(42));
        let big = Event::new("big", 12_345_678, 1);
        assert_eq!(big.ticket_id(7), "big-00000007");
        assert_eq!(big.parse_ticket_id(b"big-00000007"), Some(7));
        for bad in [&b"2-000042"[..], b"1-", b"1-00a", b"1000042", b"1-+1"] {
            assert_eq!(small.parse_ticket_id(bad), None);
        }
    }
}
