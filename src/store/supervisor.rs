//! The fallback's background work, one task per instance: probe Redis while the breaker is
//! open, and while it is closed, every heartbeat and for every event: write fallback sales into
//! the ledger, renew the lease and top up the reserve, hand the reserve back when the pool runs
//! low, and return the reserves of instances whose lease expired. Also the graceful-shutdown
//! hand-back.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fred::interfaces::ClientLike;
use fred::types::Value;

use crate::event::Event;
use crate::store::reserve::{FallbackSale, Reserve};
use crate::store::resilient::{EventReserve, Shared};
use crate::store::scripts::{LuaScript, CLAIM, RELEASE, SETTLE};
use crate::store::StoreError;

/// Sales per settle call (three arguments each).
const SETTLE_CHUNK: usize = 300;

struct Scripts {
    claim: LuaScript,
    settle: LuaScript,
    release: LuaScript,
}

impl Scripts {
    fn new() -> Self {
        Self {
            claim: LuaScript::new(CLAIM),
            settle: LuaScript::new(SETTLE),
            release: LuaScript::new(RELEASE),
        }
    }
}

/// Lease expiries of other instances as this supervisor saw them: `(event, instance)` ->
/// (expiry, when first seen with that expiry). A lease is reaped only after this instance has
/// itself watched it stay unrenewed for a whole lease while connected, so an outage of Redis
/// (when nobody can renew) never makes live instances' reserves look abandoned.
type Observed = HashMap<(Box<str>, String), (i64, Instant)>;

/// The supervisor loop; ends when the store shuts down.
pub async fn run(s: Arc<Shared>) {
    let scripts = Scripts::new();
    let mut observed = Observed::new();
    let mut backoff = Duration::from_millis(50);
    let errors = crate::throttle::Throttle::new(Duration::from_secs(10));
    loop {
        if s.stopping.load(Ordering::Acquire) {
            return;
        }
        if s.in_fallback() {
            tokio::time::sleep(backoff).await;
            if !s.redis.ready().await {
                backoff = (backoff * 2).min(Duration::from_secs(2));
                continue;
            }
            backoff = Duration::from_millis(50);
            let _work = s.work.lock().await;
            if s.stopping.load(Ordering::Acquire) {
                return;
            }
            // Everything the outage left open is closed before Redis decides again: fallback
            // sales go into the ledger, and purchases of unknown outcome are made void (their
            // tickets back in the pool), so no buyer is told "sold out" while tickets are in limbo.
            let settled = match settle_all(&s, &scripts).await {
                Ok(n) => n,
                Err(e) => {
                    if let Some(held_back) = errors.allow() {
                        tracing::warn!(error = %e, held_back, "Redis answers again but settling fallback sales failed; staying on the fallback");
                    }
                    continue;
                }
            };
            let drain_until = Instant::now() + Duration::from_secs(5);
            while s.redis.pending_cancels() > 0 && Instant::now() < drain_until {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            if s.redis.pending_cancels() > 0 {
                continue; // Redis not really back; probe again
            }
            let down = s.recovered();
            tracing::info!(
                outage = ?down,
                reconciled = settled,
                cancelled = s.redis.metrics().cancelled(),
                "REDIS IS BACK: fallback sales written to the ledger; selling from Redis again"
            );
            continue;
        }
        {
            let _work = s.work.lock().await;
            if s.stopping.load(Ordering::Acquire) {
                return;
            }
            if let Err(e) = maintain_all(&s, &scripts, &mut observed).await {
                if e.is_outage() && !s.redis.pool().next().is_connected() {
                    s.trip(&e);
                } else if let Some(held_back) = errors.allow() {
                    tracing::warn!(error = %e, held_back, "reserve upkeep failed; will retry");
                }
            }
        }
        tokio::select! {
            () = tokio::time::sleep(s.options.heartbeat()) => {}
            () = s.wake.notified() => {}
        }
    }
}

async fn settle_all(s: &Shared, scripts: &Scripts) -> Result<u64, StoreError> {
    let reserves: Vec<Arc<EventReserve>> = s.reserves.read().values().cloned().collect();
    let mut n = 0;
    for er in reserves {
        n += settle(s, scripts, &er).await?;
    }
    Ok(n)
}

async fn maintain_all(
    s: &Shared,
    scripts: &Scripts,
    observed: &mut Observed,
) -> Result<(), StoreError> {
    for event in s.catalog.events() {
        if s.in_fallback() || s.stopping.load(Ordering::Acquire) {
            return Ok(());
        }
        maintain(s, scripts, &event).await?;
        reap(s, scripts, &event, observed).await?;
    }
    Ok(())
}

/// Settles, renews, tops up or hands back the reserve of one event.
async fn maintain(s: &Shared, scripts: &Scripts, event: &Arc<Event>) -> Result<(), StoreError> {
    let size = s.options.reserve;
    if size == 0 {
        return Ok(());
    }
    let er = s.event_reserve(event);
    settle(s, scripts, &er).await?;
    let current = er.current.read().clone();
    let believed = current.held_in_redis() + er.unsettled.lock().len() as u64;
    let sent = s.now_ms();
    let keys = vec![
        er.event.keys.tickets.clone(),
        er.key.clone(),
        er.event.keys.leases.clone(),
        er.event.keys.reserved.clone(),
        er.event.keys.meta.clone(),
    ];
    let args = vec![
        Value::from(s.redis.instance()),
        Value::Integer(size as i64),
        Value::Integer(s.options.lease.as_millis() as i64),
        Value::Integer(believed as i64),
    ];
    let reply: Vec<Value> = call(s, &scripts.claim, keys, args).await?;
    let int = |i: usize| reply.get(i).and_then(Value::as_i64).unwrap_or(0);
    if int(0) != 1 {
        return Ok(()); // the event is not in Redis (yet): nothing to reserve
    }
    let lease_end = sent + s.options.lease.as_millis() as u64;
    er.sell_until_ms.store(
        lease_end.saturating_sub(s.options.margin().as_millis() as u64),
        Ordering::Release,
    );
    let pool = int(2) as u64;
    let listed = (reply.len() > 4).then(|| {
        reply[4..]
            .iter()
            .filter_map(|v| v.as_bytes().and_then(|b| event.parse_ticket_id(b)))
            .collect::<Vec<u64>>()
    });
    let holding = listed.as_ref().map_or(believed, |l| l.len() as u64);
    if pool < 2 * size && holding > 0 {
        return release(s, scripts, &er).await;
    }
    if let Some(listed) = listed {
        rotate(&er, listed);
    }
    Ok(())
}

/// Replaces the current reserve with `listed` (Redis's reserve list), minus every ticket sold
/// from a reserve and not yet settled: those are still in the list but no longer for sale.
fn rotate(er: &EventReserve, listed: Vec<u64>) {
    let old = er.current.read().clone();
    old.close();
    let (sales, _) = old.unsettled();
    let mut unsettled = er.unsettled.lock();
    unsettled.extend(sales);
    let sold: HashSet<u64> = unsettled.iter().map(|s| s.ticket).collect();
    let fresh: Vec<u64> = listed.into_iter().filter(|t| !sold.contains(t)).collect();
    *er.current.write() = Arc::new(Reserve::new(fresh));
    er.swapped.notify_waiters();
}

/// Writes every fallback sale of `er` not yet in the ledger. Returns how many were written.
async fn settle(s: &Shared, scripts: &Scripts, er: &EventReserve) -> Result<u64, StoreError> {
    let current = er.current.read().clone();
    let (fresh, mark) = current.unsettled();
    let mut sales: Vec<FallbackSale> = std::mem::take(&mut *er.unsettled.lock());
    sales.extend(fresh);
    if sales.is_empty() {
        return Ok(0);
    }
    let keys = vec![
        er.event.keys.tickets.clone(),
        er.key.clone(),
        er.event.keys.reserved.clone(),
        er.event.keys.sold.clone(),
    ];
    let mut done = 0;
    let mut result = Ok(());
    for chunk in sales.chunks(SETTLE_CHUNK) {
        let mut args = Vec::with_capacity(chunk.len() * 3);
        let mut ticket = Vec::new();
        for sale in chunk {
            ticket.clear();
            er.event.write_ticket_id(sale.ticket, &mut ticket);
            args.push(Value::from(ticket.as_slice()));
            args.push(Value::Bytes(s.redis.purchase_id(sale.purchase)));
            args.push(Value::Integer(sale.at_ms as i64));
        }
        match call::<Vec<Value>>(s, &scripts.settle, keys.clone(), args).await {
            Ok(reply) => {
                let int = |i: usize| reply.get(i).and_then(Value::as_i64).unwrap_or(0) as u64;
                let m = s.redis.metrics();
                m.fallback_settled(int(0) + int(2));
                let conflicts: Vec<String> =
                    reply.iter().skip(3).filter_map(|v| v.as_string()).collect();
                if !conflicts.is_empty() {
                    m.settle_conflicts(conflicts.len() as u64);
                    tracing::error!(
                        event = %er.event.id,
                        tickets = ?conflicts,
                        "fallback sales conflict with the ledger: these tickets were also sold to other purchases (a partition outlasted the reserve lease)"
                    );
                }
                if int(2) > 0 {
                    tracing::warn!(event = %er.event.id, count = int(2), "fallback sales found their tickets back in the pool (reserve reaped during a long partition); taken out and recorded");
                }
                done += chunk.len();
            }
            Err(e) => {
                result = Err(e);
                break;
            }
        }
    }
    // Whatever was not written goes back to the queue; the current reserve's mark moves only
    // when all its sales are in.
    if done < sales.len() {
        *er.unsettled.lock() = sales.split_off(done);
    } else {
        current.mark_settled(mark);
    }
    result.map(|()| done as u64)
}

/// Closes the current reserve, settles it and hands every unsold ticket back to the pool.
async fn release(s: &Shared, scripts: &Scripts, er: &EventReserve) -> Result<(), StoreError> {
    er.current.read().close();
    settle(s, scripts, er).await?;
    if !er.unsettled.lock().is_empty() {
        return Ok(()); // never hand back a list that still holds sold tickets
    }
    let keys = vec![
        er.event.keys.tickets.clone(),
        er.key.clone(),
        er.event.keys.leases.clone(),
        er.event.keys.reserved.clone(),
    ];
    let returned: i64 = call(
        s,
        &scripts.release,
        keys,
        vec![Value::from(s.redis.instance())],
    )
    .await?;
    *er.current.write() = Arc::new(Reserve::empty());
    er.swapped.notify_waiters();
    if returned > 0 {
        tracing::debug!(event = %er.event.id, returned, "reserve handed back to the pool");
    }
    Ok(())
}

/// Returns the reserves of other instances whose lease this supervisor watched expire.
async fn reap(
    s: &Shared,
    scripts: &Scripts,
    event: &Event,
    observed: &mut Observed,
) -> Result<(), StoreError> {
    let client = s.redis.pool().next();
    let leases: Vec<Value> = tokio::time::timeout(
        s.redis.timeout().max(Duration::from_millis(500)),
        client.custom(
            fred::cmd!("ZRANGE"),
            vec![
                Value::from(event.keys.leases.clone()),
                0.into(),
                (-1).into(),
                "WITHSCORES".into(),
            ],
        ),
    )
    .await
    .map_err(|_| StoreError::Timeout(s.redis.timeout()))??;
    let now = crate::store::resilient::unix_ms() as i64;
    for pair in leases.chunks(2) {
        let (Some(instance), Some(score)) = (pair[0].as_string(), pair.get(1).and_then(value_i64))
        else {
            continue;
        };
        if instance == s.redis.instance() {
            continue;
        }
        let key = (event.id.clone(), instance.clone());
        let seen = observed
            .entry(key.clone())
            .or_insert((score, Instant::now()));
        if seen.0 != score {
            *seen = (score, Instant::now());
            continue;
        }
        // Watched unrenewed for a whole lease, and expired (release.lua checks the expiry again
        // by Redis's own clock).
        if seen.1.elapsed() < s.options.lease || score > now {
            continue;
        }
        let keys = vec![
            event.keys.tickets.clone(),
            crate::event::EventKeys::reserve(&event.id, &instance),
            event.keys.leases.clone(),
            event.keys.reserved.clone(),
        ];
        let returned: i64 = call(
            s,
            &scripts.release,
            keys,
            vec![Value::from(instance.as_str()), Value::Integer(score)],
        )
        .await?;
        observed.remove(&key);
        if returned >= 0 {
            s.redis.metrics().reserve_reaped();
            tracing::warn!(event = %event.id, instance, returned, "returned the reserve of an instance whose lease expired (crashed?) to the pool");
        }
    }
    Ok(())
}

fn value_i64(v: &Value) -> Option<i64> {
    v.as_i64().or_else(|| v.as_f64().map(|f| f as i64))
}

async fn call<R: fred::types::FromValue>(
    s: &Shared,
    script: &LuaScript,
    keys: Vec<fred::types::Key>,
    args: Vec<Value>,
) -> Result<R, StoreError> {
    let client = s.redis.pool().next();
    if !client.is_connected() {
        return Err(StoreError::NotConnected);
    }
    let bound = s.redis.timeout().max(Duration::from_millis(500));
    match tokio::time::timeout(
        bound,
        script.run(client, keys, args, || s.redis.metrics().script_reloaded()),
    )
    .await
    {
        Ok(r) => Ok(r?),
        Err(_) => Err(StoreError::Timeout(bound)),
    }
}

/// Graceful shutdown: stop the supervisor, settle every fallback sale and hand every reserve
/// back to the pool.
pub async fn shutdown(s: Arc<Shared>) {
    s.stopping.store(true, Ordering::Release);
    s.wake.notify_one();
    let _work = s.work.lock().await;
    let scripts = Scripts::new();
    let reserves: Vec<Arc<EventReserve>> = s.reserves.read().values().cloned().collect();
    let (mut returned, mut failed) = (0u64, 0u64);
    for er in reserves {
        let before = er.current.read().unsold();
        match release(&s, &scripts, &er).await {
            Ok(()) if er.unsettled.lock().is_empty() => returned += before,
            Ok(()) | Err(_) => failed += 1,
        }
    }
    if failed == 0 {
        tracing::info!(returned, "reserves handed back to the pool");
    } else {
        let owed: Vec<String> = s
            .reserves
            .read()
            .values()
            .flat_map(|er| {
                let mut sales: Vec<FallbackSale> = er.unsettled.lock().clone();
                sales.extend(er.current.read().unsettled().0);
                sales
                    .into_iter()
                    .map(move |sale| format!("{}#{}:{}", er.event.id, sale.ticket, sale.purchase))
            })
            .collect();
        tracing::error!(
            events = failed,
            unsettled = ?owed,
            "could not hand back every reserve: their leases will return unsold tickets; the fallback sales listed are NOT in the ledger"
        );
    }
}
