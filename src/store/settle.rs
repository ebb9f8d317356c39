//! Writing fallback sales into the Redis ledger (`lua/settle.lua`, idempotent): this run's,
//! from the reserves' slots, and an earlier run's, read back from the journal.

use std::sync::Arc;

use tracing::Instrument;

use bytes::Bytes;
use fred::types::{Key, Value};

use crate::event::EventKeys;
use crate::store::fallback::{EventReserve, RecoveredSale, Shared};
use crate::store::reserve::FallbackSale;
use crate::store::scripts::LuaScript;
use crate::store::StoreError;

/// Sales per settle call (three arguments each).
const SETTLE_CHUNK: usize = 300;

/// One sale as the script takes it.
struct Owed {
    ticket: Bytes,
    purchase: Bytes,
    at_ms: u64,
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
    let owed: Vec<Owed> = sales
        .iter()
        .map(|sale| {
            let mut ticket = Vec::new();
            er.event.write_ticket_id(sale.ticket, &mut ticket);
            Owed {
                ticket: ticket.into(),
                purchase: s.redis.purchase_id(sale.purchase),
                at_ms: sale.at_ms,
            }
        })
        .collect();
    let keys = keys(&er.event.keys, er.key.clone());
    let (done, result) = write(s, script, &er.event.id, keys, &owed).await;
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
        );
        let owed: Vec<Owed> = group
            .iter()
            .map(|r| Owed {
                ticket: r.ticket.clone(),
                purchase: r.purchase.clone(),
                at_ms: r.at_ms,
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

fn keys(event: &EventKeys, reserve: Key) -> Vec<Key> {
    vec![
        reserve,
        event.reserved.clone(),
        event.sold.clone(),
        event.held.clone(),
        event.stale.clone(),
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
        let mut args = Vec::with_capacity(1 + chunk.len() * 3);
        args.push(Value::from(s.redis.instance()));
        for sale in chunk {
            args.push(Value::Bytes(sale.ticket.clone()));
            args.push(Value::Bytes(sale.purchase.clone()));
            args.push(Value::Integer(sale.at_ms as i64));
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

/// Counts and logs what `settle.lua` answered: `{settled, already, late, conflicts...}`.
fn report(s: &Shared, event: &str, reply: &[Value]) {
    let int = |i: usize| reply.get(i).and_then(Value::as_i64).unwrap_or(0) as u64;
    let m = s.redis.metrics();
    m.fallback_settled(int(0) + int(2));
    let conflicts: Vec<String> = reply.iter().skip(3).filter_map(|v| v.as_string()).collect();
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
