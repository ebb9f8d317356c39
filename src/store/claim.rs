//! One `lua/claim.lua` call for the reserves of one event or, on a single Redis, of up to
//! [`CLAIM_EVENTS`] events: the keys and arguments it takes, and the reply read back into one
//! [`Claimed`] per event. One call per event and a `ZRANGE` of its leases cost an idle
//! instance at 10,000 events 15 % of a core and Redis 17 %; one call per 64 events 3 % and 9 %
//! (design.md, "What 10,000 events cost with no purchase at all").

use std::sync::atomic::Ordering;
use std::sync::Arc;

use fred::types::{Key, Value};

use crate::event::Event;
use crate::otel::spans::traced;
use crate::store::fallback::{EventReserve, Shared};
use crate::store::scripts::LuaScript;
use crate::store::StoreError;

/// Events per claim call on a single Redis at most: eight keys each, and Redis runs the call's
/// events one after the other before it serves anything else (about 15 µs each for a plain
/// heartbeat here), so a purchase queued behind a call waits about a millisecond.
pub const CLAIM_EVENTS: usize = 64;

/// Reserve tickets per claim call at most, for [`events_per_call`]: a top-up moves and lists a
/// whole reserve per event (the first round, a refill after an outage), so a call of 64 events'
/// reserves of 5,000 would hold Redis for longer than a purchase's timeout.
const CLAIM_TICKETS: u64 = 12_800;

/// Events per claim call on a single Redis for reserves of `reserve` tickets: [`CLAIM_EVENTS`]
/// up to reserves of 200, fewer above (2 at the largest reserve, 5,000).
pub fn events_per_call(reserve: u64) -> usize {
    (CLAIM_TICKETS / reserve.max(1)).clamp(1, CLAIM_EVENTS as u64) as usize
}

/// One event's part of a claim call: its reserve and the length this instance believes Redis
/// holds of it.
pub struct Claim {
    /// The event's reserve.
    pub reserve: Arc<EventReserve>,
    /// The reserve's length as this instance believes Redis holds it.
    pub believed: u64,
}

/// What a claim call answered for one event.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Claimed {
    /// The event is in Redis (else nothing was written for it).
    pub seeded: bool,
    /// Tickets left in the shared pool.
    pub pool: u64,
    /// Tickets of this instance's held-back reserve that came back to it.
    pub back: u64,
    /// The generation of the reserve list (see [`EventReserve::generation`]).
    pub generation: i64,
    /// The whole reserve list, when it changed or is not as long as believed.
    pub listed: Option<Vec<u64>>,
    /// Other instances' leases on the event: (instance, expiry in unix ms).
    pub leases: Vec<(String, i64)>,
}

/// Renews this instance's lease and tops up its reserve of every event of `claims` in one
/// call (their keys must all be on one node: one event on a cluster's shard), traced as one
/// `claim reserve` span.
///
/// # Errors
/// The call's error (nothing is known of any event then: a script error in one event's part
/// leaves the parts before it done), or a reply that is not what the script returns.
pub async fn claim(
    s: &Shared,
    script: &LuaScript,
    claims: &[Claim],
) -> Result<Vec<Claimed>, StoreError> {
    let mut keys: Vec<Key> = Vec::with_capacity(claims.len() * 8);
    let mut args = Vec::with_capacity(3 + 2 * claims.len());
    args.push(Value::from(s.redis.instance()));
    args.push(Value::Integer(s.options.reserve as i64));
    args.push(Value::Integer(s.options.lease.as_millis() as i64));
    for c in claims {
        keys.extend(c.reserve.event.keys.claim_keys(&c.reserve.key));
        args.push(Value::Integer(c.believed as i64));
        args.push(Value::Integer(c.reserve.generation.load(Ordering::Acquire)));
    }
    let span = tracing::info_span!(
        target: crate::otel::TARGET,
        "claim reserve",
        ticketd.event = tracing::field::Empty,
        ticketd.events = claims.len(),
        ticketd.reserve.size = s.options.reserve,
    );
    if let [one] = claims {
        span.record("ticketd.event", &*one.reserve.event.id);
    }
    let reply: Vec<Value> = traced(span, s.call(script, keys, args)).await?;
    parse(&reply, claims.iter().map(|c| &*c.reserve.event))
}

/// Values before each event's ids and leases in a claim reply.
const HEAD: usize = 9;

/// Reads a claim reply: per event `{status, now, pool, moved, back, listed, generation, n ids,
/// n leases, ids..., (instance, expiry)...}`.
fn parse<'a>(
    reply: &[Value],
    events: impl ExactSizeIterator<Item = &'a Event>,
) -> Result<Vec<Claimed>, StoreError> {
    let bad = || StoreError::Protocol(format!("claim.lua: {reply:?}"));
    let int = |v: Option<&Value>| v.and_then(value_i64).ok_or_else(bad);
    let mut at = 0;
    let mut parts = Vec::with_capacity(events.len());
    for event in events {
        let head = reply.get(at..at + HEAD).ok_or_else(bad)?;
        let count = |i: usize| usize::try_from(int(head.get(i))?).map_err(|_| bad());
        let (ids, leases) = (count(7)?, count(8)?);
        let end = leases
            .checked_mul(2)
            .and_then(|l| (at + HEAD).checked_add(ids)?.checked_add(l))
            .ok_or_else(bad)?;
        let body = reply.get(at + HEAD..end).ok_or_else(bad)?;
        at = end;
        let listed = (int(head.get(5))? == 1).then(|| {
            body[..ids]
                .iter()
                .filter_map(|v| v.as_bytes().and_then(|b| event.parse_ticket_id(b)))
                .collect()
        });
        let leases = body[ids..]
            .chunks(2)
            .filter_map(|pair| Some((pair[0].as_string()?, value_i64(&pair[1])?)))
            .collect();
        parts.push(Claimed {
            seeded: int(head.first())? == 1,
            pool: int(head.get(2))?.max(0) as u64,
            back: int(head.get(4))?.max(0) as u64,
            generation: int(head.get(6))?,
            listed,
            leases,
        });
    }
    if at != reply.len() {
        return Err(bad());
    }
    Ok(parts)
}

/// An integer reply value, also one Redis sent as a string (a sorted set's score).
pub fn value_i64(v: &Value) -> Option<i64> {
    v.as_i64().or_else(|| v.as_f64().map(|f| f as i64))
}

#[cfg(test)]
mod tests {
    use super::{events_per_call, parse, Claimed};
    use crate::event::Event;
    use fred::types::Value;

    fn reply(values: &[&str]) -> Vec<Value> {
        values
            .iter()
            .map(|v| match v.parse::<i64>() {
                Ok(n) => Value::Integer(n),
                Err(_) => Value::from(*v),
            })
            .collect()
    }

    #[test]
    fn calls_carry_fewer_events_of_larger_reserves() {
        assert_eq!(events_per_call(0), 64);
        assert_eq!(events_per_call(200), 64);
        assert_eq!(events_per_call(400), 32);
        assert_eq!(events_per_call(5000), 2);
        assert_eq!(events_per_call(1_000_000), 1);
    }

    #[test]
    fn each_event_reads_its_own_part() {
        let (a, b, c) = (
            Event::new("a", 10, 0),
            Event::new("b", 10, 1),
            Event::new("c", 10, 2),
        );
        let mut ticket = Vec::new();
        a.write_ticket_id(3, &mut ticket);
        let ticket = String::from_utf8(ticket).unwrap();
        let parts = parse(
            &reply(&[
                // a: listed, generation 3, one id, one other instance's lease
                "1", "1000", "50", "1", "0", "1", "3", "1", "1", &ticket, "other", "1015000",
                // b: not in Redis, no lease
                "-2", "0", "0", "0", "0", "0", "0", "0", "0",
                // c: a plain heartbeat, 4 taken back, a lease as Redis writes a score
                "1", "1000", "70", "0", "4", "0", "2", "0", "1", "third", "1016000",
            ]),
            [&a, &b, &c].into_iter(),
        )
        .unwrap();
        assert_eq!(
            parts,
            vec![
                Claimed {
                    seeded: true,
                    pool: 50,
                    back: 0,
                    generation: 3,
                    listed: Some(vec![3]),
                    leases: vec![("other".into(), 1_015_000)],
                },
                Claimed::default(),
                Claimed {
                    seeded: true,
                    pool: 70,
                    back: 4,
                    generation: 2,
                    listed: None,
                    leases: vec![("third".into(), 1_016_000)],
                },
            ]
        );
    }

    #[test]
    fn a_reply_of_another_shape_is_an_error() {
        let a = Event::new("a", 10, 0);
        let negative = reply(&["1", "1000", "50", "0", "0", "0", "0", "-1", "0"]);
        assert!(parse(&negative, [&a].into_iter()).is_err());
        let short = reply(&["1", "1000", "50", "0", "0", "0", "0", "0", "1", "other"]);
        assert!(parse(&short, [&a].into_iter()).is_err());
        let long = reply(&["1", "1000", "50", "0", "0", "0", "0", "0", "0", "extra"]);
        assert!(parse(&long, [&a].into_iter()).is_err());
        assert!(parse(&[], [&a].into_iter()).is_err());
    }
}
