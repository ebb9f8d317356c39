//! Group commit for purchases: the purchases of one event that wait at the same moment share one
//! run of `lua/purchase.lua`.
//!
//! One batcher task per pooled connection takes every purchase queued for it, sends them as one
//! script call per event (at most [`SCRIPT_MAX`] purchase ids each, all calls of a round
//! pipelined in one write), and waits for the answers before it takes the next round. While a
//! round is in Redis the next one gathers, so a batch is as large as the purchases that arrived
//! during one round trip: one purchase when the server is idle (no added wait, no timer), dozens
//! under a flash sale. Redis then runs one script, and ticketd writes one command, for many
//! purchases (design.md, Measurements).
//!
//! Each purchase keeps its own purchase id, so idempotency and cancellation stay per purchase.
//! A purchase whose outcome is unknown (the round timed out, the connection broke, the reply did
//! not parse) or whose buyer is gone before the answer arrived (its ticket would be sold to
//! nobody) is queued for cancellation here, in one place.

use std::ops::Range;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use crossbeam_utils::CachePadded;
use fred::clients::{Client, Pool};
use fred::interfaces::ClientLike;
use fred::types::Value;
use tokio::sync::{mpsc, oneshot};
use tokio::time::timeout;

use crate::event::Event;
use crate::metrics::Metrics;
use crate::store::redis::{parse_status, Cancels};
use crate::store::scripts::{LuaScript, PURCHASE};
use crate::store::{Sale, StoreError};

/// Most purchase ids in one script call: bounds how long one call holds Redis (about 0.1 ms).
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
    /// The purchase id (`<instance>:<n>`).
    pub id: Bytes,
    /// Where the answer goes.
    pub reply: oneshot::Sender<Answer>,
}

/// What every batcher task shares.
#[derive(Debug)]
struct Context {
    script: LuaScript,
    timeout: Duration,
    metrics: Arc<Metrics>,
    cancels: Cancels,
}

/// The batcher tasks, one per pooled connection, and the round robin over them.
#[derive(Debug)]
pub struct Batcher {
    queues: Box<[mpsc::UnboundedSender<Order>]>,
    next: CachePadded<AtomicUsize>,
}

impl Batcher {
    /// Spawns one batcher task per client of `pool`; each round is bounded by `bound`.
    pub fn start(pool: &Pool, bound: Duration, metrics: Arc<Metrics>, cancels: Cancels) -> Self {
        let context = Arc::new(Context {
            script: LuaScript::new(PURCHASE),
            timeout: bound,
            metrics,
            cancels,
        });
        let queues = pool
            .clients()
            .iter()
            .map(|client| {
                let (tx, rx) = mpsc::unbounded_channel();
                tokio::spawn(run(client.clone(), rx, context.clone()));
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

/// One batcher: rounds until every sender is gone.
async fn run(client: Client, mut rx: mpsc::UnboundedReceiver<Order>, cx: Arc<Context>) {
    let mut orders = Vec::with_capacity(ROUND_MAX);
    while rx.recv_many(&mut orders, ROUND_MAX).await > 0 {
        let outage = round(&client, &mut orders, &cx).await;
        if outage {
            // Redis just failed: what queued meanwhile was never sent, so nothing of it can have
            // sold. It goes to the fallback now instead of waiting out another timeout.
            while let Ok(order) = rx.try_recv() {
                let _ = order.reply.send(Err(StoreError::NotConnected));
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
    if !client.is_connected() {
        for order in orders.drain(..) {
            let _ = order.reply.send(Err(StoreError::NotConnected));
        }
        return true;
    }
    // Group by event (a round usually holds one or a few), keeping arrival order within each.
    orders.sort_by_key(|o| Arc::as_ptr(&o.event) as usize);
    let batches = batches(orders);
    let calls = batches.iter().map(|range| {
        let batch = &orders[range.clone()];
        let args = batch.iter().map(|o| Value::Bytes(o.id.clone())).collect();
        cx.metrics.redis_batch();
        cx.script
            .run::<Value>(client, batch[0].event.keys.script_keys(), args, || {
                cx.metrics.script_reloaded()
            })
    });
    let replies = timeout(cx.timeout, futures_util::future::join_all(calls)).await;
    let mut outage = false;
    let mut orders = orders.drain(..);
    for (i, range) in batches.iter().enumerate() {
        let batch = orders.by_ref().take(range.len());
        match &replies {
            Ok(replies) => match &replies[i] {
                Ok(reply) => match parse_batch(reply, range.len()) {
                    Ok(triples) => {
                        for (order, triple) in batch.zip(triples) {
                            let answer = triple.and_then(|(status, ticket, count)| {
                                parse_status(&order.event, status, ticket, count)
                            });
                            answer_one(order, answer, cx);
                        }
                    }
                    Err(e) => batch.for_each(|o| answer_one(o, Err(e.clone()), cx)),
                },
                Err(e) => {
                    let e = StoreError::Redis(e.clone());
                    outage |= e.is_outage();
                    batch.for_each(|o| answer_one(o, Err(e.clone()), cx));
                }
            },
            Err(_) => {
                outage = true;
                batch.for_each(|o| answer_one(o, Err(StoreError::Timeout(cx.timeout)), cx));
            }
        }
    }
    outage
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

/// Answers one purchase. A purchase of unknown outcome, and a sale whose buyer is gone, are
/// queued for cancellation: either may hold a ticket that nobody will receive.
fn answer_one(order: Order, answer: Answer, cx: &Context) {
    let unknown = matches!(&answer, Err(e) if e.outcome_unknown());
    if unknown {
        cx.cancels.queue(&order.event, order.id.clone());
    }
    if let Err(Ok(Sale::Sold { .. })) = order.reply.send(answer) {
        cx.cancels.queue(&order.event, order.id);
    }
}

/// One `(status, ticket, count)` triple of the script's reply.
type Triple<'a> = (i64, &'a Value, u64);

/// Splits the script's reply for `n` purchases into its triples.
fn parse_batch(reply: &Value, n: usize) -> Result<Vec<Result<Triple<'_>, StoreError>>, StoreError> {
    let bad = |why: &str| StoreError::Protocol(format!("{why} in purchase reply"));
    let Value::Array(items) = reply else {
        return Err(bad("no array"));
    };
    if items.len() != 3 * n {
        return Err(bad("wrong length"));
    }
    Ok(items
        .chunks_exact(3)
        .map(|t| {
            let status = t[0].as_i64().ok_or_else(|| bad("no status"))?;
            let count = t[2].as_u64().ok_or_else(|| bad("no count"))?;
            Ok((status, &t[1], count))
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn order(event: &Arc<Event>) -> Order {
        Order {
            event: event.clone(),
            id: Bytes::from_static(b"i:1"),
            reply: oneshot::channel().0,
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
    fn replies_split_into_triples() {
        let t = |s: i64, ticket: &str, n: i64| {
            [
                Value::Integer(s),
                Value::String(ticket.into()),
                Value::Integer(n),
            ]
        };
        let reply = Value::Array([t(1, "7-000001", 9), t(0, "", 0)].concat());
        let triples = parse_batch(&reply, 2).unwrap();
        assert_eq!(triples.len(), 2);
        let (status, ticket, count) = triples[0].as_ref().unwrap();
        assert_eq!(
            (*status, ticket.as_str().as_deref(), *count),
            (1, Some("7-000001"), 9)
        );
        assert!(matches!(
            parse_batch(&reply, 3),
            Err(StoreError::Protocol(_))
        ));
        assert!(matches!(
            parse_batch(&Value::Null, 1),
            Err(StoreError::Protocol(_))
        ));
        let no_status = Value::Array(vec![Value::Null, Value::Null, Value::Integer(1)]);
        assert!(matches!(
            parse_batch(&no_status, 1).unwrap()[0],
            Err(StoreError::Protocol(_))
        ));
    }
}
