//! Driving one HTTP connection to its end: its slow-loris bound ([`crate::head_deadline`]) and
//! its part in graceful shutdown ([`crate::drain`]), each looked at only when its own timer or
//! signal woke the connection's task, so a request pays neither a timer nor a lock.

use std::future::Future;
use std::pin::Pin;
use std::task::Poll;

use crate::drain::Watch;
use crate::head_deadline::Progress;

/// A connection that can be asked to finish the request it is answering and close.
pub trait Connection: Future {
    /// Stop reading requests; close once the answer in flight (if any) is written.
    fn graceful_shutdown(self: Pin<&mut Self>);
}

impl<I, S, B> Connection for hyper::server::conn::http1::Connection<I, S>
where
    S: hyper::service::HttpService<hyper::body::Incoming, ResBody = B>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin + 'static,
    B: hyper::body::Body + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    fn graceful_shutdown(self: Pin<&mut Self>) {
        hyper::server::conn::http1::Connection::graceful_shutdown(self);
    }
}

/// Runs `conn` until it ends and returns its output; or until it goes its bound without
/// finishing a request head, when it is dropped (closed) and the answer is `None`. Once
/// shutdown is signalled on `watch`, the connection is told to finish and close.
///
/// Meant to be a task's whole future (as `serve` spawns it): the timer and the signal each
/// keep the waker of the poll that registered them, which must stay the task's.
pub async fn drive<C: Connection>(
    conn: C,
    progress: &Progress,
    watch: &Watch,
) -> Option<C::Output> {
    let sleep = tokio::time::sleep_until(progress.first_deadline());
    let signal = watch.notified();
    tokio::pin!(conn, sleep, signal);
    let (mut armed, mut listening, mut finishing) = (false, false, false);
    std::future::poll_fn(|cx| {
        // The timer is polled only to arm it and once it has fired (a load), not on every
        // wake-up of the connection: polling it every time cost 130 to 280 instructions per
        // request (callgrind.sh, /healthz to Redis purchases). It goes first, while the task's
        // budget is fresh: a timer polled with the budget spent answers Pending without
        // registering, so it would never wake the task; then it stays unarmed, to be polled
        // again at the wake-up that spent budget asks for.
        loop {
            if armed && !sleep.is_elapsed() {
                break;
            }
            let budget = tokio::task::coop::has_budget_remaining();
            match sleep.as_mut().poll(cx) {
                Poll::Pending => {
                    armed = budget;
                    break;
                }
                Poll::Ready(()) => match progress.next_deadline() {
                    None => return Poll::Ready(None),
                    Some(due) => {
                        sleep.as_mut().reset(due);
                        armed = false;
                    }
                },
            }
        }
        if !finishing {
            // Registered once; afterwards a wake-up is the signal only if the flag says so.
            if !listening {
                listening = true;
                let _ = signal.as_mut().poll(cx);
            }
            if watch.signalled() {
                finishing = true;
                conn.as_mut().graceful_shutdown();
            }
        }
        conn.as_mut().poll(cx).map(Some)
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::drain::Drain;
    use std::time::Duration;

    const BOUND: Duration = Duration::from_secs(10);

    /// A connection that never ends by itself; told to shut down, it ends at its next poll
    /// with how many times it was told.
    #[derive(Default)]
    struct Idle {
        told: u32,
    }

    impl Future for Idle {
        type Output = u32;
        fn poll(self: Pin<&mut Self>, _: &mut std::task::Context<'_>) -> Poll<u32> {
            if self.told > 0 {
                Poll::Ready(self.told)
            } else {
                Poll::Pending
            }
        }
    }

    impl Connection for Idle {
        fn graceful_shutdown(mut self: Pin<&mut Self>) {
            self.told += 1;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_that_ends_gives_its_output() {
        let (p, drain) = (Progress::new(BOUND), Drain::new());
        let watch = drain.watch();
        let conn = async {
            tokio::time::sleep(BOUND / 2).await;
            7
        };
        let conn = Ends(Box::pin(conn));
        assert_eq!(drive(conn, &p, &watch).await, Some(7));
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_connection_is_closed_at_its_bound_and_answers_keep_it_open() {
        let (p, drain) = (Progress::new(BOUND), Drain::new());
        let watch = drain.watch();
        let driven = drive(Idle::default(), &p, &watch);
        tokio::pin!(driven);
        for _ in 0..4 {
            assert!(tokio::time::timeout(BOUND / 2, driven.as_mut())
                .await
                .is_err());
            drop(p.answering());
        }
        let answering = p.answering();
        assert!(tokio::time::timeout(BOUND * 3, driven.as_mut())
            .await
            .is_err());
        drop(answering);
        let start = tokio::time::Instant::now();
        assert_eq!(driven.await, None, "cut off");
        assert_eq!(start.elapsed(), BOUND);
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_tells_the_connection_once_and_waits_for_it() {
        let (p, drain) = (Progress::new(BOUND), Drain::new());
        let watch = drain.watch();
        let driven = tokio::spawn(async move {
            let out = drive(Idle::default(), &p, &watch).await;
            drop(watch);
            out
        });
        tokio::task::yield_now().await;
        tokio::time::timeout(BOUND / 2, drain.shutdown())
            .await
            .expect("the connection finished at the signal, long before its bound");
        assert_eq!(driven.await.unwrap(), Some(1), "told once");
    }

    /// A connection that spends its task's whole coop budget at every poll and never ends.
    struct Greedy;

    impl Future for Greedy {
        type Output = ();
        fn poll(self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<()> {
            loop {
                let spend = tokio::task::coop::consume_budget();
                tokio::pin!(spend);
                if spend.poll(cx).is_pending() {
                    return Poll::Pending; // woken again at once, with a fresh budget
                }
            }
        }
    }

    impl Connection for Greedy {
        fn graceful_shutdown(self: Pin<&mut Self>) {}
    }

    /// A timer polled after the connection spent the budget would never be armed, and the
    /// connection never cut off (real time: a task that keeps waking itself stops the paused
    /// clock from advancing).
    #[tokio::test]
    async fn a_connection_that_spends_its_budget_is_still_cut_off() {
        let (p, drain) = (Progress::new(Duration::from_millis(200)), Drain::new());
        let watch = drain.watch();
        let driven = tokio::time::timeout(Duration::from_secs(5), drive(Greedy, &p, &watch));
        assert_eq!(driven.await, Ok(None), "cut off at its bound");
    }

    /// Any future as a connection that ignores shutdown.
    struct Ends<F>(Pin<Box<F>>);

    impl<F: Future> Future for Ends<F> {
        type Output = F::Output;
        fn poll(mut self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<F::Output> {
            self.0.as_mut().poll(cx)
        }
    }

    impl<F: Future> Connection for Ends<F> {
        fn graceful_shutdown(self: Pin<&mut Self>) {}
    }
}
