//! The standalone in-memory store: one lock-free [`Cursor`] per event over tickets `1..=capacity`.
//!
//! Used when `--store memory`, or `--store auto` finds no Redis at start-up. Nothing is
//! persisted: a restart sells every ticket again, which is why the service warns loudly.
//! Known buyers' purchases take one lock per event (their limit, keys and tickets); anonymous
//! ones stay lock-free.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use parking_lot::Mutex;

use crate::catalog::Catalog;
use crate::event::Event;
use crate::metrics::StorePath;
use crate::store::cursor::Cursor;
use crate::store::purchaser::{BuyerKey, BuyerPolicy, Purchaser};
use crate::store::{Sale, Store, StoreError};

/// Tickets of every catalogue event, in process memory.
#[derive(Debug)]
pub struct MemoryStore {
    /// By `Event::index`.
    cursors: Vec<Cursor>,
    /// Known buyers per event, by `Event::index`.
    buyers: Vec<Mutex<EventBuyers>>,
    /// Which event each (buyer, key) was first used for, until it expires.
    claims: Mutex<Expiring<Box<str>>>,
    policy: BuyerPolicy,
}

/// One event's known buyers.
#[derive(Debug, Default)]
struct EventBuyers {
    /// The tickets each buyer holds.
    tickets: HashMap<Box<str>, Vec<u64>>,
    /// The answer per (buyer, key): ticket and remaining.
    keys: Expiring<(u64, u64)>,
}

/// A map of (buyer, key) whose entries expire in the order they were made (one lifetime for
/// all).
#[derive(Debug)]
struct Expiring<V> {
    map: HashMap<BuyerKey, V>,
    order: VecDeque<(Instant, BuyerKey)>,
}

impl<V> Default for Expiring<V> {
    fn default() -> Self {
        Self {
            map: HashMap::new(),
            order: VecDeque::new(),
        }
    }
}

impl<V> Expiring<V> {
    /// The live entry of `field`, after dropping what expired by `now`.
    fn get(&mut self, field: &BuyerKey, now: Instant) -> Option<&V> {
        while self.order.front().is_some_and(|(at, _)| *at <= now) {
            let (_, old) = self.order.pop_front().expect("just looked");
            self.map.remove(&old);
        }
        self.map.get(field)
    }

    fn insert(&mut self, field: BuyerKey, value: V, expires: Instant) {
        self.order.push_back((expires, field.clone()));
        self.map.insert(field, value);
    }
}

impl MemoryStore {
    /// A store holding every ticket of every event in `catalog`.
    pub fn new(catalog: &Catalog) -> Self {
        Self::with_policy(catalog, BuyerPolicy::default())
    }

    /// [`MemoryStore::new`] with the per-buyer rules `policy`.
    pub fn with_policy(catalog: &Catalog, policy: BuyerPolicy) -> Self {
        let events = catalog.events();
        Self {
            cursors: events.iter().map(|e| Cursor::new(e.capacity)).collect(),
            buyers: events.iter().map(|_| Mutex::default()).collect(),
            claims: Mutex::default(),
            policy,
        }
    }

    /// Sells one ticket of `event` to the known buyer of `who`.
    ///
    /// # Errors
    /// [`StoreError::UnknownEvent`] for an event added to the catalogue after this store.
    pub fn sell_to(&self, event: &Event, who: &Purchaser) -> Result<Sale, StoreError> {
        let buyers = self
            .buyers
            .get(event.index)
            .ok_or(StoreError::UnknownEvent)?;
        let now = Instant::now();
        let expires = now + self.policy.key_ttl;
        let field = who.key.as_ref().map(|k| (who.buyer.clone(), k.clone()));
        if let Some(field) = &field {
            let mut claims = self.claims.lock();
            match claims.get(field, now) {
                Some(bound) if **bound != *event.id => return Ok(Sale::KeyReused),
                Some(_) => {}
                None => claims.insert(field.clone(), event.id.clone(), expires),
            }
        }
        let mut b = buyers.lock();
        if let Some(field) = &field {
            if let Some(&(ticket, remaining)) = b.keys.get(field, now) {
                return Ok(Sale::Replayed { ticket, remaining });
            }
        }
        let held = b.tickets.get(&who.buyer).map_or(0, Vec::len);
        let limited = !who.buyer.is_empty();
        if limited
            && self
                .policy
                .max_per_buyer
                .is_some_and(|max| held >= max as usize)
        {
            return Ok(Sale::LimitReached);
        }
        let sale = self.sell(event)?;
        if let Sale::Sold { ticket, remaining } = sale {
            if limited {
                b.tickets.entry(who.buyer.clone()).or_default().push(ticket);
            }
            if let Some(field) = field {
                b.keys.insert(field, (ticket, remaining), expires);
            }
        }
        Ok(sale)
    }

    /// Sells one ticket of `event` (synchronous: the whole purchase is one atomic add).
    ///
    /// # Errors
    /// [`StoreError::UnknownEvent`] for an event added to the catalogue after this store.
    pub fn sell(&self, event: &Event) -> Result<Sale, StoreError> {
        let cursor = self
            .cursors
            .get(event.index)
            .ok_or(StoreError::UnknownEvent)?;
        Ok(match cursor.take() {
            Some(i) => Sale::Sold {
                ticket: i + 1,
                remaining: cursor.len() - i - 1,
            },
            None => Sale::SoldOut,
        })
    }
}

impl Store for MemoryStore {
    async fn purchase<'a>(
        &'a self,
        event: &'a Arc<Event>,
    ) -> (StorePath, Result<Sale, StoreError>) {
        (StorePath::Memory, self.sell(event))
    }

    async fn purchase_by<'a>(
        &'a self,
        event: &'a Arc<Event>,
        who: &'a Arc<Purchaser>,
    ) -> (StorePath, Result<Sale, StoreError>) {
        (StorePath::Memory, self.sell_to(event, who))
    }

    async fn tickets<'a>(
        &'a self,
        event: &'a Arc<Event>,
        buyer: &'a str,
    ) -> Result<Vec<Bytes>, StoreError> {
        let buyers = self
            .buyers
            .get(event.index)
            .ok_or(StoreError::UnknownEvent)?;
        let mut numbers = buyers
            .lock()
            .tickets
            .get(buyer)
            .cloned()
            .unwrap_or_default();
        numbers.sort_unstable();
        Ok(numbers
            .into_iter()
            .map(|n| Bytes::from(event.ticket_id(n)))
            .collect())
    }

    async fn remaining<'a>(&'a self, events: &'a [Arc<Event>]) -> Result<Vec<u64>, StoreError> {
        Ok(events
            .iter()
            .map(|e| self.cursors.get(e.index).map_or(0, Cursor::remaining))
            .collect())
    }

    async fn ready(&self) -> bool {
        true
    }

    fn name(&self) -> &'static str {
        "memory"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sells_exactly_the_capacity_of_each_event() {
        let catalog = Catalog::new([("a", 3), ("b", 1)]);
        let store = MemoryStore::new(&catalog);
        let a = catalog.get("a").unwrap();
        let b = catalog.get("b").unwrap();
        assert_eq!(
            store.sell(&a).unwrap(),
            Sale::Sold {
                ticket: 1,
                remaining: 2
            }
        );
        assert_eq!(
            store.sell(&b).unwrap(),
            Sale::Sold {
                ticket: 1,
                remaining: 0
            }
        );
        assert_eq!(store.sell(&b).unwrap(), Sale::SoldOut);
        assert_eq!(
            store.sell(&a).unwrap(),
            Sale::Sold {
                ticket: 2,
                remaining: 1
            }
        );
        assert_eq!(
            store.sell(&a).unwrap(),
            Sale::Sold {
                ticket: 3,
                remaining: 0
            }
        );
        assert_eq!(store.sell(&a).unwrap(), Sale::SoldOut);
    }

    #[test]
    fn buyers_get_their_limit_and_keys_answer_once() {
        let catalog = Catalog::new([("a", 10), ("b", 10)]);
        let policy = BuyerPolicy {
            max_per_buyer: Some(2),
            ..BuyerPolicy::default()
        };
        let store = MemoryStore::with_policy(&catalog, policy);
        let a = catalog.get("a").unwrap();
        let b = catalog.get("b").unwrap();
        let keyed = Purchaser::new("alice", Some("k".into()));
        let first = store.sell_to(&a, &keyed).unwrap();
        assert!(matches!(first, Sale::Sold { ticket: 1, .. }));
        assert_eq!(
            store.sell_to(&a, &keyed).unwrap(),
            Sale::Replayed {
                ticket: 1,
                remaining: 9
            }
        );
        assert_eq!(store.sell_to(&b, &keyed).unwrap(), Sale::KeyReused);
        let plain = Purchaser::new("alice", None);
        assert!(matches!(
            store.sell_to(&a, &plain).unwrap(),
            Sale::Sold { .. }
        ));
        assert_eq!(store.sell_to(&a, &plain).unwrap(), Sale::LimitReached);
        assert!(matches!(
            store.sell_to(&a, &Purchaser::new("bob", None)).unwrap(),
            Sale::Sold { ticket: 3, .. }
        ));
        assert!(matches!(
            store.sell_to(&b, &plain).unwrap(),
            Sale::Sold { .. }
        ));
    }
}
