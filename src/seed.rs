//! Seeding ticket pools into Redis, and reading the event catalogue back.
//!
//! A pool is built under a private temporary key (pipelined `RPUSH` batches), then installed by
//! `lua/install.lua` in one atomic step that refuses to touch an event that already exists
//! (unless `--reset`). Two instances seeding the same event at once therefore cannot both
//! install it, and a seeder that dies half-way leaves only an expiring temporary key.

use std::collections::HashMap;
use std::fmt;

use fred::clients::Pool;
use fred::error::Error;
use fred::interfaces::{HashesInterface, KeysInterface, ListInterface};
use fred::types::{Key, Value};

use crate::event::{validate_event_id, Event};
use crate::store::scripts::{LuaScript, INSTALL};

/// The HASH event id -> capacity that every instance reads to learn which events exist.
pub const CATALOG_KEY: &str = "events";

/// Ticket ids per `RPUSH` while seeding.
const BATCH: u64 = 10_000;

/// `RPUSH` batches per pipelined round trip.
const PIPELINE_BATCHES: u64 = 10;

/// How long a half-built pool may linger if its seeder dies.
const TEMP_TTL_MS: i64 = 10 * 60 * 1000;

/// What seeding did to one event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seeded {
    /// The pool was created with this many tickets.
    Created(u64),
    /// The pool and ledger were replaced (`--reset`).
    Reset(u64),
    /// The event existed and was left as it is, with this capacity.
    Existing(u64),
}

impl Seeded {
    /// The event's capacity after seeding.
    pub fn capacity(&self) -> u64 {
        match *self {
            Seeded::Created(n) | Seeded::Reset(n) | Seeded::Existing(n) => n,
        }
    }
}

impl fmt::Display for Seeded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Seeded::Created(n) => write!(f, "created with {n} tickets"),
            Seeded::Reset(n) => write!(f, "reset to {n} tickets, ledger cleared"),
            Seeded::Existing(n) => write!(f, "exists already ({n} tickets), left as it is"),
        }
    }
}

/// Makes sure event `id` exists with `capacity` tickets; with `reset`, replaces its pool and
/// ledger. Idempotent without `reset`.
///
/// # Errors
/// A Redis error; nothing is installed then.
pub async fn seed_event(
    pool: &Pool,
    id: &str,
    capacity: u64,
    reset: bool,
) -> Result<Seeded, Error> {
    let event = Event::new(id, capacity, 0);
    let client = pool.next();
    if !reset {
        if let Some(existing) = client
            .hget::<Option<u64>, _, _>(event.keys.meta.clone(), "capacity")
            .await?
        {
            register(pool, id, existing).await?;
            return Ok(Seeded::Existing(existing));
        }
    }
    let temp = Key::from(format!(
        "event:{{{id}}}:seed:{:016x}",
        rand::random::<u64>()
    ));
    // Pipelines of PIPELINE_BATCHES batches each: fast, and the memory held at once stays
    // bounded (about 100,000 ids) whatever the capacity.
    let mut next = 1;
    while next <= capacity {
        let pipeline = client.pipeline();
        for _ in 0..PIPELINE_BATCHES {
            if next > capacity {
                break;
            }
            let end = (next + BATCH - 1).min(capacity);
            let ids: Vec<Value> = (next..=end)
                .map(|n| Value::from(event.ticket_id(n)))
                .collect();
            let _: () = pipeline.rpush(temp.clone(), ids).await?;
            next = end + 1;
        }
        let _: () = pipeline.pexpire(temp.clone(), TEMP_TTL_MS, None).await?;
        for result in pipeline.try_all::<Value>().await {
            if let Err(e) = result {
                let _: Result<i64, _> = client.del(temp.clone()).await;
                return Err(e);
            }
        }
    }
    let keys = vec![
        temp,
        event.keys.tickets.clone(),
        event.keys.sold.clone(),
        event.keys.batches.clone(),
        event.keys.meta.clone(),
        event.keys.leases.clone(),
        event.keys.reserved.clone(),
        event.keys.held.clone(),
        event.keys.stale.clone(),
        event.keys.buyers.clone(),
        event.keys.idempotency.clone(),
        event.keys.idempotency_ttl.clone(),
        event.keys.fallback_buyers.clone(),
    ];
    let args = vec![
        Value::Integer(capacity as i64),
        Value::from(if reset { "reset" } else { "keep" }),
        Value::from(id),
    ];
    let (installed, capacity): (i64, u64) = INSTALLER.run(client, keys, args, || ()).await?;
    register(pool, id, capacity).await?;
    Ok(match (installed, reset) {
        (0, _) => Seeded::Existing(capacity),
        (_, true) => Seeded::Reset(capacity),
        (_, false) => Seeded::Created(capacity),
    })
}

static INSTALLER: std::sync::LazyLock<LuaScript> =
    std::sync::LazyLock::new(|| LuaScript::new(INSTALL));

async fn register(pool: &Pool, id: &str, capacity: u64) -> Result<(), Error> {
    pool.next()
        .hset::<(), _, _>(CATALOG_KEY, (id, capacity))
        .await
}

/// Reads the catalogue: every seeded event and its capacity. Malformed entries are skipped with
/// a warning.
///
/// # Errors
/// A Redis error.
pub async fn load_catalog(pool: &Pool) -> Result<Vec<(String, u64)>, Error> {
    let all: HashMap<String, String> = pool.next().hgetall(CATALOG_KEY).await?;
    let mut events: Vec<(String, u64)> = all
        .into_iter()
        .filter_map(
            |(id, capacity)| match (validate_event_id(&id), capacity.parse()) {
                (Ok(()), Ok(capacity)) => Some((id, capacity)),
                _ => {
                    tracing::warn!(
                        id,
                        capacity,
                        "skipping malformed entry in the Redis catalogue"
                    );
                    None
                }
            },
        )
        .collect();
    events.sort();
    Ok(events)
}

/// A one-connection pool for a command (`seed`, `reserves`), connected within 5 s.
///
/// # Errors
/// The exit code, after printing why: a bad URL (64) or Redis out of reach (1).
pub async fn command_pool(url: &str, command: &str) -> Result<Pool, std::process::ExitCode> {
    use fred::interfaces::ClientLike;
    use std::process::ExitCode;
    let options = crate::store::redis::RedisOptions {
        pool_size: 1,
        timeout: std::time::Duration::from_secs(30),
        ..crate::store::redis::RedisOptions::new(url)
    };
    let pool = match crate::store::redis::build_pool(&options) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("ticketd: --redis-url: {e}");
            return Err(ExitCode::from(crate::config::EXIT_CONFIG));
        }
    };
    pool.connect_pool();
    if !matches!(
        tokio::time::timeout(std::time::Duration::from_secs(5), pool.wait_for_connect()).await,
        Ok(Ok(()))
    ) {
        eprintln!("ticketd {command}: cannot reach Redis at {url}");
        return Err(ExitCode::FAILURE);
    }
    Ok(pool)
}

/// `ticketd seed`: seeds every listed event, prints one line per event, and exits.
pub async fn run_seed(args: crate::config::SeedArgs) -> std::process::ExitCode {
    use fred::interfaces::ClientLike;
    use std::process::ExitCode;
    let pool = match command_pool(args.common.redis_url(), "seed").await {
        Ok(pool) => pool,
        Err(code) => return code,
    };
    if args.events.0.is_empty() {
        eprintln!("ticketd seed: --events lists no event");
        return ExitCode::from(crate::config::EXIT_CONFIG);
    }
    let mut code = ExitCode::SUCCESS;
    for (id, capacity) in args.events.iter() {
        let started = std::time::Instant::now();
        match seed_event(&pool, id, capacity, args.reset).await {
            Ok(seeded) => println!("event {id}: {seeded} ({:.2?})", started.elapsed()),
            Err(e) => {
                eprintln!("event {id}: failed: {e}");
                code = ExitCode::FAILURE;
            }
        }
    }
    let _ = tokio::time::timeout(std::time::Duration::from_secs(1), pool.quit()).await;
    code
}
