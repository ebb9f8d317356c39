//! The slow-loris bound, armed once per connection instead of once per request.
//!
//! A connection must finish each request head within the bound (`--header-timeout`) of being
//! accepted or of its last answer being ready; one that does not (it trickles its head, or
//! sits idle after an answer) is closed. A request being answered never counts against it.
//!
//! hyper's own header-read timer gives the same bound by boxing, arming and dropping a timer
//! for every request and looping once more after each answer: about 1,400 instructions per
//! request (design.md, Findings). Here a request costs a clock read and two relaxed stores into
//! its connection's [`Progress`], and the connection's one timer ([`Progress::bound`]) wakes
//! about once per bound to look at them. The bound includes writing the answer: a client that
//! does not take its answer within the bound is closed too, which hyper's timer did not cover.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::Poll;
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

    /// Runs `conn` (the connection) until it ends, or until it has gone the bound without
    /// finishing a request head: then it is dropped, which closes it, and the answer is `None`.
    /// Never cuts off a connection whose requests keep coming in time.
    pub async fn bound<F: Future>(&self, conn: F) -> Option<F::Output> {
        let sleep = tokio::time::sleep_until(self.epoch + self.bound);
        tokio::pin!(conn, sleep);
        let mut armed = false;
        std::future::poll_fn(|cx| {
            if let Poll::Ready(out) = conn.as_mut().poll(cx) {
                return Poll::Ready(Some(out));
            }
            // The timer is polled only to arm it and once it has fired (a load), not on every
            // wake-up of the connection: polling it every time cost 130 to 280 instructions per
            // request (callgrind.sh, /healthz to Redis purchases).
            loop {
                if armed && !sleep.is_elapsed() {
                    return Poll::Pending;
                }
                match sleep.as_mut().poll(cx) {
                    Poll::Pending => armed = true,
                    Poll::Ready(()) => match self.deadline() {
                        None => return Poll::Ready(None),
                        Some(due) => {
                            sleep.as_mut().reset(due);
                            armed = false;
                        }
                    },
                }
            }
        })
        .await
    }

    /// When the timer should look again, or `None` if the bound is overrun now.
    fn deadline(&self) -> Option<Instant> {
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

    const BOUND: Duration = Duration::from_secs(10);

    #[tokio::test(start_paused = true)]
    async fn a_connection_that_ends_is_answered_with_its_output() {
        let p = Progress::new(BOUND);
        let conn = async {
            tokio::time::sleep(BOUND / 2).await;
            7
        };
        assert_eq!(p.bound(conn).await, Some(7));
    }

    /// Whether the bounded connection was cut off after `after` more of the paused clock.
    async fn overran_after(
        overrun: &mut std::pin::Pin<&mut impl Future<Output = Option<()>>>,
        after: Duration,
    ) -> bool {
        match tokio::time::timeout(after, overrun.as_mut()).await {
            Ok(None) => true,
            Ok(Some(())) => panic!("a connection that never ends ended"),
            Err(_) => false,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_connection_overruns_at_the_bound_not_before() {
        let p = Progress::new(BOUND);
        let overrun = p.bound(std::future::pending::<()>());
        tokio::pin!(overrun);
        assert!(!overran_after(&mut overrun, BOUND - Duration::from_millis(1)).await);
        assert!(overran_after(&mut overrun, Duration::from_millis(2)).await);
    }

    #[tokio::test(start_paused = true)]
    async fn each_answer_moves_the_deadline_a_bound_on() {
        let p = Progress::new(BOUND);
        let overrun = p.bound(std::future::pending::<()>());
        tokio::pin!(overrun);
        for _ in 0..5 {
            assert!(!overran_after(&mut overrun, BOUND / 2).await);
            drop(p.answering());
        }
        assert!(!overran_after(&mut overrun, BOUND - Duration::from_millis(1)).await);
        assert!(overran_after(&mut overrun, Duration::from_millis(2)).await);
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_being_answered_never_overruns() {
        let p = Progress::new(BOUND);
        let overrun = p.bound(std::future::pending::<()>());
        tokio::pin!(overrun);
        let answering = p.answering();
        assert!(!overran_after(&mut overrun, BOUND * 5).await);
        drop(answering);
        assert!(!overran_after(&mut overrun, BOUND - Duration::from_millis(1)).await);
        assert!(overran_after(&mut overrun, BOUND).await);
    }
}
