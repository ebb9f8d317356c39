//! Graceful shutdown of the open connections: one signal that every connection registers for
//! once and then reads with one load per wake-up, and a count of the open connections that
//! shutdown waits on.
//!
//! hyper-util's `GracefulShutdown` gives the same by polling a watch channel's change future
//! on every wake-up of every connection, which takes the channel's lock each time: 155 to 360
//! instructions per request, `/healthz` to Redis purchases (design.md, Findings).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::futures::Notified;
use tokio::sync::Notify;

/// The connections of one server, and the signal to finish them.
#[derive(Debug, Default)]
pub struct Drain {
    inner: Arc<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    signalled: AtomicBool,
    signal: Notify,
    open: AtomicUsize,
    closed: Notify,
}

impl Drain {
    /// No connection yet, no signal.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// A connection opened: counted open until the returned [`Watch`] drops.
    #[must_use]
    pub fn watch(&self) -> Watch {
        self.inner.open.fetch_add(1, Ordering::Relaxed);
        Watch {
            inner: Arc::clone(&self.inner),
        }
    }

    /// Connections open now.
    #[must_use]
    pub fn open(&self) -> usize {
        self.inner.open.load(Ordering::Acquire)
    }

    /// Signals every connection, open now or opened later, to finish the request it is
    /// answering and close; then waits until none is open. Bound it with a timeout.
    pub async fn shutdown(&self) {
        self.inner.signalled.store(true, Ordering::SeqCst);
        self.inner.signal.notify_waiters();
        loop {
            let closed = self.inner.closed.notified();
            tokio::pin!(closed);
            // Registered before the count is read, so the last close cannot slip between.
            closed.as_mut().enable();
            if self.open() == 0 {
                return;
            }
            closed.await;
        }
    }
}

/// One open connection's part in the [`Drain`].
#[derive(Debug)]
pub struct Watch {
    inner: Arc<Inner>,
}

impl Watch {
    /// Whether shutdown was signalled.
    #[must_use]
    pub fn signalled(&self) -> bool {
        self.inner.signalled.load(Ordering::SeqCst)
    }

    /// Completes when shutdown is signalled after it was created. Poll it once to register the
    /// task's waker; afterwards [`Watch::signalled`] says whether the wake-up was the signal.
    pub fn notified(&self) -> Notified<'_> {
        self.inner.signal.notified()
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        if self.inner.open.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.inner.closed.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn shutdown_waits_for_the_last_connection_and_no_longer() {
        let drain = Drain::new();
        let a = drain.watch();
        let b = drain.watch();
        assert_eq!(drain.open(), 2);
        let closer = tokio::spawn(async move {
            drop(a);
            tokio::task::yield_now().await;
            drop(b);
        });
        tokio::time::timeout(Duration::from_secs(5), drain.shutdown())
            .await
            .expect("shutdown returns once both closed");
        assert_eq!(drain.open(), 0);
        closer.await.unwrap();
        // Nothing open: at once.
        tokio::time::timeout(Duration::from_secs(5), drain.shutdown())
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn a_connection_learns_of_the_signal_whenever_it_registered() {
        let drain = Drain::new();
        let early = drain.watch();
        let shutdown = {
            let notified = early.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            assert!(!early.signalled());
            let shutdown = tokio::spawn({
                let inner = Arc::clone(&drain.inner);
                async move { Drain { inner }.shutdown().await }
            });
            tokio::time::timeout(Duration::from_secs(5), notified)
                .await
                .expect("a registered connection is woken");
            shutdown
        };
        assert!(early.signalled());
        let late = drain.watch();
        assert!(
            late.signalled(),
            "a connection opened after the signal sees it"
        );
        drop((early, late));
        tokio::time::timeout(Duration::from_secs(5), shutdown)
            .await
            .unwrap()
            .unwrap();
    }
}
