//! Why the harness itself could not run a schedule (as opposed to ticketd breaking an
//! invariant, which the checker reports as a violation). The binary exits 1 on these.

use std::time::Duration;

/// A failure of the harness or of its environment.
#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    /// `redis-server` (or for a cluster `redis-cli`) is not on the PATH.
    #[error("redis-server and redis-cli must be installed (apt-get install redis-server): {0}")]
    RedisMissing(std::io::Error),
    /// redis-server did not answer PING after being started.
    #[error("redis-server did not answer on port {port} within {bound:?}")]
    RedisStart {
        /// Its port.
        port: u16,
        /// How long we waited.
        bound: Duration,
    },
    /// The ticketd binary could not be run.
    #[error("cannot run ticketd binary {path}: {source}")]
    Ticketd {
        /// The path given with `--ticketd`.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// A ticketd instance never became ready before the faults began.
    #[error("ticketd instance {instance} not ready within {bound:?}: {what} (log: {log})")]
    NotReady {
        /// Index of the instance.
        instance: usize,
        /// How long we waited.
        bound: Duration,
        /// What was awaited.
        what: String,
        /// Its log file.
        log: String,
    },
    /// The Redis Cluster did not form or did not settle (a harness or Redis problem, not
    /// ticketd's), or a node the nemesis needed could not be found.
    #[error("Redis Cluster: {0}")]
    Cluster(String),
    /// Reading the final state out of Redis failed.
    #[error("reading the final state from Redis: {0}")]
    Redis(#[from] fred::error::Error),
    /// Some other I/O failure (temporary directories, log files, signals).
    #[error("{context}: {source}")]
    Io {
        /// What the harness was doing.
        context: String,
        /// The error.
        source: std::io::Error,
    },
}

impl HarnessError {
    /// An [`HarnessError::Io`] with what the harness was doing.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io {
            context: context.into(),
            source,
        }
    }
}
