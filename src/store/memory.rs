//! The standalone in-memory store: one lock-free [`Cursor`] per event over tickets `1..=capacity`.
//!
//! Used when `--store memory`, or `--store auto` finds no Redis at start-up. Nothing is
//! persisted: a restart sells every ticket again, which is why the service warns loudly.

use std::sync::Arc;

use crate::catalog::Catalog;
use crate::event::Event;
use crate::metrics::StorePath;
use crate::store::cursor::Cursor;
use crate::store::{Sale, Store, StoreError};

/// Tickets of every catalogue event, in process memory.
#[derive(Debug)]
pub struct MemoryStore {
    /// By `Event::index`.
    cursors: Vec<Cursor>,
}

impl MemoryStore {
    /// A store holding every ticket of every event in `catalog`.
    pub fn new(catalog: &Catalog) -> Self {
        Self {
            cursors: catalog
                .events()
                .iter()
                .map(|e| Cursor::new(e.capacity))
                .collect(),
        }
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
}
