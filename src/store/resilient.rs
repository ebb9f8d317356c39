//! The production store: Redis first, and this instance's reserves when Redis fails.
//!
//! A circuit breaker decides per request: while closed, purchases run the Lua script in Redis;
//! the first outage-class failure (connection refused or lost, a call slower than the Redis
//! timeout) opens it, and from then on purchases never wait on Redis: they sell lock-free from
//! the reserve this instance claimed while Redis was healthy, each sale journaled to disk before
//! its buyer hears of it, until the supervisor's probe sees Redis answer again, writes the
//! fallback sales into the ledger and closes the breaker. A reserve holds only tickets this
//! instance owns in Redis, and no other instance ever returns them to the pool, so no one else
//! can sell them; that is why the fallback cannot oversell (design.md).

use std::sync::Arc;
use std::time::Duration;

use tracing::Instrument;

use crate::catalog::Catalog;
use crate::event::Event;
use crate::metrics::StorePath;
use crate::store::fallback::{unix_ms, EventReserve, FallbackOptions, RecoveredSale, Shared};
use crate::store::journal::{Journal, Record};
use crate::store::purchaser::Purchaser;
use crate::store::redis::RedisStore;
use crate::store::reserve::Reserve;
use crate::store::reserve_buyers::Before;
use crate::store::topology::Scope;
use crate::store::{Sale, Store, StoreError};

/// What the end of a sale decided.
enum EndGame {
    /// The answer.
    Done(StorePath, Result<Sale, StoreError>),
    /// Our reserve was just swapped; ask Redis again.
    Retry,
}

/// Redis with a per-instance reserve fallback.
#[derive(Debug)]
pub struct ResilientStore {
    shared: Arc<Shared>,
}

impl ResilientStore {
    /// A store selling from `redis`, keeping reserves for the events of `catalog`, journaling
    /// fallback sales into `journal`. `recovered` is what the journal held at start-up (sales
    /// and cancellations of the previous run): while any of it is owed, nothing is sold. Spawns
    /// the supervisor (probe, settlement, reserve upkeep, lease watch).
    pub fn new(
        redis: RedisStore,
        catalog: Arc<Catalog>,
        options: FallbackOptions,
        journal: Journal,
        recovered: Vec<Record>,
        start_in_fallback: bool,
    ) -> Self {
        Self::for_scope(
            redis,
            catalog,
            options,
            journal,
            recovered,
            start_in_fallback,
            Scope::All,
            "".into(),
        )
    }

    /// Like [`ResilientStore::new`], for the events of `scope` only: one shard of a Redis
    /// Cluster, named `label` in logs.
    #[allow(clippy::too_many_arguments)]
    pub fn for_scope(
        redis: RedisStore,
        catalog: Arc<Catalog>,
        options: FallbackOptions,
        journal: Journal,
        recovered: Vec<Record>,
        start_in_fallback: bool,
        scope: Scope,
        label: Box<str>,
    ) -> Self {
        let mut sales = Vec::new();
        let mut cancels = 0;
        for record in recovered {
            match record {
                Record::Sale {
                    event,
                    ticket,
                    purchase,
                    at_ms,
                    by,
                } => sales.push(RecoveredSale {
                    event,
                    ticket: ticket.into(),
                    purchase: purchase.into(),
                    at_ms,
                    by,
                }),
                Record::Cancel {
                    event,
                    batch,
                    tickets,
                } => {
                    let event = catalog
                        .get(&event)
                        .unwrap_or_else(|| Arc::new(Event::new(&event, 0, usize::MAX)));
                    let purchases = tickets.len().max(1) as u64;
                    let tickets = tickets.into_iter().map(Into::into).collect();
                    redis
                        .cancels()
                        .push(event, batch.into(), tickets, purchases);
                    cancels += 1;
                }
            }
        }
        redis.cancels().journal_to(journal.clone());
        let n_sales = sales.len();
        let shared = Arc::new(Shared::new(
            redis, catalog, options, journal, sales, scope, label,
        ));
        if start_in_fallback {
            shared.trip(&StoreError::NotConnected);
        } else if n_sales + cancels > 0 {
            shared.hold_for_recovery(n_sales, cancels);
        }
        let supervisor = crate::store::supervisor::run(shared.clone());
        if shared.label.is_empty() {
            tokio::spawn(supervisor);
        } else {
            // Every line the shard's background work logs names the shard.
            let span = tracing::info_span!("shard", shard = %shared.label);
            tokio::spawn(tracing::Instrument::instrument(supervisor, span));
        }
        Self { shared }
    }

    /// The shared state (tests and the supervisor).
    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// The queue of cancellations (a resharding moves an event's to its new shard).
    pub fn redis_cancels(&self) -> &crate::store::cancel::Cancels {
        self.shared.redis.cancels()
    }

    /// Sells from the reserve while Redis is failing.
    async fn sell_from_reserve(
        &self,
        event: &Event,
        who: Option<&Arc<Purchaser>>,
    ) -> Result<Sale, StoreError> {
        let s = &self.shared;
        let Some(er) = s.reserves.read().get(&*event.id).cloned() else {
            return Err(StoreError::ReserveSpent);
        };
        let reserve = self.usable_reserve(&er).ok_or(StoreError::ReserveSpent)?;
        let remaining = event.metrics.remaining().saturating_sub(1);
        self.take(&er, &reserve, who, remaining)
            .await
            .ok_or(StoreError::ReserveSpent)?
    }

    /// Sells one ticket of `reserve` (to `who`, within what this instance knows of the limit
    /// and the key) and makes the sale durable in the journal before the buyer hears of it.
    /// `None`: nothing left to sell. A sale the journal could not write stays recorded (it is
    /// settled as sold to nobody), and the buyer gets `503`.
    async fn take(
        &self,
        er: &EventReserve,
        reserve: &Reserve,
        who: Option<&Arc<Purchaser>>,
        remaining: u64,
    ) -> Option<Result<Sale, StoreError>> {
        if !crate::otel::spans::in_trace() {
            return self.take_untraced(er, reserve, who, remaining).await;
        }
        let span = crate::otel::spans::fallback_sale(&er.event);
        let taken = Box::pin(self.take_untraced(er, reserve, who, remaining))
            .instrument(span.clone())
            .await;
        match &taken {
            Some(Ok(Sale::Sold { ticket, .. })) => {
                span.record("ticketd.ticket", er.event.ticket_id(*ticket));
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => crate::otel::spans::record_error(&span, e),
            None => crate::otel::spans::record_error(&span, &"reserve spent"),
        }
        taken
    }

    async fn take_untraced(
        &self,
        er: &EventReserve,
        reserve: &Reserve,
        who: Option<&Arc<Purchaser>>,
        remaining: u64,
    ) -> Option<Result<Sale, StoreError>> {
        let s = &self.shared;
        if s.journal.is_broken() {
            s.redis.metrics().journal_failed();
            let broken = Arc::new(crate::store::journal::JournalError::Broken);
            return Some(Err(StoreError::Journal(broken)));
        }
        let purchase = s.redis.next_purchase();
        let at_ms = unix_ms();
        let ticket = match who {
            None => reserve.take(purchase, at_ms)?,
            Some(who) => {
                let mut buyers = er.buyers.lock();
                if let Before::Answer(sale) = buyers.before(who, s.redis.policy().limit()) {
                    return Some(Ok(sale));
                }
                // Who it went to is known before the sale can be seen by the settlement.
                buyers.attribute(who, purchase, remaining);
                match reserve.take(purchase, at_ms) {
                    Some(ticket) => ticket,
                    None => {
                        buyers.unbuy(who, purchase);
                        return None;
                    }
                }
            }
        };
        let mut id = Vec::with_capacity(er.event.id.len() + 8);
        er.event.write_ticket_id(ticket, &mut id);
        let record = Record::Sale {
            event: er.event.id.clone(),
            ticket: id,
            purchase: s.redis.purchase_id(purchase).to_vec(),
            at_ms,
            by: who.map(|w| crate::store::purchaser::Attribution {
                buyer: w.buyer.clone(),
                key: w.key_str().into(),
                remaining,
            }),
        };
        Some(match s.journal.append(record).await {
            Ok(()) => {
                if let Some(who) = who {
                    // Only a durable sale is answered again for its key.
                    er.buyers.lock().answered(who, ticket, remaining);
                }
                Ok(Sale::Sold { ticket, remaining })
            }
            Err(e) => {
                s.redis.metrics().journal_failed();
                Err(StoreError::Journal(e))
            }
        })
    }

    /// The current reserve of `er`, if the lease still covers selling from it.
    fn usable_reserve(&self, er: &EventReserve) -> Option<Arc<Reserve>> {
        if self.shared.now_ms() >= er.sell_until_ms.load(std::sync::atomic::Ordering::Acquire) {
            // The lease may have run out: the reserve may already be held back.
            return None;
        }
        Some(er.current.read().clone())
    }

    /// The pool is empty and live reserves hold `reserved` tickets: sell from this instance's
    /// own reserve (settled within a heartbeat), or decide sold out when every reserved ticket
    /// is one of ours and sold, or ask the buyer to retry while other instances hand theirs
    /// back. While our own reserve is being handed back, waits (bounded) for that and says so.
    async fn end_game(
        &self,
        event: &Event,
        reserved: u64,
        who: Option<&Arc<Purchaser>>,
    ) -> EndGame {
        let s = &self.shared;
        if who.is_some() {
            // A known buyer waits for the reserves to come back to the pool (the owners hand
            // them back when the pool runs low) and buys from Redis: a sale from a reserve
            // would count against the limit, and answer a key, only on this instance until it
            // is settled, while Redis is there to do both exactly.
            return EndGame::Retry;
        }
        let Some(er) = s.reserves.read().get(&*event.id).cloned() else {
            return EndGame::Retry;
        };
        let swapped = er.swapped.notified();
        let Some(reserve) = self.usable_reserve(&er) else {
            return EndGame::Retry;
        };
        // Our tickets that Redis still counts as reserved: held in the list, or sold and not
        // yet settled. Read only here, at the end of a sale, never on the fallback path.
        let ours = reserve.held_in_redis() + er.unsettled.lock().len() as u64;
        if let Some(sale) = self
            .take(&er, &reserve, who, reserved.saturating_sub(1))
            .await
        {
            s.wake.notify_one(); // settle soon
            return EndGame::Done(StorePath::Reserve, sale);
        }
        if reserve.is_closed() {
            // Being handed back to the pool or refilled: ask Redis again once that is done.
            let _ =
                tokio::time::timeout(s.redis.timeout().max(Duration::from_millis(500)), swapped)
                    .await;
            return EndGame::Retry;
        }
        if reserved <= ours {
            if event.limbo.load(std::sync::atomic::Ordering::Relaxed) > 0 {
                return EndGame::Done(StorePath::Redis, Err(StoreError::InLimbo));
            }
            EndGame::Done(StorePath::Redis, Ok(Sale::SoldOut))
        } else {
            // Other reserves hold tickets, or ours was handed back since Redis answered: ask
            // again (the caller bounds the attempts, then answers 503).
            EndGame::Retry
        }
    }
}

impl ResilientStore {
    /// Binds `who`'s key to `event` in Redis (see [`RedisStore::claim`]); while Redis is down,
    /// nothing can be checked across instances: `Ok(true)`.
    ///
    /// # Errors
    /// Redis failed.
    pub async fn claim(&self, who: &Purchaser, event: &str) -> Result<bool, StoreError> {
        if self.shared.in_fallback() || who.key.is_none() {
            return Ok(true);
        }
        self.shared.redis.claim(who, event).await
    }

    /// Whether the purchase script binds keys to their events (a single Redis).
    pub fn binds_keys(&self) -> bool {
        self.shared.redis.binds_keys()
    }

    /// Sells one ticket of `event` to `who` (anonymous: `None`) from Redis, or from the
    /// reserve while Redis fails. The key must be claimed before, if the caller cares.
    pub async fn sell(
        &self,
        event: &Arc<Event>,
        who: Option<&Arc<Purchaser>>,
    ) -> (StorePath, Result<Sale, StoreError>) {
        let s = &self.shared;
        let mut attempts = 0;
        while !s.in_fallback() {
            attempts += 1;
            let probes = s.probes_answered();
            match s.redis.purchase_as(event, who.cloned()).await {
                Ok(sale) => return (StorePath::Redis, Ok(sale)),
                Err(e) if e.is_outage() => {
                    // Boxed: the probe's state would otherwise sit in every purchase's
                    // future (tests/purchase.rs `request_future_stays_small`), for a cold path.
                    let open = Box::pin(s.confirm_outage(&e, probes)).await;
                    if !open && attempts >= 3 {
                        return (StorePath::Redis, Err(e));
                    }
                }
                Err(StoreError::HeldInReserves(reserved)) => {
                    // Boxed, as the probe: the end of a sale is a cold path.
                    match Box::pin(self.end_game(event, reserved, who)).await {
                        EndGame::Done(path, result) => return (path, result),
                        EndGame::Retry if attempts < 3 => continue,
                        EndGame::Retry => {
                            return (StorePath::Redis, Err(StoreError::HeldInReserves(reserved)))
                        }
                    }
                }
                Err(StoreError::InLimbo) => return (StorePath::Redis, Err(StoreError::InLimbo)),
                Err(e) => {
                    if let Some(held_back) = s.error_log.allow() {
                        tracing::warn!(event = %event.id, error = %e, held_back, "purchase failed in Redis; answering 503");
                    }
                    return (StorePath::Redis, Err(e));
                }
            }
        }
        // Boxed: a fallback sale's state (the journal write) must not size every purchase's
        // future, which hyper keeps for the life of each connection.
        (
            StorePath::Fallback,
            Box::pin(self.sell_from_reserve(event, who)).await,
        )
    }
}

/// A key bound to another event is refused; a claim Redis could not answer lets the purchase
/// go on (the event's own script still answers a repeated key), and is logged.
pub(crate) fn claim_refused(
    claim: Result<bool, StoreError>,
    who: &Purchaser,
    event: &Event,
) -> bool {
    match claim {
        Ok(bound_here) => !bound_here,
        Err(e) => {
            tracing::debug!(event = %event.id, buyer = %who.buyer, error = %e, "could not bind the Idempotency-Key to its event; going on without the check against other events");
            false
        }
    }
}

impl Store for ResilientStore {
    async fn purchase<'a>(
        &'a self,
        event: &'a Arc<Event>,
    ) -> (StorePath, Result<Sale, StoreError>) {
        self.sell(event, None).await
    }

    async fn purchase_by<'a>(
        &'a self,
        event: &'a Arc<Event>,
        who: &'a Arc<Purchaser>,
    ) -> (StorePath, Result<Sale, StoreError>) {
        // On a single Redis the purchase script binds the key itself, in the same call. Boxed:
        // the binding's Redis future must not size every known buyer's purchase.
        if !self.binds_keys()
            && claim_refused(Box::pin(self.claim(who, &event.id)).await, who, event)
        {
            return (StorePath::Redis, Ok(Sale::KeyReused));
        }
        self.sell(event, Some(who)).await
    }

    async fn tickets<'a>(
        &'a self,
        event: &'a Arc<Event>,
        buyer: &'a str,
    ) -> Result<Vec<bytes::Bytes>, StoreError> {
        if self.shared.in_fallback() {
            return Err(StoreError::NotConnected);
        }
        self.shared.redis.tickets(event, buyer).await
    }

    async fn remaining<'a>(&'a self, events: &'a [Arc<Event>]) -> Result<Vec<u64>, StoreError> {
        if self.shared.in_fallback() {
            return Err(StoreError::NotConnected);
        }
        self.shared.redis.remaining(events).await
    }

    async fn ready(&self) -> bool {
        !self.shared.in_fallback() && self.shared.redis.ready(self.shared.fence().as_ref()).await
    }

    fn name(&self) -> &'static str {
        "redis"
    }

    fn reserved(&self, events: &[Arc<Event>]) -> Vec<u64> {
        let reserves = self.shared.reserves.read();
        events
            .iter()
            .map(|e| {
                reserves
                    .get(&*e.id)
                    .map_or(0, |r| r.current.read().unsold())
            })
            .collect()
    }

    async fn shutdown(&self, bound: Duration) {
        let work = crate::store::supervisor::shutdown(self.shared.clone(), bound);
        if tokio::time::timeout(bound, work).await.is_err() {
            tracing::error!(
                ?bound,
                "could not hand the reserves back within the bound; other instances will hold them back until this instance starts again on its journal"
            );
        }
    }
}
