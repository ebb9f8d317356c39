//! The shared integration-test harness: a private `redis-server` on a free port with its own
//! temporary directory (never someone's 6379), a loopback Redis Cluster of six of them, the real
//! ticketd on port 0 (in-process, or as a child process when a test must kill it), a small HTTP
//! client, and an OTLP trace receiver. Everything is stopped when its handle drops, also when a
//! test fails.

#![allow(dead_code, unused_imports)] // each test binary uses a different part of the harness

pub mod cluster;
pub mod http;
pub mod ledger;
pub mod load;
pub mod otlp;
pub mod redis;
pub mod ticketd;

pub use self::cluster::RedisCluster;
pub use self::http::{Answer, Conn};
pub use self::otlp::OtlpReceiver;
pub use self::redis::RedisServer;
pub use self::ticketd::{Ticketd, TicketdProcess};

/// The programs the suite starts. A test that needs one and misses it names every one that is
/// missing, at once, and the command that installs them.
pub const PROGRAMS: [&str; 4] = ["redis-server", "redis-cli", "prometheus", "promtool"];

/// Panics, naming every missing program of [`PROGRAMS`], when `program` is not on `PATH`.
pub fn require(program: &str) {
    let on_path = |p: &str| {
        std::env::var_os("PATH")
            .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(p).is_file()))
    };
    if !on_path(program) {
        let missing: Vec<&str> = PROGRAMS.into_iter().filter(|p| !on_path(p)).collect();
        panic!(
            "the test suite needs {}, missing from PATH: run scripts/test, which installs them \
             (Debian and Ubuntu: apt-get install redis-server redis-tools prometheus)",
            missing.join(", ")
        );
    }
}

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
