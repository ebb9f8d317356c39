//! The store on a Redis Cluster: one [`ResilientStore`] per shard (a primary and its replicas),
//! each with its own connections, batchers, circuit breaker, reserves and supervisor, and a
//! router that sends every purchase to the shard serving its event's hash slot.
//!
//! Failure isolation is the reason for this shape: a clustered client with one router for all
//! nodes stalls every node's commands while it reconnects to one failing node, and one breaker
//! per instance would send every event to the fallback when one primary fails. Here a failing
//! primary opens only its own shard's breaker; events on the other primaries keep selling from
//! Redis.
//!
//! A background task reads `CLUSTER SLOTS` every second (and at once when a shard fails) from
//! any node that answers. A failover shows as a shard (known by its lowest slot) with a new
//! primary: the shard's pool is swapped for one on the new primary, and its state in this
//! instance carries over. A resharding that moves slots to another shard re-routes their events
//! (design.md says what that does to batches in flight).

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use fred::clients::Pool;
use fred::interfaces::ClientLike;
use fred::types::Value;
use parking_lot::{Mutex, RwLock};

use crate::catalog::Catalog;
use crate::event::Event;
use crate::metrics::{Metrics, StorePath};
use crate::store::fallback::FallbackOptions;
use crate::store::ids::Ids;
use crate::store::journal::{Journal, Record};
use crate::store::purchaser::Purchaser;
use crate::store::redis::{build_pool, check_durability, RedisOptions, RedisStore};
use crate::store::resilient::{claim_refused, ResilientStore};
use crate::store::topology::{Scope, Shard, SlotTable, Topology};
use crate::store::{Sale, Store, StoreError};

/// How often the layout is read while nothing fails.
const REFRESH: Duration = Duration::from_secs(1);

/// Bound on one `CLUSTER SLOTS` and on connecting to a new primary.
const ASK_BOUND: Duration = Duration::from_secs(1);

/// What every shard store is built from.
#[derive(Debug)]
pub struct ClusterOptions {
    /// Per shard: pool size, timeouts, replica acknowledgements (the URL is the primary's).
    pub redis: RedisOptions,
    /// `host:port` of the nodes named in the URL, asked for the layout when no shard answers.
    pub seeds: Vec<String>,
    /// The fallback's settings, per shard.
    pub fallback: FallbackOptions,
}

/// One shard as this instance serves it.
#[derive(Debug)]
struct ShardStore {
    /// The lowest slot it serves (how a failover is recognised).
    key: Mutex<u16>,
    /// `host:port` of the primary the pool talks to.
    primary: Mutex<String>,
    /// Whether the layout gives it slots now (a resharding can take all of them away).
    serving: std::sync::atomic::AtomicBool,
    store: ResilientStore,
}

#[derive(Debug)]
struct Inner {
    options: ClusterOptions,
    catalog: Arc<Catalog>,
    metrics: Arc<Metrics>,
    ids: Arc<Ids>,
    journal: Journal,
    /// Journal records of the previous run not yet given to the shard that serves their event.
    recovered: Mutex<Vec<Record>>,
    /// The journal party that holds every segment back until each of those records is with
    /// its shard's store (shards join one by one).
    startup: usize,
    table: Arc<SlotTable>,
    /// By shard number (the [`SlotTable`]'s); a shard is never removed, only left without slots.
    shards: RwLock<Vec<Arc<ShardStore>>>,
    /// Wakes the layout task early (a shard failed).
    wake: tokio::sync::Notify,
}

/// Tickets in a Redis Cluster, each shard with its own fallback.
#[derive(Debug)]
pub struct ClusterStore {
    inner: Arc<Inner>,
    layout: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl ClusterStore {
    /// A store for the cluster reachable through `options.seeds`. Reads the layout within
    /// `connect` (sells nothing until it has one that serves every slot) and keeps it fresh in
    /// the background. `recovered` is what the journal held at start-up; each record goes to
    /// the shard serving its event.
    pub async fn start(
        options: ClusterOptions,
        catalog: Arc<Catalog>,
        metrics: Arc<Metrics>,
        ids: Ids,
        journal: Journal,
        recovered: Vec<Record>,
        connect: Duration,
    ) -> Self {
        let startup = journal.join();
        let inner = Arc::new(Inner {
            startup,
            options,
            catalog,
            metrics,
            ids: Arc::new(ids),
            journal,
            recovered: Mutex::new(recovered),
            table: Arc::new(SlotTable::default()),
            shards: RwLock::new(Vec::new()),
            wake: tokio::sync::Notify::new(),
        });
        let deadline = tokio::time::Instant::now() + connect;
        loop {
            if let Some(topology) = inner.discover().await {
                if topology.covers_all() {
                    inner.apply(&topology).await;
                    break;
                }
            }
            if tokio::time::Instant::now() >= deadline {
                tracing::warn!(seeds = ?inner.options.seeds, "no Redis Cluster node answered with a layout that serves every slot; purchases answer 503 until one does (retrying in the background)");
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let layout = tokio::spawn(keep_layout(inner.clone()));
        Self {
            inner,
            layout: Mutex::new(Some(layout)),
        }
    }

    /// The shard store serving `event` now.
    fn shard(&self, event: &Event) -> Option<Arc<ShardStore>> {
        self.shard_of_slot(event.slot)
    }

    /// The store of the shard serving `slot`.
    fn shard_of_slot(&self, slot: u16) -> Option<Arc<ShardStore>> {
        let n = self.inner.table.shard_of(slot)?;
        self.inner.shards.read().get(n).cloned()
    }

    /// Sells one ticket of `event` to `who` (anonymous: `None`) on the event's shard.
    async fn sell(
        &self,
        event: &Arc<Event>,
        who: Option<&Arc<Purchaser>>,
    ) -> (StorePath, Result<Sale, StoreError>) {
        let Some(shard) = self.shard(event) else {
            return (StorePath::Redis, Err(StoreError::NotConnected));
        };
        let (path, result) = shard.store.sell(event, who).await;
        let moved_or_down = |e: &StoreError| e.is_outage() || e.never_ran();
        if path == StorePath::Fallback || result.as_ref().is_err_and(moved_or_down) {
            // The shard failed, or its node no longer serves the slot: read the layout now
            // rather than within a second (a failover, a resharding).
            self.inner.wake.notify_one();
        }
        (path, result)
    }

    /// Each shard's label and primary (`host:port`), in shard order.
    pub fn shards(&self) -> Vec<(String, String)> {
        self.inner
            .shards
            .read()
            .iter()
            .map(|s| (s.store.shared().label.to_string(), s.primary.lock().clone()))
            .collect()
    }
}

impl Inner {
    /// Reads `CLUSTER SLOTS` from the first node that answers: a shard's primary, else a seed.
    async fn discover(&self) -> Option<Topology> {
        let known: Vec<(fred::clients::Client, String)> = self
            .shards
            .read()
            .iter()
            .map(|s| (s.store.shared().redis.client(), s.primary.lock().clone()))
            .collect();
        for (client, primary) in known {
            if client.is_connected() {
                if let Some(t) = slots_of(&client, &primary).await {
                    return Some(t);
                }
            }
        }
        for seed in &self.options.seeds {
            let Ok(pool) = pool_for(&self.options.redis, seed, 1) else {
                continue;
            };
            pool.connect_pool();
            let answer = async {
                pool.wait_for_connect().await.ok()?;
                slots_of(pool.next(), seed).await
            };
            let got = tokio::time::timeout(ASK_BOUND, answer).await.ok().flatten();
            let _ = tokio::time::timeout(ASK_BOUND, pool.quit()).await;
            if got.is_some() {
                return got;
            }
        }
        None
    }

    /// Makes `topology` the routing. Each shard of the layout is served by the store on the
    /// same primary (a resharding may have changed its slots), else by the store that served
    /// the shard's lowest slot (a failover moved it to another primary: the store is pointed at
    /// the new one), else by a new store.
    async fn apply(self: &Arc<Self>, topology: &Topology) {
        let stores: Vec<Arc<ShardStore>> = self.shards.read().clone();
        let mut taken = vec![false; stores.len()];
        let mut matched: Vec<Option<usize>> = vec![None; topology.shards.len()];
        for (t, shard) in topology.shards.iter().enumerate() {
            let same = (0..stores.len())
                .find(|&i| !taken[i] && *stores[i].primary.lock() == shard.primary);
            if let Some(i) = same {
                matched[t] = Some(i);
                taken[i] = true;
            }
        }
        for (t, shard) in topology.shards.iter().enumerate() {
            if matched[t].is_some() {
                continue;
            }
            let moved =
                (0..stores.len()).find(|&i| !taken[i] && *stores[i].key.lock() == shard.key);
            if let Some(i) = moved {
                let was = stores[i].primary.lock().clone();
                self.repoint(&stores[i], shard, &was).await;
                matched[t] = Some(i);
                taken[i] = true;
            }
        }
        for (t, shard) in topology.shards.iter().enumerate() {
            if matched[t].is_none() {
                matched[t] = self.add(shard).await;
            }
        }
        let shards: Vec<Arc<ShardStore>> = self.shards.read().clone();
        let mut by_number: Vec<Option<&Shard>> = vec![None; shards.len()];
        for (t, shard) in topology.shards.iter().enumerate() {
            if let Some(i) = matched[t] {
                by_number[i] = Some(shard);
                *shards[i].key.lock() = shard.key;
            }
        }
        // A resharding moves slots between shards: the reserve state of each moved event (its
        // reserve, the fallback sales not yet in the ledger, its queued cancellations) goes
        // along, so the new shard settles those sales instead of selling their tickets again.
        let serving = |slot: u16| {
            by_number
                .iter()
                .position(|s| s.is_some_and(|s| s.serves(slot)))
        };
        let moves: Vec<(usize, usize, Arc<Event>)> = self
            .catalog
            .events()
            .into_iter()
            .filter_map(|e| {
                let from = self.table.shard_of(e.slot)?;
                let to = serving(e.slot)?;
                (from != to).then_some((from, to, e))
            })
            .collect();
        // Both supervisors stay out while their reserves change hands and the routing changes.
        let mut involved: Vec<usize> = moves.iter().flat_map(|m| [m.0, m.1]).collect();
        involved.sort_unstable();
        involved.dedup();
        let mut held = Vec::with_capacity(involved.len());
        for &i in &involved {
            held.push(shards[i].store.shared().work.lock().await);
        }
        for (from, to, event) in &moves {
            let (a, b) = (shards[*from].store.shared(), shards[*to].store.shared());
            let moved = a.reserves.write().remove(&*event.id);
            if let Some(er) = moved {
                b.reserves.write().insert(event.id.clone(), er);
            }
            let owed: Vec<_> = {
                let mut recovered = a.recovered.lock();
                let (mine, rest) = recovered.drain(..).partition(|r| r.event == event.id);
                *recovered = rest;
                mine
            };
            b.recovered.lock().extend(owed);
            b.takeovers.fetch_add(1, Ordering::AcqRel);
            self.journal.reset(b.party);
            tracing::info!(event = %event.id, from = %a.label, to = %b.label, "RESHARDED: this event is served by another shard now");
        }
        self.table.set(&by_number);
        drop(held);
        for (store, shard) in shards.iter().zip(&by_number) {
            let now = shard.is_some();
            let was = store.serving.swap(now, Ordering::AcqRel);
            let s = store.store.shared();
            if now && !was {
                // Serving again: what it sells from now on is owed again.
                s.takeovers.fetch_add(1, Ordering::AcqRel);
                self.journal.reset(s.party);
            } else if !now && !s.owes() {
                self.journal.release(s.party); // no slots, nothing owed: holds nothing back
            }
        }
        // Cancellations queued on a shard that no longer serves their event go to the one that
        // does (the refused ones come back to the queue, so this runs every time).
        for (i, store) in shards.iter().enumerate() {
            let foreign = store
                .store
                .redis_cancels()
                .take_foreign(|e| self.table.shard_of(e.slot) == Some(i));
            for p in foreign {
                match self
                    .table
                    .shard_of(p.event.slot)
                    .and_then(|n| shards.get(n))
                {
                    Some(owner) => owner.store.redis_cancels().adopt(vec![p]),
                    None => store.store.redis_cancels().adopt(vec![p]),
                }
            }
        }
        if self.recovered.lock().is_empty() {
            // Every record of the previous run is with the shard that settles it.
            self.journal.release(self.startup);
        }
    }

    /// Starts serving `shard`: a pool on its primary and a store with the journal records of
    /// its events. Returns the store's number.
    async fn add(self: &Arc<Self>, shard: &Shard) -> Option<usize> {
        let Ok(pool) = pool_for(&self.options.redis, &shard.primary, 0) else {
            tracing::error!(primary = %shard.primary, "cannot build a client for this cluster node");
            return None;
        };
        pool.connect_pool();
        let connected = matches!(
            tokio::time::timeout(ASK_BOUND, pool.wait_for_connect()).await,
            Ok(Ok(()))
        );
        if connected {
            let (client, label) = (pool.next().clone(), shard.label());
            tokio::spawn(async move { check_durability(&client, &label).await });
        }
        let number = self.shards.read().len();
        let scope = Scope::Shard {
            table: self.table.clone(),
            index: number,
        };
        let records = {
            let mut all = self.recovered.lock();
            let (mine, rest): (Vec<Record>, Vec<Record>) =
                all.drain(..).partition(|r| shard.serves(record_slot(r)));
            *all = rest;
            mine
        };
        let label: Box<str> = shard.label().into();
        tracing::info!(shard = %label, primary = %shard.primary, owed = records.len(), "serving a Redis Cluster shard");
        let store = ResilientStore::for_scope(
            RedisStore::new(
                pool,
                &self.options.redis,
                self.metrics.clone(),
                self.ids.clone(),
            ),
            self.catalog.clone(),
            self.options.fallback,
            self.journal.clone(),
            records,
            !connected,
            scope,
            label,
        );
        let mut shards = self.shards.write();
        shards.push(Arc::new(ShardStore {
            key: Mutex::new(shard.key),
            primary: Mutex::new(shard.primary.clone()),
            serving: std::sync::atomic::AtomicBool::new(true),
            store,
        }));
        Some(shards.len() - 1)
    }

    /// A failover: `s` talks to `shard.primary` from now on.
    async fn repoint(&self, s: &ShardStore, shard: &Shard, was: &str) {
        let Ok(pool) = pool_for(&self.options.redis, &shard.primary, 0) else {
            return;
        };
        pool.connect_pool();
        let _ = tokio::time::timeout(ASK_BOUND, pool.wait_for_connect()).await;
        let old = s.store.shared().redis.repoint(pool);
        *s.primary.lock() = shard.primary.clone();
        tracing::warn!(shard = %shard.label(), from = %was, to = %shard.primary, "REDIS CLUSTER FAILOVER: this shard's primary moved; its sales go to the new primary once it holds them on a replica");
        tokio::spawn(async move {
            let _ = tokio::time::timeout(ASK_BOUND, old.quit()).await;
        });
    }
}

impl Shard {
    fn serves(&self, slot: u16) -> bool {
        self.ranges.iter().any(|&(a, b)| (a..=b).contains(&slot))
    }
}

/// The hash slot of the event a journal record is about.
fn record_slot(r: &Record) -> u16 {
    let event = match r {
        Record::Sale { event, .. } | Record::Cancel { event, .. } => event,
    };
    crate::event::slot_of(event)
}

/// A fred pool of `size` clients (0: the configured size) on the node `host:port`.
fn pool_for(options: &RedisOptions, node: &str, size: usize) -> Result<Pool, fred::error::Error> {
    let mut o = options.clone();
    o.url = format!("redis://{node}");
    if size > 0 {
        o.pool_size = size;
    }
    build_pool(&o)
}

/// `CLUSTER SLOTS` of the node behind `client` (at `node`), within [`ASK_BOUND`]. A node that
/// says the cluster is failing is not asked: cut off from the majority, it still shows the
/// layout from before a failover.
async fn slots_of(client: &fred::clients::Client, node: &str) -> Option<Topology> {
    let info: String = tokio::time::timeout(
        ASK_BOUND,
        client.custom(fred::cmd!("CLUSTER"), vec!["INFO"]),
    )
    .await
    .ok()?
    .ok()?;
    if !info.contains("cluster_state:ok") {
        return None;
    }
    let reply: Value = tokio::time::timeout(
        ASK_BOUND,
        client.custom(fred::cmd!("CLUSTER"), vec!["SLOTS"]),
    )
    .await
    .ok()?
    .ok()?;
    let host = node.rsplit_once(':').map_or(node, |(h, _)| h);
    Topology::from_cluster_slots(reply, host).ok()
}

/// Keeps the routing in step with the cluster until the store shuts down.
async fn keep_layout(inner: Arc<Inner>) {
    let mut said_partial = false;
    loop {
        tokio::select! {
            () = tokio::time::sleep(REFRESH) => {}
            () = inner.wake.notified() => {}
        }
        let Some(topology) = inner.discover().await else {
            continue;
        };
        if !topology.covers_all() {
            // Mid-failover some nodes serve a partial map; routing stays as it is.
            if !said_partial {
                tracing::debug!("the cluster serves only part of the slots now; routing unchanged");
                said_partial = true;
            }
            continue;
        }
        said_partial = false;
        inner.apply(&topology).await;
    }
}

impl Store for ClusterStore {
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
        // The key's binding lives in the slot of the buyer, which another shard may serve.
        if let Some(claim) = who.claim_key() {
            let slot = fred::util::redis_keyslot(claim.as_bytes());
            let bound = match self.shard_of_slot(slot) {
                Some(shard) => shard.store.claim(who, &event.id).await,
                None => Err(StoreError::NotConnected),
            };
            if claim_refused(bound, who, event) {
                return (StorePath::Redis, Ok(Sale::KeyReused));
            }
        }
        self.sell(event, Some(who)).await
    }

    async fn tickets<'a>(
        &'a self,
        event: &'a Arc<Event>,
        buyer: &'a str,
    ) -> Result<Vec<bytes::Bytes>, StoreError> {
        match self.shard(event) {
            Some(shard) => shard.store.tickets(event, buyer).await,
            None => Err(StoreError::NotConnected),
        }
    }

    async fn remaining<'a>(&'a self, events: &'a [Arc<Event>]) -> Result<Vec<u64>, StoreError> {
        // One read per shard, side by side; a failing shard keeps its events' last known
        // counts and does not blank the others'.
        let mut groups: HashMap<usize, (Arc<ShardStore>, Vec<usize>)> = HashMap::new();
        let shards = self.inner.shards.read().clone();
        for (i, e) in events.iter().enumerate() {
            let Some((n, s)) = self
                .inner
                .table
                .shard_of(e.slot)
                .and_then(|n| Some((n, shards.get(n)?)))
            else {
                continue;
            };
            groups
                .entry(n)
                .or_insert_with(|| (s.clone(), Vec::new()))
                .1
                .push(i);
        }
        let reads = groups.into_values().map(|(shard, at)| async move {
            let mine: Vec<Arc<Event>> = at.iter().map(|&i| events[i].clone()).collect();
            (at, shard.store.remaining(&mine).await)
        });
        let mut out: Vec<u64> = events.iter().map(|e| e.metrics.remaining()).collect();
        let mut answered = false;
        for (at, read) in futures_util::future::join_all(reads).await {
            if let Ok(counts) = read {
                answered = true;
                for (i, n) in at.into_iter().zip(counts) {
                    out[i] = n;
                }
            }
        }
        if answered || events.is_empty() {
            Ok(out)
        } else {
            Err(StoreError::NotConnected)
        }
    }

    async fn ready(&self) -> bool {
        let mut shards: Vec<Arc<ShardStore>> = self.inner.shards.read().clone();
        shards.retain(|s| s.serving.load(Ordering::Relaxed));
        !shards.is_empty()
            && futures_util::future::join_all(shards.iter().map(|s| s.store.ready()))
                .await
                .into_iter()
                .all(|ready| ready)
    }

    fn name(&self) -> &'static str {
        "redis-cluster"
    }

    fn reserved(&self, events: &[Arc<Event>]) -> Vec<u64> {
        events
            .iter()
            .map(|e| {
                self.shard(e)
                    .map_or(0, |s| s.store.reserved(std::slice::from_ref(e))[0])
            })
            .collect()
    }

    async fn shutdown(&self, bound: Duration) {
        if let Some(layout) = self.layout.lock().take() {
            layout.abort();
        }
        let shards: Vec<Arc<ShardStore>> = self.inner.shards.read().clone();
        futures_util::future::join_all(shards.iter().map(|s| s.store.shutdown(bound))).await;
        for s in shards {
            let _ =
                tokio::time::timeout(Duration::from_secs(1), s.store.shared().redis.pool().quit())
                    .await;
        }
    }
}
