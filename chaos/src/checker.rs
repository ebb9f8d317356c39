//! The checker: judges a whole recorded history against the final state in Redis, afterwards,
//! not request by request. The invariants, stated once:
//!
//! 1. No ticket id is received (`200`) by two purchases (requests of one known buyer with one
//!    `Idempotency-Key` are one purchase: its repeats are answered with the same ticket).
//! 2. Every received ticket is in its event's ledger (and every `200` names a ticket).
//! 3. ledger + (pool − stale) + (reserves − stale) == capacity, and no ticket in two of those
//!    places.
//! 4. Every request to an instance that was neither killed nor stopped during the request got
//!    an HTTP answer.
//! 5. Every instance comes back after its faults, sells every event out, and stops cleanly
//!    (exit 0 after SIGTERM). On a Redis Cluster also: after that stop no ticket is held back or
//!    left in a reserve (`run.rs` records it as a problem).
//!
//!
//! With known buyers (`Idempotency-Key`s, `--max-per-buyer`), three more, in [`buyers`]:
//!
//! 6. At most one ticket per (event, buyer, key): in every `200` and in the ledger, except
//!    while a fallback period of the event overlaps the key's requests.
//! 7. The ledger names the buyer and key of every ticket a known buyer received, and none of a
//!    ticket received anonymously; the buyer index and the ledger agree.
//! 8. A buyer holds at most N tickets of an event, N + N × instances after a fallback period.
//!
//! Tickets in the ledger that nobody received (their buyer lost the answer to a kill) are
//! allowed and counted, as are quarantined (held back) tickets, keys with two tickets and
//! buyers over N within the looser bound.

pub mod buyers;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::time::Duration;

use crate::history::{History, Op, Outcome};
use crate::ledger::EventState;

/// How many example ticket ids or requests a violation lists.
const EXAMPLES: usize = 5;

/// Which invariant broke.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Invariant {
    /// 1: no ticket to two buyers.
    NoTicketTwice,
    /// 2: every received ticket is in the ledger.
    ReceivedInLedger,
    /// 3: ledger + pool + reserves == capacity, each ticket in one place.
    Conservation,
    /// 4: every request to a healthy instance answered.
    EveryRequestAnswered,
    /// 5: instances come back, sell out, stop cleanly.
    Liveness,
    /// 6: one ticket per (event, buyer, `Idempotency-Key`), but in a fallback period.
    KeyOneTicket,
    /// 7: the ledger names the buyer of every ticket a known buyer received.
    LedgerNamesBuyer,
    /// 8: a buyer's tickets of an event within the limit (looser after a fallback period).
    BuyerLimit,
}

impl Invariant {
    /// Its number in the module documentation.
    pub fn number(self) -> u8 {
        match self {
            Invariant::NoTicketTwice => 1,
            Invariant::ReceivedInLedger => 2,
            Invariant::Conservation => 3,
            Invariant::EveryRequestAnswered => 4,
            Invariant::Liveness => 5,
            Invariant::KeyOneTicket => 6,
            Invariant::LedgerNamesBuyer => 7,
            Invariant::BuyerLimit => 8,
        }
    }
}

impl fmt::Display for Invariant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self {
            Invariant::NoTicketTwice => "no ticket received twice",
            Invariant::ReceivedInLedger => "every received ticket in the ledger",
            Invariant::Conservation => "ledger + pool + reserves == capacity, one place each",
            Invariant::EveryRequestAnswered => "every request to a healthy instance answered",
            Invariant::Liveness => "instances come back, sell out and stop cleanly",
            Invariant::KeyOneTicket => "one ticket per buyer and Idempotency-Key",
            Invariant::LedgerNamesBuyer => "the ledger names the buyer of every ticket",
            Invariant::BuyerLimit => "a buyer's tickets within the limit",
        };
        write!(f, "({}) {name}", self.number())
    }
}

/// One broken invariant, with examples.
#[derive(Debug, Clone)]
pub struct Violation {
    /// Which.
    pub invariant: Invariant,
    /// The event, where it is about one.
    pub event: Option<String>,
    /// What was found (counts and the first few ticket ids or requests).
    pub detail: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.event {
            Some(e) => write!(f, "{} event {e}: {}", self.invariant, self.detail),
            None => write!(f, "{}: {}", self.invariant, self.detail),
        }
    }
}

/// One event's numbers at the end.
#[derive(Debug, Clone, Default)]
pub struct EventSummary {
    /// The event id.
    pub id: String,
    /// Its capacity.
    pub capacity: u64,
    /// Tickets in the ledger.
    pub ledger: usize,
    /// Distinct tickets buyers received.
    pub received: usize,
    /// In the ledger but received by nobody (a buyer lost the answer): allowed.
    pub nobody: usize,
    /// Left in the pool (minus stale).
    pub pool: usize,
    /// Left in reserves (minus stale).
    pub reserved: usize,
    /// Tombstones.
    pub stale: usize,
    /// Quarantined (held back), over all instances.
    pub held: u64,
}

/// Request counts by outcome.
#[derive(Debug, Clone, Copy, Default)]
pub struct Tally {
    /// All requests.
    pub requests: usize,
    /// `200`.
    pub sold: usize,
    /// `409` (sold out).
    pub sold_out: usize,
    /// `409 limit_reached`.
    pub limited: usize,
    /// `409 idempotency_key_in_use`.
    pub key_in_use: usize,
    /// `503`.
    pub unavailable: usize,
    /// Other statuses.
    pub other: usize,
    /// No answer, excused by a kill or stop window.
    pub excused: usize,
    /// No answer, not excused.
    pub unanswered: usize,
}

/// The judgement of one run.
#[derive(Debug, Clone, Default)]
pub struct Verdict {
    /// Per event.
    pub events: Vec<EventSummary>,
    /// Request counts.
    pub tally: Tally,
    /// Everything that broke; empty when the run passed.
    pub violations: Vec<Violation>,
    /// What the known buyers did; `None` without them.
    pub buyers: Option<buyers::BuyerSummary>,
}

impl Verdict {
    /// Whether every invariant held.
    pub fn passed(&self) -> bool {
        self.violations.is_empty()
    }

    /// Tickets in ledgers that nobody received.
    pub fn nobody(&self) -> usize {
        self.events.iter().map(|e| e.nobody).sum()
    }

    /// Quarantined tickets.
    pub fn held(&self) -> u64 {
        self.events.iter().map(|e| e.held).sum()
    }

    /// Tickets left in pools and reserves.
    pub fn left(&self) -> usize {
        self.events.iter().map(|e| e.pool + e.reserved).sum()
    }
}

/// `3.21s`.
fn secs(d: Duration) -> String {
    format!("{:.2}s", d.as_secs_f64())
}

/// The first few items and how many there are.
fn examples<T: fmt::Display>(items: &[T]) -> String {
    let shown: Vec<String> = items
        .iter()
        .take(EXAMPLES)
        .map(ToString::to_string)
        .collect();
    let more = items.len().saturating_sub(EXAMPLES);
    if more > 0 {
        format!("{} (+{more} more)", shown.join(", "))
    } else {
        shown.join(", ")
    }
}

/// Judges `history` against `states` (one per event, in the order of `history.events`).
pub fn check(history: &History, states: &[EventState]) -> Verdict {
    let mut v = Verdict::default();
    // Received tickets: (event, ticket) -> the requests that got it.
    let mut received: Vec<BTreeMap<&str, Vec<&Op>>> = vec![BTreeMap::new(); states.len()];
    for op in &history.ops {
        v.tally.requests += 1;
        match &op.outcome {
            Outcome::Sold(ticket) => {
                v.tally.sold += 1;
                if let Some(by_ticket) = received.get_mut(op.event) {
                    by_ticket.entry(ticket.as_str()).or_default().push(op);
                }
            }
            Outcome::SoldWithoutTicket => {
                v.tally.sold += 1;
                v.violations.push(Violation {
                    invariant: Invariant::ReceivedInLedger,
                    event: history.events.get(op.event).cloned(),
                    detail: format!(
                        "a 200 without a ticket id from instance {} at {}",
                        op.instance,
                        secs(op.start)
                    ),
                });
            }
            Outcome::SoldOut => v.tally.sold_out += 1,
            Outcome::LimitReached => v.tally.limited += 1,
            Outcome::KeyInUse => v.tally.key_in_use += 1,
            Outcome::Unavailable => v.tally.unavailable += 1,
            Outcome::Status(_) => v.tally.other += 1,
            Outcome::NoAnswer(_) => {
                if history.windows.iter().any(|w| w.excuses(op)) {
                    v.tally.excused += 1;
                } else {
                    v.tally.unanswered += 1;
                }
            }
        }
    }
    for (state, got) in states.iter().zip(&received) {
        v.violations.extend(check_event(state, got));
        v.events.push(summarize(state, got));
    }
    if let Some((summary, violations)) = buyers::check(history, states) {
        v.buyers = Some(summary);
        v.violations.extend(violations);
    }
    v.violations.extend(unanswered(history));
    v.violations
        .extend(history.problems.iter().map(|p| Violation {
            invariant: Invariant::Liveness,
            event: None,
            detail: p.clone(),
        }));
    v.violations.sort_by_key(|x| x.invariant);
    v
}

/// Invariants 1 to 3 for one event.
fn check_event(state: &EventState, got: &BTreeMap<&str, Vec<&Op>>) -> Vec<Violation> {
    let mut out = Vec::new();
    let violation = |invariant, detail| Violation {
        invariant,
        event: Some(state.id.clone()),
        detail,
    };
    // 1. No ticket twice. Requests of one known buyer with one key are one purchase: a
    // repeat is answered with the same ticket.
    let purchases = |ops: &Vec<&Op>| {
        let keyless = |op: &&&Op| op.known.as_ref().is_none_or(|k| k.key.is_empty());
        let anonymous = ops.iter().filter(keyless).count();
        let keys: HashSet<_> = ops
            .iter()
            .filter(|op| !keyless(op))
            .filter_map(|op| op.known.as_ref())
            .collect();
        anonymous + keys.len()
    };
    let twice: Vec<String> = got
        .iter()
        .filter(|(_, ops)| purchases(ops) > 1)
        .map(|(ticket, ops)| {
            let who: Vec<String> = ops
                .iter()
                .map(|op| format!("instance {} at {}", op.instance, secs(op.start)))
                .collect();
            format!("{ticket} [{}]", who.join("; "))
        })
        .collect();
    if !twice.is_empty() {
        out.push(violation(
            Invariant::NoTicketTwice,
            format!(
                "{} tickets received by two requests or more: {}",
                twice.len(),
                examples(&twice)
            ),
        ));
    }
    // 2. Every received ticket in the ledger.
    let missing: Vec<&str> = got
        .keys()
        .filter(|t| !state.sold.contains_key(**t))
        .copied()
        .collect();
    if !missing.is_empty() {
        out.push(violation(
            Invariant::ReceivedInLedger,
            format!(
                "{} received tickets are not in the ledger: {}",
                missing.len(),
                examples(&missing)
            ),
        ));
    }
    // 3. Each ticket in one place, and the places add up to the capacity.
    let mut places: HashMap<&str, Vec<String>> = HashMap::new();
    for t in state.sold.keys() {
        places.entry(t).or_default().push("ledger".to_owned());
    }
    let counted = |t: &&String| !state.stale.contains(*t);
    for t in state.pool.iter().filter(counted) {
        places.entry(t).or_default().push("pool".to_owned());
    }
    for (key, ids) in &state.reserves {
        let owner = key.rsplit(':').next().unwrap_or(key);
        for t in ids.iter().filter(counted) {
            places
                .entry(t)
                .or_default()
                .push(format!("reserve {owner}"));
        }
    }
    let total: usize = places.values().map(Vec::len).sum();
    let mut doubled: Vec<String> = places
        .iter()
        .filter(|(_, p)| p.len() > 1)
        .map(|(t, p)| format!("{t} [{}]", p.join(", ")))
        .collect();
    doubled.sort();
    if !doubled.is_empty() {
        out.push(violation(
            Invariant::Conservation,
            format!(
                "{} tickets in two places: {}",
                doubled.len(),
                examples(&doubled)
            ),
        ));
    }
    if total as u64 != state.capacity {
        let mut lost_stale: Vec<&String> = state
            .stale
            .iter()
            .filter(|t| !state.sold.contains_key(*t))
            .collect();
        lost_stale.sort();
        let note = if lost_stale.is_empty() {
            String::new()
        } else {
            format!(
                "; {} stale tickets are not in the ledger: {}",
                lost_stale.len(),
                examples(&lost_stale)
            )
        };
        let s = summarize(state, got);
        out.push(violation(
            Invariant::Conservation,
            format!(
                "ledger {} + pool {} + reserves {} = {total}, capacity {}{note}",
                s.ledger, s.pool, s.reserved, state.capacity
            ),
        ));
    }
    out
}

fn summarize(state: &EventState, got: &BTreeMap<&str, Vec<&Op>>) -> EventSummary {
    let counted = |t: &&String| !state.stale.contains(*t);
    let received_in_ledger = got.keys().filter(|t| state.sold.contains_key(**t)).count();
    EventSummary {
        id: state.id.clone(),
        capacity: state.capacity,
        ledger: state.sold.len(),
        received: got.len(),
        nobody: state.sold.len() - received_in_ledger,
        pool: state.pool.iter().filter(counted).count(),
        reserved: state.reserves.values().flatten().filter(counted).count(),
        stale: state.stale.len(),
        held: state.held_total(),
    }
}

/// Invariant 4.
fn unanswered(history: &History) -> Option<Violation> {
    let lost: Vec<String> = history
        .ops
        .iter()
        .filter(|op| matches!(op.outcome, Outcome::NoAnswer(_)))
        .filter(|op| !history.windows.iter().any(|w| w.excuses(op)))
        .map(|op| {
            format!(
                "{} to instance {} for {} at {}..{} on a connection opened at {}{}",
                op.outcome,
                op.instance,
                history.events.get(op.event).map_or("?", String::as_str),
                secs(op.start),
                secs(op.end),
                secs(op.connected),
                op.error
                    .as_deref()
                    .map_or(String::new(), |e| format!(" ({e})"))
            )
        })
        .collect();
    (!lost.is_empty()).then(|| Violation {
        invariant: Invariant::EveryRequestAnswered,
        event: None,
        detail: format!(
            "{} requests got no answer from a healthy instance: {}",
            lost.len(),
            examples(&lost)
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::{NoAnswer, Outage, Phase, Window};

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn op(instance: usize, at: u64, outcome: Outcome) -> Op {
        Op {
            buyer: 0,
            instance,
            event: 0,
            connected: ms(at),
            start: ms(at),
            end: ms(at + 5),
            outcome,
            error: None,
            phase: Phase::Faults,
            remaining: None,
            known: None,
        }
    }

    fn sold(t: &str) -> Outcome {
        Outcome::Sold(t.to_owned())
    }

    /// Event `x` of 4 tickets: x-1 and x-2 sold, x-3 in the pool, x-4 in a reserve.
    fn state() -> EventState {
        EventState {
            id: "x".into(),
            capacity: 4,
            sold: [("x-1", "b 1"), ("x-2", "b 1")]
                .map(|(t, r)| (t.to_owned(), r.to_owned()))
                .into(),
            pool: vec!["x-3".into()],
            reserves: [("event:{x}:reserve:i1".to_owned(), vec!["x-4".to_owned()])].into(),
            ..EventState::default()
        }
    }

    fn history(ops: Vec<Op>) -> History {
        History {
            events: vec!["x".into()],
            ops,
            ..History::default()
        }
    }

    fn broken(v: &Verdict) -> Vec<u8> {
        v.violations.iter().map(|x| x.invariant.number()).collect()
    }

    #[test]
    fn a_clean_history_passes_and_counts_tickets_sold_to_nobody() {
        let h = history(vec![op(0, 1, sold("x-1")), op(1, 2, Outcome::SoldOut)]);
        let v = check(&h, &[state()]);
        assert!(v.passed(), "{:?}", v.violations);
        assert_eq!((v.events[0].nobody, v.tally.sold), (1, 1));
    }

    #[test]
    fn a_ticket_received_twice_breaks_invariant_1() {
        let h = history(vec![op(0, 1, sold("x-1")), op(1, 9, sold("x-1"))]);
        let v = check(&h, &[state()]);
        assert_eq!(broken(&v), vec![1]);
        assert!(v.violations[0].detail.contains("x-1"));
    }

    #[test]
    fn a_received_ticket_missing_from_the_ledger_breaks_invariant_2() {
        let h = history(vec![op(0, 1, sold("x-3"))]);
        assert_eq!(broken(&check(&h, &[state()])), vec![2]);
    }

    #[test]
    fn a_ticket_in_two_places_breaks_invariant_3_unless_it_is_stale() {
        let mut s = state();
        s.pool.push("x-1".into());
        let v = check(&history(vec![]), &[s.clone()]);
        assert_eq!(broken(&v), vec![3, 3], "{:?}", v.violations);
        s.stale.insert("x-1".into());
        assert!(check(&history(vec![]), &[s]).passed());
    }

    #[test]
    fn a_lost_ticket_breaks_invariant_3() {
        let mut s = state();
        s.pool.clear();
        assert_eq!(broken(&check(&history(vec![]), &[s])), vec![3]);
    }

    #[test]
    fn a_lost_answer_is_excused_only_by_a_fault_of_that_instance() {
        let lost = op(1, 100, Outcome::NoAnswer(NoAnswer::Connection));
        let mut h = history(vec![lost]);
        assert_eq!(broken(&check(&h, &[state()])), vec![4]);
        h.windows.push(Window {
            instance: 0,
            outage: Outage::Killed,
            from: ms(50),
            to: Some(ms(200)),
        });
        assert_eq!(broken(&check(&h, &[state()])), vec![4]);
        h.windows[0].instance = 1;
        let v = check(&h, &[state()]);
        assert!(v.passed());
        assert_eq!(v.tally.excused, 1);
    }

    #[test]
    fn problems_break_liveness() {
        let mut h = history(vec![]);
        h.problems.push("instance 0 did not exit".into());
        assert_eq!(broken(&check(&h, &[state()])), vec![5]);
    }
}
