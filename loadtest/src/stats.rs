//! What the workers count: answers by status and error code, latencies, tickets received, and
//! connection trouble.
//!
//! One HDR histogram per connection would take hundreds of megabytes at 10,000 connections, so
//! connections share a fixed number of shards, each behind its own mutex; a worker locks its
//! shard once per answer, and with far more shards than threads the locks are nearly never
//! contended. The shards are merged once, after the run (and read once a second for progress).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

use hdrhistogram::Histogram;

/// Shards the connections are spread over.
pub const SHARDS: usize = 64;

/// Highest latency the histogram holds exactly: one hour, in microseconds (higher ones are
/// recorded as this).
pub const MAX_LATENCY_US: u64 = 3_600_000_000;

/// Counts of one shard, or of the whole run once merged.
#[derive(Debug)]
pub struct Counts {
    /// Latency of every answer, in microseconds.
    pub latency: Histogram<u64>,
    /// Answers by status code (index = code, 0..=999).
    pub status: Vec<u64>,
    /// Answers by the `error` field of their JSON body.
    pub errors: HashMap<String, u64>,
    /// Ticket ids received in 200 answers, per event (index of `--events`).
    pub tickets: Vec<Vec<Box<str>>>,
    /// 200 answers to a purchase whose body has no `ticket` field.
    pub sales_without_ticket: u64,
    /// 200 answers whose `event` field is not the event that was asked for.
    pub wrong_event: u64,
    /// Failed connects and connections lost with a request in flight.
    pub connection_errors: u64,
    /// The same, by error message (e.g. `connect: Connection refused (os error 111)`).
    pub connection_error_kinds: HashMap<String, u64>,
    /// Requests not answered within `--timeout`.
    pub timeouts: u64,
    /// Connections opened again during the run (after an error, a timeout or a close).
    pub reconnects: u64,
}

impl Counts {
    /// Empty counts for `events` events.
    pub fn new(events: usize) -> Counts {
        Counts {
            latency: Histogram::new_with_bounds(1, MAX_LATENCY_US, 3)
                .expect("valid histogram bounds"),
            status: vec![0; 1000],
            errors: HashMap::new(),
            tickets: vec![Vec::new(); events],
            sales_without_ticket: 0,
            wrong_event: 0,
            connection_errors: 0,
            connection_error_kinds: HashMap::new(),
            timeouts: 0,
            reconnects: 0,
        }
    }

    /// Answers received.
    pub fn answers(&self) -> u64 {
        self.latency.len()
    }

    /// Answers whose status is in `lo..hi`.
    pub fn status_range(&self, lo: usize, hi: usize) -> u64 {
        self.status[lo..hi].iter().sum()
    }

    /// Counts an error code.
    pub fn add_error(&mut self, code: &str) {
        if let Some(n) = self.errors.get_mut(code) {
            *n += 1;
        } else {
            self.errors.insert(code.to_owned(), 1);
        }
    }

    /// Counts a connection error with its message.
    pub fn add_connection_error(&mut self, message: &str) {
        self.connection_errors += 1;
        if let Some(n) = self.connection_error_kinds.get_mut(message) {
            *n += 1;
        } else {
            self.connection_error_kinds.insert(message.to_owned(), 1);
        }
    }

    /// Adds `other` into `self`.
    pub fn merge(&mut self, other: Counts) {
        self.latency
            .add(&other.latency)
            .expect("histograms with the same bounds add up");
        for (a, b) in self.status.iter_mut().zip(&other.status) {
            *a += b;
        }
        for (code, n) in other.errors {
            *self.errors.entry(code).or_default() += n;
        }
        for (mine, theirs) in self.tickets.iter_mut().zip(other.tickets) {
            mine.extend(theirs);
        }
        self.sales_without_ticket += other.sales_without_ticket;
        self.wrong_event += other.wrong_event;
        self.connection_errors += other.connection_errors;
        for (kind, n) in other.connection_error_kinds {
            *self.connection_error_kinds.entry(kind).or_default() += n;
        }
        self.timeouts += other.timeouts;
        self.reconnects += other.reconnects;
    }
}

/// A cheap summary for the progress line.
#[derive(Debug, Default, Clone, Copy)]
pub struct Progress {
    /// Answers so far.
    pub answers: u64,
    /// 2xx answers.
    pub ok: u64,
    /// 4xx answers.
    pub client_errors: u64,
    /// 5xx answers.
    pub server_errors: u64,
    /// Connection errors.
    pub connection_errors: u64,
    /// Timeouts.
    pub timeouts: u64,
}

/// The shared, sharded counters of a run.
#[derive(Debug)]
pub struct Stats {
    shards: Vec<Mutex<Counts>>,
    /// Connections open right now.
    pub open: AtomicU64,
    /// Connections that finished their first connect phase (opened or gave up).
    pub ready: AtomicU64,
}

impl Stats {
    /// Stats for a run over `events` events.
    pub fn new(events: usize) -> Stats {
        Stats {
            shards: (0..SHARDS)
                .map(|_| Mutex::new(Counts::new(events)))
                .collect(),
            open: AtomicU64::new(0),
            ready: AtomicU64::new(0),
        }
    }

    /// The shard of connection `conn`.
    pub fn shard(&self, conn: usize) -> MutexGuard<'_, Counts> {
        self.shards[conn % SHARDS]
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Totals so far, for the progress line.
    pub fn progress(&self) -> Progress {
        let mut p = Progress::default();
        for shard in &self.shards {
            let c = shard
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            p.answers += c.answers();
            p.ok += c.status_range(200, 300);
            p.client_errors += c.status_range(400, 500);
            p.server_errors += c.status_range(500, 600);
            p.connection_errors += c.connection_errors;
            p.timeouts += c.timeouts;
        }
        p
    }

    /// Merges every shard into one, leaving the shards empty.
    pub fn take_totals(&self, events: usize) -> Counts {
        let mut total = Counts::new(events);
        for shard in &self.shards {
            let mut c = shard
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            total.merge(std::mem::replace(&mut *c, Counts::new(events)));
        }
        total
    }

    /// Connections open right now.
    pub fn open_now(&self) -> u64 {
        self.open.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_merge() {
        let stats = Stats::new(2);
        {
            let mut a = stats.shard(0);
            a.latency.record(100).unwrap();
            a.status[200] += 1;
            a.tickets[0].push("1-1".into());
            a.add_error("sold_out");
        }
        {
            let mut b = stats.shard(1);
            b.latency.record(300).unwrap();
            b.status[409] += 1;
            b.tickets[1].push("2-1".into());
            b.add_error("sold_out");
            b.timeouts += 1;
        }
        let p = stats.progress();
        assert_eq!((p.answers, p.ok, p.client_errors, p.timeouts), (2, 1, 1, 1));
        let total = stats.take_totals(2);
        assert_eq!(stats.progress().answers, 0);
        assert_eq!(total.answers(), 2);
        assert_eq!(total.errors["sold_out"], 2);
        assert_eq!(total.tickets[0].len() + total.tickets[1].len(), 2);
        assert_eq!(total.latency.max(), 300);
    }
}
