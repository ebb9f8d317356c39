//! The snapshot of unsold tickets behind `/metrics` and the statistics line: one background task
//! reads every event's remaining count from the store every `--metrics-refresh` (1 s by default)
//! into the event's gauge; a scrape only reads the gauges.
//!
//! Why: a scrape that asked the store would send commands per event over the purchase
//! connections, so every scraper (Prometheus, a dashboard, an operator's `watch curl`) would add
//! Redis work and delay purchases. With the snapshot a scrape costs Redis nothing, whatever the
//! number of scrapers, and the store is read once per interval. Sales of this instance also
//! update the gauge as they are answered; the refresh brings in everyone else's (other
//! instances, reserves handed back). `ticketd_remaining_snapshot_age_seconds` says how old the
//! last read is: it grows while the store does not answer. A read that finds tickets of an event
//! also ends its "sold out" remembered from memory ([`crate::sold_out`]): that is what bounds how
//! long a ticket that came back stays unsold on this instance.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::{timeout, MissedTickBehavior};

use crate::event::Event;
use crate::metrics::Metrics;
use crate::store::Store;

/// Default of `--metrics-refresh`.
pub const DEFAULT_EVERY: Duration = Duration::from_secs(1);

/// How often, and within what bound, the snapshot is read from the store.
#[derive(Debug, Clone, Copy)]
pub struct Refresh {
    /// Period of the reads (`--metrics-refresh`).
    pub every: Duration,
    /// Bound on one read; past it the snapshot keeps its values and ages.
    pub bound: Duration,
}

/// Reads the remaining counts into the snapshot every `refresh.every`, the first at once,
/// until the task is aborted. Reads never overlap: a slow store delays the next one.
pub async fn run<S: Store>(
    store: &S,
    catalog: &crate::catalog::Catalog,
    metrics: &Metrics,
    refresh: Refresh,
) {
    let mut tick = tokio::time::interval(refresh.every.max(Duration::from_millis(1)));
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let events = catalog.events();
        refresh_once(store, &events, metrics, refresh.bound).await;
    }
}

/// Reads the remaining counts of `events` once, within `bound`, into their gauges, and marks
/// the snapshot fresh. Returns whether the store answered; if not, nothing changes.
pub async fn refresh_once<S: Store>(
    store: &S,
    events: &[Arc<Event>],
    metrics: &Metrics,
    bound: Duration,
) -> bool {
    let before: Vec<u64> = events.iter().map(|e| answered(e)).collect();
    match timeout(bound, store.remaining(events)).await {
        Ok(Ok(counts)) if counts.len() == events.len() => {
            for ((e, count), before) in events.iter().zip(counts).zip(before) {
                // A purchase of this event answered during the read set a count at least as new
                // as the one read: keep it (the next refresh corrects it either way).
                if count > 0 {
                    // Tickets are back (or never went): no more "sold out" from memory, whatever
                    // was answered meanwhile (crate::sold_out). Before the gauge, so that a
                    // gauge showing tickets means they are on sale here.
                    e.sold_out.tickets_back();
                }
                if answered(e) == before {
                    e.metrics.set_remaining(count);
                }
            }
            metrics.remaining_refreshed();
            true
        }
        _ => false,
    }
}

/// Purchases of `e` answered so far by the store with a count of remaining tickets (sold, sold
/// out; not the sold-out answers given from memory, which carry no count).
fn answered(e: &Event) -> u64 {
    e.metrics.answered_by_store()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::Catalog;
    use crate::metrics::{Outcome, StorePath};
    use crate::store::{Sale, StoreError};
    use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

    /// A store whose remaining count is whatever the test sets, and that counts the reads.
    #[derive(Default)]
    struct Fixed {
        remaining: AtomicU64,
        reads: AtomicU64,
        fail: std::sync::atomic::AtomicBool,
    }

    impl Store for Fixed {
        async fn purchase<'a>(
            &'a self,
            _: &'a Arc<Event>,
        ) -> (StorePath, Result<Sale, StoreError>) {
            (StorePath::Memory, Err(StoreError::UnknownEvent))
        }

        async fn purchase_by<'a>(
            &'a self,
            _: &'a Arc<Event>,
            _: &'a Arc<crate::store::purchaser::Purchaser>,
        ) -> (StorePath, Result<Sale, StoreError>) {
            (StorePath::Memory, Err(StoreError::UnknownEvent))
        }

        async fn tickets<'a>(
            &'a self,
            _: &'a Arc<Event>,
            _: &'a str,
        ) -> Result<Vec<bytes::Bytes>, StoreError> {
            Ok(Vec::new())
        }

        async fn remaining<'a>(&'a self, events: &'a [Arc<Event>]) -> Result<Vec<u64>, StoreError> {
            self.reads.fetch_add(1, Relaxed);
            if self.fail.load(Relaxed) {
                return Err(StoreError::NotConnected);
            }
            Ok(vec![self.remaining.load(Relaxed); events.len()])
        }

        async fn ready(&self) -> bool {
            true
        }

        fn name(&self) -> &'static str {
            "fixed"
        }
    }

    const EVERY: Duration = Duration::from_secs(1);

    fn refresh() -> Refresh {
        Refresh {
            every: EVERY,
            bound: Duration::from_millis(100),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn one_read_per_interval_whatever_reads_the_snapshot() {
        let store = Arc::new(Fixed::default());
        store.remaining.store(7, Relaxed);
        let catalog = Arc::new(Catalog::new([("1", 10), ("2", 10)]));
        let metrics = Arc::new(Metrics::new());
        let task = {
            let (store, catalog, metrics) = (store.clone(), catalog.clone(), metrics.clone());
            tokio::spawn(async move { run(&*store, &catalog, &metrics, refresh()).await })
        };
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(store.reads.load(Relaxed), 1, "the first read is at once");
        assert_eq!(catalog.get("2").unwrap().metrics.remaining(), 7);
        store.remaining.store(3, Relaxed);
        tokio::time::sleep(EVERY * 5).await;
        assert_eq!(store.reads.load(Relaxed), 6, "one read per interval");
        assert_eq!(catalog.get("1").unwrap().metrics.remaining(), 3);
        task.abort();
    }

    #[tokio::test]
    async fn a_failed_read_keeps_the_values_and_the_age() {
        let store = Fixed::default();
        store.remaining.store(4, Relaxed);
        let catalog = Catalog::new([("1", 10)]);
        let metrics = Metrics::new();
        let events = catalog.events();
        assert!(refresh_once(&store, &events, &metrics, Duration::from_secs(1)).await);
        assert_eq!(events[0].metrics.remaining(), 4);
        let fresh = metrics.remaining_age();
        store.fail.store(true, Relaxed);
        store.remaining.store(1, Relaxed);
        std::thread::sleep(Duration::from_millis(20));
        assert!(!refresh_once(&store, &events, &metrics, Duration::from_secs(1)).await);
        assert_eq!(events[0].metrics.remaining(), 4, "last known value");
        assert!(metrics.remaining_age() >= fresh + Duration::from_millis(20));
    }

    #[tokio::test]
    async fn a_sale_answered_during_the_read_is_not_overwritten() {
        /// Answers the read with 9 after a sale of the event was answered with 8 meanwhile.
        struct Racing(Arc<Event>);
        impl Store for Racing {
            async fn purchase<'a>(
                &'a self,
                _: &'a Arc<Event>,
            ) -> (StorePath, Result<Sale, StoreError>) {
                (StorePath::Memory, Err(StoreError::UnknownEvent))
            }
            async fn purchase_by<'a>(
                &'a self,
                _: &'a Arc<Event>,
                _: &'a Arc<crate::store::purchaser::Purchaser>,
            ) -> (StorePath, Result<Sale, StoreError>) {
                (StorePath::Memory, Err(StoreError::UnknownEvent))
            }
            async fn tickets<'a>(
                &'a self,
                _: &'a Arc<Event>,
                _: &'a str,
            ) -> Result<Vec<bytes::Bytes>, StoreError> {
                Ok(Vec::new())
            }
            async fn remaining<'a>(
                &'a self,
                events: &'a [Arc<Event>],
            ) -> Result<Vec<u64>, StoreError> {
                self.0.metrics.set_remaining(8);
                self.0.metrics.record(Outcome::Sold);
                Ok(vec![9; events.len()])
            }
            async fn ready(&self) -> bool {
                true
            }
            fn name(&self) -> &'static str {
                "racing"
            }
        }
        let catalog = Catalog::new([("1", 10)]);
        let events = catalog.events();
        let store = Racing(events[0].clone());
        assert!(refresh_once(&store, &events, &Metrics::new(), Duration::from_secs(1)).await);
        assert_eq!(events[0].metrics.remaining(), 8);
    }
}
