//! Purchases that sold to nobody, given back: batches of unknown outcome (a round that timed
//! out, a lost connection, an unreadable reply) are made void, and tickets whose buyers left
//! before their answer arrived are returned to the pool, by `lua/cancel.lua`.
//!
//! One worker per instance sends them, many calls at once, whenever Redis is connected; a call
//! that fails because Redis is down is retried with backoff, and one that Redis refuses (a
//! script error, a damaged key) is retried a few times and then given up, logged at ERROR with
//! its ids and counted, so that it cannot keep the instance in fallback mode for ever. Until a
//! cancellation is done its event is *in limbo* on this instance: no buyer is told "sold out"
//! from here while its tickets may still come back. Every cancellation is journaled as it is
//! queued, so one that a crash or a shutdown cut off is done by the next run on the same
//! journal directory.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use fred::interfaces::ClientLike;
use fred::types::Value;
use parking_lot::Mutex;
use tokio::task::JoinHandle;
use tokio::time::timeout;

use crate::event::{Answers, Event};
use crate::metrics::Metrics;
use crate::store::journal::{Journal, Record};
use crate::store::pool::PoolCell;
use crate::store::scripts::{LuaScript, CANCEL};
use crate::store::StoreError;

/// Most cancellation calls sent at once (they pipeline on the pool's connections).
const CANCEL_BATCH: usize = 256;
/// Refusals (not outages) after which a cancellation is given up.
const MAX_REFUSALS: u32 = 3;

/// A purchase batch that sold to nobody, waiting to be given back.
#[derive(Debug)]
pub struct PendingCancel {
    /// The event (its keys; its limbo count on this instance).
    pub event: Arc<Event>,
    /// The batch id.
    pub batch: Bytes,
    /// The tickets whose buyers left; empty: the whole batch, whose outcome is unknown.
    pub tickets: Vec<Bytes>,
    /// Purchases made void by this cancellation (counted once done).
    pub purchases: u64,
    refusals: u32,
}

#[derive(Debug, Default)]
struct Inner {
    /// Where every cancellation is written as it is queued, so that a crash does not forget
    /// tickets sold to nobody: the next run on the same journal gives them back.
    journal: std::sync::OnceLock<Journal>,
    queue: Mutex<VecDeque<PendingCancel>>,
    wake: tokio::sync::Notify,
    pending: AtomicU64,
    stopping: AtomicBool,
}

/// The queue of cancellations. Cloned into every place that can learn that a batch sold to
/// nobody.
#[derive(Debug, Clone, Default)]
pub struct Cancels {
    inner: Arc<Inner>,
}

impl Cancels {
    /// An empty queue; [`Cancels::spawn_worker`] works it off.
    pub fn new() -> Self {
        Self::default()
    }

    /// Journals every cancellation queued from now on into `journal`.
    pub fn journal_to(&self, journal: Journal) {
        let _ = self.inner.journal.set(journal);
    }

    /// Queues batch `batch` of `event`, of `purchases` purchases whose outcome the buyers never
    /// learned, to be made void.
    pub fn void(&self, event: &Arc<Event>, batch: Bytes, purchases: u64) {
        self.journal(event, &batch, &[]);
        self.push(event.clone(), batch, Vec::new(), purchases);
    }

    /// Queues `tickets` of batch `batch` of `event`, whose buyers left before the answer
    /// arrived, to be given back to the pool.
    pub fn give_back(&self, event: &Arc<Event>, batch: Bytes, tickets: Vec<Bytes>) {
        self.journal(event, &batch, &tickets);
        let purchases = tickets.len() as u64;
        self.push(event.clone(), batch, tickets, purchases);
    }

    fn journal(&self, event: &Event, batch: &Bytes, tickets: &[Bytes]) {
        if let Some(journal) = self.inner.journal.get() {
            let record = Record::Cancel {
                event: event.id.clone(),
                batch: batch.to_vec(),
                tickets: tickets.iter().map(|t| t.to_vec()).collect(),
            };
            let journal = journal.clone();
            // Nobody waits: it only matters if this process dies before the cancellation runs.
            tokio::spawn(async move { journal.append(record).await });
        }
    }

    /// Queues a cancellation without journaling it (one a previous run journaled).
    pub fn push(&self, event: Arc<Event>, batch: Bytes, tickets: Vec<Bytes>, purchases: u64) {
        event.limbo.fetch_add(1, Relaxed);
        // Its tickets may come back: no more "sold out" from memory.
        event.sold_out.tickets_back();
        self.inner.pending.fetch_add(1, Relaxed);
        self.inner.queue.lock().push_back(PendingCancel {
            event,
            batch,
            tickets,
            purchases,
            refusals: 0,
        });
        self.inner.wake.notify_one();
    }

    /// Takes out the queued cancellations of events `keep` rejects (a resharding moved them to
    /// another shard), for [`Cancels::adopt`] there. One the worker is sending now comes back to
    /// the queue if refused, and goes at the next call.
    pub fn take_foreign(&self, keep: impl Fn(&Event) -> bool) -> Vec<PendingCancel> {
        let mut queue = self.inner.queue.lock();
        let (foreign, mine): (VecDeque<PendingCancel>, VecDeque<PendingCancel>) =
            queue.drain(..).partition(|p| !keep(&p.event));
        *queue = mine;
        self.inner.pending.fetch_sub(foreign.len() as u64, Relaxed);
        foreign.into()
    }

    /// Queues cancellations another shard's queue gave up ([`Cancels::take_foreign`]); they were
    /// journaled when first queued.
    pub fn adopt(&self, cancels: Vec<PendingCancel>) {
        if cancels.is_empty() {
            return;
        }
        self.inner.pending.fetch_add(cancels.len() as u64, Relaxed);
        self.inner.queue.lock().extend(cancels);
        self.inner.wake.notify_one();
    }

    /// Cancellations queued and not yet done.
    pub fn pending(&self) -> u64 {
        self.inner.pending.load(Relaxed)
    }

    /// Starts the worker that sends the queued cancellations on `pool`, each call bounded by
    /// `bound`; a cancellation is done once `replica_acks` replicas hold it. `answers`: where the
    /// store keeps the answers of the keys a voided sale forgets.
    pub fn spawn_worker(
        &self,
        pool: Arc<PoolCell>,
        metrics: Arc<Metrics>,
        bound: Duration,
        replica_acks: u32,
        answers: Answers,
    ) -> JoinHandle<()> {
        let inner = self.inner.clone();
        tokio::spawn(work(inner, pool, metrics, bound, replica_acks, answers))
    }

    /// Stops the worker (waiting at most `bound` for the calls under way) and returns what is
    /// still to be done, for the journal.
    pub async fn stop(&self, worker: JoinHandle<()>, bound: Duration) -> Vec<PendingCancel> {
        self.inner.stopping.store(true, Relaxed);
        self.inner.wake.notify_one();
        if timeout(bound, worker).await.is_err() {
            tracing::warn!(
                ?bound,
                "the cancellation worker did not stop in time; journaling what is queued"
            );
        }
        // Not done: they stay pending (so nothing lets their journal records go) and are done
        // by the next run on the same journal.
        self.inner.queue.lock().drain(..).collect()
    }
}

fn done(inner: &Inner, p: &PendingCancel) {
    p.event.limbo.fetch_sub(1, Relaxed);
    // Its tickets are back (or it gave up): a "sold out" the store decided before must not be
    // remembered.
    p.event.sold_out.tickets_back();
    inner.pending.fetch_sub(1, Relaxed);
}

async fn work(
    inner: Arc<Inner>,
    pool: Arc<PoolCell>,
    metrics: Arc<Metrics>,
    bound: Duration,
    replica_acks: u32,
    answers: Answers,
) {
    let script = LuaScript::new(CANCEL);
    let bound = bound.max(Duration::from_millis(500));
    let mut backoff = Duration::from_millis(50);
    loop {
        let wake = inner.wake.notified();
        if inner.stopping.load(Relaxed) {
            return;
        }
        let client = pool.client();
        let client = &client;
        let batch: Vec<PendingCancel> = if client.is_connected() {
            let mut q = inner.queue.lock();
            let n = q.len().min(CANCEL_BATCH);
            q.drain(..n).collect()
        } else {
            Vec::new()
        };
        if batch.is_empty() {
            // Nothing queued, or not connected (nothing is sent then: fred would only queue it).
            if inner.pending.load(Relaxed) == 0 {
                wake.await;
            } else {
                let _ = timeout(backoff, wake).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
            continue;
        }
        let calls = batch.iter().map(|p| {
            let mut args = Vec::with_capacity(1 + p.tickets.len());
            args.push(Value::Bytes(p.batch.clone()));
            args.extend(p.tickets.iter().cloned().map(Value::Bytes));
            let call = script.run::<i64>(
                client,
                p.event.keys.buyer_script_keys(answers),
                args,
                || metrics.script_reloaded(),
            );
            timeout(bound, call)
        });
        let span = tracing::info_span!(target: crate::otel::TARGET, "cancel", ticketd.batches = batch.len());
        let results =
            tracing::Instrument::instrument(futures_util::future::join_all(calls), span).await;
        // A cancellation counts once the replicas hold it: one a failover forgot would leave
        // its tickets sold to nobody on the new primary. Cancelling again is harmless.
        let held = !results.iter().any(|r| matches!(r, Ok(Ok(_))))
            || crate::store::pool::replicated(
                client,
                &batch[0].event.keys.fence,
                replica_acks,
                bound,
            )
            .await
            .is_ok();
        let mut retry = Vec::new();
        for (mut p, r) in batch.into_iter().zip(results) {
            match r {
                Ok(Ok(_)) if !held => retry.push(p),
                Ok(Ok(returned)) => {
                    metrics.purchases_cancelled(p.purchases);
                    done(&inner, &p);
                    tracing::debug!(batch = ?p.batch, purchases = p.purchases, returned, "purchases sold to nobody made void");
                }
                // Refused before it ran (this node no longer serves the slot, the cluster
                // fails over): not a refusal of the cancellation; it goes to whichever store
                // serves the event once the layout is read again.
                Ok(Err(e)) if StoreError::Redis(e.clone()).never_ran() => retry.push(p),
                Ok(Err(e)) if !StoreError::Redis(e.clone()).is_outage() => {
                    p.refusals += 1;
                    if p.refusals < MAX_REFUSALS {
                        retry.push(p);
                        continue;
                    }
                    metrics.cancel_failed();
                    done(&inner, &p);
                    tracing::error!(
                        event = %p.event.id,
                        batch = %String::from_utf8_lossy(&p.batch),
                        tickets = ?p.tickets,
                        error = %e,
                        "CANCELLATION REFUSED: giving up; the batch's tickets stay recorded as sold to nobody (check event:{{id}}:sold for this batch id and return them by hand)"
                    );
                }
                _ => retry.push(p),
            }
        }
        if retry.is_empty() {
            backoff = Duration::from_millis(50);
        } else {
            {
                let mut q = inner.queue.lock();
                for p in retry.into_iter().rev() {
                    q.push_front(p);
                }
            }
            if !inner.stopping.load(Relaxed) {
                tokio::time::sleep(backoff).await;
            }
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
    }
}
