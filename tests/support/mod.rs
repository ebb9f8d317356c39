//! The shared integration-test harness: a private `redis-server` on a free port with its own
//! temporary directory (never someone's 6379), the real ticketd on port 0 (in-process, or as a
//! child process when a test must kill it), and a small HTTP client. Everything is stopped when
//! its handle drops, also when a test fails.

#![allow(dead_code, unused_imports)] // each test binary uses a different part of the harness

pub mod http;
pub mod ledger;
pub mod load;
pub mod redis;
pub mod ticketd;

pub use self::http::{Answer, Conn};
pub use self::redis::RedisServer;
pub use self::ticketd::{Ticketd, TicketdProcess};

/// Bounds every wait in the harness, so a broken test fails instead of hanging.
pub const WAIT: std::time::Duration = std::time::Duration::from_secs(20);

/// `--events` for `events`: `ID=COUNT,ID=COUNT...`.
pub fn events_flag(events: &[(&str, u64)]) -> String {
    events
        .iter()
        .map(|(id, n)| format!("{id}={n}"))
        .collect::<Vec<_>>()
        .join(",")
}
