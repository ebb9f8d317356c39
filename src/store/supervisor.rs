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
use crate::otel::spans::traced;
use crate::store::claim::{claim, events_per_call, value_i64, Claim, Claimed};
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
    // Events whose claim failed alone (a damaged key): claimed alone from then on, so that
    // they do not fail every call they share with others.
    let mut alone: HashSet<Box<str>> = HashSet::new();
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
            match maintain_all(&s, &scripts, &mut watch, &mut alone, &errors).await {
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

/// Events whose upkeep is in flight at once on a cluster's shard, where a claim call carries
/// one event. Each upkeep is a few calls in turn, and each call that writes waits for Redis's
/// `fsync` (`appendfsync always`), so one event after the other took 8 s a round at 10,000
/// events (design.md, Measurements); this many overlap instead.
const UPKEEP_IN_FLIGHT: usize = 32;

/// Claim calls in flight at once on a single Redis, each for up to
/// [`crate::store::claim::CLAIM_EVENTS`] events: a round of 10,000 events is 157 calls, four of
/// them waiting on Redis at a time, so a slow `fsync` (tens of ms while another process writes
/// to the disk) still keeps a round within a heartbeat or two, while a purchase never queues
/// behind more than four calls' work.
const CLAIM_CALLS_IN_FLIGHT: usize = 4;

/// One upkeep of every event: on a single Redis [`events_per_call`] events per claim call,
/// [`CLAIM_CALLS_IN_FLIGHT`] calls at a time; on a cluster's shard one event per call,
/// [`UPKEEP_IN_FLIGHT`] at a time; the events of `alone` one per call. A failure of one event
/// (a damaged key, a script error) is logged and the others go on; an outage ends the round
/// once the upkeeps already started have finished (no new one starts), since every other call
/// would fail as well.
async fn maintain_all(
    s: &Shared,
    scripts: &Scripts,
    watch: &mut LeaseWatch,
    alone: &mut HashSet<Box<str>>,
    errors: &Throttle,
) -> Result<(), StoreError> {
    if !s.recovered.lock().is_empty() {
        crate::store::settle::settle_recovered(s, &scripts.settle).await?;
    }
    let (per_call, in_flight) = if s.redis.binds_keys() {
        (events_per_call(s.options.reserve), CLAIM_CALLS_IN_FLIGHT)
    } else {
        (1, UPKEEP_IN_FLIGHT)
    };
    let (solo, events): (Vec<_>, Vec<_>) =
        s.events().into_iter().partition(|e| alone.contains(&*e.id));
    // Events gone from the catalogue or the shard leave the set.
    let current: HashSet<&str> = solo.iter().map(|e| &*e.id).collect();
    alone.retain(|id| current.contains(&**id));
    let round = Round {
        s,
        scripts,
        watch: parking_lot::Mutex::new(watch),
        alone: parking_lot::Mutex::new(alone),
        outage: parking_lot::Mutex::new(None),
        errors,
    };
    use futures_util::StreamExt as _;
    let groups = events
        .chunks(per_call)
        .map(<[Arc<Event>]>::to_vec)
        .chain(solo.into_iter().map(|e| vec![e]));
    futures_util::stream::iter(groups.map(|group| round.upkeep(group)))
        .buffer_unordered(in_flight)
        .for_each(|()| async {})
        .await;
    match round.outage.into_inner() {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// One round of [`maintain_all`]: what its upkeeps share.
struct Round<'a, 'w> {
    s: &'a Shared,
    scripts: &'a Scripts,
    watch: parking_lot::Mutex<&'w mut LeaseWatch>,
    /// Events claimed alone (see [`run`]): added when an event fails alone, other than by an
    /// outage, in the retry of a failed call of several while another succeeds (so never on a
    /// cluster's shard, whose calls carry one event); removed when a claim of it succeeds.
    alone: parking_lot::Mutex<&'w mut HashSet<Box<str>>>,
    /// The first outage seen: no upkeep starts after it.
    outage: parking_lot::Mutex<Option<StoreError>>,
    errors: &'a Throttle,
}

/// What an event's upkeep does after settling.
enum Next {
    /// Claim: renew the lease, top up the reserve.
    Claim(Claim),
    /// Only watch the other instances' leases: sales an earlier run made from this reserve
    /// are not in the ledger yet, so it is not claimed, rotated or handed back until they are.
    Watch,
}

impl Round<'_, '_> {
    /// The upkeep of `group` (events whose keys are on one node): settle each, claim them all
    /// in one call ([`Self::claim_group`]), then act on each event's part: first what is local
    /// for every part (the selling deadline, a changed reserve list), so that no part waits
    /// behind another's calls, then the calls that follow (hand-backs, held-back reserves)
    /// together.
    async fn upkeep(&self, mut group: Vec<Arc<Event>>) {
        let s = self.s;
        if self.stopped() {
            return;
        }
        group.retain(|e| s.scope.owns(e)); // a resharding moved it to another shard meanwhile
        let nexts =
            futures_util::future::join_all(group.iter().cloned().map(|e| self.prepare(e))).await;
        let mut claims = Vec::with_capacity(nexts.len());
        let mut watch_only = Vec::new();
        for (event, next) in group.iter().zip(nexts) {
            match next {
                Ok(Next::Claim(c)) => claims.push(c),
                Ok(Next::Watch) => watch_only.push(event),
                Err(e) => self.report(event, Err(e)),
            }
        }
        let mut follow_ups = Vec::with_capacity(claims.len());
        if !claims.is_empty() && !self.stopped() {
            for (c, answer) in self.claim_group(&claims).await {
                match answer {
                    Ok((part, seen)) => {
                        let (release, leases) = self.apply(c, part, seen.sent);
                        follow_ups.push(self.follow_up(c, release, leases, seen));
                    }
                    Err(e) => self.report(&c.reserve.event, Err(e)),
                }
            }
        }
        let watches = watch_only.iter().map(|e| self.watch_alone(e));
        let (followed, watched) = futures_util::future::join(
            futures_util::future::join_all(follow_ups),
            futures_util::future::join_all(watches),
        )
        .await;
        for (event, result) in followed.into_iter().chain(watched) {
            self.report(event, result);
        }
    }

    /// One claim call for `claims`. If it fails other than by an outage (one event's damaged
    /// key fails the whole call, after the parts before it were done), each event is claimed
    /// alone, so only the damaged one goes without its lease (a part that was done before the
    /// error may have changed its reserve list: the claim alone names the generation the
    /// instance acted on, [`EventReserve::generation`], and gets the list). Answers each claim
    /// tried, with when its reply was seen.
    async fn claim_group<'c>(
        &self,
        claims: &'c [Claim],
    ) -> Vec<(&'c Claim, Result<(Claimed, Seen), StoreError>)> {
        let s = self.s;
        let sent = s.now_ms();
        let e = match claim(s, &self.scripts.claim, claims).await {
            Ok(parts) => {
                if let [one] = claims {
                    self.alone.lock().remove(&*one.reserve.event.id);
                }
                let seen = Seen::now(sent);
                return claims
                    .iter()
                    .zip(parts.into_iter().map(|p| Ok((p, seen))))
                    .collect();
            }
            Err(e) if e.is_outage() => {
                return claims.iter().map(|c| (c, Err(e.clone()))).collect();
            }
            Err(e) if claims.len() == 1 => {
                return vec![(&claims[0], Err(e))]; // an event of `alone` stays in it
            }
            Err(e) => e,
        };
        // The event whose part fails alone is logged by name (report); this says why the calls
        // went one at a time.
        tracing::debug!(events = claims.len(), error = %e, "a reserve claim of several events failed; claiming them one at a time");
        let mut answers = Vec::with_capacity(claims.len());
        for c in claims {
            if self.stopped() {
                break;
            }
            let sent = s.now_ms();
            let answer = claim(s, &self.scripts.claim, std::slice::from_ref(c))
                .await
                .map(|mut parts| (parts.remove(0), Seen::now(sent)));
            if let Err(e) = &answer {
                if e.is_outage() {
                    self.outage.lock().get_or_insert(e.clone()); // no more calls this round
                }
            }
            answers.push((c, answer));
        }
        // Alone from now on: the events that failed alone while another succeeded (when none
        // did, the fault is Redis's, not an event's).
        if answers.iter().any(|(_, a)| a.is_ok()) {
            let mut alone = self.alone.lock();
            for (c, a) in &answers {
                if matches!(a, Err(e) if !e.is_outage()) {
                    alone.insert(c.reserve.event.id.clone());
                }
            }
        }
        answers
    }

    /// Whether no upkeep should start: an outage was seen, the breaker opened or the store is
    /// stopping.
    fn stopped(&self) -> bool {
        self.outage.lock().is_some()
            || self.s.in_fallback()
            || self.s.stopping.load(Ordering::Acquire)
    }

    /// Records an outage (it ends the round), or logs another failure of `event`'s upkeep.
    fn report(&self, event: &Event, result: Result<(), StoreError>) {
        match result {
            Ok(()) => {}
            Err(e) if e.is_outage() => {
                self.outage.lock().get_or_insert(e);
            }
            Err(e) => {
                if let Some(held_back) = self.errors.allow() {
                    tracing::warn!(event = %event.id, error = %e, held_back, "reserve upkeep of this event failed; the other events go on");
                }
            }
        }
    }

    /// Before the claim: settles the event's fallback sales, and before this run's first
    /// reserve of the event is for sale, reads what earlier runs sold each buyer from theirs.
    async fn prepare(&self, event: Arc<Event>) -> Result<Next, StoreError> {
        let s = self.s;
        let er = s.event_reserve(&event);
        settle(s, &self.scripts.settle, &er).await?;
        if s.recovered.lock().iter().any(|r| r.event == event.id) {
            return Ok(Next::Watch);
        }
        if s.redis.policy().limit() > 0 && !er.buyers.lock().seeded() {
            // What earlier runs of this instance sold each buyer from their reserves counts
            // toward the limit (its recovered sales were settled above, so Redis holds them).
            let counts = s.redis.fallback_buyers(&event).await?;
            er.buyers.lock().seed(counts);
        }
        let believed = er.current.read().held_in_redis() + er.unsettled.lock().len() as u64;
        Ok(Next::Claim(Claim {
            reserve: er,
            believed,
        }))
    }

    /// The local part of acting on one event's part of a claim sent at `sent` (ms since the
    /// store's start): the new selling deadline, a reserve list that changed. Returns whether
    /// the reserve is to be handed back (the pool runs low) and the other instances' leases.
    fn apply(&self, c: &Claim, part: Claimed, sent: u64) -> (bool, Vec<(String, i64)>) {
        let s = self.s;
        let er = &c.reserve;
        let mut release = false;
        if part.seeded {
            let size = s.options.reserve;
            let lease_end = sent + s.options.lease.as_millis() as u64;
            er.sell_until_ms.store(
                lease_end.saturating_sub(s.options.margin().as_millis() as u64),
                Ordering::Release,
            );
            if part.back > 0 {
                tracing::info!(event = %er.event.id, tickets = part.back, "this instance's held-back reserve is back in its hands (its sales were settled first)");
            }
            let holding = part.listed.as_ref().map_or(c.believed, |l| l.len() as u64);
            if let Some(listed) = part.listed {
                rotate(er, listed);
            }
            // What `current` now holds is that generation of the list (unlisted: the same one
            // as before, unchanged).
            er.generation.store(part.generation, Ordering::Release);
            // Hand the reserve back when the pool runs low, and at once when this instance
            // keeps none (--fallback-reserve 0 after a run with reserves).
            release = (part.pool < 2 * size || size == 0) && holding > 0;
        }
        (release, part.leases)
    }

    /// The calls after a claim of `c`'s event: the hand-back if `release`, then the watch of
    /// the other instances' `leases` (also for an event not in Redis yet). None once the round
    /// stopped.
    async fn follow_up<'c>(
        &self,
        c: &'c Claim,
        release: bool,
        leases: Vec<(String, i64)>,
        seen: Seen,
    ) -> (&'c Event, Result<(), StoreError>) {
        let event = &*c.reserve.event;
        if self.stopped() {
            return (event, Ok(()));
        }
        if release {
            if let Err(e) = self::release(self.s, self.scripts, &c.reserve).await {
                return (event, Err(e));
            }
        }
        (event, self.watch_leases(event, &leases, seen).await)
    }

    /// The lease watch of an event that is not claimed this round ([`Next::Watch`]), on a read
    /// of its leases.
    async fn watch_alone<'e>(&self, event: &'e Arc<Event>) -> (&'e Event, Result<(), StoreError>) {
        let result = match read_leases(self.s, event).await {
            Ok(leases) => self.watch_leases(event, &leases, Seen::now(0)).await,
            Err(e) => Err(e),
        };
        (event, result)
    }

    /// Holds back the reserves of other instances whose lease this supervisor watched expire,
    /// of the `leases` (instance, expiry) Redis answered when `seen`.
    async fn watch_leases(
        &self,
        event: &Event,
        leases: &[(String, i64)],
        seen: Seen,
    ) -> Result<(), StoreError> {
        let s = self.s;
        let (now, looked) = (seen.unix_ms, seen.at);
        for (instance, expiry) in leases {
            if instance == s.redis.instance() {
                continue;
            }
            // Watched unrenewed for a whole lease, and expired (quarantine.lua checks the
            // expiry again by Redis's own clock).
            if !self
                .watch
                .lock()
                .observe(&event.id, instance, *expiry, looked)
                || *expiry > now
            {
                continue;
            }
            let keys = vec![
                event.keys.leases.clone(),
                EventKeys::reserve(&event.id, instance),
                event.keys.reserved.clone(),
                event.keys.held.clone(),
            ];
            let span = tracing::info_span!(target: crate::otel::TARGET, "reap expired reserve", ticketd.event = %event.id, ticketd.instance = %instance);
            let call = s.call(
                &self.scripts.quarantine,
                keys,
                vec![Value::from(instance.as_str()), Value::Integer(*expiry)],
            );
            let held: i64 = traced(span, call).await?;
            self.watch.lock().done(&event.id, instance);
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
}

/// When a claim's reply was seen: the watch of leases dates what it read by this, not by when
/// it gets to them.
#[derive(Clone, Copy)]
struct Seen {
    /// When the claim was sent, in ms since the store's start (the selling deadline counts
    /// from it).
    sent: u64,
    /// When the reply came.
    at: Instant,
    /// The same, as unix ms (the leases' clock).
    unix_ms: i64,
}

impl Seen {
    fn now(sent: u64) -> Self {
        Self {
            sent,
            at: Instant::now(),
            unix_ms: unix_ms() as i64,
        }
    }
}

/// Every instance's lease on `event`, read apart from a claim (an event this instance does
/// not claim yet: see [`Next::Watch`]).
async fn read_leases(s: &Shared, event: &Event) -> Result<Vec<(String, i64)>, StoreError> {
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
    Ok(leases
        .chunks(2)
        .filter_map(|pair| Some((pair[0].as_string()?, value_i64(pair.get(1)?)?)))
        .collect())
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
        er.event.keys.reserve_gen.clone(),
    ];
    // Exactly the unsold rest of the reserve we settled; a list of another length or
    // generation is not ours to hand back (release.lua leaves it, and the next claim shows it
    // to us).
    let expected = er.current.read().held_in_redis();
    let generation = er.generation.load(Ordering::Acquire);
    let span = tracing::info_span!(target: crate::otel::TARGET, "release reserve", ticketd.event = %er.event.id, ticketd.tickets = expected);
    let call = s.call(
        &scripts.release,
        keys,
        vec![
            Value::from(s.redis.instance()),
            Value::Integer(expected as i64),
            Value::Integer(generation),
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
