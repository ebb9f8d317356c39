//! The fallback's state, shared by the request path ([`crate::store::resilient`]) and the
//! supervisor ([`crate::store::supervisor`]): the circuit breaker, this instance's reserves,
//! the journal, and the sales of a previous run still to be settled.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use fred::interfaces::ClientLike;
use fred::types::{Key, Value};
use parking_lot::{Mutex, RwLock};

use crate::catalog::Catalog;
use crate::event::{Event, EventKeys};
use crate::store::journal::Journal;
use crate::store::purchaser::Attribution;
use crate::store::redis::RedisStore;
use crate::store::reserve::{FallbackSale, Reserve};
use crate::store::reserve_buyers::ReserveBuyers;
use crate::store::scripts::LuaScript;
use crate::store::topology::Scope;
use crate::store::StoreError;
use crate::throttle::Throttle;

/// How soon after a probe found Redis answering a purchase sent after it may fail without
/// opening the breaker ([`Shared::confirm_outage`]): a second failure within it opens it. At
/// least three call timeouts, so that a purchase sent right after the probe can time out
/// within it.
pub const REPEAT_WINDOW: Duration = Duration::from_secs(1);

/// How long the confirming probe ([`Shared::confirm_outage`]) waits for each of its round
/// trips: two call timeouts. Longer than a call on purpose: a probe bounded like the call it
/// confirms fails on the same short stall of a healthy Redis or of this machine (the cluster
/// chaos schedule at seed 1431 saw both instances' calls to two healthy primaries answered
/// together after 530 ms, with 250 ms timeouts), and a breaker opened on a healthy Redis lets a
/// repeated `Idempotency-Key` buy a second ticket on another instance. So a stall of up to
/// three call timeouts from a purchase's send keeps the breaker closed. Not longer: in a real
/// outage the probe's wait comes out of the reserve lease, which bounds how long the fallback
/// may sell (an outage with a 3 s lease must still be served; tests/fallback.rs).
pub fn probe_bound(call_timeout: Duration) -> Duration {
    call_timeout * 2
}

/// What [`Shared::confirm_outage`] does about a failure that needs confirming.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    /// A probe since the purchase was sent found Redis answering: try Redis again.
    Forgive,
    /// The purchase was sent after a probe found Redis answering, and failed within
    /// [`REPEAT_WINDOW`] of it: Redis answers probes but not purchases.
    Trip,
    /// Ask Redis.
    Probe,
}

/// The verdict on a purchase queued when `sent_after` probes had found Redis answering, now
/// that `answered` have, the last `since_ms` ago (`None`: the purchase was never sent, so it
/// is no second failure).
fn verdict(answered: u64, sent_after: u64, since_ms: Option<u64>, window: Duration) -> Verdict {
    if answered > sent_after {
        Verdict::Forgive
    } else if answered > 0 && since_ms.is_some_and(|ms| ms < window.as_millis() as u64) {
        Verdict::Trip
    } else {
        Verdict::Probe
    }
}

/// Settings of the fallback.
#[derive(Debug, Clone, Copy)]
pub struct FallbackOptions {
    /// Tickets per event this instance holds back for when Redis fails (0: no fallback sales).
    pub reserve: u64,
    /// Lease on a reserve: an instance whose lease runs out stops selling from its reserve, and
    /// other instances then hold that reserve back (never return it to the pool).
    pub lease: Duration,
}

impl FallbackOptions {
    /// How often the supervisor renews leases, tops up reserves and watches other leases.
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
    /// The generation of the reserve list (`event:{id}:reserve_gen`) that `current` was last
    /// made from, or -1 before the first: a claim whose reply was never acted on may have
    /// changed the list at a length that looks unchanged, and the next claim, naming this
    /// generation, then gets the whole list.
    pub generation: AtomicI64,
    /// Known buyers' sales from this event's reserves: the limit and keys while Redis cannot
    /// tell, and who each unsettled sale went to.
    pub buyers: Mutex<ReserveBuyers>,
}

impl EventReserve {
    /// Whether some sale of this reserve is not in the ledger yet.
    pub fn owes(&self) -> bool {
        !self.unsettled.lock().is_empty() || self.current.read().has_unsettled()
    }
}

/// A fallback sale of an earlier run of this instance, read back from the journal.
#[derive(Debug, Clone)]
pub struct RecoveredSale {
    /// Event id.
    pub event: Box<str>,
    /// Ticket id.
    pub ticket: Bytes,
    /// Purchase id (of that run).
    pub purchase: Bytes,
    /// When it was sold, unix ms.
    pub at_ms: u64,
    /// The known buyer, its key and what it was told; `None`: anonymous.
    pub by: Option<Attribution>,
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
    /// Every fallback sale is on disk here before its buyer hears of it.
    pub journal: Journal,
    /// Sales an earlier run journaled and did not settle; settled before anything is sold.
    pub recovered: Mutex<Vec<RecoveredSale>>,
    /// Wakes the supervisor when the breaker opens.
    pub wake: tokio::sync::Notify,
    /// Serializes supervisor work and shutdown.
    pub work: tokio::sync::Mutex<()>,
    /// Set once shutdown began; the supervisor stops.
    pub stopping: AtomicBool,
    started: Instant,
    /// When the breaker last opened, ms after `started`.
    down_at_ms: AtomicU64,
    /// Rate-limits the log line of a purchase that failed in Redis.
    pub error_log: Throttle,
    /// One probe at a time confirms an outage ([`Shared::confirm_outage`]).
    probe: tokio::sync::Mutex<()>,
    /// Probes that found Redis answering so far; a purchase reads it before it is sent.
    answered: AtomicU64,
    /// When the last of them ended, ms after `started`.
    answered_end_ms: AtomicU64,
    /// The events this store serves (all, or one cluster shard's).
    pub scope: Scope,
    /// The shard's label in logs and metrics (`0-5460`); empty for a single Redis.
    pub label: Box<str>,
    /// This store's number among the parties settling from the journal.
    pub party: usize,
    /// Bumped when this store takes over another's unsettled sales: the journal marks the
    /// supervisor queued before no longer say everything it owes is settled.
    pub takeovers: AtomicU64,
}

impl Shared {
    /// State for an instance selling from `redis`, journaling into `journal`, with `recovered`
    /// sales of its previous run to settle first.
    pub fn new(
        redis: RedisStore,
        catalog: Arc<Catalog>,
        options: FallbackOptions,
        journal: Journal,
        recovered: Vec<RecoveredSale>,
        scope: Scope,
        label: Box<str>,
    ) -> Self {
        let party = journal.join();
        Self {
            takeovers: AtomicU64::new(0),
            scope,
            label,
            party,
            redis,
            catalog,
            options,
            fallback: AtomicBool::new(false),
            reserves: RwLock::new(HashMap::new()),
            journal,
            recovered: Mutex::new(recovered),
            wake: tokio::sync::Notify::new(),
            work: tokio::sync::Mutex::new(()),
            stopping: AtomicBool::new(false),
            started: Instant::now(),
            down_at_ms: AtomicU64::new(0),
            error_log: Throttle::new(Duration::from_secs(5)),
            probe: tokio::sync::Mutex::new(()),
            answered: AtomicU64::new(0),
            answered_end_ms: AtomicU64::new(0),
        }
    }

    /// Whether purchases go to the fallback now.
    pub fn in_fallback(&self) -> bool {
        self.fallback.load(Ordering::Acquire)
    }

    /// Milliseconds since the store started (monotonic).
    pub fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// A fence key in a slot this store serves (for [`RedisStore::ready`]), if it serves any.
    pub fn fence(&self) -> Option<fred::types::Key> {
        self.events().first().map(|e| e.keys.fence.clone())
    }

    /// The events of the catalogue this store serves now.
    pub fn events(&self) -> Vec<Arc<Event>> {
        let mut events = self.catalog.events();
        events.retain(|e| self.scope.owns(e));
        events
    }

    /// Opens the breaker because of `cause`: logged and counted once per outage.
    pub fn trip(&self, cause: &StoreError) {
        if self.open() {
            tracing::warn!(
                shard = %self.label,
                cause = %cause,
                "REDIS FAILED: switching to the fallback; selling only from this instance's reserved tickets, journaling every sale to disk until Redis is back"
            );
        }
    }

    /// Probes that found Redis answering so far: read before a purchase is sent, and given to
    /// [`Shared::confirm_outage`] if it fails.
    pub fn probes_answered(&self) -> u64 {
        self.answered.load(Ordering::Acquire)
    }

    /// A purchase sent when [`Shared::probes_answered`] said `sent_after` failed with `cause`,
    /// an outage-class error: opens the breaker unless Redis proves that it answers. Redis
    /// refusing (loading, busy, without quorum, read-only) opens it at once. Every other such
    /// error can come from this process alone with Redis healthy
    /// ([`StoreError::needs_confirming`]), and is forgiven once: if a probe
    /// ([`RedisStore::ready`]: connections up, a read and the replica wait, each bounded by the
    /// call timeout) finds Redis answering, or one did since the purchase was sent, the breaker
    /// stays closed and the purchase may be tried in Redis again (an unknown outcome is made
    /// void first, and a repeated key gets its first answer). A purchase sent after such a
    /// probe that fails as well, within [`REPEAT_WINDOW`] of it, opens the breaker without
    /// another probe: Redis answers probes but not purchases (a slow disk under writes, writes
    /// paused), which is an outage for buyers. Concurrent failures share one probe. Returns
    /// whether the breaker is open.
    ///
    /// Selling from the reserves for a moment with Redis healthy would be safe for tickets,
    /// but it is a fallback period: the per-buyer limit and `Idempotency-Key`s then hold per
    /// instance only, so a retry could buy a second ticket.
    pub async fn confirm_outage(&self, cause: &StoreError, sent_after: u64) -> bool {
        if !cause.needs_confirming() {
            self.trip(cause);
            return true;
        }
        let _probe = self.probe.lock().await;
        if self.in_fallback() {
            return true;
        }
        let since = self
            .now_ms()
            .saturating_sub(self.answered_end_ms.load(Ordering::Acquire));
        let window = REPEAT_WINDOW.max(self.redis.timeout() * 3);
        // A purchase never sent proves nothing new about Redis: the round before it failed.
        let sent = !matches!(cause, StoreError::NotSent);
        let answered = self.answered.load(Ordering::Acquire);
        match verdict(answered, sent_after, sent.then_some(since), window) {
            Verdict::Forgive => return false,
            Verdict::Trip => {
                self.trip(cause);
                return true;
            }
            Verdict::Probe => {}
        }
        let bound = probe_bound(self.redis.timeout());
        if self.redis.ready_within(self.fence().as_ref(), bound).await {
            self.answered_end_ms.store(self.now_ms(), Ordering::Release);
            self.answered.fetch_add(1, Ordering::AcqRel);
            self.redis.metrics().outage_unconfirmed();
            if let Some(held_back) = self.error_log.allow() {
                tracing::info!(shard = %self.label, cause = %cause, held_back, "a Redis call failed but Redis answers a probe: staying on Redis; the failed purchases go to Redis again (503 after three tries)");
            }
            return false;
        }
        self.trip(cause);
        true
    }

    /// Opens the breaker at start-up, before anything is sold, because sales of the previous run
    /// must be settled first.
    pub fn hold_for_recovery(&self, sales: usize, cancels: usize) {
        if self.open() {
            tracing::info!(
                shard = %self.label,
                sales,
                cancels,
                "journal: the previous run left work to settle; selling starts once it is in Redis"
            );
        }
    }

    fn open(&self) -> bool {
        let opened = self
            .fallback
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .is_ok();
        if opened {
            self.down_at_ms.store(self.now_ms(), Ordering::Relaxed);
            self.redis.metrics().fallback_entered(&self.label);
            self.wake.notify_one();
        }
        opened
    }

    /// Closes the breaker. Returns how long it was open.
    pub fn recovered(&self) -> Duration {
        self.fallback.store(false, Ordering::Release);
        self.redis.metrics().fallback_left(&self.label);
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
                    generation: AtomicI64::new(-1),
                    buyers: Mutex::new(ReserveBuyers::default()),
                })
            })
            .clone()
    }

    /// Whether any fallback sale, of this run or of a previous one, is not in the ledger yet.
    pub fn owes(&self) -> bool {
        !self.recovered.lock().is_empty() || self.reserves.read().values().any(|r| r.owes())
    }

    /// Runs `script` on a pooled connection, bounded by the Redis timeout (at least 500 ms);
    /// nothing is sent while the connection is down.
    ///
    /// # Errors
    /// Not connected, the bound, or the script's error.
    pub async fn call<R: fred::types::FromValue>(
        &self,
        script: &LuaScript,
        keys: Vec<Key>,
        args: Vec<Value>,
    ) -> Result<R, StoreError> {
        let client = self.redis.client();
        if !client.is_connected() {
            return Err(StoreError::NotConnected);
        }
        let keys_fence = keys.first().and_then(EventKeys::fence_of);
        let bound = self.call_bound();
        let started = std::time::Instant::now();
        let reply = match tokio::time::timeout(
            bound,
            script.run(&client, keys, args, || {
                self.redis.metrics().script_reloaded()
            }),
        )
        .await
        {
            Ok(r) => r?,
            Err(_) => return Err(StoreError::Timeout(bound)),
        };
        // What a reserve's upkeep wrote (a claim, a settlement) is acted on only once the
        // replicas hold it: a failover must not undo it behind this instance's back.
        if self.redis.replica_acks() > 0 {
            let fence = keys_fence.ok_or_else(|| StoreError::Protocol("no event key".into()))?;
            let left = bound.saturating_sub(started.elapsed());
            self.redis.replicated(&client, &fence, left).await?;
        }
        Ok(reply)
    }

    /// The bound on one background call.
    pub fn call_bound(&self) -> Duration {
        self.redis.timeout().max(Duration::from_millis(500))
    }
}

/// Unix time in milliseconds.
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::{verdict, Verdict, REPEAT_WINDOW};
    use std::time::Duration;

    #[test]
    fn a_failure_is_forgiven_once_and_a_second_one_right_after_opens_the_breaker() {
        let w = REPEAT_WINDOW;
        // No probe yet: ask Redis.
        assert_eq!(verdict(0, 0, Some(5), w), Verdict::Probe);
        // Sent before the probe that found Redis answering: forgiven, try again.
        assert_eq!(verdict(1, 0, Some(5), w), Verdict::Forgive);
        // The second try, sent after that probe, failed too, 400 ms later: open.
        assert_eq!(verdict(1, 1, Some(400), w), Verdict::Trip);
        // Never sent (queued behind a failed round): no second failure, ask again.
        assert_eq!(verdict(1, 1, None, w), Verdict::Probe);
        // A failure long after the last answer is a new hiccup: ask again.
        assert_eq!(verdict(1, 1, Some(60_000), w), Verdict::Probe);
        // A timeout longer than the window's floor widens it.
        assert_eq!(
            verdict(1, 1, Some(2_500), Duration::from_secs(3)),
            Verdict::Trip
        );
    }
}
