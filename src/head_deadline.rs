//! The slow-loris bound, armed once per connection instead of once per request.
//!
//! A connection must finish each request head within the bound (`--header-timeout`) of being
//! accepted or of its last answer being ready; one that does not (it trickles its head, or
//! sits idle after an answer) is closed. A request being answered never counts against it.
//!
//! hyper's own header-read timer gives the same bound by boxing, arming and dropping a timer
//! for every request and looping once more after each answer: about 1,400 instructions per
//! request (design.md, Findings). Here a request costs a clock read and two relaxed stores into
//! its connection's [`Progress`], and the connection's one timer (`connection::drive`) wakes
//! about once per bound to look at them. The bound includes writing the answer: a client that
//! does not take its answer within the bound is closed too, which hyper's timer did not cover.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

/// The low bit of [`Progress::state`]: a request is being answered.
const ANSWERING: u64 = 1;

/// One connection's progress, shared by its requests and its timer.
#[derive(Debug)]
pub struct Progress {
    /// Where the connection's times are counted from (its accept).
    epoch: Instant,
    /// Milliseconds from `epoch` to the last answer (or 0), shifted left by one, with
    /// [`ANSWERING`] while a request is answered. Written only by the connection's requests,
    /// which hyper runs one at a time, so loads and stores need no read-modify-write.
    state: AtomicU64,
    bound: Duration,
}

impl Progress {
    /// A connection accepted now, which must finish a request head within `bound`.
    #[must_use]
    pub fn new(bound: Duration) -> Arc<Self> {
        Arc::new(Self {
            epoch: Instant::now(),
            state: AtomicU64::new(0),
            bound,
        })
    }

    /// A request head arrived: the bound is off until the answer is ready, when the returned
    /// guard drops (also if the request is dropped unanswered).
    #[must_use]
    pub fn answering(self: &Arc<Self>) -> Answering {
        let state = self.state.load(Ordering::Relaxed);
        self.state.store(state | ANSWERING, Ordering::Relaxed);
        Answering(Arc::clone(self))
    }

    /// When a connection that finishes no request head from now is overrun: its timer's
    /// first deadline.
    #[must_use]
    pub fn first_deadline(&self) -> Instant {
        self.epoch + self.bound
    }

    /// When the timer should look again, or `None` if the bound is overrun now.
    #[must_use]
    pub fn next_deadline(&self) -> Option<Instant> {
        let state = self.state.load(Ordering::Relaxed);
        let due = if state & ANSWERING == 0 {
            self.epoch + Duration::from_millis(state >> 1) + self.bound
        } else {
            // Look again a bound later; by then the answer is ready and moved the deadline.
            // (The bound is at least 100ms: `--header-timeout`.)
            Instant::now() + self.bound.max(Duration::from_millis(1))
        };
        (due > Instant::now()).then_some(due)
    }
}

/// A request of the connection is being answered; see [`Progress::answering`].
#[derive(Debug)]
pub struct Answering(Arc<Progress>);

impl Drop for Answering {
    fn drop(&mut self) {
        let p = &self.0;
        let ms = u64::try_from(p.epoch.elapsed().as_millis()).unwrap_or(u64::MAX >> 1);
        p.state.store(ms << 1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::time::advance;

    const BOUND: Duration = Duration::from_secs(10);

    #[tokio::test(start_paused = true)]
    async fn a_silent_connection_is_overrun_at_the_bound_not_before() {
        let p = Progress::new(BOUND);
        assert_eq!(p.first_deadline(), Instant::now() + BOUND);
        advance(BOUND - Duration::from_millis(1)).await;
        assert_eq!(p.next_deadline(), Some(p.first_deadline()));
        advance(Duration::from_millis(1)).await;
        assert_eq!(p.next_deadline(), None);
    }

    #[tokio::test(start_paused = true)]
    async fn each_answer_moves_the_deadline_a_bound_on() {
        let p = Progress::new(BOUND);
        for _ in 0..5 {
            advance(BOUND / 2).await;
            drop(p.answering());
            assert_eq!(p.next_deadline(), Some(Instant::now() + BOUND));
        }
        advance(BOUND).await;
        assert_eq!(p.next_deadline(), None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_being_answered_is_never_overrun() {
        let p = Progress::new(BOUND);
        let answering = p.answering();
        for _ in 0..5 {
            advance(BOUND * 2).await;
            assert_eq!(p.next_deadline(), Some(Instant::now() + BOUND));
        }
        drop(answering);
        assert_eq!(p.next_deadline(), Some(Instant::now() + BOUND));
    }
}
