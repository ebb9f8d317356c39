//! The in-process event catalogue: which events exist and their capacity, so an unknown event is
//! answered without a Redis round trip.
//!
//! Reads take a parking_lot read lock for one hash lookup and an `Arc` clone; the rare writer (an
//! event seeded while the service runs, found by the periodic refresh) takes the write lock.
//!
//! Ids are hashed with FNV-1a, not SipHash: an id is a few bytes, hashed on every purchase, and
//! flooding resistance buys nothing here, since only the operator's events are ever inserted (a
//! lookup of a client's id walks at most the operator's ids that share its bucket).

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;

use parking_lot::RwLock;

use crate::event::Event;

/// Known events by id.
#[derive(Debug, Default)]
pub struct Catalog {
    inner: RwLock<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    by_id: HashMap<Box<str>, Arc<Event>, BuildHasherDefault<IdHasher>>,
    /// In insertion order; `Event::index` is the position here.
    list: Vec<Arc<Event>>,
}

/// FNV-1a, 64 bits (see the module documentation for why not SipHash).
struct IdHasher(u64);

impl Default for IdHasher {
    fn default() -> Self {
        IdHasher(0xcbf2_9ce4_8422_2325)
    }
}

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
}

impl Catalog {
    /// A catalogue of `events` (`(id, capacity)`), in the given order.
    ///
    /// # Panics
    /// If an id is invalid (ids are validated where they enter the process).
    pub fn new<'a>(events: impl IntoIterator<Item = (&'a str, u64)>) -> Self {
        let catalog = Self::default();
        for (id, capacity) in events {
            catalog.upsert(id, capacity);
        }
        catalog
    }

    /// The event `id`, if known.
    pub fn get(&self, id: &str) -> Option<Arc<Event>> {
        self.inner.read().by_id.get(id).cloned()
    }

    /// Every event, in catalogue order.
    pub fn events(&self) -> Vec<Arc<Event>> {
        self.inner.read().list.clone()
    }

    /// Number of events.
    pub fn len(&self) -> usize {
        self.inner.read().list.len()
    }

    /// Whether no event is known.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Adds event `id`, or changes its capacity (after `seed --reset`). Returns the event and
    /// whether anything changed. A changed event keeps its index but gets fresh counters.
    pub fn upsert(&self, id: &str, capacity: u64) -> (Arc<Event>, bool) {
        if let Some(e) = self.get(id) {
            if e.capacity == capacity {
                return (e, false);
            }
        }
        let mut inner = self.inner.write();
        let index = match inner.by_id.get(id) {
            Some(e) if e.capacity == capacity => return (e.clone(), false),
            Some(e) => e.index,
            None => inner.list.len(),
        };
        let event = Arc::new(Event::new(id, capacity, index));
        if index == inner.list.len() {
            inner.list.push(event.clone());
        } else {
            inner.list[index] = event.clone();
        }
        inner.by_id.insert(id.into(), event.clone());
        (event, true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookup_and_upsert() {
        let c = Catalog::new([("1", 10), ("2", 20)]);
        assert_eq!(c.get("1").unwrap().capacity, 10);
        assert!(c.get("3").is_none());
        let (e, changed) = c.upsert("2", 20);
        assert!(!changed);
        assert_eq!(e.index, 1);
        let (e, changed) = c.upsert("2", 25);
        assert!(changed);
        assert_eq!((e.index, e.capacity), (1, 25));
        let (e, changed) = c.upsert("3", 5);
        assert!(changed);
        assert_eq!(e.index, 2);
        let ids: Vec<_> = c.events().iter().map(|e| e.id.to_string()).collect();
        assert_eq!(ids, ["1", "2", "3"]);
    }
}
