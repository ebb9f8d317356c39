//! chaos: Jepsen-style fault injection for ticketd. A *generator* of buyers, a *nemesis* that
//! kills, pauses and restarts Redis (one server, or the nodes of a Redis Cluster) and ticketd
//! instances on a schedule built from a seed, and a *checker* that judges the whole recorded
//! history against the final state in Redis.
//!
//! # Layout
//! - [`process`]: a child process that can be SIGKILLed, SIGSTOPped, SIGCONTed, SIGTERMed, and
//!   dies with its handle; free ports.
//! - [`redis`]: the private redis-server (free port, own directory, AOF), restartable.
//! - [`redis_cluster`]: six of them as a Redis Cluster; nodes by role; settling; slots.
//! - [`ticketd`]: ticketd instances as child processes (fixed port, log, journal directory).
//! - [`cluster`]: Redis and the instances of one run; kill/restart/pause windows; heal; stop.
//! - [`http`]: the keep-alive HTTP/1.1 client.
//! - [`history`]: what a run records: requests, kill and stop windows, problems.
//! - [`generator`]: the buyers, paced during the faults, then selling out; some known buyers
//!   with `Idempotency-Key`s that they retry.
//! - [`schedule`]: faults at offsets, generated from a seed, printable.
//! - [`nemesis`]: performs a schedule on a cluster.
//! - [`ledger`]: reads an event's final state out of Redis.
//! - [`checker`]: the invariants, judged over the whole history; [`checker::buyers`] those
//!   about known buyers (one ticket per key, the buyer in the ledger, the limit).
//! - [`run`](mod@run): one run of one schedule, and its report.
//! - [`campaign`]: the `chaos` command: many seeds, one line each, exit codes.
//! - [`error`]: failures of the harness itself.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod campaign;
pub mod checker;
pub mod cluster;
pub mod error;
pub mod generator;
pub mod history;
pub mod http;
pub mod ledger;
pub mod nemesis;
pub mod process;
pub mod redis;
pub mod redis_cluster;
pub mod run;
pub mod schedule;
pub mod ticketd;

pub use checker::{Invariant, Verdict, Violation};
pub use error::HarnessError;
pub use run::{run, run_seeds, Options, Report};
pub use schedule::{Fault, RedisMode, Schedule};
pub use ticketd::Binary;
