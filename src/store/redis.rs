//! The Redis path: the purchase Lua script run with EVALSHA on a fred [`Pool`] whose clients
//! pipeline concurrent commands on their connections; concurrent purchases of one event share
//! one script call ([`crate::store::batch`]).
//!
//! Every script call carries a batch id unique to this process. The script checks it first, so
//! a call that fred re-sends after a reconnect answers the tickets it already sold instead of
//! selling again. A batch whose outcome is unknown (timeout, lost connection), and a ticket whose
//! buyer left before the answer, are queued for cancellation: a background task runs
//! `lua/cancel.lua` once Redis answers, which gives back what the batch sold to nobody and voids
//! the batch id so a late copy cannot sell.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use fred::clients::{Client, Pool};
use fred::error::{Error, ErrorKind};
use fred::interfaces::{ClientLike, HashesInterface, KeysInterface, ListInterface};
use fred::prelude::{Builder, Config, ReconnectPolicy};
use fred::types::config::{ConnectionConfig, PerformanceConfig, UnresponsiveConfig};
use fred::types::{Key, Value};
use tokio::sync::oneshot;
use tokio::time::timeout;

use crate::event::{Answers, Event};
use crate::metrics::{Metrics, RedisErrorKind};
use crate::store::batch::{Batcher, Order};
use crate::store::cancel::{Cancels, PendingCancel};
use crate::store::ids::Ids;
use crate::store::pool::{replicated, PoolCell};
use crate::store::purchaser::{BuyerPolicy, Purchaser};
use crate::store::scripts::{LuaScript, COUNTS};
use crate::store::{Sale, StoreError};

/// How to reach Redis.
#[derive(Debug, Clone)]
pub struct RedisOptions {
    /// `redis://host:port[/db]`.
    pub url: String,
    /// Clients in the fred pool, each with one connection.
    pub pool_size: usize,
    /// Bound on one purchase call; past it the purchase goes to the fallback and is cancelled.
    pub timeout: Duration,
    /// Purchases in flight to Redis at most; more wait in this process, so that queueing under
    /// overload is never mistaken for a failing Redis.
    pub max_in_flight: usize,
    /// How long a purchase may wait for one of those slots before it is shed with `503`.
    pub queue_timeout: Duration,
    /// Replicas that must acknowledge every write before it counts (`WAIT`); 0: none.
    pub replica_acks: u32,
    /// The per-buyer limit and key lifetime.
    pub buyers: BuyerPolicy,
    /// Whether this is a single Redis, where a script may take keys of any slot: the purchase
    /// script then keeps every event's `Idempotency-Key` answers in one family of time buckets
    /// ([`crate::event::Answers::Shared`]), whose records bind each key to its event, and one
    /// anonymous call carries several events' purchases. A cluster's shard stores leave the binding to the caller
    /// ([`RedisStore::claim`] on the shard of the binding's slot) and call once per event.
    pub single_node: bool,
}

impl RedisOptions {
    /// Options for `url` with the defaults of the command line.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            pool_size: 2,
            timeout: Duration::from_millis(250),
            max_in_flight: 1024,
            queue_timeout: Duration::from_secs(2),
            replica_acks: 0,
            buyers: BuyerPolicy::default(),
            single_node: true,
        }
    }
}

/// Events per `lua/counts.lua` call: 3 keys each, and Redis reads them all before it serves
/// anything else (a few hundred µs for 256: three reads of 0.3–0.7 µs per event and the Lua
/// around them), so a snapshot never holds a purchase up for long.
pub const COUNT_EVENTS: usize = 256;

/// Tickets in Redis.
#[derive(Debug)]
pub struct RedisStore {
    pool: Arc<PoolCell>,
    /// Replicas that must hold a write before it counts.
    replica_acks: u32,
    /// The per-buyer limit and key lifetime.
    policy: BuyerPolicy,
    /// A single Redis, not a cluster's shard: the purchase script binds keys to their events,
    /// and one script call may carry several events.
    single_node: bool,
    /// `lua/counts.lua`, for [`Self::remaining`] on a single Redis.
    counts: LuaScript,
    /// Gathers concurrent purchases into one script call per event.
    batcher: Batcher,
    timeout: Duration,
    /// Slots for purchases in flight to Redis.
    in_flight: tokio::sync::Semaphore,
    queue_timeout: Duration,
    /// Purchase and batch ids; the instance part also names this instance's reserve keys.
    ids: Arc<Ids>,
    /// Batches and tickets queued to be made void or given back.
    cancels: Cancels,
    /// The task that works `cancels` off, until shutdown takes it.
    cancel_worker: parking_lot::Mutex<Option<tokio::task::JoinHandle<()>>>,
    metrics: Arc<Metrics>,
}

/// Builds the fred pool for `options`: reconnects forever with a short backoff (25 ms doubling
/// to 250 ms), never fails the first connection (the caller decides how long to wait), and
/// closes a connection that stops answering. Callers bound each call themselves.
///
/// # Errors
/// A malformed URL.
pub fn build_pool(options: &RedisOptions) -> Result<Pool, Error> {
    let mut config = Config::from_url(&options.url)?;
    config.fail_fast = false;
    let slow = options.timeout.max(Duration::from_millis(500)) * 4;
    Builder::from_config(config)
        .set_policy(ReconnectPolicy::new_exponential(0, 25, 250, 2))
        .with_connection_config(|c: &mut ConnectionConfig| {
            c.connection_timeout = Duration::from_secs(1);
            c.internal_command_timeout = Duration::from_secs(1);
            // A command fred re-sends after a reconnect runs on a new connection, where a WAIT
            // covers nothing written before: with replicas to wait for, nothing is re-sent
            // (a lost answer makes the batch void instead, as any unknown outcome does).
            c.max_command_attempts = if options.replica_acks > 0 { 1 } else { 2 };
            c.tcp.nodelay = Some(true);
            c.unresponsive = UnresponsiveConfig {
                max_timeout: Some(slow),
                interval: Duration::from_millis(250),
            };
        })
        .with_performance_config(|p: &mut PerformanceConfig| {
            // No per-command timer in fred: every call site bounds its own call with
            // tokio::time::timeout, and a second timer per command cost 6 % of a purchase at
            // 64 in flight (criterion `redis_round_trip`, design.md).
            p.default_command_timeout = Duration::ZERO;
        })
        .build_pool(options.pool_size.max(1))
}

impl RedisStore {
    /// A store on `pool` (connected or not) that names its batches with `ids`. Spawns the
    /// cancellation worker and the purchase batchers, so it must run inside a tokio runtime.
    pub fn new(
        pool: Pool,
        options: &RedisOptions,
        metrics: Arc<Metrics>,
        ids: impl Into<Arc<Ids>>,
    ) -> Self {
        let timeout = options.timeout;
        let cancels = Cancels::new();
        let size = pool.size();
        let pool = PoolCell::new(pool);
        let cancel_worker = cancels.spawn_worker(
            pool.clone(),
            metrics.clone(),
            timeout,
            options.replica_acks,
            Answers::of_single_node(options.single_node),
        );
        let ids = ids.into();
        Self {
            batcher: Batcher::start(
                &pool,
                size,
                timeout,
                options.replica_acks,
                options.buyers,
                options.single_node,
                metrics.clone(),
                cancels.clone(),
                ids.clone(),
            ),
            pool,
            replica_acks: options.replica_acks,
            policy: options.buyers,
            single_node: options.single_node,
            counts: LuaScript::new(COUNTS),
            timeout,
            in_flight: tokio::sync::Semaphore::new(options.max_in_flight.max(1)),
            queue_timeout: options.queue_timeout,
            ids,
            cancels,
            cancel_worker: parking_lot::Mutex::new(Some(cancel_worker)),
            metrics,
        }
    }

    /// The cancellation queue (to add what a previous run journaled).
    pub fn cancels(&self) -> &Cancels {
        &self.cancels
    }

    /// Stops the cancellation worker (at shutdown, once no purchase is in flight), waiting at
    /// most `bound`, and returns the cancellations still to be done.
    pub async fn stop_cancels(&self, bound: Duration) -> Vec<PendingCancel> {
        let worker = self.cancel_worker.lock().take();
        match worker {
            Some(w) => self.cancels.stop(w, bound).await,
            None => Vec::new(),
        }
    }

    /// Cancellations not yet done (batches of unknown outcome, tickets whose buyers left). Their
    /// tickets may still come back to the pool, so the fallback stays on (no "sold out" from
    /// Redis) until this is 0.
    pub fn pending_cancels(&self) -> u64 {
        self.cancels.pending()
    }

    /// The current pool.
    pub fn pool(&self) -> Pool {
        self.pool.get()
    }

    /// The next client of the current pool.
    pub fn client(&self) -> Client {
        self.pool.client()
    }

    /// Talks to another server from now on (a failover moved this store's shard): `pool`
    /// replaces the current pool, which is returned (the caller closes it). Calls in flight on
    /// the old pool end as they would on a lost connection.
    pub fn repoint(&self, pool: Pool) -> Pool {
        self.pool.replace(pool)
    }

    /// Waits until the configured number of replicas hold everything Redis wrote so far, with
    /// a fence write in `fence`'s slot.
    ///
    /// # Errors
    /// See [`replicated`].
    pub async fn replicated(
        &self,
        client: &Client,
        fence: &Key,
        bound: Duration,
    ) -> Result<(), StoreError> {
        replicated(client, fence, self.replica_acks, bound).await
    }

    /// The per-buyer limit and key lifetime.
    pub fn policy(&self) -> BuyerPolicy {
        self.policy
    }

    /// Whether the purchase script binds keys to their events (else the caller does).
    pub fn binds_keys(&self) -> bool {
        self.single_node
    }

    /// Replicas that must hold a write before it counts.
    pub fn replica_acks(&self) -> u32 {
        self.replica_acks
    }

    /// This process's instance id (16 hex digits).
    pub fn instance(&self) -> &str {
        self.ids.instance()
    }

    /// The bound on one call.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The metrics registry.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// A fresh purchase number, never 0; the purchase id is `<instance>:<number>`.
    pub fn next_purchase(&self) -> u64 {
        self.ids.next()
    }

    /// The purchase id of purchase number `n`.
    pub fn purchase_id(&self, n: u64) -> Bytes {
        self.ids.id(n)
    }

    /// Sells one ticket of `event` with the purchase script: the purchase joins the next batch
    /// of its event ([`Batcher`]), which runs within the timeout. A failure is counted; one whose
    /// outcome is unknown has been queued for cancellation by the batcher.
    ///
    /// # Errors
    /// See [`StoreError`]; [`StoreError::is_outage`] tells a failing Redis from an answer.
    pub async fn purchase(&self, event: &Arc<Event>) -> Result<Sale, StoreError> {
        self.purchase_as(event, None).await
    }

    /// [`RedisStore::purchase`] by a known buyer (`who`), or anonymous (`None`). The script
    /// enforces the limit and answers a repeated key; it binds the key to its event too, unless
    /// [`RedisStore::binds_keys`] is false: then that is the caller's step before
    /// ([`RedisStore::claim`]).
    ///
    /// # Errors
    /// See [`RedisStore::purchase`].
    pub async fn purchase_as(
        &self,
        event: &Arc<Event>,
        who: Option<Arc<Purchaser>>,
    ) -> Result<Sale, StoreError> {
        let _slot = match self.in_flight.try_acquire() {
            Ok(slot) => slot,
            // Boxed: the wait and its timer would otherwise size every purchase's future, which
            // hyper keeps room for in every connection; it is taken only under overload.
            Err(_) => match Box::pin(timeout(self.queue_timeout, self.in_flight.acquire())).await {
                Ok(Ok(slot)) => slot,
                _ => {
                    self.metrics.purchase_shed();
                    return Err(StoreError::Overloaded);
                }
            },
        };
        let (reply, answer) = oneshot::channel();
        let order = Order {
            event: event.clone(),
            reply,
            trace: if crate::otel::enabled() {
                crate::otel::spans::current_link()
            } else {
                None
            },
            who,
        };
        let result = match self.batcher.submit(order) {
            // The batcher answers every order within the timeout: no timer here. It stops only
            // when the runtime goes down.
            Ok(()) => answer
                .await
                .unwrap_or_else(|_| Err(StoreError::Protocol("purchase batcher stopped".into()))),
            Err(_) => Err(StoreError::NotConnected),
        };
        if let Err(e) = &result {
            // A purchase never sent is not a Redis error: the round before it was counted.
            if !matches!(
                e,
                StoreError::HeldInReserves(_) | StoreError::InLimbo | StoreError::NotSent
            ) {
                self.metrics.redis_error(error_kind(e));
            }
        }
        result
    }

    /// Binds `who`'s key to `event`, unless it is bound already: `Ok(true)` when it is bound to
    /// `event` (now or before), `Ok(false)` when to another event (the request is refused with
    /// `422`). The binding lives as long as the key's answer (`SET NX GET PX`). A cluster's
    /// only (one Redis binds in the purchase script); call it on the store that serves the slot
    /// of [`Purchaser::claim_key`].
    ///
    /// # Errors
    /// A Redis error, not connected, or the timeout.
    pub async fn claim(&self, who: &Purchaser, event: &str) -> Result<bool, StoreError> {
        let Some(key) = who.claim_key() else {
            return Ok(true);
        };
        let client = self.pool.client();
        if !client.is_connected() {
            return Err(StoreError::NotConnected);
        }
        let ttl = fred::types::Expiration::PX(self.policy.key_ttl_ms());
        let set = client.set::<Option<String>, _, _>(
            key,
            event,
            Some(ttl),
            Some(fred::types::SetOptions::NX),
            true,
        );
        match timeout(self.timeout, set).await {
            Ok(Ok(None)) => Ok(true),
            Ok(Ok(Some(bound))) => Ok(bound == event),
            Ok(Err(e)) => Err(e.into()),
            Err(_) => Err(StoreError::Timeout(self.timeout)),
        }
    }

    /// The tickets of `event` that `buyer` holds, in ticket order (one `ZRANGEBYLEX`).
    ///
    /// # Errors
    /// A Redis error, not connected, or the timeout.
    pub async fn tickets(&self, event: &Event, buyer: &str) -> Result<Vec<Bytes>, StoreError> {
        let client = self.pool.client();
        if !client.is_connected() {
            return Err(StoreError::NotConnected);
        }
        let range = vec![
            Value::from(format!("[{buyer}\n")),
            Value::from(format!("({buyer}\u{b}")),
        ];
        let mut args = vec![Value::from(event.keys.buyers.clone())];
        args.extend(range);
        let read = client.custom::<Vec<Bytes>, _>(fred::cmd!("ZRANGEBYLEX"), args);
        let members = match timeout(self.timeout, read).await {
            Ok(r) => r?,
            Err(_) => return Err(StoreError::Timeout(self.timeout)),
        };
        let skip = buyer.len() + 1;
        Ok(members
            .into_iter()
            .filter(|m| m.len() > skip)
            .map(|m| m.slice(skip..))
            .collect())
    }

    /// What this instance's reserves sold each buyer of `event`, over all its runs (the
    /// instance's fields of `event:{id}:fallback_buyers`, written by `settle.lua`).
    ///
    /// # Errors
    /// A Redis error, not connected, or the timeout.
    pub async fn fallback_buyers(&self, event: &Event) -> Result<Vec<(Box<str>, u32)>, StoreError> {
        let client = self.pool.client();
        if !client.is_connected() {
            return Err(StoreError::NotConnected);
        }
        // Background work, bounded as the supervisor's other calls are.
        let bound = self.timeout.max(Duration::from_millis(500));
        let read = client.hgetall::<Vec<(String, u32)>, _>(event.keys.fallback_buyers.clone());
        let fields = match timeout(bound, read).await {
            Ok(r) => r?,
            Err(_) => return Err(StoreError::Timeout(bound)),
        };
        let prefix = format!("{}\n", self.instance());
        Ok(fields
            .into_iter()
            .filter_map(|(field, n)| Some((field.strip_prefix(&prefix)?.into(), n)))
            .collect())
    }

    /// Unsold tickets (pool + every live reserve) of each of `events`, in one round trip: on a
    /// single Redis, `lua/counts.lua` calls of [`COUNT_EVENTS`] events each, sent together; on a
    /// cluster's shard, a pipeline of three reads per event. Also reads how many tickets each
    /// event holds back in expired reserves, into its metrics
    /// ([`crate::metrics::EventMetrics::held_back`]).
    ///
    /// # Errors
    /// A Redis error or the timeout.
    pub async fn remaining(&self, events: &[Arc<Event>]) -> Result<Vec<u64>, StoreError> {
        let client = self.pool.client();
        if !client.is_connected() {
            return Err(StoreError::NotConnected);
        }
        let read = async {
            if self.single_node {
                self.counts_scripted(&client, events).await
            } else {
                counts_pipelined(&client, events).await
            }
        };
        let counts = match timeout(self.timeout, read).await {
            Ok(r) => r?,
            Err(_) => return Err(StoreError::Timeout(self.timeout)),
        };
        Ok(counts
            .into_iter()
            .zip(events)
            .map(|((unsold, held), e)| {
                e.metrics.set_held_back(held);
                unsold
            })
            .collect())
    }

    /// (unsold, held back) of each of `events` by `lua/counts.lua`: 30,000 pipelined reads a
    /// second at 10,000 events cost an idle ticketd 28 % of a core and Redis 13 % (design.md).
    async fn counts_scripted(
        &self,
        client: &Client,
        events: &[Arc<Event>],
    ) -> Result<Vec<(u64, u64)>, StoreError> {
        let calls = events.chunks(COUNT_EVENTS).map(|chunk| {
            let keys: Vec<Key> = chunk
                .iter()
                .flat_map(|e| {
                    [
                        e.keys.tickets.clone(),
                        e.keys.reserved.clone(),
                        e.keys.held.clone(),
                    ]
                })
                .collect();
            self.counts
                .run::<Vec<u64>>(client, keys, Vec::new(), || self.metrics.script_reloaded())
        });
        let mut counts = Vec::with_capacity(events.len());
        for reply in futures_util::future::join_all(calls).await {
            counts.extend(reply?.chunks_exact(2).map(|c| (c[0], c[1])));
        }
        if counts.len() != events.len() {
            return Err(StoreError::Protocol(format!(
                "counts.lua answered {} counts for {} events",
                counts.len(),
                events.len()
            )));
        }
        Ok(counts)
    }

    /// Whether every pooled connection is up, Redis answers a read of `fence` (a key in the
    /// slot of an event this store serves; none: a PING) within the timeout, and as many
    /// replicas as writes need acknowledge a write there. A read, not a PING: Redis answers
    /// PING while it is still loading its data after a restart, and refuses everything else.
    pub async fn ready(&self, fence: Option<&Key>) -> bool {
        self.ready_within(fence, self.timeout).await
    }

    /// [`Self::ready`] with each of its round trips bounded by `bound` instead of the call
    /// timeout (the breaker's confirming probe waits out a short stall; see
    /// [`crate::store::fallback::probe_bound`]).
    pub async fn ready_within(&self, fence: Option<&Key>, bound: Duration) -> bool {
        let pool = self.pool.get();
        if !pool.clients().iter().all(ClientLike::is_connected) {
            return false;
        }
        let client = pool.next();
        let answered = match fence {
            Some(fence) => {
                let read = client.exists::<i64, _>(fence.clone());
                matches!(timeout(bound, read).await, Ok(Ok(_)))
            }
            None => matches!(timeout(bound, client.ping::<Value>(None)).await, Ok(Ok(_))),
        };
        let ready = match fence {
            Some(fence) if answered => self.replicated(client, fence, bound).await.is_ok(),
            _ => answered,
        };
        // Looked at again after the round trip: before it, a connection Redis closed a moment
        // ago can still read as up (its close not handled yet), and the first purchase on it
        // would open the breaker right after "ready".
        ready && pool.clients().iter().all(ClientLike::is_connected)
    }
}

/// (unsold, held back) of each of `events` in one pipeline of three reads per event: a
/// cluster's shard, where a script cannot take the keys of several events' slots.
async fn counts_pipelined(
    client: &Client,
    events: &[Arc<Event>],
) -> Result<Vec<(u64, u64)>, StoreError> {
    let pipeline = client.pipeline();
    for e in events {
        let _: () = pipeline.llen(e.keys.tickets.clone()).await?;
        let _: () = pipeline.get(e.keys.reserved.clone()).await?;
        let _: () = pipeline.hvals(e.keys.held.clone()).await?;
    }
    let replies: Vec<Value> = pipeline.all().await?;
    let n = |v: &Value| v.as_u64().unwrap_or(0);
    Ok(replies
        .chunks(3)
        .map(|c| {
            let held = match c.get(2) {
                Some(Value::Array(counts)) => counts.iter().map(n).sum(),
                _ => 0,
            };
            (n(&c[0]) + c.get(1).map_or(0, n), held)
        })
        .collect())
}

/// Warns when Redis may lose a write it acknowledged: a sale lost that way puts its ticket back
/// in the pool, to be sold again. Only `appendonly yes` with `appendfsync always` survives a
/// crash of Redis; with `everysec`, a busy disk makes Redis answer before it writes its AOF, so
/// even a killed process loses up to two seconds (found by the fault-injection harness).
/// `CONFIG` may be renamed away on a managed Redis: then nothing is said. `shard` names the
/// cluster shard (empty for a single Redis); a cluster node is also checked for
/// `cluster-require-full-coverage`, which would stop every shard while one fails over.
pub async fn check_durability(client: &Client, shard: &str) {
    let get = |name: &'static str| async move {
        let reply: Result<Vec<String>, _> = tokio::time::timeout(
            Duration::from_secs(2),
            client.custom(fred::cmd!("CONFIG"), vec!["GET", name]),
        )
        .await
        .unwrap_or_else(|_| Ok(Vec::new()));
        reply.ok().and_then(|kv| kv.get(1).cloned())
    };
    if let (Some(aof), Some(fsync)) = (get("appendonly").await, get("appendfsync").await) {
        if aof != "yes" || fsync != "always" {
            tracing::warn!(
                shard,
                appendonly = %aof,
                appendfsync = %fsync,
                "REDIS MAY LOSE ACKNOWLEDGED SALES: a crash of this Redis can forget sales it already answered, and their tickets would be sold again; run it with --appendonly yes --appendfsync always"
            );
        }
    }
    if shard.is_empty() {
        return;
    }
    if get("cluster-require-full-coverage").await.as_deref() == Some("yes") {
        tracing::warn!(
            shard,
            "ONE FAILING PRIMARY STOPS EVERY SHARD: with cluster-require-full-coverage yes, the healthy primaries refuse all commands (CLUSTERDOWN) until a failed primary's replica takes over, and their events go to the fallback meanwhile; run the cluster with --cluster-require-full-coverage no"
        );
    }
}

/// Which counter a failure goes to.
pub fn error_kind(e: &StoreError) -> RedisErrorKind {
    match e {
        StoreError::Timeout(_) | StoreError::NotReplicated { .. } => RedisErrorKind::Timeout,
        StoreError::NotConnected => RedisErrorKind::Io,
        StoreError::Protocol(_) | StoreError::Cancelled => RedisErrorKind::Protocol,
        StoreError::Redis(e) => match e.kind() {
            ErrorKind::Timeout => RedisErrorKind::Timeout,
            ErrorKind::IO | ErrorKind::Canceled => RedisErrorKind::Io,
            ErrorKind::Protocol | ErrorKind::Parse => RedisErrorKind::Protocol,
            _ if e.details().starts_with("ERR") || e.details().starts_with("NOSCRIPT") => {
                RedisErrorKind::Script
            }
            _ => RedisErrorKind::Other,
        },
        _ => RedisErrorKind::Other,
    }
}
