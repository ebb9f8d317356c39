//! A lock-free cursor over a fixed number of tickets: each `take` hands out the next index, no
//! index twice, never past the end. The in-memory store runs one per event over all its
//! tickets.

use std::sync::atomic::{AtomicU64, Ordering};

use crossbeam_utils::CachePadded;

/// Hands out the indexes `0..len`, each at most once, from any number of threads.
#[derive(Debug)]
pub struct Cursor {
    /// Indexes handed out so far; may run past `len` under contention (those takes fail).
    next: CachePadded<AtomicU64>,
    len: u64,
    /// Indexes handed out before [`Cursor::close`]; `u64::MAX` until then.
    closed_taken: AtomicU64,
}

/// Added to `next` by [`Cursor::close`]: any later `take` lands far past `len`.
const CLOSED: u64 = 1 << 62;

impl Cursor {
    /// A cursor over `len` indexes.
    pub fn new(len: u64) -> Self {
        Self {
            next: CachePadded::new(AtomicU64::new(0)),
            len,
            closed_taken: AtomicU64::new(u64::MAX),
        }
    }

    /// The next free index, or `None` once all are taken. One relaxed load when exhausted,
    /// otherwise one atomic add.
    pub fn take(&self) -> Option<u64> {
        if self.next.load(Ordering::Relaxed) >= self.len {
            return None;
        }
        let i = self.next.fetch_add(1, Ordering::Relaxed);
        (i < self.len).then_some(i)
    }

    /// Stops the cursor: no index is handed out after this returns. Returns how many were
    /// handed out in all. (Adds a huge offset rather than storing a value, so a `take` racing
    /// with the close lands past the end and can never see a small index again.) Idempotent.
    pub fn close(&self) -> u64 {
        let mut cur = self.next.load(Ordering::Acquire);
        loop {
            if cur >= CLOSED {
                return self.closed_taken();
            }
            match self.next.compare_exchange_weak(
                cur,
                cur + CLOSED,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => break,
                Err(now) => cur = now,
            }
        }
        let taken = cur.min(self.len);
        self.closed_taken.store(taken, Ordering::Release);
        taken
    }

    /// Whether [`Cursor::close`] was called.
    pub fn is_closed(&self) -> bool {
        self.next.load(Ordering::Acquire) >= CLOSED
    }

    /// The count stored by `close`, waiting out the instant between its two steps.
    fn closed_taken(&self) -> u64 {
        loop {
            let t = self.closed_taken.load(Ordering::Acquire);
            if t != u64::MAX {
                return t;
            }
            std::hint::spin_loop();
        }
    }

    /// Indexes not yet handed out.
    pub fn remaining(&self) -> u64 {
        self.len - self.taken()
    }

    /// Indexes handed out.
    pub fn taken(&self) -> u64 {
        let n = self.next.load(Ordering::Acquire);
        if n >= CLOSED {
            self.closed_taken()
        } else {
            n.min(self.len)
        }
    }

    /// How many indexes the cursor covers.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the cursor covers no index at all.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::sync::Arc;

    #[test]
    fn hands_out_each_index_once_then_none() {
        let c = Cursor::new(3);
        assert_eq!(
            (c.take(), c.take(), c.take(), c.take()),
            (Some(0), Some(1), Some(2), None)
        );
        assert_eq!((c.taken(), c.remaining()), (3, 0));
    }

    #[test]
    fn close_stops_handing_out() {
        let c = Cursor::new(5);
        c.take();
        c.take();
        assert_eq!(c.close(), 2);
        assert_eq!(c.take(), None);
        assert_eq!(
            (c.taken(), c.remaining()),
            (2, 3),
            "unsold indexes stay unsold"
        );
        assert_eq!(c.close(), 2, "closing again changes nothing");
        assert!(c.is_closed());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]
        /// Many threads never receive the same index, and taken + remaining == len.
        #[test]
        fn threads_never_share_an_index(len in 0u64..2000, threads in 1usize..8, per_thread in 0usize..600) {
            let cursor = Arc::new(Cursor::new(len));
            let handles: Vec<_> = (0..threads)
                .map(|_| {
                    let c = cursor.clone();
                    std::thread::spawn(move || (0..per_thread).filter_map(|_| c.take()).collect::<Vec<_>>())
                })
                .collect();
            let mut all: Vec<u64> = handles.into_iter().flat_map(|h| h.join().unwrap()).collect();
            let got = all.len() as u64;
            all.sort_unstable();
            all.dedup();
            prop_assert_eq!(all.len() as u64, got, "an index was handed out twice");
            prop_assert_eq!(got, len.min((threads * per_thread) as u64));
            prop_assert_eq!(cursor.taken() + cursor.remaining(), len);
            prop_assert!(all.iter().all(|&i| i < len));
        }

        /// A close racing with takes: the count it returns is exactly the takes that succeeded.
        #[test]
        fn close_counts_exactly_the_successful_takes(len in 0u64..3000, threads in 1usize..6) {
            let cursor = Arc::new(Cursor::new(len));
            let handles: Vec<_> = (0..threads)
                .map(|_| {
                    let c = cursor.clone();
                    std::thread::spawn(move || (0..1000).filter_map(|_| c.take()).count() as u64)
                })
                .collect();
            std::thread::yield_now();
            let closed = cursor.close();
            let got: u64 = handles.into_iter().map(|h| h.join().unwrap()).sum();
            prop_assert_eq!(closed, got);
            prop_assert_eq!(cursor.taken(), got);
        }
    }
}
