//! The storage seam: one small trait that sells a ticket of an event, with a Redis
//! implementation ([`redis::RedisStore`]) and an in-memory one ([`memory::MemoryStore`]).
//!
//! The HTTP layer only sees [`Store`]; which store runs is decided once at start-up.

pub mod cursor;
pub mod memory;
pub mod redis;
pub mod scripts;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use crate::event::Event;
use crate::metrics::StorePath;

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
}

/// Why a store could not decide.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// No answer within the bound; the outcome is unknown until reconciled.
    #[error("no answer from Redis within {0:?}")]
    Timeout(Duration),
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

/// A ticket store.
pub trait Store: Send + Sync + 'static {
    /// Sells one ticket of `event`. Returns the path that decided, and the decision.
    fn purchase<'a>(
        &'a self,
        event: &'a Event,
    ) -> impl Future<Output = (StorePath, Result<Sale, StoreError>)> + Send + 'a;

    /// Unsold tickets of each of `events`, in order, read in one round trip.
    fn remaining<'a>(
        &'a self,
        events: &'a [Arc<Event>],
    ) -> impl Future<Output = Result<Vec<u64>, StoreError>> + Send + 'a;

    /// Whether the store can sell now (`/readyz`).
    fn ready(&self) -> impl Future<Output = bool> + Send;

    /// The store's name for logs and `/metrics` (`redis`, `memory`).
    fn name(&self) -> &'static str;
}
