//! The checker's invariants about known buyers (6 to 8 of [`super`]), judged over the whole
//! history and the final ledger, buyer index and keys in Redis:
//!
//! 6. **One ticket per key.** Every `200` for one (event, buyer, `Idempotency-Key`) names the
//!    ticket of the key's first `200`, and the ledger holds at most one sale with that key.
//!    The one exception is the one design.md ("While Redis is down: the bounds") allows: a
//!    second sale for a key while instances sold from their reserves, so only when a fallback
//!    period of that event overlaps the key's requests (from its first request to the
//!    offending answer): a fault that sent the instances to the fallback (Redis killed or
//!    stopped; on a Redis Cluster a node of the event's shard), from its first action to
//!    [`FALLBACK_GRACE`] after its last; or the end of the sale (a `200` answering `remaining`
//!    at most instances × reserve, when the pool may be empty and instances sell from their
//!    reserves).
//! 7. **The ledger names the buyer.** Every ticket a known buyer received has a ledger record
//!    naming that buyer and that key (`…\n<buyer>\n<key>`); every ticket received anonymously
//!    has one naming no buyer; every member `<buyer>\n<ticket>` of `event:{id}:buyers` is a
//!    ticket sold in the ledger to that buyer (none for a ticket back in the pool), and every
//!    ledger sale to a buyer is in that index.
//! 8. **The limit.** A buyer holds at most `--max-per-buyer` (N) tickets of an event in the
//!    ledger; at most N + N × instances when that event had a fallback period (see 6) before
//!    the known buyers' last request for it. How often the looser bound was needed is counted.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt;
use std::time::Duration;

use super::{examples, secs, Invariant, Violation};
use crate::history::{BuyerRules, History, Known, Op, Outcome};
use crate::ledger::{record_buyer, EventState};

/// How long after a fallback fault's last action the instances may still sell from their
/// reserves or hold fallback sales not yet settled: the supervisor probes Redis with a backoff
/// of up to 2 s, then settles before it closes the breaker; a restarted instance starts with
/// its breaker open; on a Redis Cluster a shard also waits for its replica to resync.
pub const FALLBACK_GRACE: Duration = Duration::from_secs(4);

/// What the known buyers did, for the report.
#[derive(Debug, Clone, Default)]
pub struct BuyerSummary {
    /// Purchases by known buyers with a key (every attempt).
    pub requests: usize,
    /// Distinct (event, buyer, key).
    pub keys: usize,
    /// Keys sent more than once (retries and repeats).
    pub keys_repeated: usize,
    /// `200`s to known buyers with a key.
    pub sold: usize,
    /// Keys with two distinct tickets in their `200`s or two sales in the ledger, allowed by a
    /// fallback period: one line each, with the period.
    pub keys_twice: Vec<String>,
    /// Most tickets one buyer holds of one event in the ledger.
    pub most_held: usize,
    /// (event, buyer) pairs over N, within the looser bound: one line each.
    pub over_limit: Vec<String>,
}

impl fmt::Display for BuyerSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "known buyers: {} requests, {} keys ({} repeated), {} sold, keys with two tickets {}, most held {}, over the limit {}",
            self.requests,
            self.keys,
            self.keys_repeated,
            self.sold,
            self.keys_twice.len(),
            self.most_held,
            self.over_limit.len()
        )
    }
}

/// The requests of one key.
type Keyed<'a> = BTreeMap<(usize, &'a Known), Vec<&'a Op>>;

/// Judges invariants 6 to 8; `None` when the run had no known buyers.
pub fn check(history: &History, states: &[EventState]) -> Option<(BuyerSummary, Vec<Violation>)> {
    let rules = history.buyers?;
    let mut summary = BuyerSummary::default();
    let mut out = Vec::new();
    let mut keyed: Keyed = BTreeMap::new();
    for op in &history.ops {
        if let Some(k) = op.known.as_ref().filter(|k| !k.key.is_empty()) {
            summary.requests += 1;
            if matches!(op.outcome, Outcome::Sold(_)) {
                summary.sold += 1;
            }
            keyed.entry((op.event, k)).or_default().push(op);
        }
    }
    summary.keys = keyed.len();
    summary.keys_repeated = keyed.values().filter(|ops| ops.len() > 1).count();
    let periods = Periods { history, rules };

    for (e, state) in states.iter().enumerate() {
        let violation = |invariant, detail| Violation {
            invariant,
            event: Some(state.id.clone()),
            detail,
        };
        let mine = keyed.iter().filter(|((x, _), _)| *x == e);

        // 6. One ticket per key, in the answers and in the ledger.
        let mut twice = Vec::new();
        for ((_, k), ops) in mine.clone() {
            let first_sent = ops.iter().map(|op| op.start).min().unwrap_or_default();
            let mut first: Option<&str> = None;
            let mut other: Vec<&str> = Vec::new();
            for op in ops {
                let Outcome::Sold(t) = &op.outcome else {
                    continue;
                };
                match first {
                    None => first = Some(t),
                    Some(f) if f == t || other.contains(&t.as_str()) => {}
                    Some(f) => {
                        other.push(t);
                        let what = format!(
                            "{} key {}: {f}, then {t} from instance {} at {}",
                            k.buyer,
                            k.key,
                            op.instance,
                            secs(op.start)
                        );
                        match periods.excuse(e, first_sent, op.end) {
                            Some(why) => summary
                                .keys_twice
                                .push(format!("{}: {what} ({why})", state.id)),
                            None => twice.push(what),
                        }
                    }
                }
            }
        }
        let mut sales: HashMap<(&str, &str), Vec<&str>> = HashMap::new();
        for (ticket, record) in &state.sold {
            if let Some((buyer, key)) = record_buyer(record) {
                if !key.is_empty() {
                    sales.entry((buyer, key)).or_default().push(ticket);
                }
            }
        }
        let mut sales: Vec<_> = sales.into_iter().filter(|(_, t)| t.len() > 1).collect();
        sales.sort();
        for ((buyer, key), tickets) in sales {
            let k = Known {
                buyer: buyer.into(),
                key: key.into(),
            };
            let span = keyed.get(&(e, &k)).map(|ops| {
                (
                    ops.iter().map(|op| op.start).min().unwrap_or_default(),
                    ops.iter().map(|op| op.end).max().unwrap_or_default(),
                )
            });
            let what = format!(
                "{buyer} key {key}: {} sales in the ledger ({})",
                tickets.len(),
                tickets.join(", ")
            );
            match span.and_then(|(from, to)| periods.excuse(e, from, to)) {
                Some(why) => {
                    let line = format!("{}: {what} ({why})", state.id);
                    if !summary
                        .keys_twice
                        .iter()
                        .any(|l| l.contains(&format!("{buyer} key {key}:")))
                    {
                        summary.keys_twice.push(line);
                    }
                }
                None if span.is_none() => {
                    twice.push(format!("{what}, a key no buyer sent for this event"))
                }
                None => twice.push(what),
            }
        }
        if !twice.is_empty() {
            out.push(violation(
                Invariant::KeyOneTicket,
                format!(
                    "{} keys got a second ticket with no fallback period of the event over their requests: {}",
                    twice.len(),
                    examples(&twice)
                ),
            ));
        }

        // 7. The ledger names the buyer; the index matches the ledger.
        let mut wrong = Vec::new();
        let mut received = BTreeSet::new();
        for op in history.ops.iter().filter(|op| op.event == e) {
            let Outcome::Sold(t) = &op.outcome else {
                continue;
            };
            if !received.insert((t.as_str(), op.known.as_ref())) {
                continue;
            }
            // A ticket missing from the ledger breaks invariant 2 already.
            let Some(record) = state.sold.get(t) else {
                continue;
            };
            let named = record_buyer(record).filter(|(b, _)| !b.is_empty());
            match (&op.known, named) {
                (Some(k), Some((b, key))) if *b == *k.buyer && *key == *k.key => {}
                (None, None) => {}
                (Some(k), _) => wrong.push(format!(
                    "{t} received by {} with key {} is recorded as {record:?}",
                    k.buyer, k.key
                )),
                (None, Some(_)) => wrong.push(format!(
                    "{t} received anonymously is recorded as {record:?}"
                )),
            }
        }
        let index: HashSet<&str> = state.buyers.iter().map(String::as_str).collect();
        for member in &state.buyers {
            let (buyer, ticket) = member.split_once('\n').unwrap_or((member, ""));
            let record = state.sold.get(ticket);
            match record.and_then(|r| record_buyer(r)) {
                Some((b, _)) if b == buyer => {}
                _ => wrong.push(format!(
                    "the buyer index holds {buyer}'s {ticket}, which the ledger has as {record:?}"
                )),
            }
        }
        for (ticket, record) in &state.sold {
            if let Some((buyer, _)) = record_buyer(record).filter(|(b, _)| !b.is_empty()) {
                if !index.contains(format!("{buyer}\n{ticket}").as_str()) {
                    wrong.push(format!(
                        "{ticket} sold to {buyer} in the ledger is not in the buyer index"
                    ));
                }
            }
        }
        wrong.sort();
        if !wrong.is_empty() {
            out.push(violation(
                Invariant::LedgerNamesBuyer,
                format!("{} tickets: {}", wrong.len(), examples(&wrong)),
            ));
        }

        // 8. The limit.
        let mut held: BTreeMap<&str, usize> = BTreeMap::new();
        for record in state.sold.values() {
            if let Some((buyer, _)) = record_buyer(record).filter(|(b, _)| !b.is_empty()) {
                *held.entry(buyer).or_default() += 1;
            }
        }
        let n = rules.max_per_buyer as usize;
        let loose = periods.any(e);
        let bound = if loose.is_some() {
            n + n * rules.instances
        } else {
            n
        };
        let mut over = Vec::new();
        for (buyer, &count) in &held {
            summary.most_held = summary.most_held.max(count);
            if count > bound {
                over.push(format!("{buyer} holds {count}"));
            } else if count > n {
                summary.over_limit.push(format!(
                    "{}: {buyer} holds {count} > {n} ({})",
                    state.id,
                    loose.as_deref().unwrap_or("")
                ));
            }
        }
        if !over.is_empty() {
            let why = match loose {
                Some(w) => format!("{bound} (N + N × {} instances; {w})", rules.instances),
                None => format!("{bound} (no fallback period for this event)"),
            };
            out.push(violation(
                Invariant::BuyerLimit,
                format!(
                    "{} buyers hold more than {why}: {}",
                    over.len(),
                    examples(&over)
                ),
            ));
        }
    }
    Some((summary, out))
}

/// The fallback periods of a run, by event.
struct Periods<'a> {
    history: &'a History,
    rules: BuyerRules,
}

impl Periods<'_> {
    /// Whether a fallback period of event `e` overlaps `from..=to`, and which.
    fn excuse(&self, e: usize, from: Duration, to: Duration) -> Option<String> {
        let h = self.history;
        let shard = h.event_shards.get(e).copied();
        let fault = h.fallback.iter().find(|w| {
            (w.shard.is_none() || w.shard == shard) && w.from <= to && w.to + FALLBACK_GRACE >= from
        });
        if let Some(w) = fault {
            return Some(format!("{} {}..{}", w.label, secs(w.from), secs(w.to)));
        }
        self.end_of_sale(e)
            .filter(|&at| at <= to)
            .map(|at| format!("end of the sale from {}", secs(at)))
    }

    /// Whether event `e` had a fallback period while known buyers bought it (the end of the
    /// sale during the drain, where they buy no more, does not count), and the first.
    fn any(&self, e: usize) -> Option<String> {
        let last = self
            .history
            .ops
            .iter()
            .filter(|op| op.event == e && op.known.as_ref().is_some_and(|k| !k.key.is_empty()))
            .map(|op| op.end)
            .max()?;
        self.excuse(e, Duration::ZERO, last)
    }

    /// When a sale of event `e` first answered a `remaining` the reserves alone could hold.
    fn end_of_sale(&self, e: usize) -> Option<Duration> {
        self.history
            .ops
            .iter()
            .filter(|op| op.event == e && op.remaining.is_some_and(|r| r <= self.rules.end_of_sale))
            .map(|op| op.start)
            .min()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::checker::check as check_all;
    use crate::history::{FallbackWindow, Phase};

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn known(buyer: &str, key: &str) -> Option<Known> {
        Some(Known {
            buyer: Arc::from(buyer),
            key: Arc::from(key),
        })
    }

    /// A purchase of event `x` by `buyer` with `key` on `instance` at `at` ms.
    fn op(instance: usize, at: u64, outcome: Outcome, who: Option<Known>) -> Op {
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
            remaining: Some(3000),
            known: who,
        }
    }

    fn sold(t: &str) -> Outcome {
        Outcome::Sold(t.to_owned())
    }

    /// Event `x` of 6 tickets: x-1 sold to buyer-1 with key k1, x-2 sold to buyer-1 with key
    /// k2, x-3 sold anonymously, x-4..x-6 in the pool.
    fn state() -> EventState {
        EventState {
            id: "x".into(),
            capacity: 6,
            sold: [
                ("x-1", "i.1:1 1\nbuyer-1\nk1"),
                ("x-2", "i.1:2 2\nbuyer-1\nk2"),
                ("x-3", "i.1:3 3"),
            ]
            .map(|(t, r)| (t.to_owned(), r.to_owned()))
            .into(),
            pool: vec!["x-4".into(), "x-5".into(), "x-6".into()],
            buyers: vec!["buyer-1\nx-1".into(), "buyer-1\nx-2".into()],
            ..EventState::default()
        }
    }

    fn history(ops: Vec<Op>) -> History {
        History {
            events: vec!["x".into()],
            ops,
            buyers: Some(BuyerRules {
                max_per_buyer: 2,
                instances: 2,
                end_of_sale: 200,
            }),
            ..History::default()
        }
    }

    fn outage(from: u64, to: u64) -> FallbackWindow {
        FallbackWindow {
            shard: None,
            label: "redis-kill<lease".into(),
            from: ms(from),
            to: ms(to),
        }
    }

    fn broken(h: &History, s: &EventState) -> Vec<u8> {
        let v = check_all(h, std::slice::from_ref(s));
        v.violations.iter().map(|x| x.invariant.number()).collect()
    }

    /// buyer-1's key k1 answered x-1 at 100 ms and a retry on instance 1 answered x-2 at
    /// 20 s, which the ledger records under key k1 too.
    fn two_tickets_for_one_key() -> (History, EventState) {
        let mut s = state();
        s.sold
            .insert("x-2".into(), "i.2:1 2 fallback\nbuyer-1\nk1".into());
        let h = history(vec![
            op(0, 100, sold("x-1"), known("buyer-1", "k1")),
            op(1, 20_000, sold("x-2"), known("buyer-1", "k1")),
            op(0, 300, sold("x-3"), None),
        ]);
        (h, s)
    }

    #[test]
    fn a_clean_history_with_repeats_passes() {
        let h = history(vec![
            op(0, 100, Outcome::Unavailable, known("buyer-1", "k1")),
            op(1, 200, sold("x-1"), known("buyer-1", "k1")),
            op(0, 900, sold("x-1"), known("buyer-1", "k1")),
            op(1, 1000, sold("x-2"), known("buyer-1", "k2")),
            op(0, 1100, Outcome::LimitReached, known("buyer-1", "k3")),
            op(0, 1200, sold("x-3"), None),
        ]);
        let v = check_all(&h, &[state()]);
        assert!(v.passed(), "{:?}", v.violations);
        let b = v.buyers.expect("known buyers");
        assert_eq!((b.keys, b.keys_repeated, b.sold, b.most_held), (3, 1, 3, 2));
        assert!(b.keys_twice.is_empty() && b.over_limit.is_empty());
    }

    #[test]
    fn two_tickets_for_one_key_without_an_outage_break_invariant_6() {
        let (h, s) = two_tickets_for_one_key();
        assert_eq!(broken(&h, &s), vec![6]);
        let v = check_all(&h, &[s]);
        assert!(
            v.violations[0].detail.contains("buyer-1 key k1"),
            "{}",
            v.violations[0]
        );
    }

    #[test]
    fn two_tickets_for_one_key_are_allowed_only_by_an_outage_over_its_requests() {
        let (mut h, s) = two_tickets_for_one_key();
        // An outage that ended long before the retry (past the grace): still a violation.
        h.fallback.push(outage(1_000, 2_000));
        h.ops[1].start = ms(3_000 + 4_500);
        h.ops[1].end = ms(3_000 + 4_600);
        h.ops[0].start = ms(7_000);
        h.ops[0].end = ms(7_050);
        assert_eq!(broken(&h, &s), vec![6]);
        // An outage between the two answers: allowed, and counted.
        h.fallback.push(outage(7_100, 7_300));
        let v = check_all(&h, std::slice::from_ref(&s));
        assert!(v.passed(), "{:?}", v.violations);
        assert_eq!(v.buyers.expect("known").keys_twice.len(), 1);
        // On a cluster, only an outage of the event's shard.
        h.fallback.truncate(1);
        h.fallback.push(FallbackWindow {
            shard: Some(2),
            ..outage(7_100, 7_300)
        });
        h.event_shards = vec![1];
        assert_eq!(broken(&h, &s), vec![6]);
        h.event_shards = vec![2];
        assert!(check_all(&h, &[s]).passed());
    }

    #[test]
    fn a_second_sale_with_one_key_in_the_ledger_breaks_invariant_6() {
        // Only one answer, but the ledger sold the key twice.
        let mut s = state();
        s.sold
            .insert("x-2".into(), "i.2:1 2 fallback\nbuyer-1\nk1".into());
        let h = history(vec![
            op(0, 100, Outcome::Unavailable, known("buyer-1", "k1")),
            op(1, 400, sold("x-1"), known("buyer-1", "k1")),
        ]);
        assert_eq!(broken(&h, &s), vec![6]);
    }

    #[test]
    fn a_ledger_record_naming_another_buyer_breaks_invariant_7() {
        let mut s = state();
        s.sold.insert("x-1".into(), "i.1:1 1\nbuyer-2\nk1".into());
        s.buyers[0] = "buyer-2\nx-1".into();
        let h = history(vec![op(0, 100, sold("x-1"), known("buyer-1", "k1"))]);
        assert_eq!(broken(&h, &s), vec![7]);
        // Or the right buyer with another key.
        let mut s = state();
        s.sold.insert("x-1".into(), "i.1:1 1\nbuyer-1\nk9".into());
        assert_eq!(broken(&h, &s), vec![7]);
        // Or no buyer at all; or a buyer's ticket received anonymously.
        let mut s = state();
        s.sold.insert("x-1".into(), "i.1:1 1".into());
        s.buyers.remove(0);
        assert_eq!(broken(&h, &s), vec![7]);
        let anonymous = history(vec![op(0, 100, sold("x-1"), None)]);
        assert_eq!(broken(&anonymous, &state()), vec![7]);
    }

    #[test]
    fn one_ticket_answered_to_two_keys_is_sold_twice() {
        let h = history(vec![
            op(0, 100, sold("x-1"), known("buyer-1", "k1")),
            op(1, 200, sold("x-1"), known("buyer-1", "k2")),
        ]);
        assert!(broken(&h, &state()).contains(&1));
        let h = history(vec![
            op(0, 100, sold("x-1"), known("buyer-1", "k1")),
            op(1, 200, sold("x-1"), None),
        ]);
        assert!(broken(&h, &state()).contains(&1));
        // Purchases without a key are each their own, even by one buyer.
        let h = history(vec![
            op(0, 100, sold("x-3"), known("once-1", "")),
            op(1, 200, sold("x-3"), known("once-1", "")),
        ]);
        assert!(broken(&h, &state()).contains(&1));
    }

    #[test]
    fn the_buyer_index_must_match_the_ledger() {
        let h = history(vec![]);
        // A member for a ticket back in the pool (cancel.lua should have removed it).
        let mut s = state();
        s.buyers.push("buyer-1\nx-4".into());
        assert_eq!(broken(&h, &s), vec![7]);
        // A sale to a buyer missing from the index.
        let mut s = state();
        s.buyers.pop();
        assert_eq!(broken(&h, &s), vec![7]);
    }

    #[test]
    fn the_limit_is_n_without_a_fallback_period_and_n_plus_n_per_instance_after_one() {
        let mut s = state();
        for (t, k) in [("x-4", "k4"), ("x-5", "k5"), ("x-6", "k6")] {
            s.sold.insert(t.into(), format!("i.1:9 9\nbuyer-1\n{k}"));
            s.buyers.push(format!("buyer-1\n{t}"));
        }
        s.pool.clear();
        // buyer-1 holds 5 > 2.
        let mut h = history(vec![op(0, 1_500, sold("x-4"), known("buyer-1", "k4"))]);
        assert_eq!(broken(&h, &s), vec![8]);
        // After an outage the bound is 2 + 2 × 2 = 6, and the looser bound is counted.
        h.fallback.push(outage(1_000, 2_000));
        let v = check_all(&h, std::slice::from_ref(&s));
        assert!(v.passed(), "{:?}", v.violations);
        assert_eq!(v.buyers.expect("known").over_limit.len(), 1);
        // But never more than that.
        h.buyers = Some(BuyerRules {
            max_per_buyer: 1,
            instances: 2,
            end_of_sale: 200,
        });
        assert_eq!(broken(&h, &s), vec![8]);
    }

    #[test]
    fn the_end_of_the_sale_loosens_the_limit_only_while_known_buyers_buy() {
        let mut s = state();
        for (t, k) in [("x-4", "k4"), ("x-5", "k5")] {
            s.sold.insert(t.into(), format!("i.1:9 9\nbuyer-1\n{k}"));
            s.buyers.push(format!("buyer-1\n{t}"));
        }
        s.pool.retain(|t| t == "x-6");
        // buyer-1 holds 4 > 2; the pool ran low only in the drain, after its last request.
        let mut late = op(0, 9_000, sold("x-3"), None);
        late.remaining = Some(1);
        let mut h = history(vec![op(0, 100, sold("x-1"), known("buyer-1", "k1")), late]);
        assert_eq!(broken(&h, &s), vec![8]);
        // While it still bought: the looser bound.
        h.ops[1].start = ms(50);
        h.ops[1].end = ms(60);
        assert!(check_all(&h, &[s]).passed());
    }

    #[test]
    fn the_end_of_a_sale_is_a_fallback_period() {
        let (mut h, s) = two_tickets_for_one_key();
        h.ops[1].remaining = Some(150);
        let v = check_all(&h, &[s]);
        assert!(v.passed(), "{:?}", v.violations);
    }
}
