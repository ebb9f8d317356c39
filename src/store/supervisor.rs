//! The fallback's background work, one task per instance: probe Redis while the breaker is
//! open, and while it is closed, every heartbeat and for every event: write fallback sales into
//! the ledger, renew the lease and top up the reserve, hand the reserve back when the pool runs
//! low, and hold back the reserves of instances whose lease expired. Also the journal's
//! checkpoints and the graceful-shutdown hand-back.

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fred::interfaces::ClientLike;
use fred::types::Value;

use crate::event::{Event, EventKeys};
use crate::store::fallback::{unix_ms, EventReserve, Shared};
use crate::store::lease_watch::LeaseWatch;
use crate::store::reserve::{FallbackSale, Reserve};
use crate::store::scripts::{LuaScript, CLAIM, QUARANTINE, RELEASE, SETTLE};
use crate::store::settle::{settle, settle_all};
use crate::store::StoreError;
use crate::throttle::Throttle;

/// How long after everything in a journal segment was settled the segment is kept. Redis
/// acknowledges a write before its AOF is synced (`appendfsync everysec`), so a crash of its
/// machine can lose about the last second of settlements; until then the journal still holds
/// them, and a restart on it settles them again (settling is idempotent).
const FORGET_AFTER: Duration = Duration::from_secs(10);

struct Scripts {
    claim: LuaScript,
    settle: LuaScript,
    release: LuaScript,
    quarantine: LuaScript,
}

impl Scripts {
    fn new() -> Self {
        Self {
            claim: LuaScript::new(CLAIM),
            settle: LuaScript::new(SETTLE),
            release: LuaScript::new(RELEASE),
            quarantine: LuaScript::new(QUARANTINE),
        }
    }
}

/// The supervisor loop; ends when the store shuts down.
pub async fn run(s: Arc<Shared>) {
    let scripts = Scripts::new();
    // Two heartbeats and two calls' bounds between looks are still "watching".
    let gap = s.options.heartbeat() * 2 + s.call_bound() * 2;
    let mut watch = LeaseWatch::new(s.options.lease, gap);
    let mut backoff = Duration::from_millis(50);
    let errors = Throttle::new(Duration::from_secs(10));
    // Journal marks whose segments were all settled, since when, and under which takeover count.
    let mut settled: std::collections::VecDeque<(u64, Instant, u64)> = Default::default();
    loop {
        if s.stopping.load(Ordering::Acquire) {
            return;
        }
        if s.in_fallback() {
            watch.forget_all();
            tokio::time::sleep(backoff).await;
            if !s.redis.ready(s.fence().as_ref()).await {
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
            let reserves: Vec<Arc<EventReserve>> = s.reserves.read().values().cloned().collect();
            let settled = match settle_all(&s, &scripts.settle, &reserves).await {
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
                shard = %s.label,
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
            // Close the journal's segment before settling: every sale in a closed segment is
            // then in the reserves' slots that this upkeep settles.
            let mark = if s.journal.dirty() {
                s.journal.checkpoint().await
            } else {
                None
            };
            watch.prune(Instant::now());
            match maintain_all(&s, &scripts, &mut watch, &errors).await {
                Ok(()) => {
                    let takeovers = s.takeovers.load(Ordering::Acquire);
                    // Sales taken over from another shard since a mark was queued may sit in
                    // its segments: such marks are dropped.
                    settled.retain(|&(_, _, t)| t == takeovers);
                    if let Some(mark) = mark {
                        let newer = settled.back().is_none_or(|&(m, _, _)| m < mark);
                        if newer && !s.owes() && s.redis.pending_cancels() == 0 {
                            settled.push_back((mark, Instant::now(), takeovers));
                        }
                    }
                    let mut through = None;
                    while let Some(&(mark, since, _)) = settled.front() {
                        if since.elapsed() < FORGET_AFTER {
                            break;
                        }
                        through = Some(mark);
                        settled.pop_front();
                    }
                    if let Some(mark) = through {
                        s.journal.forget_for(s.party, mark);
                    }
                }
                Err(e) => {
                    watch.forget_all();
                    if e.is_outage() && !s.redis.client().is_connected() {
                        s.trip(&e);
                    } else if let Some(held_back) = errors.allow() {
                        tracing::warn!(error = %e, held_back, "reserve upkeep failed; will retry");
                    }
                }
            }
        }
        tokio::select! {
            () = tokio::time::sleep(s.options.heartbeat()) => {}
            () = s.wake.notified() => {}
        }
    }
}

/// Events whose upkeep is in flight at once. Each upkeep is a few calls in turn, and each call
/// that writes waits for Redis's `fsync` (`appendfsync always`), so one event after the other
/// took 8 s a round at 10,000 events (design.md, Measurements); this many overlap instead.
const UPKEEP_IN_FLIGHT: usize = 32;

/// One upkeep of every event, [`UPKEEP_IN_FLIGHT`] events at a time. A failure of one event (a
/// damaged key, a script error) is logged and the others go on; an outage ends the round once
/// the upkeeps already started have finished (no new one starts), since every other call would
/// fail as well.
async fn maintain_all(
    s: &Shared,
    scripts: &Scripts,
    watch: &mut LeaseWatch,
    errors: &Throttle,
) -> Result<(), StoreError> {
    if !s.recovered.lock().is_empty() {
        crate::store::settle::settle_recovered(s, &scripts.settle).await?;
    }
    let watch = parking_lot::Mutex::new(watch);
    let outage = parking_lot::Mutex::new(None);
    let upkeeps = s
        .events()
        .into_iter()
        .map(|event| upkeep(s, scripts, event, &watch, &outage, errors));
    use futures_util::StreamExt as _;
    futures_util::stream::iter(upkeeps)
        .buffer_unordered(UPKEEP_IN_FLIGHT)
        .for_each(|()| async {})
        .await;
    match outage.into_inner() {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// The upkeep of one event in [`maintain_all`]: none once an outage was seen (recorded in
/// `outage`), the breaker opened or the store is stopping.
async fn upkeep(
    s: &Shared,
    scripts: &Scripts,
    event: Arc<Event>,
    watch: &parking_lot::Mutex<&mut LeaseWatch>,
    outage: &parking_lot::Mutex<Option<StoreError>>,
    errors: &Throttle,
) {
    if outage.lock().is_some() || s.in_fallback() || s.stopping.load(Ordering::Acquire) {
        return;
    }
    if !s.scope.owns(&event) {
        return; // a resharding moved it to another shard meanwhile
    }
    let result = match maintain(s, scripts, &event).await {
        Ok(()) => watch_leases(s, scripts, &event, watch).await,
        Err(e) => Err(e),
    };
    match result {
        Ok(()) => {}
        Err(e) if e.is_outage() => {
            outage.lock().get_or_insert(e);
        }
        Err(e) => {
            if let Some(held_back) = errors.allow() {
                tracing::warn!(event = %event.id, error = %e, held_back, "reserve upkeep of this event failed; the other events go on");
            }
        }
    }
}

/// Settles, renews, tops up or hands back the reserve of one event.
async fn maintain(s: &Shared, scripts: &Scripts, event: &Arc<Event>) -> Result<(), StoreError> {
    let size = s.options.reserve;
    let er = s.event_reserve(event);
    settle(s, &scripts.settle, &er).await?;
    if s.recovered.lock().iter().any(|r| r.event == event.id) {
        // Sales an earlier run made from this reserve are not in the ledger yet: the list still
        // holds them, so it is not claimed, rotated or handed back until they are.
        return Ok(());
    }
    if s.redis.policy().limit() > 0 && !er.buyers.lock().seeded() {
        // Before this run's first reserve of the event is for sale: what earlier runs of this
        // instance sold each buyer from their reserves counts toward the limit (its recovered
        // sales were settled above, so Redis holds them all).
        let counts = s.redis.fallback_buyers(event).await?;
        er.buyers.lock().seed(counts);
    }
    let current = er.current.read().clone();
    let believed = current.held_in_redis() + er.unsettled.lock().len() as u64;
    let sent = s.now_ms();
    let keys = vec![
        er.event.keys.tickets.clone(),
        er.key.clone(),
        er.event.keys.leases.clone(),
        er.event.keys.reserved.clone(),
        er.event.keys.meta.clone(),
        er.event.keys.held.clone(),
        er.event.keys.stale.clone(),
    ];
    let args = vec![
        Value::from(s.redis.instance()),
        Value::Integer(size as i64),
        Value::Integer(s.options.lease.as_millis() as i64),
        Value::Integer(believed as i64),
    ];
    let span = tracing::info_span!(target: crate::otel::TARGET, "claim reserve", ticketd.event = %event.id, ticketd.reserve.size = size);
    let reply: Vec<Value> = traced(span, s.call(&scripts.claim, keys, args)).await?;
    let int = |i: usize| reply.get(i).and_then(Value::as_i64).unwrap_or(0);
    if int(0) != 1 {
        return Ok(()); // the event is not in Redis (yet): nothing to reserve
    }
    let lease_end = sent + s.options.lease.as_millis() as u64;
    er.sell_until_ms.store(
        lease_end.saturating_sub(s.options.margin().as_millis() as u64),
        Ordering::Release,
    );
    if int(4) > 0 {
        tracing::info!(event = %event.id, tickets = int(4), "this instance's held-back reserve is back in its hands (its sales were settled first)");
    }
    let pool = int(2) as u64;
    let listed = (int(5) == 1).then(|| {
        reply[6..]
            .iter()
            .filter_map(|v| v.as_bytes().and_then(|b| event.parse_ticket_id(b)))
            .collect::<Vec<u64>>()
    });
    let holding = listed.as_ref().map_or(believed, |l| l.len() as u64);
    if let Some(listed) = listed {
        rotate(&er, listed);
    }
    // Hand the reserve back when the pool runs low, and at once when this instance keeps none
    // (--fallback-reserve 0 after a run with reserves).
    if (pool < 2 * size || size == 0) && holding > 0 {
        return release(s, scripts, &er).await;
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
    if !fresh.is_empty() {
        // Tickets to sell here, also while Redis fails: no "sold out" from memory.
        er.event.sold_out.tickets_back();
    }
    *er.current.write() = Arc::new(Reserve::new(fresh));
    er.swapped.notify_waiters();
}

/// Closes the current reserve, settles it and hands every unsold ticket back to the pool.
async fn release(s: &Shared, scripts: &Scripts, er: &EventReserve) -> Result<(), StoreError> {
    er.current.read().close();
    settle(s, &scripts.settle, er).await?;
    if !er.unsettled.lock().is_empty() {
        return Ok(()); // never hand back a list that still holds sold tickets
    }
    let keys = vec![
        er.event.keys.tickets.clone(),
        er.key.clone(),
        er.event.keys.leases.clone(),
        er.event.keys.reserved.clone(),
        er.event.keys.held.clone(),
    ];
    // Exactly the unsold rest of the reserve we settled; a list of another length is not ours
    // to hand back (release.lua leaves it, and the next claim shows it to us).
    let expected = er.current.read().held_in_redis();
    let span = tracing::info_span!(target: crate::otel::TARGET, "release reserve", ticketd.event = %er.event.id, ticketd.tickets = expected);
    let call = s.call(
        &scripts.release,
        keys,
        vec![
            Value::from(s.redis.instance()),
            Value::Integer(expected as i64),
        ],
    );
    let returned: i64 = traced(span, call).await?;
    if returned == -2 {
        tracing::warn!(event = %er.event.id, expected, "the reserve in Redis is not the one this instance settled; not handed back (the next heartbeat reads it)");
        return Ok(());
    }
    *er.current.write() = Arc::new(Reserve::empty());
    er.swapped.notify_waiters();
    if returned > 0 {
        tracing::debug!(event = %er.event.id, returned, "reserve handed back to the pool");
    }
    Ok(())
}

/// Runs `call` inside `span` (a background span: disabled, and nearly free, while tracing is
/// off), recording its error on the span.
async fn traced<T>(
    span: tracing::Span,
    call: impl std::future::Future<Output = Result<T, StoreError>>,
) -> Result<T, StoreError> {
    let result = tracing::Instrument::instrument(call, span.clone()).await;
    if let Err(e) = &result {
        crate::otel::spans::record_error(&span, e);
    }
    result
}

/// Holds back the reserves of other instances whose lease this supervisor watched expire.
async fn watch_leases(
    s: &Shared,
    scripts: &Scripts,
    event: &Event,
    watch: &parking_lot::Mutex<&mut LeaseWatch>,
) -> Result<(), StoreError> {
    let client = s.redis.client();
    if !client.is_connected() {
        return Err(StoreError::NotConnected);
    }
    let leases: Vec<Value> = tokio::time::timeout(
        s.call_bound(),
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
    .map_err(|_| StoreError::Timeout(s.call_bound()))??;
    let now = unix_ms() as i64;
    let looked = Instant::now();
    for pair in leases.chunks(2) {
        let (Some(instance), Some(expiry)) = (pair[0].as_string(), pair.get(1).and_then(value_i64))
        else {
            continue;
        };
        if instance == s.redis.instance() {
            continue;
        }
        // Watched unrenewed for a whole lease, and expired (quarantine.lua checks the expiry
        // again by Redis's own clock).
        if !watch.lock().observe(&event.id, &instance, expiry, looked) || expiry > now {
            continue;
        }
        let keys = vec![
            event.keys.leases.clone(),
            EventKeys::reserve(&event.id, &instance),
            event.keys.reserved.clone(),
            event.keys.held.clone(),
        ];
        let span = tracing::info_span!(target: crate::otel::TARGET, "reap expired reserve", ticketd.event = %event.id, ticketd.instance = %instance);
        let call = s.call(
            &scripts.quarantine,
            keys,
            vec![Value::from(instance.as_str()), Value::Integer(expiry)],
        );
        let held: i64 = traced(span, call).await?;
        watch.lock().done(&event.id, &instance);
        if held >= 0 {
            s.redis.metrics().reserve_held_back();
            tracing::warn!(
                event = %event.id,
                instance,
                tickets = held,
                "HELD BACK the reserve of an instance whose lease expired (crashed, stalled or cut off): not for sale until it comes back and settles its journal, or an operator releases it (ticketd reserves)"
            );
        }
    }
    Ok(())
}

fn value_i64(v: &Value) -> Option<i64> {
    v.as_i64().or_else(|| v.as_f64().map(|f| f as i64))
}

/// Graceful shutdown, within `bound`: stop the supervisor; let the queued cancellations finish
/// while Redis answers (the rest are in the journal for the next run); settle every fallback
/// sale and hand every reserve back to the pool.
pub async fn shutdown(s: Arc<Shared>, bound: Duration) {
    s.stopping.store(true, Ordering::Release);
    s.wake.notify_one();
    let _work = s.work.lock().await;
    let scripts = Scripts::new();

    let drain_until = Instant::now() + bound / 3;
    while s.redis.pending_cancels() > 0
        && Instant::now() < drain_until
        && s.redis.client().is_connected()
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let queued = s.redis.stop_cancels(bound / 6).await.len() as u64;
    // Queued, or taken by a call still waiting on Redis: either way not done, still journaled.
    let left = s.redis.pending_cancels().max(queued);
    if left > 0 {
        tracing::warn!(
            left,
            "cancellations of purchases sold to nobody could not reach Redis; they are in the journal and are done by the next run on this --journal-dir"
        );
    }

    let reserves: Vec<Arc<EventReserve>> = s.reserves.read().values().cloned().collect();
    let (mut returned, mut failed) = (0u64, 0u64);
    if let Err(e) = crate::store::settle::settle_recovered(&s, &scripts.settle).await {
        tracing::warn!(error = %e, "journal: sales of the previous run still not settled");
        failed += 1;
    }
    for er in reserves {
        let before = er.current.read().unsold();
        match release(&s, &scripts, &er).await {
            Ok(()) if er.unsettled.lock().is_empty() => returned += before,
            Ok(()) | Err(_) => failed += 1,
        }
    }
    if failed == 0 {
        tracing::info!(returned, "reserves handed back to the pool");
        if s.journal.dirty() && !s.owes() && s.redis.pending_cancels() == 0 {
            // Everything journaled is in Redis: the next start has nothing to settle.
            if let Some(mark) = s.journal.checkpoint().await {
                s.journal.forget_for(s.party, mark);
                let _ = s.journal.checkpoint().await; // waits for the forget
            }
        }
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
            "could not hand back every reserve: the fallback sales listed are not in the ledger yet; they are in the journal and are settled when this instance starts again on the same --journal-dir (its reserves are held back meanwhile)"
        );
    }
}
