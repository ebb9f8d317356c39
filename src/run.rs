//! Start-up: picks the store (`--store`), seeds the events that must exist, keeps the catalogue
//! fresh, and serves until the shutdown future completes.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use fred::clients::Pool;
use fred::interfaces::ClientLike;
use tokio::net::TcpListener;

use crate::app::{App, Limits};
use crate::auth::Auth;
use crate::catalog::Catalog;
use crate::config::{is_cluster_url, ServeArgs, StoreKind};
use crate::metrics::Metrics;
use crate::remaining::Refresh;
use crate::seed::{load_catalog, seed_event};
use crate::server::{serve, ServeOptions};
use crate::store::cluster::{ClusterOptions, ClusterStore};
use crate::store::fallback::FallbackOptions;
use crate::store::ids::Ids;
use crate::store::memory::MemoryStore;
use crate::store::purchaser::BuyerPolicy;
use crate::store::redis::{build_pool, check_durability, RedisOptions, RedisStore};
use crate::store::resilient::ResilientStore;
use crate::store::Store;

/// Bound on seeding `--events` and reading the catalogue (seeding a large event takes seconds).
const PREPARE_TIMEOUT: Duration = Duration::from_secs(120);

/// Why the service could not run.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The Redis URL or client settings were refused.
    #[error("--redis-url: {0}")]
    Redis(#[from] fred::error::Error),
    /// The journal directory cannot be used (held by another process, unreadable, corrupt):
    /// bad configuration, exit code 64, never a silent fresh start.
    #[error("{0}")]
    Journal(#[from] crate::store::journal::JournalError),
    /// The listener failed.
    #[error("serving failed: {0}")]
    Io(#[from] std::io::Error),
    /// The buyer settings were refused (a key file that cannot be used, a short secret, flags
    /// that exclude each other): bad configuration, exit code 64.
    #[error("{0}")]
    Auth(String),
}

/// Runs the service on `listener` until `shutdown` completes.
///
/// # Errors
/// See [`RunError`].
pub async fn run(
    args: ServeArgs,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> Result<(), RunError> {
    let auth = Auth::from_args(&args.buyers).map_err(RunError::Auth)?;
    if auth.is_on() {
        tracing::info!(buyers = %auth, max_per_buyer = ?args.buyers.max_per_buyer, idempotency_ttl = ?args.buyers.idempotency_ttl, "purchases need a buyer");
    }
    let metrics = Arc::new(Metrics::new());
    let catalog = Arc::new(Catalog::new(args.events.iter()));
    let limits = Limits {
        max_body: args.max_body,
    };
    let refresh = Refresh {
        every: args.metrics_refresh,
        bound: args.redis_timeout.max(Duration::from_millis(100)) * 2,
    };
    let options_serve = ServeOptions {
        header_read_timeout: args.header_timeout,
        drain_timeout: args.shutdown_timeout,
        ..ServeOptions::default()
    };
    let addr = listener.local_addr()?;

    let url = match (args.store, &args.common.redis_url) {
        (StoreKind::Memory, _) => None,
        (StoreKind::Auto, None) => None,
        (StoreKind::Auto, Some(url)) => Some(url.clone()),
        (StoreKind::Redis, _) => Some(args.common.redis_url().to_owned()),
    };
    let Some(url) = url else {
        let why = if args.store == StoreKind::Memory {
            "--store memory"
        } else {
            "no Redis configured (--redis-url or REDIS_URL)"
        };
        return serve_memory(
            args,
            auth,
            listener,
            catalog,
            metrics,
            limits,
            options_serve,
            shutdown,
            refresh,
            why,
        )
        .await;
    };

    // The identity and the journal first: a directory that cannot be used stops start-up
    // before anything else happens.
    let (opened, journal) = crate::store::journal::open(&args.journal_dir)?;
    tracing::info!(
        dir = %args.journal_dir.display(),
        instance = %opened.instance,
        run = opened.generation,
        owed = opened.records.len(),
        "journal open"
    );
    let redis = RedisOptions {
        url,
        pool_size: usize::from(args.redis_pool_size),
        timeout: args.redis_timeout,
        max_in_flight: args.redis_max_in_flight as usize,
        queue_timeout: args.queue_timeout,
        replica_acks: args.redis_replica_acks.unwrap_or(0),
        buyers: buyer_policy(&args),
        single_node: true,
    };
    let pool = build_pool(&redis)?;
    pool.connect_pool();
    let connected = matches!(
        tokio::time::timeout(args.connect_timeout, pool.wait_for_connect()).await,
        Ok(Ok(()))
    );
    let mut prepared = false;
    if connected {
        let bound = PREPARE_TIMEOUT;
        match tokio::time::timeout(bound, prepare(&pool, &args, &catalog)).await {
            Ok(done) => prepared = done,
            Err(_) => tracing::warn!(
                ?bound,
                "seeding and loading the catalogue took too long; will retry"
            ),
        }
    } else {
        let why = unreachable_because(&redis.url, args.connect_timeout).await;
        tracing::warn!(url = %redis.url, why, "cannot reach Redis; purchases answer 503 until it answers (retrying in the background); nothing is sold from memory");
    }
    tokio::spawn(refresh_catalog(
        pool.clone(),
        catalog.clone(),
        args.clone(),
        !prepared,
    ));
    let fallback = FallbackOptions {
        reserve: args.fallback_reserve,
        lease: args.reserve_lease,
    };
    let ids = Ids::new(&opened.instance, opened.generation);
    let bound = args.shutdown_timeout;
    let stats_every = args.stats_interval;
    if is_cluster_url(&redis.url) {
        let seeds = cluster_seeds(&redis.url);
        let redis = RedisOptions {
            // A failover must not lose an acknowledged sale: one replica holds it first.
            replica_acks: args.redis_replica_acks.unwrap_or(1),
            // A key's binding lives in the buyer's slot, on any shard: bound before the call.
            single_node: false,
            ..redis
        };
        let replica_acks = redis.replica_acks;
        let options = ClusterOptions {
            redis,
            seeds,
            fallback,
        };
        let store = ClusterStore::start(
            options,
            catalog.clone(),
            metrics.clone(),
            ids,
            journal,
            opened.records,
            args.connect_timeout,
        )
        .await;
        let shards: Vec<String> = store
            .shards()
            .into_iter()
            .map(|(label, primary)| format!("{label}@{primary}"))
            .collect();
        tracing::info!(%addr, store = "redis-cluster", ?shards, replica_acks, pool = args.redis_pool_size, events = catalog.len(), reserve = fallback.reserve, lease = ?fallback.lease, "ticketd is listening");
        let app = App::new(store, catalog, metrics, limits).with_auth(auth);
        serve_until_shutdown(
            app,
            listener,
            options_serve,
            shutdown,
            stats_every,
            refresh,
            bound,
        )
        .await?;
    } else {
        let store = ResilientStore::new(
            RedisStore::new(pool.clone(), &redis, metrics.clone(), ids),
            catalog.clone(),
            fallback,
            journal,
            opened.records,
            !connected,
        );
        tracing::info!(%addr, store = "redis", url = %redis.url, pool = redis.pool_size, events = catalog.len(), reserve = fallback.reserve, lease = ?fallback.lease, "ticketd is listening");
        let app = App::new(store, catalog, metrics, limits).with_auth(auth);
        serve_until_shutdown(
            app,
            listener,
            options_serve,
            shutdown,
            stats_every,
            refresh,
            bound,
        )
        .await?;
    }
    let _ = tokio::time::timeout(std::time::Duration::from_secs(1), pool.quit()).await;
    drop(opened.lock); // held until the very end: no second process on this journal meanwhile
    Ok(())
}

/// Serves `app` until `shutdown`, then lets its store hand back and settle within `bound`.
async fn serve_until_shutdown<S: Store>(
    app: App<S>,
    listener: TcpListener,
    options: ServeOptions,
    shutdown: impl Future<Output = ()>,
    stats_every: Duration,
    refresh: Refresh,
    bound: Duration,
) -> Result<(), RunError> {
    let snapshot = spawn_refresh(&app, refresh);
    let stats = tokio::spawn(crate::stats::run(app.clone(), stats_every));
    serve(listener, app.clone(), options, shutdown).await?;
    stats.abort();
    snapshot.abort();
    app.store().shutdown(bound).await;
    Ok(())
}

/// Starts the task that keeps the remaining snapshot of `/metrics` fresh ([`crate::remaining`]).
fn spawn_refresh<S: Store>(app: &App<S>, refresh: Refresh) -> tokio::task::JoinHandle<()> {
    let app = app.clone();
    tokio::spawn(async move {
        crate::remaining::run(app.store(), app.catalog(), app.metrics(), refresh).await;
    })
}

/// The nodes a `redis-cluster://` URL names, as `host:port`.
fn cluster_seeds(url: &str) -> Vec<String> {
    match fred::prelude::Config::from_url(url).map(|c| c.server) {
        Ok(fred::types::config::ServerConfig::Clustered { hosts, .. }) => hosts
            .into_iter()
            .map(|s| format!("{}:{}", s.host, s.port))
            .collect(),
        _ => Vec::new(),
    }
}

/// Why `url` cannot be reached: refused, or no answer within `bound` (an address that drops
/// packets, a paused server), for the start-up log.
async fn unreachable_because(url: &str, bound: Duration) -> String {
    let server = fred::prelude::Config::from_url(url)
        .ok()
        .and_then(|c| match c.server {
            fred::types::config::ServerConfig::Centralized { server } => {
                Some(format!("{}:{}", server.host, server.port))
            }
            _ => None,
        });
    let Some(server) = server else {
        return format!("no connection within {bound:?}");
    };
    match tokio::time::timeout(bound, tokio::net::TcpStream::connect(&server)).await {
        Ok(Err(e)) => format!("{server}: {e}"),
        Err(_) => format!("{server}: no answer within {bound:?}"),
        Ok(Ok(_)) => {
            format!("{server} accepts connections but Redis did not answer within {bound:?}")
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn serve_memory(
    args: ServeArgs,
    auth: Auth,
    listener: TcpListener,
    catalog: Arc<Catalog>,
    metrics: Arc<Metrics>,
    limits: Limits,
    options: ServeOptions,
    shutdown: impl Future<Output = ()>,
    refresh: Refresh,
    why: &str,
) -> Result<(), RunError> {
    let addr = listener.local_addr()?;
    tracing::warn!(
        reason = why,
        "IN-MEMORY MODE: tickets live in this process only; nothing is persisted, a restart sells every ticket again, and other instances cannot see these sales"
    );
    if catalog.is_empty() {
        tracing::warn!(
            "no events configured; pass --events ID=COUNT[,...] (for example --events 1=10000)"
        );
    }
    let store = MemoryStore::with_policy(&catalog, buyer_policy(&args));
    tracing::info!(%addr, store = "memory", events = catalog.len(), "ticketd is listening");
    let app = App::new(store, catalog, metrics, limits).with_auth(auth);
    let snapshot = spawn_refresh(&app, refresh);
    let stats = tokio::spawn(crate::stats::run(app.clone(), args.stats_interval));
    serve(listener, app, options, shutdown).await?;
    stats.abort();
    snapshot.abort();
    Ok(())
}

/// The per-buyer rules of `args`.
fn buyer_policy(args: &ServeArgs) -> BuyerPolicy {
    BuyerPolicy {
        max_per_buyer: args.buyers.max_per_buyer,
        key_ttl: args.buyers.idempotency_ttl,
    }
}

/// Seeds the events of `--events` that Redis lacks and loads the catalogue. Failures are
/// logged; the refresh task tries again.
async fn prepare(pool: &Pool, args: &ServeArgs, catalog: &Catalog) -> bool {
    if !pool.next().is_clustered() {
        // A cluster's primaries are checked one by one as their shards start.
        check_durability(pool.next(), "").await;
    }
    // Load the scripts that run from the start before the first buyer, heartbeat and snapshot,
    // so a cold start does not answer a burst of NOSCRIPT (each recovered, but counted as
    // reloads).
    use crate::store::scripts::{LuaScript, CLAIM, COUNTS, PURCHASE};
    for lua in [PURCHASE, CLAIM, COUNTS] {
        if let Err(e) = LuaScript::new(lua).load(pool.next()).await {
            tracing::warn!(error = %e, "cannot load the Lua scripts; will retry");
            return false;
        }
    }
    for (id, capacity) in args.events.iter() {
        match seed_event(pool, id, capacity, false).await {
            Ok(seeded) => {
                tracing::info!(event = id, "{seeded}");
                catalog.upsert(id, seeded.capacity());
            }
            Err(e) => {
                tracing::warn!(event = id, error = %e, "cannot seed event; will retry");
                return false;
            }
        }
    }
    match load_catalog(pool).await {
        Ok(events) => {
            for (id, capacity) in events {
                if catalog.upsert(&id, capacity).1 {
                    tracing::info!(event = %id, capacity, "event in catalogue");
                }
            }
            true
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the event catalogue; will retry");
            false
        }
    }
}

/// Keeps the catalogue in step with Redis: events seeded while running become sellable within
/// one interval. `pending` says start-up preparation still has to happen.
async fn refresh_catalog(pool: Pool, catalog: Arc<Catalog>, args: ServeArgs, mut pending: bool) {
    let mut tick = tokio::time::interval(args.catalog_refresh.max(Duration::from_millis(100)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if pending {
            if !pool.is_connected() {
                continue;
            }
            if matches!(
                tokio::time::timeout(PREPARE_TIMEOUT, prepare(&pool, &args, &catalog)).await,
                Ok(true)
            ) {
                tracing::info!(
                    events = catalog.len(),
                    "Redis is reachable; events seeded and catalogue loaded"
                );
                pending = false;
            }
            continue;
        }
        if let Ok(Ok(events)) = tokio::time::timeout(PREPARE_TIMEOUT, load_catalog(&pool)).await {
            for (id, capacity) in events {
                if catalog.upsert(&id, capacity).1 {
                    tracing::info!(event = %id, capacity, "event added to the catalogue");
                }
            }
        }
    }
}
