//! Group commit for purchases: the purchases of one event that wait at the same moment share one
//! run of `lua/purchase.lua`.
//!
//! One batcher task per pooled connection takes every purchase queued for it, sends them as one
//! script call per event (at most [`SCRIPT_MAX`] purchases each, all calls of a round pipelined
//! in one write; on a single Redis, one anonymous call carries the batches of up to
//! [`CALL_EVENTS`] events), and waits for the answers before it takes the next round. While a
//! round is in Redis the next one gathers, so a batch is as large as the purchases that arrived
//! during one round trip: one purchase when the server is idle (no added wait, no timer), about
//! a hundred under a flash sale. Redis then runs one script, and ticketd writes one short command and
//! reads one short reply, for all of them (design.md, Measurements).
//!
//! A call carries its own batch id, which the script records with the tickets it sold, so a
//! re-sent call answers the same tickets and a cancelled one sells nothing. A batch whose
//! outcome is unknown (the round timed out, the connection broke, the reply did not parse) is
//! queued to be made void, and the tickets of buyers who left before their answer arrived are
//! queued to be given back: here, in one place.

use std::ops::Range;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use crossbeam_utils::CachePadded;
use fred::clients::Client;
use fred::interfaces::ClientLike;
use fred::types::Value;
use opentelemetry::trace::SpanContext;
use tokio::sync::{mpsc, oneshot};
use tokio::time::timeout;
use tracing::Span;

use crate::event::{Answers, Event};
use crate::metrics::Metrics;
use crate::otel::spans;
use crate::store::cancel::Cancels;
use crate::store::ids::Ids;
use crate::store::pool::PoolCell;
use crate::store::purchaser::{BuyerPolicy, Purchaser};
use crate::store::scripts::{LuaScript, PURCHASE};
use crate::store::{Sale, StoreError};

/// Most purchases in one script call: bounds how long one call holds Redis.
pub const SCRIPT_MAX: usize = 256;

/// Most purchases one round takes from its queue.
const ROUND_MAX: usize = 4 * SCRIPT_MAX;

/// What a waiting purchase is told.
pub type Answer = Result<Sale, StoreError>;

/// One purchase waiting for its batch.
#[derive(Debug)]
pub struct Order {
    /// The event to sell a ticket of.
    pub event: Arc<Event>,
    /// Where the answer goes.
    pub reply: oneshot::Sender<Answer>,
    /// The purchase's span, when tracing is on and it is sampled: the script call that carries
    /// it links to it. Boxed, so an untraced order stays small.
    pub trace: Option<Box<SpanContext>>,
    /// The known buyer and key; `None` for an anonymous purchase.
    pub who: Option<Arc<Purchaser>>,
}

/// What every batcher task shares.
#[derive(Debug)]
struct Context {
    script: LuaScript,
    timeout: Duration,
    /// Replicas that must hold a round's sales before its buyers hear of them.
    replica_acks: u32,
    /// The per-buyer limit and key lifetime, passed to calls that carry buyers.
    policy: BuyerPolicy,
    /// Whether this is a single Redis, where a script may take keys of any slot: the purchase
    /// script then binds each key to its event itself (on a cluster the store binds them before
    /// the call), and one anonymous call carries several events' batches.
    single_node: bool,
    metrics: Arc<Metrics>,
    cancels: Cancels,
    ids: Arc<Ids>,
}

/// The batcher tasks, one per pooled connection, and the round robin over them.
#[derive(Debug)]
pub struct Batcher {
    queues: Box<[mpsc::UnboundedSender<Order>]>,
    next: CachePadded<AtomicUsize>,
}

impl Batcher {
    /// Spawns one batcher task per client of the `size` clients of `pool`; each round
    /// (including the wait for `replica_acks` replicas) is bounded by `bound`, and each call
    /// takes its batch id from `ids`; calls with buyers follow `policy`.
    #[allow(clippy::too_many_arguments)]
    pub fn start(
        pool: &Arc<PoolCell>,
        size: usize,
        bound: Duration,
        replica_acks: u32,
        policy: BuyerPolicy,
        single_node: bool,
        metrics: Arc<Metrics>,
        cancels: Cancels,
        ids: Arc<Ids>,
    ) -> Self {
        let context = Arc::new(Context {
            script: LuaScript::new(PURCHASE),
            timeout: bound,
            replica_acks,
            policy,
            single_node,
            metrics,
            cancels,
            ids,
        });
        let queues = (0..size.max(1))
            .map(|i| {
                let (tx, rx) = mpsc::unbounded_channel();
                tokio::spawn(run(pool.clone(), i, rx, context.clone()));
                tx
            })
            .collect();
        Self {
            queues,
            next: CachePadded::new(AtomicUsize::new(0)),
        }
    }

    /// Queues `order` for the next round of one of the batchers.
    ///
    /// # Errors
    /// The order back, when the batchers have stopped (the runtime is shutting down).
    pub fn submit(&self, order: Order) -> Result<(), Order> {
        let i = self.next.fetch_add(1, Relaxed) % self.queues.len();
        self.queues[i].send(order).map_err(|e| e.0)
    }
}

/// One batcher, on client `i` of the current pool: rounds until every sender is gone.
async fn run(
    pool: Arc<PoolCell>,
    i: usize,
    mut rx: mpsc::UnboundedReceiver<Order>,
    cx: Arc<Context>,
) {
    let mut orders = Vec::with_capacity(ROUND_MAX);
    while rx.recv_many(&mut orders, ROUND_MAX).await > 0 {
        let client = pool.nth(i);
        let outage = round(&client, &mut orders, &cx).await;
        if outage {
            // Redis just failed: what queued meanwhile was never sent, so nothing of it can have
            // sold. It is answered now instead of waiting out another timeout, and waits with the
            // round's purchases for the probe that opens the breaker or sends them to Redis
            // again (`Shared::confirm_outage`).
            while let Ok(order) = rx.try_recv() {
                let _ = order.reply.send(Err(StoreError::NotSent));
            }
        }
    }
}

/// Sends `orders` (drained) as one script call per event and chunk, pipelined, and answers each.
/// Returns whether Redis looked down.
async fn round(client: &Client, orders: &mut Vec<Order>, cx: &Context) -> bool {
    // A buyer that gave up before its purchase was sent (disconnected) is owed nothing.
    orders.retain(|o| !o.reply.is_closed());
    if orders.is_empty() {
        return false;
    }
    // A connection being made again (Redis restarted a moment ago) is waited for, within the
    // round's bound: the next connection attempt decides. Failing at once would open the
    // breaker on a Redis that answers again, right after `/readyz` said ready.
    if !client.is_connected()
        && !matches!(
            timeout(cx.timeout, client.wait_for_connect()).await,
            Ok(Ok(()))
        )
    {
        for order in orders.drain(..) {
            let _ = order.reply.send(Err(StoreError::NotConnected));
        }
        return true;
    }
    // Group by event (a round usually holds one or a few), keeping arrival order within each.
    orders.sort_by_key(|o| Arc::as_ptr(&o.event) as usize);
    let batches = batches(orders);
    let calls: Vec<(Range<usize>, Bytes)> = calls(orders, &batches, cx.single_node)
        .into_iter()
        .map(|call| (call, cx.ids.id(cx.ids.next())))
        .collect();
    let sent = calls.iter().map(|(call, id)| {
        cx.metrics.redis_batch();
        let (keys, args) = if call.len() == 1 {
            one_event(&orders[batches[call.start].clone()], id, cx)
        } else {
            many_events(orders, &batches[call.clone()], id)
        };
        cx.script
            .run::<Value>(client, keys, args, || cx.metrics.script_reloaded())
    });
    // One span per call, only for calls that carry a sampled purchase: nothing to build (and no
    // allocation) when tracing is off or nothing in the round was sampled.
    let mut spans = if crate::otel::enabled() && orders.iter().any(|o| o.trace.is_some()) {
        calls
            .iter()
            .map(|(call, _)| {
                let range = batches[call.start].start..batches[call.end - 1].end;
                let carried = orders[range.clone()]
                    .iter()
                    .filter_map(|o| o.trace.as_deref());
                spans::script_call(&orders[range.start].event, range.len(), carried)
            })
            .collect()
    } else {
        Vec::new()
    }
    .into_iter();
    let started = tokio::time::Instant::now();
    let mut replies = timeout(cx.timeout, futures_util::future::join_all(sent))
        .await
        .map(Vec::into_iter);
    // The sales count only once the replicas hold them: a primary that fails over after
    // answering must not take them along (design.md, Redis Cluster).
    let mut unreplicated = None;
    if cx.replica_acks > 0 && replies.is_ok() {
        let left = cx.timeout.saturating_sub(started.elapsed());
        let fence = &orders[0].event.keys.fence;
        if let Err(e) = crate::store::pool::replicated(client, fence, cx.replica_acks, left).await {
            unreplicated = Some(e);
        }
    }
    let mut outage = false;
    let mut orders = orders.drain(..);
    for (call, id) in calls {
        let reply = match &mut replies {
            Ok(replies) => replies
                .next()
                .expect("one reply per call")
                .map_err(StoreError::Redis),
            Err(_) => Err(StoreError::Timeout(cx.timeout)),
        };
        let reply = match (&unreplicated, reply) {
            (Some(e), Ok(_)) => Err(e.clone()),
            (_, reply) => reply,
        };
        let events = call.len();
        let mut parts = reply.and_then(|v| split(v, events));
        let span = spans.next();
        let (mut sold, mut failed) = (0, None);
        for (j, range) in batches[call].iter().enumerate() {
            let batch: Vec<Order> = orders.by_ref().take(range.len()).collect();
            let reply = match &mut parts {
                Ok(parts) => Reply::parse(&parts[j], &batch[0].event),
                Err(e) => Err(e.clone()),
            }
            .and_then(|r| r.fits(batch.len()));
            match &reply {
                Ok(r) => sold += r.tickets.len(),
                Err(e) => failed = Some(e.clone()),
            }
            match reply {
                Ok(reply) => answer(batch, &reply, id.clone(), cx),
                Err(e) => {
                    outage |= e.is_outage();
                    // Redis refusing a call before running it (MOVED, CLUSTERDOWN...) proves it
                    // sold nothing only when nothing was re-sent: fred re-sends nothing when
                    // replicas must acknowledge (the cluster's setting).
                    if !(e.never_ran() && cx.replica_acks > 0) {
                        // The call may have run: make the batch void, whatever it sold.
                        cx.cancels
                            .void(&batch[0].event, id.clone(), batch.len() as u64);
                    }
                    for order in batch {
                        let _ = order.reply.send(Err(e.clone()));
                    }
                }
            }
        }
        if let Some(span) = span {
            record_call(&span, sold, failed.as_ref());
        }
    }
    outage
}

/// The keys and arguments of a call for one event's `batch`: anonymous, or with buyers (the
/// limit, the key lifetime, the event when the script binds keys, then (buyer, key) per
/// purchase).
fn one_event(batch: &[Order], id: &Bytes, cx: &Context) -> (Vec<fred::types::Key>, Vec<Value>) {
    let mut args = vec![Value::Bytes(id.clone()), Value::Integer(batch.len() as i64)];
    let event = &batch[0].event;
    if !batch.iter().any(|o| o.who.is_some()) {
        return (event.keys.script_keys(), args);
    }
    let keys = event
        .keys
        .buyer_script_keys(Answers::of_single_node(cx.single_node));
    args.reserve(3 + 2 * batch.len());
    args.push(Value::Integer(i64::from(cx.policy.limit())));
    args.push(Value::Integer(cx.policy.key_ttl_ms()));
    args.push(Value::from(if cx.single_node { &*event.id } else { "" }));
    for o in batch {
        let (buyer, key) = o
            .who
            .as_deref()
            .map_or(("", ""), |w| (&*w.buyer, w.key_str()));
        args.push(Value::from(buyer));
        args.push(Value::from(key));
    }
    (keys, args)
}

/// The keys and arguments of one anonymous call for several events (`batches` of `orders`, one
/// per event): six keys per event, and the purchases of each event, space-separated.
fn many_events(
    orders: &[Order],
    batches: &[Range<usize>],
    id: &Bytes,
) -> (Vec<fred::types::Key>, Vec<Value>) {
    let mut keys = Vec::with_capacity(6 * batches.len());
    let mut counts = String::with_capacity(4 * batches.len());
    for range in batches {
        keys.extend(orders[range.start].event.keys.script_keys());
        if !counts.is_empty() {
            counts.push(' ');
        }
        counts.push_str(itoa::Buffer::new().format(range.len()));
    }
    (keys, vec![Value::Bytes(id.clone()), Value::from(counts)])
}

/// The reply of a call for `events` events as one reply per event: the call's own reply for
/// one, and four values each, in turn, for several.
fn split(reply: Value, events: usize) -> Result<Vec<Value>, StoreError> {
    if events == 1 {
        return Ok(vec![reply]);
    }
    let bad = || StoreError::Protocol(format!("a purchase reply for {events} events"));
    let Value::Array(items) = reply else {
        return Err(bad());
    };
    if items.len() != 4 * events {
        return Err(bad());
    }
    let mut items = items.into_iter();
    Ok((0..events)
        .map(|_| Value::Array(items.by_ref().take(4).collect()))
        .collect())
}

/// Records on the span of one script call what it sold, or why it failed.
fn record_call(span: &Span, sold: usize, failed: Option<&StoreError>) {
    match failed {
        None => {
            span.record("ticketd.batch.sold", sold);
        }
        Some(e) => spans::record_error(span, e),
    }
}

/// The ranges of `orders` (sorted by event) that go into one script call each.
fn batches(orders: &[Order]) -> Vec<Range<usize>> {
    let mut out = Vec::new();
    let mut start = 0;
    for group in orders.chunk_by(|a, b| Arc::ptr_eq(&a.event, &b.event)) {
        for chunk in group.chunks(SCRIPT_MAX) {
            out.push(start..start + chunk.len());
            start += chunk.len();
        }
    }
    out
}

/// Most events one anonymous script call carries (six keys each).
pub const CALL_EVENTS: usize = 64;

/// The script calls of a round: ranges of `batches` (of `orders`, sorted by event), each one
/// call. With `group` (a single Redis, where a script may take keys of any slot), consecutive
/// anonymous batches of different events share a call, up to [`SCRIPT_MAX`] purchases and
/// [`CALL_EVENTS`] events; otherwise, and for a batch with buyers, a batch is a call alone.
fn calls(orders: &[Order], batches: &[Range<usize>], group: bool) -> Vec<Range<usize>> {
    let anonymous = |r: &Range<usize>| orders[r.clone()].iter().all(|o| o.who.is_none());
    let mut out: Vec<Range<usize>> = Vec::new();
    let mut size = 0;
    for (i, range) in batches.iter().enumerate() {
        if let Some(last) = out.last_mut() {
            let prior = &batches[last.end - 1];
            // Never one event id twice in a call, whatever the `Arc`s: after a capacity change
            // the catalogue holds a new `Event` for the id while orders of the old one still
            // queue, and the second part of one call under the same batch id would answer the
            // first part's tickets again (a re-sent call's answer) to other buyers.
            let id = &orders[range.start].event.id;
            let joins = group
                && last.len() < CALL_EVENTS
                && size + range.len() <= SCRIPT_MAX
                && anonymous(prior)
                && anonymous(range)
                && batches[last.clone()]
                    .iter()
                    .all(|r| orders[r.start].event.id != *id);
            if joins {
                last.end = i + 1;
                size += range.len();
                continue;
            }
        }
        out.push(i..i + 1);
        size = range.len();
    }
    out
}

/// What the script did with one batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Status {
    /// Sold now (1), or before, to an earlier copy of a re-sent call (2): the first purchases
    /// get the reply's tickets, the rest found the pool empty.
    Sold,
    /// The batch was made void before it ran (-1): nothing sold.
    Cancelled,
    /// The event is not in this Redis (-2): nothing sold, never "sold out".
    Missing,
}

/// What the script decided for one purchase of a batch with buyers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Said {
    /// Sold now: the next ticket of the reply.
    Sold,
    /// The pool was empty.
    Empty,
    /// The buyer holds the limit already.
    Limit,
    /// The same key is used by an earlier purchase of the batch.
    InUse,
    /// The key was first used for another event.
    Reused,
    /// The key was answered before: this ticket and remaining count again.
    Replayed(u64, u64),
}

/// The script's reply for one batch (see `lua/purchase.lua`).
#[derive(Debug, PartialEq, Eq)]
struct Reply {
    status: Status,
    /// Pool + reserves after the call.
    unsold: u64,
    /// Held in reserves.
    reserved: u64,
    /// The tickets sold (number, id), in the order the batch's purchases get them.
    tickets: Vec<(u64, Bytes)>,
    /// With buyers: one decision per purchase (the sold ones take `tickets` in order).
    said: Option<Vec<Said>>,
}

impl Reply {
    /// Reads `{status, unsold, reserved, "ticket ticket ..."}` of `event`.
    fn parse(reply: &Value, event: &Event) -> Result<Self, StoreError> {
        let bad = |why: &str| StoreError::Protocol(format!("{why} in purchase reply"));
        let Value::Array(items) = reply else {
            return Err(bad("no array"));
        };
        let (status, unsold, reserved, tickets, said) = match items.as_slice() {
            [a, b, c, d] => (a, b, c, d, None),
            [a, b, c, d, e] => (a, b, c, d, Some(e)),
            _ => return Err(bad("wrong length")),
        };
        let number = |v: &Value| v.as_u64().ok_or_else(|| bad("no count"));
        let raw = match tickets {
            Value::String(_) | Value::Bytes(_) => {
                tickets.clone().into_bytes().expect("a string has bytes")
            }
            _ => return Err(bad("no tickets")),
        };
        let mut tickets = Vec::new();
        let mut start = 0;
        for id in raw.split(|&b| b == b' ') {
            if !id.is_empty() {
                let n = event
                    .parse_ticket_id(id)
                    .ok_or_else(|| bad("foreign ticket id"))?;
                tickets.push((n, raw.slice(start..start + id.len())));
            }
            start += id.len() + 1;
        }
        let status = match status.as_i64() {
            Some(1 | 2) => Status::Sold,
            Some(-1) => Status::Cancelled,
            Some(-2) => Status::Missing,
            Some(_) => return Err(bad("unknown status")),
            None => return Err(bad("no status")),
        };
        let said = match said {
            None => None,
            Some(v) => {
                let raw = v.as_str().ok_or_else(|| bad("no outcomes"))?;
                let mut out = Vec::new();
                for token in raw.split(' ').filter(|t| !t.is_empty()) {
                    out.push(Said::parse(token, event).ok_or_else(|| bad("unknown outcome"))?);
                }
                Some(out)
            }
        };
        Ok(Self {
            status,
            unsold: number(unsold)?,
            reserved: number(reserved)?,
            tickets,
            said,
        })
    }
}

impl Reply {
    /// The reply itself, if its decisions fit a batch of `n` purchases: one per purchase, and
    /// one sale per ticket. Anything else is not understood (the batch is made void, so no
    /// ticket stays sold to nobody).
    fn fits(self, n: usize) -> Result<Self, StoreError> {
        let Some(said) = &self.said else {
            return Ok(self);
        };
        let sold = said.iter().filter(|s| **s == Said::Sold).count();
        let settled = matches!(self.status, Status::Sold);
        if settled && (said.len() != n || sold != self.tickets.len()) {
            return Err(StoreError::Protocol(format!(
                "purchase reply decides {} of {n} purchases and sells {sold} for {} tickets",
                said.len(),
                self.tickets.len()
            )));
        }
        Ok(self)
    }
}

impl Said {
    /// One token of the outcomes: `S`, `-`, `L`, `K`, `U` or `R:<ticket>:<remaining>`.
    fn parse(token: &str, event: &Event) -> Option<Self> {
        Some(match token {
            "S" => Said::Sold,
            "-" => Said::Empty,
            "L" => Said::Limit,
            "K" => Said::InUse,
            "U" => Said::Reused,
            _ => {
                let rest = token.strip_prefix("R:")?;
                let (ticket, remaining) = rest.rsplit_once(':')?;
                Said::Replayed(
                    event.parse_ticket_id(ticket.as_bytes())?,
                    remaining.parse().ok()?,
                )
            }
        })
    }
}

/// Answers the purchases of one batch from its reply: the first ones get the tickets, in order;
/// the rest found the pool empty (with buyers, each purchase gets the script's own decision).
/// Tickets whose buyers left are queued to be given back.
fn answer(batch: Vec<Order>, reply: &Reply, id: Bytes, cx: &Context) {
    let m = reply.tickets.len();
    let mut orphans = Vec::new();
    let event = batch[0].event.clone();
    let empty = || {
        if reply.reserved > 0 {
            Err(StoreError::HeldInReserves(reply.reserved))
        } else if event.limbo.load(Relaxed) > 0 {
            // Tickets this instance is still giving back may return: not sold out yet.
            Err(StoreError::InLimbo)
        } else {
            Ok(Sale::SoldOut)
        }
    };
    let mut sold = 0;
    for (k, order) in batch.into_iter().enumerate() {
        let said = match &reply.said {
            Some(said) => said.get(k).copied().unwrap_or(Said::Empty),
            None if k < m => Said::Sold,
            None => Said::Empty,
        };
        let answer = match (reply.status, said) {
            (Status::Sold, Said::Sold) if sold < m => {
                sold += 1;
                Ok(Sale::Sold {
                    ticket: reply.tickets[sold - 1].0,
                    remaining: reply.unsold + (m - sold) as u64,
                })
            }
            (Status::Sold, Said::Sold | Said::Empty) => empty(),
            // A purchase of this buyer whose outcome this instance never learned may have
            // counted: until it is made void, "limit reached" may be untrue.
            (Status::Sold, Said::Limit) if event.limbo.load(Relaxed) > 0 => {
                Err(StoreError::InLimbo)
            }
            (Status::Sold, Said::Limit) => Ok(Sale::LimitReached),
            (Status::Sold, Said::InUse) => Ok(Sale::KeyInUse),
            (Status::Sold, Said::Reused) => Ok(Sale::KeyReused),
            (Status::Sold, Said::Replayed(ticket, remaining)) => {
                Ok(Sale::Replayed { ticket, remaining })
            }
            (Status::Cancelled, _) => Err(StoreError::Cancelled),
            (Status::Missing, _) => Err(StoreError::MissingInRedis),
        };
        if let Err(Ok(Sale::Sold { .. })) = order.reply.send(answer) {
            // Sold to a buyer who is gone: nobody will ever receive this ticket.
            orphans.push(reply.tickets[sold - 1].1.clone());
        }
    }
    if !orphans.is_empty() {
        cx.cancels.give_back(&event, id, orphans);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn order(event: &Arc<Event>) -> Order {
        Order {
            event: event.clone(),
            reply: oneshot::channel().0,
            trace: None,
            who: None,
        }
    }

    #[test]
    fn one_call_per_event_and_chunk() {
        let a = Arc::new(Event::new("a", 10, 0));
        let b = Arc::new(Event::new("b", 10, 1));
        let mut orders: Vec<Order> = (0..SCRIPT_MAX + 3).map(|_| order(&a)).collect();
        orders.extend((0..2).map(|_| order(&b)));
        assert_eq!(
            batches(&orders),
            vec![
                0..SCRIPT_MAX,
                SCRIPT_MAX..SCRIPT_MAX + 3,
                SCRIPT_MAX + 3..SCRIPT_MAX + 5
            ]
        );
        assert_eq!(batches(&orders[..1]), vec![0..1]);
        assert!(batches(&[]).is_empty());
    }

    #[test]
    fn anonymous_batches_of_different_events_share_a_call_on_a_single_redis() {
        let events: Vec<Arc<Event>> = (0..CALL_EVENTS + 2)
            .map(|e| Arc::new(Event::new(&format!("e{e}"), 1000, e)))
            .collect();
        // Event 0: a full chunk and one more; then one purchase of each other event.
        let mut orders: Vec<Order> = (0..SCRIPT_MAX + 1).map(|_| order(&events[0])).collect();
        orders.extend(events[1..].iter().map(order));
        let ranges = batches(&orders);
        assert_eq!(ranges.len(), 2 + CALL_EVENTS + 1);
        // The full chunk alone; event 0's last purchase with the next 63 events; the rest.
        assert_eq!(
            calls(&orders, &ranges, true),
            vec![0..1, 1..1 + CALL_EVENTS, 1 + CALL_EVENTS..ranges.len()]
        );
        // A cluster's shard: one call per batch.
        let alone: Vec<_> = (0..ranges.len()).map(|i| i..i + 1).collect();
        assert_eq!(calls(&orders, &ranges, false), alone);
        // A batch with buyers is a call of its own.
        orders[SCRIPT_MAX + 2].who = Some(Arc::new(Purchaser::new("b", None)));
        let split = calls(&orders, &ranges, true);
        assert_eq!(split[..3], [0..1, 1..3, 3..4]);
        // Two chunks of one event never share a call (the batch id is recorded per event), nor
        // do two `Event`s of one id (the catalogue's old and new one after a capacity change),
        // wherever they sit in the call.
        let small: Vec<Order> = (0..3).map(|_| order(&events[0])).collect();
        assert_eq!(calls(&small, &[0..1, 1..3], true), vec![0..1, 1..2]);
        let again = Arc::new(Event::new("e0", 2000, 0));
        let mixed: Vec<Order> = [&events[0], &events[1], &again, &events[2]]
            .into_iter()
            .map(order)
            .collect();
        let ranges = [0..1, 1..2, 2..3, 3..4];
        assert_eq!(calls(&mixed, &ranges, true), vec![0..2, 2..4]);
    }

    #[test]
    fn a_reply_for_several_events_splits_four_values_each() {
        let two = Value::Array(
            [reply(1, 5, 0, "a-000001"), reply(-2, 0, 0, "")]
                .into_iter()
                .flat_map(|v| v.into_array())
                .collect(),
        );
        let parts = split(two.clone(), 2).unwrap();
        assert_eq!(parts, [reply(1, 5, 0, "a-000001"), reply(-2, 0, 0, "")]);
        assert!(split(two, 3).is_err());
        assert_eq!(split(Value::Null, 1).unwrap(), [Value::Null]);
        assert!(split(Value::Null, 2).is_err());
    }

    fn reply(status: i64, unsold: i64, reserved: i64, tickets: &str) -> Value {
        Value::Array(vec![
            Value::Integer(status),
            Value::Integer(unsold),
            Value::Integer(reserved),
            Value::String(tickets.into()),
        ])
    }

    #[test]
    fn replies_parse() {
        let e = Event::new("7", 100, 0);
        let r = Reply::parse(&reply(1, 58, 0, "7-000041 7-000042"), &e).unwrap();
        assert_eq!((r.status, r.unsold, r.reserved), (Status::Sold, 58, 0));
        let numbers: Vec<u64> = r.tickets.iter().map(|t| t.0).collect();
        assert_eq!(numbers, [41, 42]);
        assert_eq!(&r.tickets[1].1[..], b"7-000042");
        assert!(Reply::parse(&reply(1, 0, 3, ""), &e)
            .unwrap()
            .tickets
            .is_empty());
        assert_eq!(
            Reply::parse(&reply(2, 3, 0, "7-000042"), &e)
                .unwrap()
                .status,
            Status::Sold
        );
        assert_eq!(
            Reply::parse(&reply(-1, 0, 0, ""), &e).unwrap().status,
            Status::Cancelled
        );
        assert_eq!(
            Reply::parse(&reply(-2, 0, 0, ""), &e).unwrap().status,
            Status::Missing
        );
        // A status the script never returns is not understood: the round makes the batch void.
        for status in [7, 9] {
            let err = Reply::parse(&reply(status, 0, 0, ""), &e).unwrap_err();
            assert!(err.to_string().contains("unexpected"), "{status}: {err}");
        }
        let bad = [
            reply(1, 0, 0, "8-000001"),
            reply(1, 0, 0, "7-x"),
            Value::Null,
            Value::Array(vec![Value::Integer(1)]),
            Value::Array(vec![
                Value::Null,
                Value::Integer(0),
                Value::Integer(0),
                "".into(),
            ]),
            Value::Array(vec![
                Value::Integer(1),
                Value::Integer(0),
                Value::Integer(0),
                Value::Null,
            ]),
        ];
        for v in bad {
            assert!(
                matches!(Reply::parse(&v, &e), Err(StoreError::Protocol(_))),
                "{v:?}"
            );
        }
    }

    #[test]
    fn each_purchase_gets_its_answer_in_order() {
        let e = Arc::new(Event::new("7", 100, 0));
        let cx = Context {
            script: LuaScript::new(PURCHASE),
            timeout: Duration::from_secs(1),
            replica_acks: 0,
            policy: BuyerPolicy::default(),
            single_node: true,
            metrics: Arc::new(Metrics::new()),
            cancels: Cancels::new(),
            ids: Arc::new(Ids::random()),
        };
        let answers = |r: Reply, n: usize| {
            let (orders, rx): (Vec<_>, Vec<_>) = (0..n)
                .map(|_| {
                    let (tx, rx) = oneshot::channel();
                    (
                        Order {
                            event: e.clone(),
                            reply: tx,
                            trace: None,
                            who: None,
                        },
                        rx,
                    )
                })
                .unzip();
            answer(orders, &r, Bytes::from_static(b"b:1"), &cx);
            rx.into_iter()
                .map(|mut rx| rx.try_recv().unwrap())
                .collect::<Vec<_>>()
        };
        let sold = |status, reserved| Reply {
            status,
            unsold: 10,
            reserved,
            tickets: vec![
                (1, Bytes::from_static(b"7-000001")),
                (2, Bytes::from_static(b"7-000002")),
            ],
            said: None,
        };
        let got = answers(sold(Status::Sold, 0), 3);
        assert_eq!(
            got[0].as_ref().unwrap(),
            &Sale::Sold {
                ticket: 1,
                remaining: 11
            }
        );
        assert_eq!(
            got[1].as_ref().unwrap(),
            &Sale::Sold {
                ticket: 2,
                remaining: 10
            }
        );
        assert_eq!(got[2].as_ref().unwrap(), &Sale::SoldOut);
        let got = answers(sold(Status::Sold, 4), 3);
        assert!(matches!(got[2], Err(StoreError::HeldInReserves(4))));
        assert_eq!(cx.cancels.pending(), 0);
        // Tickets this instance is still giving back may return: not "sold out" meanwhile.
        e.limbo.store(1, Relaxed);
        let got = answers(sold(Status::Sold, 0), 3);
        assert!(matches!(got[2], Err(StoreError::InLimbo)), "{:?}", got[2]);
        // Nor "limit reached": the sale being made void may be what counted.
        let limit = Reply {
            said: Some(vec![Said::Limit]),
            tickets: Vec::new(),
            ..sold(Status::Sold, 0)
        };
        let got = answers(limit, 1);
        assert!(matches!(got[0], Err(StoreError::InLimbo)), "{:?}", got[0]);
        e.limbo.store(0, Relaxed);
        let limit = Reply {
            said: Some(vec![Said::Limit]),
            tickets: Vec::new(),
            ..sold(Status::Sold, 0)
        };
        assert_eq!(answers(limit, 1)[0].as_ref().unwrap(), &Sale::LimitReached);

        // The second buyer left: its ticket is queued to be given back, nothing else.
        let (tx, _) = oneshot::channel();
        let (tx2, mut rx2) = oneshot::channel();
        let orders = vec![
            Order {
                event: e.clone(),
                reply: tx2,
                trace: None,
                who: None,
            },
            Order {
                event: e.clone(),
                reply: tx,
                trace: None,
                who: None,
            },
        ];
        answer(
            orders,
            &sold(Status::Sold, 0),
            Bytes::from_static(b"b:2"),
            &cx,
        );
        assert!(rx2.try_recv().unwrap().is_ok());
        assert_eq!(cx.cancels.pending(), 1);
        for (status, want) in [
            (Status::Cancelled, "cancelled"),
            (Status::Missing, "missing"),
        ] {
            let r = Reply {
                status,
                unsold: 0,
                reserved: 0,
                tickets: vec![],
                said: None,
            };
            let got = answers(r, 1);
            assert!(
                got[0].as_ref().unwrap_err().to_string().contains(want),
                "{status:?}: {got:?}"
            );
        }
    }
}
