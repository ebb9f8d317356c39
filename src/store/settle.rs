//! Writing fallback sales into the Redis ledger (`lua/settle.lua`, idempotent): this run's,
//! from the reserves' slots, and an earlier run's, read back from the journal.

use std::sync::Arc;

use tracing::Instrument;

use bytes::Bytes;
use fred::types::{Key, Value};

use crate::event::{Answers, EventKeys};
use crate::store::fallback::{EventReserve, RecoveredSale, Shared};
use crate::store::purchaser::Attribution;
use crate::store::reserve::FallbackSale;
use crate::store::scripts::LuaScript;
use crate::store::StoreError;

/// Sales per settle call (six arguments each).
const SETTLE_CHUNK: usize = 300;

/// One sale as the script takes it.
struct Owed {
    ticket: Bytes,
    purchase: Bytes,
    at_ms: u64,
    /// The known buyer, its key and what it was told.
    by: Option<Arc<Attribution>>,
}

/// Writes every fallback sale of `er` not yet in the ledger. Returns how many were written.
///
/// # Errors
/// Redis failed; what was not written stays owed.
pub async fn settle(s: &Shared, script: &LuaScript, er: &EventReserve) -> Result<u64, StoreError> {
    let current = er.current.read().clone();
    let (fresh, mark) = current.unsettled();
    let mut sales: Vec<FallbackSale> = std::mem::take(&mut *er.unsettled.lock());
    sales.extend(fresh);
    if sales.is_empty() {
        return Ok(0);
    }
    let owed: Vec<Owed> = {
        let buyers = er.buyers.lock();
        sales
            .iter()
            .map(|sale| {
                let mut ticket = Vec::new();
                er.event.write_ticket_id(sale.ticket, &mut ticket);
                Owed {
                    ticket: ticket.into(),
                    purchase: s.redis.purchase_id(sale.purchase),
                    at_ms: sale.at_ms,
                    by: buyers.attribution(sale.purchase),
                }
            })
            .collect()
    };
    let keys = keys(&er.event.keys, er.key.clone(), s);
    let (done, result) = write(s, script, &er.event.id, keys, &owed).await;
    er.buyers
        .lock()
        .settled(sales[..done].iter().map(|sale| sale.purchase));
    // Whatever was not written goes back to the queue; the current reserve's mark moves only
    // when all its sales are in.
    if done < sales.len() {
        *er.unsettled.lock() = sales.split_off(done);
    } else {
        current.mark_settled(mark);
    }
    result.map(|()| done as u64)
}

/// Writes the sales an earlier run of this instance journaled. Returns how many were written.
///
/// # Errors
/// Redis failed; what was not written stays owed.
pub async fn settle_recovered(s: &Shared, script: &LuaScript) -> Result<u64, StoreError> {
    let mut sales: Vec<RecoveredSale> = std::mem::take(&mut *s.recovered.lock());
    sales.sort_by(|a, b| a.event.cmp(&b.event));
    let mut written = 0;
    let mut left = Vec::new();
    let mut result = Ok(());
    for group in sales.chunk_by(|a, b| a.event == b.event) {
        if result.is_err() {
            left.extend_from_slice(group);
            continue;
        }
        let event = &group[0].event;
        let keys = keys(
            &EventKeys::new(event),
            EventKeys::reserve(event, s.redis.instance()),
            s,
        );
        let owed: Vec<Owed> = group
            .iter()
            .map(|r| Owed {
                ticket: r.ticket.clone(),
                purchase: r.purchase.clone(),
                at_ms: r.at_ms,
                by: r.by.clone().map(Arc::new),
            })
            .collect();
        let (done, r) = write(s, script, event, keys, &owed).await;
        written += done as u64;
        left.extend_from_slice(&group[done..]);
        match r {
            Err(e) if !e.is_outage() => {
                // This event's keys are refused (damaged?): the others go on; its reserve stays
                // untouched until these are in (see maintain).
                if let Some(held_back) = s.error_log.allow() {
                    tracing::warn!(event = %event, error = %e, left = group.len() - done, held_back, "journal: sales of the previous run cannot be settled for this event; its reserve waits for them");
                }
            }
            r => result = r,
        }
    }
    if written > 0 {
        tracing::info!(
            settled = written,
            "journal: sales of the previous run written into the ledger"
        );
    }
    s.recovered.lock().extend(left);
    result.map(|()| written)
}

fn keys(event: &EventKeys, reserve: Key, s: &Shared) -> Vec<Key> {
    vec![
        reserve,
        event.reserved.clone(),
        event.sold.clone(),
        event.held.clone(),
        event.stale.clone(),
        event.buyers.clone(),
        event.idempotency.clone(),
        event.idempotency_ttl.clone(),
        event.fallback_buyers.clone(),
        event.answers_widths(Answers::of_single_node(s.redis.binds_keys())),
        event.meta.clone(),
    ]
}

/// Writes `owed` in chunks. Returns how many were written, and the error that stopped it.
async fn write(
    s: &Shared,
    script: &LuaScript,
    event: &str,
    keys: Vec<Key>,
    owed: &[Owed],
) -> (usize, Result<(), StoreError>) {
    let mut done = 0;
    for chunk in owed.chunks(SETTLE_CHUNK) {
        let policy = s.redis.policy();
        let mut args = Vec::with_capacity(3 + chunk.len() * 6);
        args.push(Value::from(s.redis.instance()));
        args.push(Value::Integer(i64::from(policy.limit())));
        args.push(Value::Integer(policy.key_ttl_ms()));
        for sale in chunk {
            args.push(Value::Bytes(sale.ticket.clone()));
            args.push(Value::Bytes(sale.purchase.clone()));
            args.push(Value::Integer(sale.at_ms as i64));
            let (buyer, key, remaining) = sale
                .by
                .as_deref()
                .map_or(("", "", 0), |b| (&*b.buyer, &*b.key, b.remaining));
            args.push(Value::from(buyer));
            args.push(Value::from(key));
            args.push(Value::Integer(remaining as i64));
        }
        let span = tracing::info_span!(target: crate::otel::TARGET, "settle", ticketd.event = event, ticketd.sales = chunk.len());
        let call = s.call::<Vec<Value>>(script, keys.clone(), args);
        let written = call.instrument(span.clone()).await;
        if let Err(e) = &written {
            crate::otel::spans::record_error(&span, e);
        }
        match written {
            Ok(reply) => {
                report(s, event, &reply);
                done += chunk.len();
            }
            Err(e) => return (done, Err(e)),
        }
    }
    (done, Ok(()))
}

/// Counts and logs what `settle.lua` answered: `{settled, already, late, {conflicts},
/// {buyers over the limit}, {keys used for two sales}}`.
fn report(s: &Shared, event: &str, reply: &[Value]) {
    let int = |i: usize| reply.get(i).and_then(Value::as_i64).unwrap_or(0) as u64;
    let list = |i: usize| -> Vec<String> {
        match reply.get(i) {
            Some(Value::Array(items)) => items.iter().filter_map(Value::as_string).collect(),
            _ => Vec::new(),
        }
    };
    let m = s.redis.metrics();
    m.fallback_settled(int(0) + int(2));
    let conflicts = list(3);
    if !conflicts.is_empty() {
        m.settle_conflicts(conflicts.len() as u64);
        tracing::error!(
            event,
            tickets = ?conflicts,
            "fallback sales conflict with the ledger: these tickets were also sold to other purchases (only possible after an operator released this instance's held-back reserve)"
        );
    }
    if int(2) > 0 {
        tracing::warn!(
            event,
            count = int(2),
            "fallback sales whose tickets an operator had released: recorded as sold, and marked so that whoever pops them next skips them"
        );
    }
    let over = list(4);
    if !over.is_empty() {
        m.buyers_over_limit(over.len() as u64);
        let over: Vec<String> = over.iter().map(|b| b.replace('\n', " holds ")).collect();
        tracing::warn!(
            event,
            buyers = over.len(),
            over = ?over,
            "BUYERS OVER THE LIMIT: while Redis was down, instances sold these buyers tickets each within what it knew; together they hold more than --max-per-buyer"
        );
    }
    let twice = list(5);
    if !twice.is_empty() {
        m.keys_used_twice(twice.len() as u64);
        let twice: Vec<String> = twice.iter().map(|k| k.replace('\n', " key ")).collect();
        tracing::warn!(
            event,
            keys = ?twice,
            "IDEMPOTENCY KEYS USED FOR TWO SALES: while Redis was down, a repeated purchase reached another instance and bought a second ticket; the key now answers the first"
        );
    }
}

/// Everything owed by `reserves` and the journal of an earlier run.
///
/// # Errors
/// Redis failed; the rest stays owed.
pub async fn settle_all(
    s: &Shared,
    script: &LuaScript,
    reserves: &[Arc<EventReserve>],
) -> Result<u64, StoreError> {
    let mut n = settle_recovered(s, script).await?;
    for er in reserves {
        n += settle(s, script, er).await?;
    }
    Ok(n)
}
