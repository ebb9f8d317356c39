//! ticketd: sells tickets for many events at once under flash-sale load, from Redis through one
//! atomic Lua script, and keeps answering from memory when Redis does not.
//!
//! # Layout
//! - [`config`]: command line and environment, exit code 64 on bad settings.
//! - [`run`](mod@run): start-up: picks the store, seeds, refreshes the catalogue, serves.
//! - [`server`]: accept loop, hyper HTTP/1.1 connections, graceful shutdown;
//!   [`connection`]: one connection driven to its end, with [`head_deadline`] (the slow-loris
//!   bound, armed once per connection) and [`drain`] (the shutdown signal and the count of
//!   open connections).
//! - [`app`]: the service: one request in, one response out, no socket needed.
//! - [`router`]: routing by slicing the path.
//! - [`response`]: JSON bodies written with `itoa`.
//! - [`error`]: the client-visible errors and their HTTP mapping, in one place.
//! - [`auth`]: who buys: a verified JWT ([`auth::jwt`]), a gateway's header, or anonymous.
//! - [`idempotency_key`]: the `Idempotency-Key` header (an RFC 8941 String), parsed.
//! - [`seeded_hash`]: the fast seeded hash of the token cache and of the keys in flight.
//! - [`event`]: event ids, prepared Redis keys, ticket id format.
//! - [`catalog`]: which events exist, answered without Redis.
//! - [`store`]: the `Store` trait; [`store::redis`], [`store::pool`] (the fred pool and the
//!   wait for replicas), [`store::batch`] (purchases grouped into one script call),
//!   [`store::cancel`] (purchases sold to nobody, given back), [`store::cluster`] and
//!   [`store::topology`] (one store per Redis Cluster shard), [`store::purchaser`] and
//!   [`store::reserve_buyers`] (known buyers, in Redis and from reserves),
//!   [`store::ids`], [`store::resilient`] (Redis plus the fallback) with its state
//!   [`store::fallback`], [`store::supervisor`], [`store::settle`], [`store::lease_watch`],
//!   [`store::reserve`] and [`store::journal`] (crash-safe fallback sales),
//!   [`store::memory`], [`store::cursor`], [`store::scripts`] (the embedded Lua).
//! - [`seed`]: building and atomically installing ticket pools; reading the catalogue.
//! - [`reserves`]: `ticketd reserves`, the operator's view of live and held-back reserves.
//! - [`metrics`]: the lock-free registry; [`metrics_render`]: Prometheus text and JSON.
//! - [`remaining`]: the snapshot of unsold tickets that `/metrics` reads, refreshed from the
//!   store by one background task, so a scrape costs the store nothing.
//! - [`sold_out`]: "sold out" remembered per event, so a sold-out event costs the store
//!   nothing until tickets may be back.
//! - [`stats`]: the periodic purchase-statistics log line.
//! - [`otel`]: distributed tracing (OpenTelemetry spans over OTLP), free when off.
//! - [`telemetry`]: logging set-up (and the trace layer beside it); [`throttle`]: rate-limited
//!   logging; [`shutdown`]: signals.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod app;
pub mod auth;
pub mod catalog;
pub mod config;
pub mod connection;
pub mod drain;
pub mod error;
pub mod event;
pub mod head_deadline;
pub mod idempotency_key;
pub mod in_flight;
pub mod metrics;
pub mod metrics_render;
pub mod otel;
pub mod remaining;
pub mod reserves;
pub mod response;
pub mod router;
pub mod run;
pub mod seed;
pub mod seeded_hash;
pub mod server;
pub mod shutdown;
pub mod sold_out;
pub mod stats;
pub mod store;
pub mod telemetry;
pub mod throttle;

pub use app::{App, Limits};
pub use catalog::Catalog;
pub use metrics::Metrics;
pub use run::run;
pub use server::{serve, ServeOptions};
pub use store::Store;
