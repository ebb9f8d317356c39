//! The production store: Redis first, and this instance's reserves when Redis fails.
//!
//! A circuit breaker decides per request: while closed, purchases run the Lua script in Redis;
//! the first outage-class failure (connection refused or lost, a call slower than the Redis
//! timeout) opens it, and from then on purchases never wait on Redis: they sell lock-free from
//! the reserve this instance claimed while Redis was healthy, until the supervisor's probe sees
//! Redis answer again, writes the fallback sales into the ledger and closes the breaker. A
//! reserve holds only tickets this instance owns in Redis, so no other instance can sell them;
//! that is why the fallback cannot oversell (design.md).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use fred::types::Key;
use parking_lot::{Mutex, RwLock};

use crate::catalog::Catalog;
use crate::event::{Event, EventKeys};
use crate::metrics::StorePath;
use crate::store::redis::RedisStore;
use crate::store::reserve::{FallbackSale, Reserve};
use crate::store::{Sale, Store, StoreError};
use crate::throttle::Throttle;

/// Largest accepted `--fallback-reserve` (a Lua script moves a whole reserve in one call).
pub const MAX_RESERVE: u64 = 5000;

/// Settings of the fallback.
#[derive(Debug, Clone, Copy)]
pub struct FallbackOptions {
    /// Tickets per event this instance holds back for when Redis fails (0: no fallback sales).
    pub reserve: u64,
    /// Lease on a reserve: a crashed instance's reserve returns to the pool this long after its
    /// last heartbeat.
    pub lease: Duration,
}

impl FallbackOptions {
    /// How often the supervisor renews leases, tops up reserves and reaps expired ones.
    pub fn heartbeat(&self) -> Duration {
        (self.lease / 5).clamp(Duration::from_millis(100), Duration::from_secs(2))
    }

    /// How long before the lease runs out (by this instance's clock, measured from before the
    /// heartbeat was sent) the instance stops selling from its reserve.
    pub fn margin(&self) -> Duration {
        (self.lease / 5).max(Duration::from_millis(200))
    }
}

/// One event's reserve on this instance and the sales still owed to the ledger.
#[derive(Debug)]
pub struct EventReserve {
    /// The event (keys, id, ticket id format).
    pub event: Arc<Event>,
    /// `event:{id}:reserve:<instance>`.
    pub key: Key,
    /// The reserve sold from now; swapped by the supervisor only.
    pub current: RwLock<Arc<Reserve>>,
    /// Sales of reserves already swapped out, not yet in the ledger.
    pub unsettled: Mutex<Vec<FallbackSale>>,
    /// Milliseconds after the store's start until which selling from the reserve is safe (the
    /// lease, less a margin). 0: never.
    pub sell_until_ms: AtomicU64,
    /// Told when the supervisor swapped `current` (handed back or refilled).
    pub swapped: tokio::sync::Notify,
}

/// State shared by the request path and the supervisor.
#[derive(Debug)]
pub struct Shared {
    /// The Redis path.
    pub redis: RedisStore,
    /// Events to keep reserves for.
    pub catalog: Arc<Catalog>,
    /// Fallback settings.
    pub options: FallbackOptions,
    fallback: AtomicBool,
    /// Reserves by event id; written when an event is first maintained.
    pub reserves: RwLock<HashMap<Box<str>, Arc<EventReserve>>>,
    /// Wakes the supervisor when the breaker opens.
    pub wake: tokio::sync::Notify,
    /// Serializes supervisor work and shutdown.
    pub work: tokio::sync::Mutex<()>,
    /// Set once shutdown began; the supervisor stops.
    pub stopping: AtomicBool,
    started: Instant,
    /// When the breaker last opened, ms after `started`.
    down_at_ms: AtomicU64,
    error_log: Throttle,
}

impl Shared {
    /// Whether purchases go to the fallback now.
    pub fn in_fallback(&self) -> bool {
        self.fallback.load(Ordering::Acquire)
    }

    /// Milliseconds since the store started (monotonic).
    pub fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// Opens the breaker because of `cause`: logged and counted once per outage.
    pub fn trip(&self, cause: &StoreError) {
        if self
            .fallback
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            self.down_at_ms.store(self.now_ms(), Ordering::Relaxed);
            self.redis.metrics().fallback_entered();
            tracing::warn!(
                cause = %cause,
                "REDIS FAILED: switching to the in-memory fallback; selling only from this instance's reserved tickets, journaling every sale until Redis is back"
            );
            self.wake.notify_one();
        }
    }

    /// Closes the breaker. Returns how long it was open.
    pub fn recovered(&self) -> Duration {
        self.fallback.store(false, Ordering::Release);
        self.redis.metrics().fallback_left();
        Duration::from_millis(self.now_ms() - self.down_at_ms.load(Ordering::Relaxed))
    }

    /// The reserve record of `event`, created empty on first use.
    pub fn event_reserve(&self, event: &Arc<Event>) -> Arc<EventReserve> {
        if let Some(r) = self.reserves.read().get(&*event.id) {
            return r.clone();
        }
        self.reserves
            .write()
            .entry(event.id.clone())
            .or_insert_with(|| {
                Arc::new(EventReserve {
                    event: event.clone(),
                    key: EventKeys::reserve(&event.id, self.redis.instance()),
                    current: RwLock::new(Arc::new(Reserve::empty())),
                    unsettled: Mutex::new(Vec::new()),
                    sell_until_ms: AtomicU64::new(0),
                    swapped: tokio::sync::Notify::new(),
                })
            })
            .clone()
    }

    fn sell_from_reserve(&self, event: &Event) -> Result<Sale, StoreError> {
        let Some(er) = self.reserves.read().get(&*event.id).cloned() else {
            return Err(StoreError::ReserveSpent);
        };
        let reserve = self.usable_reserve(&er).ok_or(StoreError::ReserveSpent)?;
        let ticket = reserve
            .take(self.redis.next_purchase(), unix_ms())
            .ok_or(StoreError::ReserveSpent)?;
        Ok(Sale::Sold {
            ticket,
            remaining: event.metrics.remaining().saturating_sub(1),
        })
    }

    /// The current reserve of `er`, if the lease still covers selling from it.
    fn usable_reserve(&self, er: &EventReserve) -> Option<Arc<Reserve>> {
        if self.now_ms() >= er.sell_until_ms.load(Ordering::Acquire) {
            // The lease may have run out: the reserve may already be back in the pool.
            return None;
        }
        Some(er.current.read().clone())
    }

    /// The pool is empty and reserves hold `reserved` tickets: sell from this instance's own
    /// reserve (settled within a heartbeat), or decide sold out when every reserved ticket is
    /// one of ours and sold, or ask the buyer to retry while other instances hand theirs back.
    /// While our own reserve is being handed back, waits (bounded) for that and says so.
    async fn end_game(&self, event: &Event, reserved: u64) -> EndGame {
        let Some(er) = self.reserves.read().get(&*event.id).cloned() else {
            return EndGame::Retry;
        };
        let swapped = er.swapped.notified();
        let Some(reserve) = self.usable_reserve(&er) else {
            return EndGame::Retry;
        };
        // Our tickets that Redis still counts as reserved: held in the list, or sold and not
        // yet settled. Read only here, at the end of a sale, never on the fallback path.
        let ours = reserve.held_in_redis() + er.unsettled.lock().len() as u64;
        if let Some(ticket) = reserve.take(self.redis.next_purchase(), unix_ms()) {
            self.wake.notify_one(); // settle soon
            let remaining = reserved.saturating_sub(1);
            return EndGame::Done(StorePath::Reserve, Ok(Sale::Sold { ticket, remaining }));
        }
        if reserve.is_closed() {
            // Being handed back to the pool or refilled: ask Redis again once that is done.
            let _ = tokio::time::timeout(
                self.redis.timeout().max(Duration::from_millis(500)),
                swapped,
            )
            .await;
            return EndGame::Retry;
        }
        if reserved <= ours {
            EndGame::Done(StorePath::Redis, Ok(Sale::SoldOut))
        } else {
            // Other reserves hold tickets, or ours was handed back since Redis answered: ask
            // again (the caller bounds the attempts, then answers 503).
            EndGame::Retry
        }
    }
}

/// What the end of a sale decided.
enum EndGame {
    /// The answer.
    Done(StorePath, Result<Sale, StoreError>),
    /// Our reserve was just swapped; ask Redis again.
    Retry,
}

/// Unix time in milliseconds.
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Redis with a per-instance reserve fallback.
#[derive(Debug)]
pub struct ResilientStore {
    shared: Arc<Shared>,
}

impl ResilientStore {
    /// A store selling from `redis`, keeping reserves for the events of `catalog`. Spawns the
    /// supervisor (probe, settlement, reserve upkeep, reaping).
    pub fn new(
        redis: RedisStore,
        catalog: Arc<Catalog>,
        options: FallbackOptions,
        start_in_fallback: bool,
    ) -> Self {
        let shared = Arc::new(Shared {
            redis,
            catalog,
            options,
            fallback: AtomicBool::new(false),
            reserves: RwLock::new(HashMap::new()),
            wake: tokio::sync::Notify::new(),
            work: tokio::sync::Mutex::new(()),
            stopping: AtomicBool::new(false),
            started: Instant::now(),
            down_at_ms: AtomicU64::new(0),
            error_log: Throttle::new(Duration::from_secs(5)),
        });
        if start_in_fallback {
            shared.trip(&StoreError::NotConnected);
        }
        tokio::spawn(crate::store::supervisor::run(shared.clone()));
        Self { shared }
    }

    /// The shared state (tests and the supervisor).
    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }
}

impl Store for ResilientStore {
    async fn purchase<'a>(
        &'a self,
        event: &'a Arc<Event>,
    ) -> (StorePath, Result<Sale, StoreError>) {
        let s = &self.shared;
        let mut attempts = 0;
        while !s.in_fallback() {
            attempts += 1;
            match s.redis.purchase(event).await {
                Ok(sale) => return (StorePath::Redis, Ok(sale)),
                Err(e) if e.is_outage() => s.trip(&e),
                Err(StoreError::HeldInReserves(reserved)) => {
                    match s.end_game(event, reserved).await {
                        EndGame::Done(path, result) => return (path, result),
                        EndGame::Retry if attempts < 3 => continue,
                        EndGame::Retry => {
                            return (StorePath::Redis, Err(StoreError::HeldInReserves(reserved)))
                        }
                    }
                }
                Err(e) => {
                    if let Some(held_back) = s.error_log.allow() {
                        tracing::warn!(event = %event.id, error = %e, held_back, "purchase failed in Redis; answering 503");
                    }
                    return (StorePath::Redis, Err(e));
                }
            }
        }
        (StorePath::Fallback, s.sell_from_reserve(event))
    }

    async fn remaining<'a>(&'a self, events: &'a [Arc<Event>]) -> Result<Vec<u64>, StoreError> {
        if self.shared.in_fallback() {
            return Err(StoreError::NotConnected);
        }
        self.shared.redis.remaining(events).await
    }

    async fn ready(&self) -> bool {
        !self.shared.in_fallback() && self.shared.redis.ready().await
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
        let work = crate::store::supervisor::shutdown(self.shared.clone());
        if tokio::time::timeout(bound, work).await.is_err() {
            tracing::error!(
                ?bound,
                "could not return the reserves within the bound; expired leases will return them"
            );
        }
    }
}
