//! The Redis store: one Lua script per purchase, run with EVALSHA on a fred [`Pool`] whose
//! clients pipeline concurrent commands on their connections.
//!
//! Every purchase carries a purchase id unique to this process and request. The script checks it
//! first, so a call that fred re-sends after a reconnect returns the ticket it already sold
//! instead of selling another. A purchase whose outcome is unknown (timeout, lost connection) is
//! answered `503` and queued for cancellation: a background task runs `lua/cancel.lua` once
//! Redis answers, which puts the ticket back if the call did sell one and voids the id so a late
//! copy cannot.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use crossbeam_utils::CachePadded;
use fred::clients::Pool;
use fred::error::{Error, ErrorKind};
use fred::interfaces::{ClientLike, ListInterface};
use fred::prelude::{Builder, Config, ReconnectPolicy};
use fred::types::config::{ConnectionConfig, PerformanceConfig, UnresponsiveConfig};
use fred::types::Value;
use tokio::sync::mpsc;
use tokio::time::timeout;

use crate::event::{Event, EventKeys};
use crate::metrics::{Metrics, RedisErrorKind, StorePath};
use crate::store::scripts::{LuaScript, CANCEL, PURCHASE};
use crate::store::{Sale, Store, StoreError};
use crate::throttle::Throttle;

/// How to reach Redis.
#[derive(Debug, Clone)]
pub struct RedisOptions {
    /// `redis://host:port[/db]`.
    pub url: String,
    /// Clients in the fred pool, each with one connection.
    pub pool_size: usize,
    /// Bound on one purchase call; past it the purchase is answered `503` and cancelled.
    pub timeout: Duration,
}

/// A purchase of unknown outcome, waiting to be made void.
#[derive(Debug)]
struct PendingCancel {
    keys: EventKeys,
    purchase_id: Bytes,
}

/// Tickets in Redis.
#[derive(Debug)]
pub struct RedisStore {
    pool: Pool,
    purchase: LuaScript,
    timeout: Duration,
    /// Random per process, so purchase ids of two instances never collide.
    instance: Box<str>,
    next_purchase: CachePadded<AtomicU64>,
    cancels: mpsc::UnboundedSender<PendingCancel>,
    metrics: Arc<Metrics>,
    error_log: Throttle,
}

/// Builds the fred pool for `options`: reconnects forever with a short backoff, never fails the
/// first connection (the caller decides how long to wait), bounds every command.
///
/// # Errors
/// A malformed URL.
pub fn build_pool(options: &RedisOptions) -> Result<Pool, Error> {
    let mut config = Config::from_url(&options.url)?;
    config.fail_fast = false;
    Builder::from_config(config)
        .set_policy(ReconnectPolicy::new_exponential(0, 25, 250, 2))
        .with_connection_config(|c: &mut ConnectionConfig| {
            c.connection_timeout = Duration::from_secs(1);
            c.internal_command_timeout = Duration::from_secs(1);
            c.max_command_attempts = 2;
            c.tcp.nodelay = Some(true);
            c.unresponsive = UnresponsiveConfig {
                max_timeout: Some(options.timeout.max(Duration::from_millis(500)) * 4),
                interval: Duration::from_millis(250),
            };
        })
        .with_performance_config(|p: &mut PerformanceConfig| {
            p.default_command_timeout = options.timeout.max(Duration::from_millis(500)) * 4;
        })
        .build_pool(options.pool_size.max(1))
}

impl RedisStore {
    /// A store on `pool` (connected or not: commands wait for the connection, bounded by
    /// `timeout`). Spawns the cancellation task, so it must run inside a tokio runtime.
    pub fn new(pool: Pool, timeout: Duration, metrics: Arc<Metrics>) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(cancel_loop(pool.clone(), rx, metrics.clone(), timeout));
        Self {
            pool,
            purchase: LuaScript::new(PURCHASE),
            timeout,
            instance: format!("{:016x}", rand::random::<u64>()).into(),
            next_purchase: CachePadded::new(AtomicU64::new(1)),
            cancels: tx,
            metrics,
            error_log: Throttle::new(Duration::from_secs(5)),
        }
    }

    /// The pool, for seeding and the catalogue.
    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// A purchase id unique to this process and request: `<instance>:<n>`.
    fn purchase_id(&self) -> Bytes {
        let n = self.next_purchase.fetch_add(1, Relaxed);
        let mut buf = itoa::Buffer::new();
        let n = buf.format(n);
        let mut id = Vec::with_capacity(self.instance.len() + 1 + n.len());
        id.extend_from_slice(self.instance.as_bytes());
        id.push(b':');
        id.extend_from_slice(n.as_bytes());
        Bytes::from(id)
    }

    async fn call(&self, event: &Event, purchase_id: Bytes) -> Result<Value, StoreError> {
        let client = self.pool.next();
        let call = self.purchase.run::<Value>(
            client,
            event.keys.script_keys(),
            vec![Value::Bytes(purchase_id)],
            || self.metrics.script_reloaded(),
        );
        match timeout(self.timeout, call).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(StoreError::Redis(e)),
            Err(_) => Err(StoreError::Timeout(self.timeout)),
        }
    }

    fn failed(&self, event: &Event, purchase_id: Bytes, error: &StoreError) {
        let kind = error_kind(error);
        self.metrics.redis_error(kind);
        if let Some(held_back) = self.error_log.allow() {
            tracing::warn!(event = %event.id, %error, held_back, "redis purchase failed; answering 503");
        }
        // Anything but a clean "no" may have sold a ticket that the buyer will never receive.
        if !matches!(error, StoreError::Cancelled | StoreError::MissingInRedis) {
            let _ = self.cancels.send(PendingCancel {
                keys: event.keys.clone(),
                purchase_id,
            });
        }
    }
}

impl Store for RedisStore {
    async fn purchase<'a>(&'a self, event: &'a Event) -> (StorePath, Result<Sale, StoreError>) {
        let purchase_id = self.purchase_id();
        let result = match self.call(event, purchase_id.clone()).await {
            Ok(reply) => parse_reply(event, reply),
            Err(e) => Err(e),
        };
        if let Err(e) = &result {
            self.failed(event, purchase_id, e);
        }
        (StorePath::Redis, result)
    }

    async fn remaining<'a>(&'a self, events: &'a [Arc<Event>]) -> Result<Vec<u64>, StoreError> {
        let pipeline = self.pool.next().pipeline();
        for e in events {
            let _: () = pipeline.llen(e.keys.tickets.clone()).await?;
        }
        let counts: Vec<i64> = match timeout(self.timeout, pipeline.all::<Vec<i64>>()).await {
            Ok(r) => r?,
            Err(_) => return Err(StoreError::Timeout(self.timeout)),
        };
        Ok(counts.into_iter().map(|n| n.max(0) as u64).collect())
    }

    async fn ready(&self) -> bool {
        // Every pooled connection up, and Redis answering.
        self.pool.clients().iter().all(ClientLike::is_connected)
            && matches!(
                timeout(self.timeout, self.pool.next().ping::<Value>(None)).await,
                Ok(Ok(_))
            )
    }

    fn name(&self) -> &'static str {
        "redis"
    }
}

/// Reads the script's `{status, ticket, remaining}`.
fn parse_reply(event: &Event, reply: Value) -> Result<Sale, StoreError> {
    let bad = |why: &str| StoreError::Protocol(format!("{why} in purchase reply"));
    let Value::Array(items) = reply else {
        return Err(bad("no array"));
    };
    let [status, ticket, remaining] =
        <[Value; 3]>::try_from(items).map_err(|_| bad("wrong length"))?;
    let status = status.as_i64().ok_or_else(|| bad("no status"))?;
    let remaining = remaining.as_u64().ok_or_else(|| bad("no count"))?;
    match status {
        1 | 2 => {
            let id = ticket.as_bytes().ok_or_else(|| bad("no ticket"))?;
            let ticket = event
                .parse_ticket_id(id)
                .ok_or_else(|| bad("foreign ticket id"))?;
            Ok(Sale::Sold { ticket, remaining })
        }
        0 => Ok(Sale::SoldOut),
        -1 => Err(StoreError::Cancelled),
        -2 => Err(StoreError::MissingInRedis),
        _ => Err(bad("unknown status")),
    }
}

/// Which counter a failure goes to.
pub fn error_kind(e: &StoreError) -> RedisErrorKind {
    match e {
        StoreError::Timeout(_) => RedisErrorKind::Timeout,
        StoreError::Protocol(_) | StoreError::Cancelled => RedisErrorKind::Protocol,
        StoreError::UnknownEvent | StoreError::MissingInRedis => RedisErrorKind::Other,
        StoreError::Redis(e) => match e.kind() {
            ErrorKind::Timeout => RedisErrorKind::Timeout,
            ErrorKind::IO | ErrorKind::Canceled => RedisErrorKind::Io,
            ErrorKind::Protocol | ErrorKind::Parse => RedisErrorKind::Protocol,
            _ if e.details().starts_with("ERR") || e.details().starts_with("NOSCRIPT") => {
                RedisErrorKind::Script
            }
            _ => RedisErrorKind::Other,
        },
    }
}

/// Makes void, one by one and until Redis takes it, every purchase of unknown outcome.
async fn cancel_loop(
    pool: Pool,
    mut rx: mpsc::UnboundedReceiver<PendingCancel>,
    metrics: Arc<Metrics>,
    bound: Duration,
) {
    let script = LuaScript::new(CANCEL);
    let mut backoff = Duration::from_millis(50);
    while let Some(pending) = rx.recv().await {
        loop {
            let call = script.run::<i64>(
                pool.next(),
                pending.keys.script_keys(),
                vec![Value::Bytes(pending.purchase_id.clone())],
                || metrics.script_reloaded(),
            );
            match timeout(bound.max(Duration::from_millis(500)), call).await {
                Ok(Ok(returned)) => {
                    metrics.purchase_cancelled();
                    tracing::debug!(purchase = ?pending.purchase_id, returned, "purchase of unknown outcome made void");
                    backoff = Duration::from_millis(50);
                    break;
                }
                _ => {
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(status: i64, ticket: &str, remaining: i64) -> Value {
        Value::Array(vec![
            Value::Integer(status),
            Value::String(ticket.into()),
            Value::Integer(remaining),
        ])
    }

    #[test]
    fn replies_parse() {
        let e = Event::new("7", 100, 0);
        assert_eq!(
            parse_reply(&e, reply(1, "7-000042", 58)).unwrap(),
            Sale::Sold {
                ticket: 42,
                remaining: 58
            }
        );
        assert_eq!(
            parse_reply(&e, reply(2, "7-000042", 3)).unwrap(),
            Sale::Sold {
                ticket: 42,
                remaining: 3
            }
        );
        assert_eq!(parse_reply(&e, reply(0, "", 0)).unwrap(), Sale::SoldOut);
        assert!(matches!(
            parse_reply(&e, reply(-1, "", 0)),
            Err(StoreError::Cancelled)
        ));
        assert!(matches!(
            parse_reply(&e, reply(1, "8-000001", 0)),
            Err(StoreError::Protocol(_))
        ));
        assert!(matches!(
            parse_reply(&e, Value::Null),
            Err(StoreError::Protocol(_))
        ));
    }
}
