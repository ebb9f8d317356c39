//! The record of one run that the checker judges afterwards: every request the buyers made
//! (instance, event, when, outcome; for a known buyer also who and the `Idempotency-Key`), the
//! windows in which the nemesis had an instance killed or stopped, the faults that sent the
//! instances to the fallback, and what went wrong outside requests (an instance that never came
//! back).

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// Time since the start of a run; every timestamp of a history is one of these.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    epoch: Instant,
}

impl Clock {
    /// A clock starting now.
    pub fn start() -> Self {
        Self {
            epoch: Instant::now(),
        }
    }

    /// Time since the start.
    pub fn now(&self) -> Duration {
        self.epoch.elapsed()
    }

    /// The instant at `offset` from the start.
    pub fn at(&self, offset: Duration) -> Instant {
        self.epoch + offset
    }
}

/// What one request got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// `200` with `{"ticket":"..."}`.
    Sold(String),
    /// `200` whose body names no ticket.
    SoldWithoutTicket,
    /// `409` (sold out).
    SoldOut,
    /// `409 limit_reached`: the buyer holds `--max-per-buyer` tickets of the event.
    LimitReached,
    /// `409 idempotency_key_in_use`: a purchase with the same key is still out.
    KeyInUse,
    /// `503` (retry later).
    Unavailable,
    /// Any other status.
    Status(u16),
    /// No HTTP answer.
    NoAnswer(NoAnswer),
}

/// Why a request got no HTTP answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoAnswer {
    /// The connection could not be opened (the request was never sent).
    Connect,
    /// The connection failed while the request was out.
    Connection,
    /// No answer within the bound.
    Timeout,
}

/// Which part of the run a request belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Paced buying while the nemesis injects faults.
    Faults,
    /// Buying at full speed after healing, until every instance says sold out.
    Drain,
}

/// One request.
#[derive(Debug, Clone)]
pub struct Op {
    /// The buyer (connection slot) that made it.
    pub buyer: usize,
    /// Index of the instance it went to.
    pub instance: usize,
    /// Index of the event (into [`History::events`]).
    pub event: usize,
    /// When the connection it was sent on was opened (for a failed connect: the attempt).
    pub connected: Duration,
    /// When it was sent.
    pub start: Duration,
    /// When its answer (or failure) came.
    pub end: Duration,
    /// What it got.
    pub outcome: Outcome,
    /// Why it got no answer (the client's error), if it got none.
    pub error: Option<Box<str>>,
    /// Faults or drain.
    pub phase: Phase,
    /// The `remaining` of a sale's answer.
    pub remaining: Option<u64>,
    /// The known buyer and the purchase's `Idempotency-Key`; `None` for an anonymous purchase.
    pub known: Option<Known>,
}

/// Who made a purchase as a known buyer, and its `Idempotency-Key`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Known {
    /// The buyer id (the `x-buyer` header).
    pub buyer: Arc<str>,
    /// The key (the unquoted content of the header's string); empty: none sent.
    pub key: Arc<str>,
}

/// How the nemesis had an instance out of service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outage {
    /// SIGKILLed, until the restarted process answered `/healthz`.
    Killed,
    /// SIGSTOPped, until SIGCONT.
    Stopped,
}

/// An interval in which an instance was killed or stopped.
#[derive(Debug, Clone, Copy)]
pub struct Window {
    /// The instance.
    pub instance: usize,
    /// Killed or stopped.
    pub outage: Outage,
    /// Start.
    pub from: Duration,
    /// End; `None` if it never came back.
    pub to: Option<Duration>,
}

impl Window {
    /// Whether an exchange sent at `start` on a connection opened at `connected` and ended at
    /// `end` may have lost its answer to this window: a kill breaks every connection that was
    /// open through it, a stop delays only the requests that overlap it.
    pub fn excuses(&self, op: &Op) -> bool {
        if op.instance != self.instance {
            return false;
        }
        let from = match self.outage {
            Outage::Killed => op.connected,
            Outage::Stopped => op.start,
        };
        from <= self.to.unwrap_or(Duration::MAX) && op.end >= self.from
    }
}

/// The span of a schedule's step whose fault sends instances to the fallback: Redis killed or
/// stopped (an outage of every event), or a Redis Cluster node killed or stopped (an outage of
/// the events its shard serves). From the fault's first action to its last (for a compound
/// fault, the instance restarted or continued after the outage: it settles only then).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FallbackWindow {
    /// The shard whose events it sends to the fallback; `None`: every event.
    pub shard: Option<usize>,
    /// The fault's label.
    pub label: String,
    /// Its first action.
    pub from: Duration,
    /// Its last action.
    pub to: Duration,
}

/// Windows and problems, written by the nemesis and by the tasks that watch restarts.
#[derive(Debug, Clone, Default)]
pub struct FaultLog {
    inner: Arc<Mutex<(Vec<Window>, Vec<String>)>>,
}

impl FaultLog {
    /// Opens a window at `from`; returns its handle for [`Self::close`].
    pub fn open(&self, instance: usize, outage: Outage, from: Duration) -> usize {
        let mut inner = self.inner.lock();
        inner.0.push(Window {
            instance,
            outage,
            from,
            to: None,
        });
        inner.0.len() - 1
    }

    /// Closes window `id` at `to`.
    pub fn close(&self, id: usize, to: Duration) {
        if let Some(w) = self.inner.lock().0.get_mut(id) {
            w.to.get_or_insert(to);
        }
    }

    /// Records a problem that is not a request (an instance that did not come back).
    pub fn problem(&self, what: impl Into<String>) {
        self.inner.lock().1.push(what.into());
    }

    /// The windows and problems so far.
    pub fn snapshot(&self) -> (Vec<Window>, Vec<String>) {
        self.inner.lock().clone()
    }
}

/// Everything recorded in one run.
#[derive(Debug, Clone, Default)]
pub struct History {
    /// Event ids, in the order of [`Op::event`].
    pub events: Vec<String>,
    /// Every request.
    pub ops: Vec<Op>,
    /// When instances were killed or stopped.
    pub windows: Vec<Window>,
    /// Failures outside requests: an instance that did not come back, did not stop cleanly,
    /// or never saw every event sold out.
    pub problems: Vec<String>,
    /// The faults that sent instances to the fallback, and when.
    pub fallback: Vec<FallbackWindow>,
    /// The shard serving each event (by [`Op::event`]) on a Redis Cluster; empty on one Redis.
    pub event_shards: Vec<usize>,
    /// The rules the known buyers bought under; `None` when every purchase was anonymous.
    pub buyers: Option<BuyerRules>,
}

/// What the instances enforced for known buyers, for the checker's bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BuyerRules {
    /// `--max-per-buyer`.
    pub max_per_buyer: u32,
    /// Instances, each of which may sell a buyer `max_per_buyer` more from its reserves.
    pub instances: usize,
    /// A sale answering `remaining` at or below this may have come from a reserve with the
    /// pool empty (the end of a sale): instances × `--fallback-reserve`.
    pub end_of_sale: u64,
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Sold(t) => write!(f, "200 {t}"),
            Outcome::SoldWithoutTicket => f.write_str("200 without a ticket"),
            Outcome::SoldOut => f.write_str("409"),
            Outcome::LimitReached => f.write_str("409 limit_reached"),
            Outcome::KeyInUse => f.write_str("409 idempotency_key_in_use"),
            Outcome::Unavailable => f.write_str("503"),
            Outcome::Status(s) => write!(f, "{s}"),
            Outcome::NoAnswer(n) => write!(f, "no answer ({n:?})"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(connected: u64, start: u64, end: u64) -> Op {
        Op {
            buyer: 0,
            instance: 1,
            event: 0,
            connected: Duration::from_millis(connected),
            start: Duration::from_millis(start),
            end: Duration::from_millis(end),
            outcome: Outcome::NoAnswer(NoAnswer::Connection),
            error: None,
            phase: Phase::Faults,
            remaining: None,
            known: None,
        }
    }

    fn window(outage: Outage, from: u64, to: u64) -> Window {
        Window {
            instance: 1,
            outage,
            from: Duration::from_millis(from),
            to: Some(Duration::from_millis(to)),
        }
    }

    #[test]
    fn a_kill_excuses_requests_on_connections_that_lived_through_it() {
        let w = window(Outage::Killed, 100, 200);
        assert!(
            w.excuses(&op(50, 300, 310)),
            "connection opened before the kill"
        );
        assert!(w.excuses(&op(150, 150, 150)), "connect refused while down");
        assert!(
            !w.excuses(&op(250, 300, 310)),
            "connection opened after it came back"
        );
        assert!(!w.excuses(&op(0, 10, 20)), "answered before the kill");
    }

    #[test]
    fn a_stop_excuses_only_overlapping_requests() {
        let w = window(Outage::Stopped, 100, 200);
        assert!(w.excuses(&op(0, 90, 250)));
        assert!(
            !w.excuses(&op(0, 250, 260)),
            "the connection survives a stop"
        );
        let other = Window { instance: 0, ..w };
        assert!(!other.excuses(&op(0, 90, 250)), "another instance");
    }
}
