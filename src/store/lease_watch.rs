//! Watching other instances' leases: a lease is *due* (its reserve may be held back) only
//! after this instance has itself watched it stay unrenewed for a whole lease, continuously.
//!
//! Continuously means with no gap between two looks longer than the supervisor's own rhythm
//! allows: a gap is time this instance was not watching (Redis unreachable, the process paused
//! or starved), during which the owner may well have renewed and been unable to say so. Every
//! breaker transition and every failed upkeep round forgets all watches, so a watch starts again
//! from the first look after it. Holding a reserve back never resells it (quarantine.lua), so
//! a watch that ends too early costs only a reserve taken out of sale until its owner's next
//! heartbeat; this rule keeps that rare.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// One watched lease.
#[derive(Debug, Clone, Copy)]
struct Watched {
    /// The expiry seen (unix ms, Redis's clock).
    expiry: i64,
    /// Since when it has been watched without a gap.
    since: Instant,
    /// The last look.
    last: Instant,
}

/// The leases of other instances, per event and instance.
#[derive(Debug)]
pub struct LeaseWatch {
    seen: HashMap<(Box<str>, Box<str>), Watched>,
    lease: Duration,
    max_gap: Duration,
}

impl LeaseWatch {
    /// Watches for leases of length `lease`; looks further apart than `max_gap` start a watch
    /// again.
    pub fn new(lease: Duration, max_gap: Duration) -> Self {
        Self {
            seen: HashMap::new(),
            lease,
            max_gap,
        }
    }

    /// Forgets every watch (Redis was unreachable, or an upkeep failed).
    pub fn forget_all(&mut self) {
        self.seen.clear();
    }

    /// Records a look at `instance`'s lease of `event` at `now`. Returns whether it has stayed
    /// at `expiry` under continuous watch for a whole lease.
    pub fn observe(&mut self, event: &str, instance: &str, expiry: i64, now: Instant) -> bool {
        let fresh = Watched {
            expiry,
            since: now,
            last: now,
        };
        let w = self
            .seen
            .entry((event.into(), instance.into()))
            .or_insert(fresh);
        if w.expiry != expiry || now.saturating_duration_since(w.last) > self.max_gap {
            *w = fresh;
            return false;
        }
        w.last = now;
        now.saturating_duration_since(w.since) >= self.lease
    }

    /// Drops the watches not looked at for ten gaps (instances gone, events no longer sold).
    pub fn prune(&mut self, now: Instant) {
        let horizon = self.max_gap * 10;
        self.seen
            .retain(|_, w| now.saturating_duration_since(w.last) <= horizon);
    }

    /// Stops watching `instance`'s lease of `event` (it was acted on).
    pub fn done(&mut self, event: &str, instance: &str) {
        self.seen.remove(&(Box::from(event), Box::from(instance)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LEASE: Duration = Duration::from_secs(3);
    const GAP: Duration = Duration::from_millis(1500);

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn due_after_a_whole_lease_of_continuous_watching() {
        let t0 = Instant::now();
        let mut w = LeaseWatch::new(LEASE, GAP);
        let looks: Vec<bool> = (0..=6)
            .map(|i| w.observe("e", "i", 100, t0 + ms(600 * i)))
            .collect();
        assert_eq!(looks, [false, false, false, false, false, true, true]);
    }

    #[test]
    fn a_renewal_starts_the_watch_again() {
        let t0 = Instant::now();
        let mut w = LeaseWatch::new(LEASE, GAP);
        w.observe("e", "i", 100, t0);
        w.observe("e", "i", 100, t0 + ms(1000));
        assert!(!w.observe("e", "i", 200, t0 + ms(2000)));
        assert!(!w.observe("e", "i", 200, t0 + ms(3400)));
        assert!(!w.observe("e", "i", 200, t0 + ms(4900)));
        assert!(w.observe("e", "i", 200, t0 + ms(5000)));
    }

    /// The bug this module exists for: time this instance spent not watching (its own outage,
    /// a pause) must not count, or a lease looks abandoned the moment Redis is back.
    #[test]
    fn time_not_watched_does_not_count() {
        let t0 = Instant::now();
        let mut w = LeaseWatch::new(LEASE, GAP);
        w.observe("e", "i", 100, t0);
        // A 2.5 s outage or pause: the next look comes after a gap.
        assert!(!w.observe("e", "i", 100, t0 + ms(2500)));
        assert!(!w.observe("e", "i", 100, t0 + ms(3500)));
        assert!(!w.observe("e", "i", 100, t0 + ms(4500)));
        assert!(w.observe("e", "i", 100, t0 + ms(5500)));
        // forget_all (a breaker transition) also starts over.
        w.forget_all();
        assert!(!w.observe("e", "i", 100, t0 + ms(6000)));
        assert!(!w.observe("e", "i", 100, t0 + ms(7000)));
    }

    #[test]
    fn watches_are_per_event_and_instance() {
        let t0 = Instant::now();
        let mut w = LeaseWatch::new(LEASE, GAP);
        for i in 0..=5 {
            let now = t0 + ms(600 * i);
            w.observe("e", "a", 100, now);
            assert!(!w.observe("f", "a", 100 + i as i64, now));
        }
        assert!(w.observe("e", "a", 100, t0 + ms(3600)));
        w.done("e", "a");
        assert!(!w.observe("e", "a", 100, t0 + ms(4200)));
        w.prune(t0 + ms(4200) + GAP * 11);
        assert!(w.seen.is_empty(), "watches of instances gone are dropped");
    }
}
