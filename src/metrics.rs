//! The metrics registry: lock-free counters, gauges and histograms, created once and passed in.
//!
//! Every write on the purchase path is one relaxed atomic operation on a cache-line padded
//! counter: no lock, no allocation, no map lookup. Per-event counters live inside the event
//! itself ([`EventMetrics`], reached through the catalogue the request already consulted); the
//! rare writer (a new event) takes the catalogue's parking_lot lock. Rendering is in
//! [`crate::metrics_render`]; every metric name and HELP text is declared once in [`names`].

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crossbeam_utils::CachePadded;

/// Metric names and HELP texts, declared once, side by side.
#[allow(missing_docs)] // each constant carries its own HELP text
pub mod names {
    /// `(name, type, help)` of one metric family.
    pub type Family = (&'static str, &'static str, &'static str);

    pub const PURCHASES: Family = (
        "ticketd_purchases_total",
        "counter",
        "Purchase attempts by event and outcome (sold, sold_out, unavailable, error; with buyers also limit_reached, replayed, key_conflict).",
    );
    pub const STORE_PURCHASES: Family = (
        "ticketd_store_purchases_total",
        "counter",
        "Purchase answers by the store path that gave them (redis, fallback, reserve, memory) and outcome; sold-out answers given from memory once the store said so are only in ticketd_purchases_total.",
    );
    pub const TICKETS_SOLD: Family = (
        "ticketd_tickets_sold_total",
        "counter",
        "Tickets this instance sold, by event.",
    );
    pub const TICKETS_REMAINING: Family = (
        "ticketd_tickets_remaining",
        "gauge",
        "Unsold tickets per event (pool + reserves), from a snapshot one background task reads from the store every --metrics-refresh and this instance's sales update; a scrape does not ask the store.",
    );
    pub const REMAINING_AGE: Family = (
        "ticketd_remaining_snapshot_age_seconds",
        "gauge",
        "Seconds since ticketd_tickets_remaining (and ticketd_tickets_quarantined) was last read from the store; grows while the store does not answer.",
    );
    pub const CAPACITY: Family = (
        "ticketd_event_capacity",
        "gauge",
        "Tickets per event in all.",
    );
    pub const LATENCY: Family = (
        "ticketd_purchase_duration_seconds",
        "histogram",
        "Time to decide one purchase in the store, by store path.",
    );
    pub const HTTP_REQUESTS: Family = (
        "ticketd_http_requests_total",
        "counter",
        "HTTP requests answered, by route and status code.",
    );
    pub const HTTP_IN_FLIGHT: Family = (
        "ticketd_http_requests_in_flight",
        "gauge",
        "HTTP requests being handled now.",
    );
    pub const CONNECTIONS_OPEN: Family = (
        "ticketd_connections_open",
        "gauge",
        "Client connections open now.",
    );
    pub const CONNECTIONS: Family = (
        "ticketd_connections_total",
        "counter",
        "Client connections accepted.",
    );
    pub const FALLBACK_ACTIVATIONS: Family = (
        "ticketd_fallback_activations_total",
        "counter",
        "Times the instance switched from Redis to its in-memory fallback.",
    );
    pub const OUTAGES_UNCONFIRMED: Family = (
        "ticketd_redis_outages_unconfirmed_total",
        "counter",
        "Probes that found Redis answering right after purchases failed like an outage (a timeout, a lost call): the breaker stayed closed and those purchases were tried in Redis again.",
    );
    pub const FALLBACK_MODE: Family = (
        "ticketd_fallback_mode",
        "gauge",
        "Redis shards whose purchases are served by the in-memory fallback now: 0 or 1 for a single Redis, up to the number of primaries of a cluster.",
    );
    pub const SHARD_FALLBACK_MODE: Family = (
        "ticketd_shard_fallback_mode",
        "gauge",
        "1 while the purchases of this Redis Cluster shard (by its slot ranges) are served by the in-memory fallback, else 0.",
    );
    pub const REDIS_ERRORS: Family = (
        "ticketd_redis_errors_total",
        "counter",
        "Failed Redis calls, by kind (timeout, io, script, protocol, other).",
    );
    pub const SCRIPT_RELOADS: Family = (
        "ticketd_script_reloads_total",
        "counter",
        "Times a Lua script was loaded again after NOSCRIPT (Redis restarted or SCRIPT FLUSH).",
    );
    pub const BATCHES: Family = (
        "ticketd_redis_purchase_batches_total",
        "counter",
        "Purchase script calls sent to Redis; each carries the waiting purchases of one event (Redis purchases / batches = mean batch size).",
    );
    pub const CANCELLED: Family = (
        "ticketd_purchases_cancelled_total",
        "counter",
        "Purchases made void in Redis afterwards: their outcome was unknown (timeout, lost connection), or the buyer left while the purchase was in Redis.",
    );
    pub const SHED: Family = (
        "ticketd_purchases_shed_total",
        "counter",
        "Purchases answered 503 because no Redis slot freed up within the queue timeout (overload, not a Redis failure).",
    );
    pub const RESERVE: Family = (
        "ticketd_fallback_reserve_tickets",
        "gauge",
        "Unsold tickets this instance holds back per event for when Redis fails.",
    );
    pub const SETTLED: Family = (
        "ticketd_fallback_settled_total",
        "counter",
        "Fallback sales written into the Redis ledger after an outage.",
    );
    pub const CONFLICTS: Family = (
        "ticketd_settle_conflicts_total",
        "counter",
        "Fallback sales whose ticket the ledger shows sold to another purchase (should stay 0; alert on it).",
    );
    pub const OVER_LIMIT: Family = (
        "ticketd_buyers_over_limit_total",
        "counter",
        "Buyers found holding more than --max-per-buyer tickets of an event after fallback sales were settled (instances enforce the limit from what each knows while Redis is down).",
    );
    pub const KEYS_TWICE: Family = (
        "ticketd_idempotency_keys_used_twice_total",
        "counter",
        "Idempotency-Keys found with two sales after fallback sales were settled (a repeat reached another instance while Redis was down).",
    );
    pub const HELD_BACK: Family = (
        "ticketd_reserves_held_back_total",
        "counter",
        "Reserves of other instances whose lease expired, held back by this instance (never returned to the pool: their owner may have sold from them).",
    );
    pub const QUARANTINED: Family = (
        "ticketd_tickets_quarantined",
        "gauge",
        "Tickets per event held back in reserves whose lease expired: not for sale until their instance comes back and settles its journal, or an operator releases them (ticketd reserves).",
    );
    pub const CANCEL_FAILED: Family = (
        "ticketd_cancellations_failed_total",
        "counter",
        "Cancellations of purchases sold to nobody that Redis refused and that were given up (their tickets stay recorded as sold; logged at ERROR with the batch id).",
    );
    pub const JOURNAL_FAILED: Family = (
        "ticketd_journal_failures_total",
        "counter",
        "Fallback sales that could not be made durable in the journal and were answered 503.",
    );
    pub const SPANS_DROPPED: Family = (
        "ticketd_trace_spans_dropped_total",
        "counter",
        "Trace spans dropped because the export queue was full (OTEL_BSP_MAX_QUEUE_SIZE); always 0 with tracing off.",
    );
    pub const SPANS_EXPORT_FAILED: Family = (
        "ticketd_trace_spans_export_failed_total",
        "counter",
        "Trace spans the collector did not take (export failed or timed out); logged at WARN, rate-limited.",
    );
    pub const BUILD_INFO: Family = (
        "ticketd_build_info",
        "gauge",
        "Always 1; the labels tell the version.",
    );
    pub const START_TIME: Family = (
        "ticketd_process_start_time_seconds",
        "gauge",
        "Start time of the process since the Unix epoch, in seconds.",
    );
}

/// How a purchase ended, as counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A ticket was sold.
    Sold = 0,
    /// No ticket left.
    SoldOut = 1,
    /// The store could not decide (answered 503).
    Unavailable = 2,
    /// Anything unexpected (a malformed reply and the like).
    Error = 3,
    /// The buyer holds the most tickets of the event one buyer may.
    LimitReached = 4,
    /// A repeated `Idempotency-Key`: the first answer again, nothing sold.
    Replayed = 5,
    /// An `Idempotency-Key` in use by another purchase, or first used for another event.
    KeyConflict = 6,
}

impl Outcome {
    /// Every outcome, in index order.
    pub const ALL: [Outcome; 7] = [
        Outcome::Sold,
        Outcome::SoldOut,
        Outcome::Unavailable,
        Outcome::Error,
        Outcome::LimitReached,
        Outcome::Replayed,
        Outcome::KeyConflict,
    ];

    /// The label value.
    pub fn label(self) -> &'static str {
        match self {
            Outcome::Sold => "sold",
            Outcome::SoldOut => "sold_out",
            Outcome::Unavailable => "unavailable",
            Outcome::Error => "error",
            Outcome::LimitReached => "limit_reached",
            Outcome::Replayed => "replayed",
            Outcome::KeyConflict => "key_conflict",
        }
    }
}

/// Which store decided a purchase.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StorePath {
    /// The Lua script in Redis.
    Redis = 0,
    /// This instance's reserve, while Redis is failing.
    Fallback = 1,
    /// The standalone in-memory store.
    Memory = 2,
    /// This instance's reserve while Redis is healthy: the pool is empty, the last tickets are
    /// the reserved ones.
    Reserve = 3,
}

impl StorePath {
    /// Every path, in index order.
    pub const ALL: [StorePath; 4] = [
        StorePath::Redis,
        StorePath::Fallback,
        StorePath::Memory,
        StorePath::Reserve,
    ];

    /// The label value.
    pub fn label(self) -> &'static str {
        match self {
            StorePath::Redis => "redis",
            StorePath::Fallback => "fallback",
            StorePath::Memory => "memory",
            StorePath::Reserve => "reserve",
        }
    }
}

/// Kinds of Redis failure, as counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RedisErrorKind {
    /// No answer within the Redis timeout.
    Timeout = 0,
    /// Connection refused, reset or closed.
    Io = 1,
    /// The script failed in Redis.
    Script = 2,
    /// A reply of the wrong shape.
    Protocol = 3,
    /// Anything else.
    Other = 4,
}

impl RedisErrorKind {
    /// Every kind, in index order.
    pub const ALL: [RedisErrorKind; 5] = [
        RedisErrorKind::Timeout,
        RedisErrorKind::Io,
        RedisErrorKind::Script,
        RedisErrorKind::Protocol,
        RedisErrorKind::Other,
    ];

    /// The label value.
    pub fn label(self) -> &'static str {
        match self {
            RedisErrorKind::Timeout => "timeout",
            RedisErrorKind::Io => "io",
            RedisErrorKind::Script => "script",
            RedisErrorKind::Protocol => "protocol",
            RedisErrorKind::Other => "other",
        }
    }
}

/// Upper bounds of the latency buckets, in seconds (100 µs to 1 s).
pub const LATENCY_BUCKETS: [f64; 13] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
];

/// A histogram with atomic buckets. Each observation is three relaxed adds.
#[derive(Debug)]
pub struct Histogram {
    bounds_ns: [u64; LATENCY_BUCKETS.len()],
    /// Non-cumulative counts; the last one is `+Inf`.
    buckets: [AtomicU64; LATENCY_BUCKETS.len() + 1],
    sum_ns: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        Self {
            bounds_ns: LATENCY_BUCKETS.map(|s| (s * 1e9).round() as u64),
            buckets: Default::default(),
            sum_ns: AtomicU64::new(0),
        }
    }
}

impl Histogram {
    /// Records one observation.
    pub fn observe(&self, d: Duration) {
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        let i = self
            .bounds_ns
            .iter()
            .position(|&b| ns <= b)
            .unwrap_or(self.bounds_ns.len());
        self.buckets[i].fetch_add(1, Relaxed);
        self.sum_ns.fetch_add(ns, Relaxed);
    }

    /// Cumulative bucket counts (the last one is `+Inf`, the total count) and the sum in seconds.
    pub fn snapshot(&self) -> ([u64; LATENCY_BUCKETS.len() + 1], f64) {
        let mut out = [0; LATENCY_BUCKETS.len() + 1];
        let mut acc = 0;
        for (o, b) in out.iter_mut().zip(&self.buckets) {
            acc += b.load(Relaxed);
            *o = acc;
        }
        (out, self.sum_ns.load(Relaxed) as f64 / 1e9)
    }
}

/// The counters of one event, on cache lines of their own.
#[derive(Debug, Default)]
pub struct EventMetrics {
    counters: CachePadded<EventCounters>,
}

#[derive(Debug, Default)]
struct EventCounters {
    /// Purchases by [`Outcome`].
    outcomes: [AtomicU64; Outcome::ALL.len()],
    /// Last remaining count a store reported.
    remaining: AtomicU64,
    /// Last count of tickets held back in expired reserves that a store reported.
    held_back: AtomicU64,
    /// Of the `SoldOut` outcomes, those answered from memory without asking the store.
    sold_out_from_memory: AtomicU64,
}

impl EventMetrics {
    /// Counters at zero, remaining at `remaining` until a store reports.
    pub fn with_remaining(remaining: u64) -> Self {
        let m = Self::default();
        m.set_remaining(remaining);
        m
    }

    /// Counts one purchase of this event.
    pub fn record(&self, outcome: Outcome) {
        self.counters.outcomes[outcome as usize].fetch_add(1, Relaxed);
    }

    /// Counts one purchase answered "sold out" from memory ([`crate::sold_out`]): a `SoldOut`
    /// outcome that no store decided and that carries no remaining count.
    pub fn record_sold_out_from_memory(&self) {
        self.counters.sold_out_from_memory.fetch_add(1, Relaxed);
        self.record(Outcome::SoldOut);
    }

    /// Purchases of this event answered by a store with a remaining count (sold, sold out).
    pub fn answered_by_store(&self) -> u64 {
        let from_memory = self.counters.sold_out_from_memory.load(Relaxed);
        (self.count(Outcome::Sold) + self.count(Outcome::SoldOut)).saturating_sub(from_memory)
    }

    /// Purchases of this event that ended in `outcome`.
    pub fn count(&self, outcome: Outcome) -> u64 {
        self.counters.outcomes[outcome as usize].load(Relaxed)
    }

    /// Remembers the remaining count a store reported.
    pub fn set_remaining(&self, remaining: u64) {
        self.counters.remaining.store(remaining, Relaxed);
    }

    /// The last remaining count a store reported.
    pub fn remaining(&self) -> u64 {
        self.counters.remaining.load(Relaxed)
    }

    /// Remembers how many tickets of this event are held back in expired reserves.
    pub fn set_held_back(&self, n: u64) {
        self.counters.held_back.store(n, Relaxed);
    }

    /// The last held-back count a store reported.
    pub fn held_back(&self) -> u64 {
        self.counters.held_back.load(Relaxed)
    }
}

/// Routes counted in `ticketd_http_requests_total`, in index order.
pub const ROUTES: [&str; 7] = [
    "buy",
    "tickets",
    "healthz",
    "readyz",
    "metrics",
    "method_not_allowed",
    "not_found",
];

/// Status codes counted per route; any other lands in `other`.
pub const STATUSES: [u16; 12] = [200, 400, 401, 404, 405, 409, 413, 422, 431, 500, 503, 0];

/// Process-wide metrics. Per-event ones are in [`EventMetrics`].
#[derive(Debug)]
pub struct Metrics {
    store_purchases: [[CachePadded<AtomicU64>; Outcome::ALL.len()]; 4],
    latency: [CachePadded<Histogram>; 4],
    http: [[AtomicU64; STATUSES.len()]; ROUTES.len()],
    in_flight: CachePadded<AtomicU64>,
    connections_open: CachePadded<AtomicU64>,
    connections: AtomicU64,
    fallback_activations: AtomicU64,
    outages_unconfirmed: AtomicU64,
    fallback_mode: AtomicU64,
    /// Per cluster shard (label): whether it is in fallback mode.
    shard_modes: parking_lot::Mutex<Vec<(Box<str>, bool)>>,
    redis_errors: [AtomicU64; 5],
    script_reloads: AtomicU64,
    batches: CachePadded<AtomicU64>,
    cancelled: AtomicU64,
    settled: AtomicU64,
    shed: AtomicU64,
    conflicts: AtomicU64,
    over_limit: AtomicU64,
    keys_twice: AtomicU64,
    held_back: AtomicU64,
    cancel_failed: AtomicU64,
    journal_failed: AtomicU64,
    start_time: f64,
    /// When the registry was made: the origin of `remaining_read_at`.
    created: Instant,
    /// Nanoseconds after `created` at which the remaining counts were last read from the store
    /// (0: never, the counts are still the capacities).
    remaining_read_at: AtomicU64,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A registry with every counter at zero and the start time set to now.
    pub fn new() -> Self {
        Self {
            store_purchases: Default::default(),
            latency: Default::default(),
            http: Default::default(),
            in_flight: Default::default(),
            connections_open: Default::default(),
            connections: AtomicU64::new(0),
            fallback_activations: AtomicU64::new(0),
            outages_unconfirmed: AtomicU64::new(0),
            fallback_mode: AtomicU64::new(0),
            shard_modes: Default::default(),
            redis_errors: Default::default(),
            script_reloads: AtomicU64::new(0),
            batches: Default::default(),
            cancelled: AtomicU64::new(0),
            settled: AtomicU64::new(0),
            shed: AtomicU64::new(0),
            conflicts: AtomicU64::new(0),
            over_limit: AtomicU64::new(0),
            keys_twice: AtomicU64::new(0),
            held_back: AtomicU64::new(0),
            cancel_failed: AtomicU64::new(0),
            journal_failed: AtomicU64::new(0),
            start_time: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64()),
            created: Instant::now(),
            remaining_read_at: AtomicU64::new(0),
        }
    }

    /// Counts a purchase answer of `path` and records how long the store took.
    pub fn record_purchase(&self, path: StorePath, outcome: Outcome, took: Duration) {
        self.store_purchases[path as usize][outcome as usize].fetch_add(1, Relaxed);
        self.latency[path as usize].observe(took);
    }

    /// Purchase answers of `path` that ended in `outcome`.
    pub fn store_purchases(&self, path: StorePath, outcome: Outcome) -> u64 {
        self.store_purchases[path as usize][outcome as usize].load(Relaxed)
    }

    /// The latency histogram of `path`.
    pub fn latency(&self, path: StorePath) -> &Histogram {
        &self.latency[path as usize]
    }

    /// Counts an answered request of route `route` (an index into [`ROUTES`]).
    pub fn record_http(&self, route: &str, status: u16) {
        let r = ROUTES
            .iter()
            .position(|&x| x == route)
            .unwrap_or(ROUTES.len() - 1);
        let s = STATUSES
            .iter()
            .position(|&x| x == status)
            .unwrap_or(STATUSES.len() - 1);
        self.http[r][s].fetch_add(1, Relaxed);
    }

    /// Requests answered on route index `r` with status index `s`.
    pub fn http(&self, r: usize, s: usize) -> u64 {
        self.http[r][s].load(Relaxed)
    }

    /// Marks a request started; the guard marks it finished when dropped.
    pub fn request_started(&self) -> InFlight<'_> {
        self.in_flight.fetch_add(1, Relaxed);
        InFlight(&self.in_flight)
    }

    /// Requests being handled now.
    pub fn in_flight(&self) -> u64 {
        self.in_flight.load(Relaxed)
    }

    /// Marks a connection opened; call [`Metrics::connection_closed`] when it closes.
    pub fn connection_opened(&self) {
        self.connections.fetch_add(1, Relaxed);
        self.connections_open.fetch_add(1, Relaxed);
    }

    /// Marks a connection closed.
    pub fn connection_closed(&self) {
        self.connections_open.fetch_sub(1, Relaxed);
    }

    /// Connections open now and accepted in all.
    pub fn connections(&self) -> (u64, u64) {
        (
            self.connections_open.load(Relaxed),
            self.connections.load(Relaxed),
        )
    }

    /// Counts a switch into fallback mode and sets the mode gauge.
    pub fn fallback_entered(&self, shard: &str) {
        self.fallback_activations.fetch_add(1, Relaxed);
        self.fallback_mode.fetch_add(1, Relaxed);
        self.set_shard_mode(shard, true);
    }

    /// Counts an outage-class Redis error that a probe found Redis answering after.
    pub fn outage_unconfirmed(&self) {
        self.outages_unconfirmed.fetch_add(1, Relaxed);
    }

    /// Outage-class Redis errors that a probe found Redis answering after.
    pub fn outages_unconfirmed(&self) -> u64 {
        self.outages_unconfirmed.load(Relaxed)
    }

    /// Counts a store (shard) leaving fallback mode.
    pub fn fallback_left(&self, shard: &str) {
        self.fallback_mode.fetch_sub(1, Relaxed);
        self.set_shard_mode(shard, false);
    }

    fn set_shard_mode(&self, shard: &str, on: bool) {
        if shard.is_empty() {
            return; // a single Redis: the instance-wide gauge says it all
        }
        let mut modes = self.shard_modes.lock();
        match modes.iter_mut().find(|(s, _)| &**s == shard) {
            Some(mode) => mode.1 = on,
            None => modes.push((shard.into(), on)),
        }
    }

    /// Fallback activations and how many stores (shards) are in fallback mode now.
    pub fn fallback(&self) -> (u64, u64) {
        (
            self.fallback_activations.load(Relaxed),
            self.fallback_mode.load(Relaxed),
        )
    }

    /// Each cluster shard that has been in fallback mode, and whether it is now.
    pub fn shard_modes(&self) -> Vec<(Box<str>, bool)> {
        self.shard_modes.lock().clone()
    }

    /// Counts a failed Redis call.
    pub fn redis_error(&self, kind: RedisErrorKind) {
        self.redis_errors[kind as usize].fetch_add(1, Relaxed);
    }

    /// Failed Redis calls of `kind`.
    pub fn redis_errors(&self, kind: RedisErrorKind) -> u64 {
        self.redis_errors[kind as usize].load(Relaxed)
    }

    /// Counts one purchase script call (a batch of purchases of one event).
    pub fn redis_batch(&self) {
        self.batches.fetch_add(1, Relaxed);
    }

    /// Purchase script calls so far.
    pub fn redis_batches(&self) -> u64 {
        self.batches.load(Relaxed)
    }

    /// Counts a script reload after NOSCRIPT.
    pub fn script_reloaded(&self) {
        self.script_reloads.fetch_add(1, Relaxed);
    }

    /// Script reloads so far.
    pub fn script_reloads(&self) -> u64 {
        self.script_reloads.load(Relaxed)
    }

    /// Counts `n` purchases made void: their outcome was unknown, or their buyers left.
    pub fn purchases_cancelled(&self, n: u64) {
        self.cancelled.fetch_add(n, Relaxed);
    }

    /// Purchases made void so far.
    pub fn cancelled(&self) -> u64 {
        self.cancelled.load(Relaxed)
    }

    /// Counts a purchase shed for overload.
    pub fn purchase_shed(&self) {
        self.shed.fetch_add(1, Relaxed);
    }

    /// Purchases shed so far.
    pub fn shed(&self) -> u64 {
        self.shed.load(Relaxed)
    }

    /// Counts fallback sales written into the ledger.
    pub fn fallback_settled(&self, n: u64) {
        self.settled.fetch_add(n, Relaxed);
    }

    /// Counts fallback sales that conflicted with the ledger.
    pub fn settle_conflicts(&self, n: u64) {
        self.conflicts.fetch_add(n, Relaxed);
    }

    /// Counts buyers found over the limit after a settlement.
    pub fn buyers_over_limit(&self, n: u64) {
        self.over_limit.fetch_add(n, Relaxed);
    }

    /// Counts keys found with two sales after a settlement.
    pub fn keys_used_twice(&self, n: u64) {
        self.keys_twice.fetch_add(n, Relaxed);
    }

    /// Buyers over the limit and keys used twice, found by settlements.
    pub fn buyer_findings(&self) -> (u64, u64) {
        (self.over_limit.load(Relaxed), self.keys_twice.load(Relaxed))
    }

    /// Counts another instance's reserve held back after its lease expired.
    pub fn reserve_held_back(&self) {
        self.held_back.fetch_add(1, Relaxed);
    }

    /// Counts a cancellation given up after Redis refused it.
    pub fn cancel_failed(&self) {
        self.cancel_failed.fetch_add(1, Relaxed);
    }

    /// Counts a fallback sale the journal could not make durable.
    pub fn journal_failed(&self) {
        self.journal_failed.fetch_add(1, Relaxed);
    }

    /// Fallback sales settled, conflicts, reserves held back.
    pub fn settlement(&self) -> (u64, u64, u64) {
        (
            self.settled.load(Relaxed),
            self.conflicts.load(Relaxed),
            self.held_back.load(Relaxed),
        )
    }

    /// Cancellations given up, fallback sales the journal failed.
    pub fn failures(&self) -> (u64, u64) {
        (
            self.cancel_failed.load(Relaxed),
            self.journal_failed.load(Relaxed),
        )
    }

    /// Marks the remaining counts as read from the store just now ([`crate::remaining`]).
    pub fn remaining_refreshed(&self) {
        let at = u64::try_from(self.created.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.remaining_read_at.store(at, Relaxed);
    }

    /// How long ago the remaining counts were last read from the store; since the registry was
    /// made if never.
    pub fn remaining_age(&self) -> Duration {
        let at = Duration::from_nanos(self.remaining_read_at.load(Relaxed));
        self.created.elapsed().saturating_sub(at)
    }

    /// Start time of the process, seconds since the Unix epoch.
    pub fn start_time(&self) -> f64 {
        self.start_time
    }
}

/// Decrements the in-flight gauge when dropped, so a cancelled request is counted out too.
#[derive(Debug)]
pub struct InFlight<'a>(&'a AtomicU64);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative() {
        let h = Histogram::default();
        h.observe(Duration::from_micros(50));
        h.observe(Duration::from_micros(100));
        h.observe(Duration::from_millis(3));
        h.observe(Duration::from_secs(2));
        let (b, sum) = h.snapshot();
        assert_eq!(b[0], 2, "<= 100 µs");
        assert_eq!(b[4], 2, "<= 2.5 ms");
        assert_eq!(b[5], 3, "<= 5 ms");
        assert_eq!(b[12], 3, "<= 1 s");
        assert_eq!(b[13], 4, "+Inf");
        assert!((sum - 2.00315).abs() < 1e-9, "{sum}");
    }

    #[test]
    fn in_flight_guard_counts_out_on_drop() {
        let m = Metrics::new();
        {
            let _a = m.request_started();
            let _b = m.request_started();
            assert_eq!(m.in_flight(), 2);
        }
        assert_eq!(m.in_flight(), 0);
    }

    #[test]
    fn remaining_age_starts_with_the_registry_and_resets_when_read() {
        let m = Metrics::new();
        std::thread::sleep(Duration::from_millis(20));
        assert!(m.remaining_age() >= Duration::from_millis(20));
        m.remaining_refreshed();
        assert!(m.remaining_age() < Duration::from_millis(20));
    }

    #[test]
    fn unknown_route_and_status_land_in_the_last_slot() {
        let m = Metrics::new();
        m.record_http("nope", 418);
        assert_eq!(m.http(ROUTES.len() - 1, STATUSES.len() - 1), 1);
    }
}
