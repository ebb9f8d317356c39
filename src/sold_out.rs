//! "Sold out", remembered per event: once the store answered that an event has no ticket left,
//! further anonymous purchases of it are answered `409 sold_out` from memory, with no store call
//! (no Redis slot, no batch, no script), until tickets may be back.
//!
//! Why: after a flash sale sells out, every buyer still refreshing costs a script call that can
//! only say "sold out" again. Remembering the answer makes a sold-out request as cheap as an
//! unknown event's.
//!
//! What ends it (design.md, "Sold out, answered from memory"):
//! - the background refresh ([`crate::remaining`]) reads unsold tickets in the store (a
//!   cancellation, a reserve handed back, held-back tickets released, another instance's
//!   purchase given back): a ticket that comes back is on sale again on this instance by the end
//!   of the first refresh read that starts after it came back, so within one `--metrics-refresh`
//!   plus that read's round trip;
//! - this instance queues a cancellation of the event (its tickets may come back);
//! - a purchase of the event sells (a keyed purchase, which never reads the flag, found one).
//!
//! Only a real [`crate::store::Sale::SoldOut`] sets it: the fallback's "held in reserves" and
//! "in limbo" are `503`s and leave it alone. A sold-out answer decided by the store before one
//! of the events above, and arriving after it, must not set it again: every clearing step
//! advances a generation, and an answer sets the flag only if the generation is still the one
//! read before its store call.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use crossbeam_utils::CachePadded;

/// The flag (bit 0) and the generation (the other bits) of one event.
#[derive(Debug, Default)]
pub struct SoldOut {
    /// Read by every anonymous purchase of the event, written only when the event sells out or
    /// tickets may be back: on a line of its own, away from the event's busy counters.
    state: CachePadded<AtomicU64>,
}

/// What [`SoldOut::before_store`] saw, to hand back to [`SoldOut::answered_sold_out`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seen(u64);

const FLAG: u64 = 1;

impl SoldOut {
    /// Whether the event is known to be sold out (answer from memory), and the state to pass
    /// to [`SoldOut::answered_sold_out`] if the store is asked after all.
    pub fn before_store(&self) -> (bool, Seen) {
        let s = self.state.load(Relaxed);
        (s & FLAG != 0, Seen(s))
    }

    /// The store answered "sold out" for a purchase that read `seen` before asking: remember it,
    /// unless tickets may have come back since.
    pub fn answered_sold_out(&self, seen: Seen) {
        let _ = self
            .state
            .compare_exchange(seen.0, seen.0 | FLAG, Relaxed, Relaxed);
    }

    /// Tickets are (or may be) back: ask the store again from now on, and void sold-out answers
    /// decided before now.
    pub fn tickets_back(&self) {
        let _ = self
            .state
            .fetch_update(Relaxed, Relaxed, |s| Some((s & !FLAG).wrapping_add(2)));
    }

    /// A purchase of the event sold: if the event was remembered sold out, a ticket came back
    /// and was sold here; ask the store again. One load when it was not (the usual case).
    pub fn sold(&self) {
        if self.state.load(Relaxed) & FLAG != 0 {
            self.tickets_back();
        }
    }

    /// Whether the event is remembered sold out now.
    pub fn is_set(&self) -> bool {
        self.state.load(Relaxed) & FLAG != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_by_an_answer_cleared_when_tickets_are_back() {
        let s = SoldOut::default();
        let (known, seen) = s.before_store();
        assert!(!known);
        s.answered_sold_out(seen);
        assert!(s.before_store().0);
        s.tickets_back();
        assert!(!s.before_store().0);
        let (_, seen) = s.before_store();
        s.answered_sold_out(seen);
        assert!(s.is_set());
        s.sold();
        assert!(!s.is_set());
    }

    #[test]
    fn an_answer_decided_before_tickets_came_back_does_not_set_it() {
        let s = SoldOut::default();
        let (_, seen) = s.before_store();
        // The refresh reads a ticket back while this purchase's script call is out.
        s.tickets_back();
        s.answered_sold_out(seen);
        assert!(
            !s.is_set(),
            "a stale sold-out answer must not hide a ticket that is back"
        );
    }

    #[test]
    fn answers_of_purchases_asked_while_set_keep_it() {
        let s = SoldOut::default();
        s.answered_sold_out(s.before_store().1);
        // A keyed purchase asks the store although the flag is set, and hears sold out too.
        let (known, seen) = s.before_store();
        assert!(known);
        s.answered_sold_out(seen);
        assert!(s.is_set());
    }
}
