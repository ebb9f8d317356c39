//! The fred pool a store talks through, in a cell a cluster failover swaps, and the wait for
//! replicas on one of its connections: what the purchase batchers, the cancellation worker and
//! the Redis store share, so that none of them depends on another for it.

use std::sync::Arc;
use std::time::Duration;

use fred::clients::{Client, Pool};
use fred::interfaces::{ClientLike, KeysInterface};
use fred::types::{Key, Value};
use tokio::time::timeout;

use crate::store::StoreError;

/// The fred pool a store talks through. On a cluster a failover moves a shard to another
/// primary, and the pool is swapped for one connected to it; every user takes the current pool
/// per call, never keeps one.
#[derive(Debug)]
pub struct PoolCell(parking_lot::RwLock<Pool>);

impl PoolCell {
    /// A cell holding `pool`.
    pub fn new(pool: Pool) -> Arc<Self> {
        Arc::new(Self(parking_lot::RwLock::new(pool)))
    }

    /// The current pool.
    pub fn get(&self) -> Pool {
        self.0.read().clone()
    }

    /// The next client of the current pool (round robin).
    pub fn client(&self) -> Client {
        self.0.read().next().clone()
    }

    /// Client `i` of the current pool (each batcher keeps to one).
    pub fn nth(&self, i: usize) -> Client {
        let pool = self.0.read();
        let clients = pool.clients();
        clients[i % clients.len()].clone()
    }

    /// Puts `pool` in place and returns the one it replaced.
    pub fn replace(&self, pool: Pool) -> Pool {
        std::mem::replace(&mut *self.0.write(), pool)
    }
}

/// Waits until `acks` replicas hold everything this Redis wrote so far, at most `bound`: first a
/// write on `client` in `fence`'s slot (`INCR`), then `WAIT` on the same connection. WAIT counts
/// from the connection's own last write, and a call that found its work done already (a settle
/// or a cancellation repeated after a failed WAIT) writes nothing; the fence makes the WAIT
/// cover every earlier write, from any connection, since the replication stream is one ordered
/// log. Nothing to wait for when `acks` is 0.
///
/// # Errors
/// [`StoreError::NotReplicated`] when fewer replicas acknowledged within the bound, or when the
/// fence or the WAIT failed (the connection broke, the bound passed).
pub async fn replicated(
    client: &Client,
    fence: &Key,
    acks: u32,
    bound: Duration,
) -> Result<(), StoreError> {
    if acks == 0 {
        return Ok(());
    }
    let not = |acked: u32| StoreError::NotReplicated {
        acked,
        wanted: acks,
    };
    // One write and the WAIT, pipelined on this connection: Redis runs them in order.
    let redis_ms = (bound.as_millis() as i64 * 4 / 5).max(1);
    let pipeline = client.pipeline();
    let _: () = pipeline.incr(fence.clone()).await.map_err(|_| not(0))?;
    let wait: Vec<Value> = vec![i64::from(acks).into(), redis_ms.into()];
    let _: () = pipeline
        .custom(fred::cmd!("WAIT"), wait)
        .await
        .map_err(|_| not(0))?;
    match timeout(bound, pipeline.all::<Vec<Value>>()).await {
        Ok(Ok(replies)) => match replies.get(1).and_then(Value::as_i64) {
            Some(got) if got >= i64::from(acks) => Ok(()),
            Some(got) => Err(not(got.max(0) as u32)),
            None => Err(not(0)),
        },
        _ => Err(not(0)),
    }
}
