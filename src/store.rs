//! The storage seam: one small trait that sells a ticket of an event, with a Redis
//! implementation that falls back to per-instance reserves ([`resilient::ResilientStore`], on
//! [`redis::RedisStore`]) and a standalone in-memory one ([`memory::MemoryStore`]).
//!
//! The HTTP layer only sees [`Store`]; which store runs is decided once at start-up.

pub mod batch;
pub mod cancel;
pub mod claim;
pub mod cluster;
pub mod cursor;
pub mod fallback;
pub mod ids;
pub mod journal;
pub mod lease_watch;
pub mod memory;
pub mod pool;
pub mod purchaser;
pub mod redis;
pub mod reserve;
pub mod reserve_buyers;
pub mod resilient;
pub mod scripts;
pub mod settle;
pub mod supervisor;
pub mod topology;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use crate::event::Event;
use crate::metrics::StorePath;
use crate::store::purchaser::Purchaser;

/// What a store decided for one purchase.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sale {
    /// Ticket number `ticket` was sold; `remaining` tickets are left after it.
    Sold {
        /// The ticket number (see [`Event::write_ticket_id`]).
        ticket: u64,
        /// Unsold tickets after this sale.
        remaining: u64,
    },
    /// No ticket is left.
    SoldOut,
    /// A purchase whose `Idempotency-Key` was answered before: ticket `ticket` again, with the
    /// `remaining` count of that first answer. Nothing was sold now.
    Replayed {
        /// The ticket number of the first answer.
        ticket: u64,
        /// What the first answer said was left.
        remaining: u64,
    },
    /// The buyer holds the most tickets of this event one buyer may (`--max-per-buyer`).
    LimitReached,
    /// Another purchase with the same buyer and key has not been answered yet.
    KeyInUse,
    /// The key was first used for a purchase of another event.
    KeyReused,
}

/// Why a store could not decide.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// No answer within the bound; the outcome is unknown until reconciled.
    #[error("no answer from Redis within {0:?}")]
    Timeout(Duration),
    /// Fewer replicas than required acknowledged the writes in time: a failover could lose
    /// them, so they do not count (the batch is made void).
    #[error("only {acked} of {wanted} replicas acknowledged the write in time")]
    NotReplicated {
        /// Replicas that did.
        acked: u32,
        /// Replicas required (`--redis-replica-acks`).
        wanted: u32,
    },
    /// No connection to Redis right now (it is reconnecting).
    #[error("not connected to Redis")]
    NotConnected,
    /// Never sent: it queued behind a round that failed like an outage on its connection
    /// (nothing of it can have sold).
    #[error("not sent: the Redis call before it failed")]
    NotSent,
    /// The pool is empty but instances' reserves still hold tickets: not sold out; they are
    /// being returned to the pool (retry shortly).
    #[error("pool empty, {0} tickets held in reserves")]
    HeldInReserves(u64),
    /// The pool is empty but this instance is still giving back tickets that sold to nobody
    /// (they may come back): not sold out yet (retry shortly).
    #[error("pool empty, tickets being given back")]
    InLimbo,
    /// The fallback sale could not be made durable in the journal: the buyer is not told of it
    /// (it stays recorded as sold to nobody).
    #[error("journal: {0}")]
    Journal(std::sync::Arc<crate::store::journal::JournalError>),
    /// Too many purchases waiting for Redis: shed, not a Redis failure.
    #[error("overloaded: no Redis slot free within the queue timeout")]
    Overloaded,
    /// Redis is failing and this instance's reserve of the event is spent (or its lease ran out).
    #[error("in fallback mode and no reserved ticket left")]
    ReserveSpent,
    /// The Redis client failed (connection refused or lost, script error, ...).
    #[error("redis: {0}")]
    Redis(#[from] fred::error::Error),
    /// Redis answered with something the script never returns.
    #[error("unexpected reply from Redis: {0}")]
    Protocol(String),
    /// The purchase was made void by an earlier cancellation (a re-sent call arriving late).
    #[error("purchase was cancelled")]
    Cancelled,
    /// The event is in the catalogue but not in Redis (its keys were lost): never "sold out",
    /// never re-seeded behind the operator's back.
    #[error("event is missing in Redis (data lost?); run `ticketd seed` to restore it")]
    MissingInRedis,
    /// The store does not know this event.
    #[error("event unknown to the store")]
    UnknownEvent,
}

/// Whether Redis refused a call because it cannot serve now: loading its data, busy with a
/// script, a cluster without quorum, or a primary demoted to a replica (the shard is failing
/// over).
fn is_refusal(e: &fred::error::Error) -> bool {
    ["LOADING", "BUSY", "CLUSTERDOWN", "READONLY"]
        .iter()
        .any(|p| e.details().starts_with(p))
}

/// A ticket store.
pub trait Store: Send + Sync + 'static {
    /// Sells one ticket of `event`. Returns the path that decided, and the decision.
    fn purchase<'a>(
        &'a self,
        event: &'a Arc<Event>,
    ) -> impl Future<Output = (StorePath, Result<Sale, StoreError>)> + Send + 'a;

    /// Sells one ticket of `event` to the known buyer of `who`, within the per-buyer limit, at
    /// most once per (buyer, key) when `who` carries an `Idempotency-Key`.
    fn purchase_by<'a>(
        &'a self,
        event: &'a Arc<Event>,
        who: &'a Arc<Purchaser>,
    ) -> impl Future<Output = (StorePath, Result<Sale, StoreError>)> + Send + 'a;

    /// The ticket ids of `event` that `buyer` holds, in ticket order.
    fn tickets<'a>(
        &'a self,
        event: &'a Arc<Event>,
        buyer: &'a str,
    ) -> impl Future<Output = Result<Vec<Bytes>, StoreError>> + Send + 'a;

    /// Unsold tickets of each of `events`, in order, read in one round trip.
    fn remaining<'a>(
        &'a self,
        events: &'a [Arc<Event>],
    ) -> impl Future<Output = Result<Vec<u64>, StoreError>> + Send + 'a;

    /// Whether the store can sell now (`/readyz`).
    fn ready(&self) -> impl Future<Output = bool> + Send;

    /// The store's name for logs and `/metrics` (`redis`, `memory`).
    fn name(&self) -> &'static str;

    /// Unsold tickets of each of `events` held in this instance's fallback reserve.
    fn reserved(&self, events: &[Arc<Event>]) -> Vec<u64> {
        vec![0; events.len()]
    }

    /// Called once after serving stopped: return what the instance holds (reserves) and settle
    /// what it owes (fallback sales), within `bound`.
    fn shutdown(&self, bound: Duration) -> impl Future<Output = ()> + Send {
        let _ = bound;
        async {}
    }
}

impl StoreError {
    /// Whether Redis refused the call before running anything: a cluster node that does not
    /// serve the slot (any more, or not yet: MOVED, ASK, TRYAGAIN during a resharding), a
    /// cluster without quorum (CLUSTERDOWN), a demoted primary (READONLY). Such a call sold
    /// nothing, so there is nothing to make void.
    pub fn never_ran(&self) -> bool {
        let StoreError::Redis(e) = self else {
            return false;
        };
        let d = e.details();
        [
            "MOVED",
            "ASK",
            "TRYAGAIN",
            "CLUSTERDOWN",
            "READONLY",
            "CROSSSLOT",
        ]
        .iter()
        .any(|p| d.starts_with(p))
    }

    /// Whether this failure means Redis is down or too slow (switch to the fallback), as
    /// opposed to an answer that Redis gave.
    pub fn is_outage(&self) -> bool {
        match self {
            StoreError::Timeout(_)
            | StoreError::NotConnected
            | StoreError::NotSent
            | StoreError::NotReplicated { .. } => true,
            StoreError::Redis(e) => {
                matches!(
                    e.kind(),
                    fred::error::ErrorKind::IO
                        | fred::error::ErrorKind::Timeout
                        | fred::error::ErrorKind::Canceled
                ) || is_refusal(e)
            }
            _ => false,
        }
    }

    /// Whether this outage-class error needs a probe to confirm it before the breaker opens
    /// ([`crate::store::fallback::Shared::confirm_outage`]): all of them but Redis refusing
    /// outright (loading, busy, a cluster without quorum, a primary demoted to a replica). A
    /// timeout, too few replica acknowledgements in time, a cancelled or failed call, even a
    /// connection found down can come from this process alone, with Redis answering: its
    /// threads too busy to read a reply in time, a connection being re-established, a purchase
    /// answered "not connected" because the round before it timed out. The probe costs nothing
    /// when the connection is really down (it looks at that first).
    pub fn needs_confirming(&self) -> bool {
        match self {
            StoreError::Redis(e) => !is_refusal(e),
            _ => true,
        }
    }
}
