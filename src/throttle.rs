//! Rate-limiting for repeated log lines: an error that repeats on every request is logged once
//! per interval, with the count of repeats that were held back.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

/// Lets one event through per interval and counts the rest.
#[derive(Debug)]
pub struct Throttle {
    start: Instant,
    every_ms: u64,
    /// Milliseconds after `start` when the next event may pass; 0 lets the first one through.
    next_ms: AtomicU64,
    suppressed: AtomicU64,
}

impl Throttle {
    /// A throttle letting one event through per `every`.
    pub fn new(every: Duration) -> Self {
        Self {
            start: Instant::now(),
            every_ms: every.as_millis().max(1) as u64,
            next_ms: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
        }
    }

    /// `Some(held back since the last one)` when this event may be logged, else `None`.
    pub fn allow(&self) -> Option<u64> {
        let now = self.start.elapsed().as_millis() as u64;
        let next = self.next_ms.load(Relaxed);
        if now >= next
            && self
                .next_ms
                .compare_exchange(next, now + self.every_ms, Relaxed, Relaxed)
                .is_ok()
        {
            return Some(self.suppressed.swap(0, Relaxed));
        }
        self.suppressed.fetch_add(1, Relaxed);
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_per_interval_with_the_count_held_back() {
        let t = Throttle::new(Duration::from_secs(3600));
        assert_eq!(t.allow(), Some(0));
        assert_eq!(t.allow(), None);
        assert_eq!(t.allow(), None);
        t.next_ms.store(0, Relaxed);
        assert_eq!(t.allow(), Some(2));
    }
}
