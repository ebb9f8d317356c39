//! The buyers: keep-alive HTTP/1.1 connections spread over the instances, each doing
//! `POST /buy/<event>` over the events and recording every request in the history. While the
//! nemesis works they buy at a set pace ([`buy_paced`]); afterwards they buy at full speed until
//! every instance answers `409` for every event ([`drain`]). Every request, every reconnection
//! and every phase is bounded.
//!
//! A share of the paced connections are *known buyers* ([`KnownBuyers`]): they name a buyer
//! (one of a few, so that `--max-per-buyer` bites, each shared by several connections on
//! different instances) in the gateway header, and give each purchase an `Idempotency-Key`.
//! Like a real client they send the same key again after a `503`, a timeout, a lost
//! connection or `409 idempotency_key_in_use`, on the next instance; and after a `200` they
//! sometimes send it once more (a double submission), whose answer must name the same ticket.
//! The instances then refuse anonymous purchases (`401`), so the other connections, and the
//! drain, buy as a new buyer each time, without a key: the same load as before, through the
//! path of known buyers. (`--known-buyers 0` runs the anonymous path.)

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hyper::Method;
use rand::Rng;

use crate::history::{Clock, Known, NoAnswer, Op, Outcome, Phase};
use crate::http::{Conn, HttpError};

/// Bound on one request (connect, or send and read the answer).
pub const REQUEST_BOUND: Duration = Duration::from_secs(10);
/// Pause after a failed connect, and after a lost connection.
const RECONNECT_PAUSE: Duration = Duration::from_millis(100);
/// Consecutive failed connects after which a buyer gives up.
const MAX_RECONNECTS: u32 = 300;
/// Pause after a `503` while draining.
const DRAIN_RETRY: Duration = Duration::from_millis(50);
/// A connection idle this long is closed and a new one opened before the next request: well
/// under ticketd's header read timeout (10 s), after which it closes an idle connection.
const IDLE_REOPEN: Duration = Duration::from_secs(5);
/// Attempts of one known buyer's purchase (its first and the retries with the same key).
const KEY_ATTEMPTS: u32 = 30;
/// Pause before a retry with the same key (jittered ±50 %).
const KEY_RETRY: Duration = Duration::from_millis(150);
/// Share of `200`s whose key a known buyer sends once more, up to [`RESEND_DELAY`] later.
const RESEND: f64 = 0.5;
/// Longest delay of such a repeat.
const RESEND_DELAY: Duration = Duration::from_millis(1500);

/// The known buyers among the paced connections.
#[derive(Debug, Clone)]
pub struct KnownBuyers {
    /// How many of the paced connections buy as known buyers (the first ones).
    pub connections: usize,
    /// Buyer ids they take turns with, `buyer-0`, `buyer-1`, ...
    pub buyers: usize,
    /// The request header that names the buyer (`--buyer-header`).
    pub header: &'static str,
}

/// How the buyers load the instances while the nemesis works.
#[derive(Debug, Clone, Copy)]
pub struct Load {
    /// Concurrent connections, spread round-robin over the instances.
    pub connections: usize,
    /// Mean pause of one connection between two requests (jittered ±50 %): the pace is about
    /// `connections / pause` requests per second.
    pub pause: Duration,
}

/// The buyers of a connection that buys without a key: anonymous, or, when the instances
/// refuse anonymous purchases (`--buyer-header` set, they answer `401`), a new buyer id for
/// every purchase (`once-<connection>-<n>`), who never reaches the limit.
struct OneOff {
    header: Option<&'static str>,
    connection: usize,
    n: usize,
}

impl OneOff {
    fn new(header: Option<&'static str>, connection: usize) -> Self {
        Self {
            header,
            connection,
            n: 0,
        }
    }

    /// The buyer of the next purchase; `None`: anonymous.
    fn next(&mut self) -> Option<Known> {
        self.header?;
        self.n += 1;
        Some(Known {
            buyer: format!("once-{}-{}", self.connection, self.n).into(),
            key: "".into(),
        })
    }
}

/// One connection slot: its instance, its connection (and when it was opened), its record.
struct Buyer {
    id: usize,
    instance: usize,
    addr: SocketAddr,
    clock: Clock,
    conn: Option<(Conn, Duration)>,
    /// When the connection last answered: one idle for [`IDLE_REOPEN`] is not used again.
    last_used: Duration,
    failed_connects: u32,
    ops: Vec<Op>,
}

impl Buyer {
    fn new(id: usize, addrs: &[SocketAddr], clock: Clock) -> Self {
        let instance = id % addrs.len();
        Self {
            id,
            instance,
            addr: addrs[instance],
            clock,
            conn: None,
            last_used: Duration::ZERO,
            failed_connects: 0,
            ops: Vec::new(),
        }
    }

    /// Whether it gave up reconnecting.
    fn gave_up(&self) -> bool {
        self.failed_connects >= MAX_RECONNECTS
    }

    /// One purchase of `event` (index `e`), recorded; reconnects first if needed. A known
    /// buyer's purchase carries the buyer header and the `Idempotency-Key`.
    async fn buy(
        &mut self,
        event: &str,
        e: usize,
        phase: Phase,
        known: Option<(&Known, &'static str)>,
    ) -> Outcome {
        // ticketd closes a keep-alive connection idle for its header read timeout (10 s); a
        // known buyer's connection to an instance it retries on can sit that long. Sending on
        // it would race the close, so a client opens a new one instead, as pools do.
        if self.clock.now().saturating_sub(self.last_used) >= IDLE_REOPEN {
            self.conn = None;
        }
        let (mut conn, connected) = match self.conn.take() {
            Some(open) => open,
            None => {
                let at = self.clock.now();
                match Conn::open(self.addr, REQUEST_BOUND).await {
                    Ok(c) => {
                        self.failed_connects = 0;
                        (c, at)
                    }
                    Err(err) => {
                        self.failed_connects += 1;
                        let outcome = Outcome::NoAnswer(match err {
                            HttpError::Timeout(_) => NoAnswer::Timeout,
                            _ => NoAnswer::Connect,
                        });
                        let times = (at, at, self.clock.now());
                        let known = known.map(|k| k.0.clone());
                        self.record(e, times, (outcome.clone(), None, known), Some(err), phase);
                        tokio::time::sleep(RECONNECT_PAUSE).await;
                        return outcome;
                    }
                }
            }
        };
        let start = self.clock.now();
        let path = format!("/buy/{event}");
        let mut error = None;
        let mut remaining = None;
        let quoted = known.map(|(k, _)| format!("\"{}\"", k.key));
        let mut headers: Vec<(&str, &str)> = Vec::new();
        if let (Some((k, header)), Some(q)) = (known, &quoted) {
            headers.push((header, &k.buyer));
            if !k.key.is_empty() {
                headers.push(("idempotency-key", q));
            }
        }
        let outcome = match conn
            .send_with(Method::POST, &path, &headers, REQUEST_BOUND)
            .await
        {
            Ok(answer) => {
                self.conn = Some((conn, connected));
                self.last_used = self.clock.now();
                match answer.status {
                    200 => {
                        remaining = answer.remaining();
                        answer
                            .ticket()
                            .map_or(Outcome::SoldWithoutTicket, Outcome::Sold)
                    }
                    409 => match answer.error_code().as_deref() {
                        Some("limit_reached") => Outcome::LimitReached,
                        Some("idempotency_key_in_use") => Outcome::KeyInUse,
                        _ => Outcome::SoldOut,
                    },
                    503 => Outcome::Unavailable,
                    other => Outcome::Status(other),
                }
            }
            Err(err) => {
                let kind = match err {
                    HttpError::Timeout(_) => NoAnswer::Timeout,
                    _ => NoAnswer::Connection,
                };
                error = Some(err);
                Outcome::NoAnswer(kind)
            }
        };
        let times = (connected, start, self.clock.now());
        let record = (outcome.clone(), remaining, known.map(|k| k.0.clone()));
        self.record(e, times, record, error, phase);
        if matches!(outcome, Outcome::NoAnswer(_)) {
            tokio::time::sleep(RECONNECT_PAUSE).await;
        }
        outcome
    }

    /// Records one request; `times` are (connection opened, sent, answered), `what` the
    /// outcome, the `remaining` of a sale and the known buyer.
    fn record(
        &mut self,
        event: usize,
        (connected, start, end): (Duration, Duration, Duration),
        (outcome, remaining, known): (Outcome, Option<u64>, Option<Known>),
        error: Option<HttpError>,
        phase: Phase,
    ) {
        self.ops.push(Op {
            buyer: self.id,
            instance: self.instance,
            event,
            connected,
            start,
            end,
            outcome,
            error: error.map(|e| chain(&e).into_boxed_str()),
            phase,
            remaining,
            known,
        });
    }
}

/// An error and its sources, `: `-separated.
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// The next event after `*cursor` for which `open` holds, advancing the cursor.
fn next_event(cursor: &mut usize, n: usize, open: impl Fn(usize) -> bool) -> Option<usize> {
    for _ in 0..n {
        *cursor = (*cursor + 1) % n;
        if open(*cursor) {
            return Some(*cursor);
        }
    }
    None
}

/// Buys at the pace of `load` on `addrs` until `stop` is set; returns every request. The
/// first `known.connections` connections buy as known buyers ([`buy_known`]).
pub async fn buy_paced(
    addrs: Vec<SocketAddr>,
    events: Arc<Vec<String>>,
    load: Load,
    known: Option<KnownBuyers>,
    clock: Clock,
    stop: Arc<AtomicBool>,
) -> Vec<Op> {
    let first_anonymous = known
        .as_ref()
        .map_or(0, |k| k.connections.min(load.connections));
    let mut tasks: Vec<_> = (0..first_anonymous)
        .filter_map(|id| {
            let known = known.clone()?;
            Some(tokio::spawn(buy_known(
                id,
                addrs.clone(),
                events.clone(),
                load.pause,
                known,
                clock,
                stop.clone(),
            )))
        })
        .collect();
    let header = known.as_ref().map(|k| k.header);
    tasks.extend((first_anonymous..load.connections).map(|id| {
        let mut buyer = Buyer::new(id, &addrs, clock);
        let events = events.clone();
        let stop = stop.clone();
        let mut once = OneOff::new(header, id);
        tokio::spawn(async move {
            let mut sold_out = vec![false; events.len()];
            let mut cursor = id;
            let pause = load.pause.as_secs_f64();
            // Start spread over one pause, not all at once.
            let first = rand::rng().random_range(0.0..pause.max(0.001));
            tokio::time::sleep(Duration::from_secs_f64(first)).await;
            while !stop.load(Ordering::Relaxed) && !buyer.gave_up() {
                if let Some(e) = next_event(&mut cursor, events.len(), |e| !sold_out[e]) {
                    let who = once.next();
                    let outcome = buyer
                        .buy(&events[e], e, Phase::Faults, who.as_ref().zip(header))
                        .await;
                    if outcome == Outcome::SoldOut {
                        sold_out[e] = true;
                    }
                }
                let jitter = rand::rng().random_range(0.5..1.5);
                tokio::time::sleep(Duration::from_secs_f64(pause * jitter)).await;
            }
            buyer.ops
        })
    }));
    collect(tasks).await
}

/// Known buyer connection `id`: at the pace `pause`, buys the events in turn, each purchase as
/// the next of the buyer ids (`buyer-<n>`) with a fresh `Idempotency-Key`
/// (`k<id>-<n>`), first on instance `id % instances`. After a `503`, no answer or
/// `idempotency_key_in_use` it sends the same key again on the next instance (at most
/// [`KEY_ATTEMPTS`] attempts); after a `200`, half the time it sends the key once more on the
/// next instance, a little later. `limit_reached` and `sold out` end a purchase; only `sold
/// out` ends an event for it. Returns every request.
async fn buy_known(
    id: usize,
    addrs: Vec<SocketAddr>,
    events: Arc<Vec<String>>,
    pause: Duration,
    known: KnownBuyers,
    clock: Clock,
    stop: Arc<AtomicBool>,
) -> Vec<Op> {
    let n = addrs.len();
    // One connection per instance, all recorded as connection slot `id`.
    let mut conns: Vec<Buyer> = (0..n)
        .map(|i| {
            let mut b = Buyer::new(id, &addrs, clock);
            b.instance = i;
            b.addr = addrs[i];
            b
        })
        .collect();
    let mut sold_out = vec![false; events.len()];
    let mut cursor = id;
    let mut purchase = 0usize;
    let pause = pause.as_secs_f64();
    let first = rand::rng().random_range(0.0..pause.max(0.001));
    tokio::time::sleep(Duration::from_secs_f64(first)).await;
    while !stop.load(Ordering::Relaxed) && !conns.iter().all(Buyer::gave_up) {
        if let Some(e) = next_event(&mut cursor, events.len(), |e| !sold_out[e]) {
            let k = Known {
                buyer: format!("buyer-{}", (id + purchase) % known.buyers.max(1)).into(),
                key: format!("k{id}-{purchase}").into(),
            };
            purchase += 1;
            let mut instance = id % n;
            for _ in 0..KEY_ATTEMPTS {
                let b = &mut conns[instance];
                let outcome = b
                    .buy(&events[e], e, Phase::Faults, Some((&k, known.header)))
                    .await;
                instance = (instance + 1) % n;
                match outcome {
                    Outcome::Unavailable | Outcome::NoAnswer(_) | Outcome::KeyInUse => {
                        let jitter = rand::rng().random_range(0.5..1.5);
                        tokio::time::sleep(KEY_RETRY.mul_f64(jitter)).await;
                    }
                    Outcome::Sold(_) => {
                        if rand::rng().random_bool(RESEND) {
                            let delay = rand::rng().random_range(0.0..RESEND_DELAY.as_secs_f64());
                            tokio::time::sleep(Duration::from_secs_f64(delay)).await;
                            let b = &mut conns[instance];
                            b.buy(&events[e], e, Phase::Faults, Some((&k, known.header)))
                                .await;
                        }
                        break;
                    }
                    Outcome::SoldOut => {
                        sold_out[e] = true;
                        break;
                    }
                    _ => break,
                }
            }
        }
        let jitter = rand::rng().random_range(0.5..1.5);
        tokio::time::sleep(Duration::from_secs_f64(pause * jitter)).await;
    }
    conns.into_iter().flat_map(|b| b.ops).collect()
}

/// What [`drain`] leaves behind.
#[derive(Debug, Default)]
pub struct Drained {
    /// Every request.
    pub ops: Vec<Op>,
    /// `(instance, event)` pairs that never answered `409` within the bound.
    pub unfinished: Vec<(usize, usize)>,
}

/// Buys with `connections` connections at full speed until every instance has answered `409`
/// for every event, or `bound` passes; with `header` (buyers known to the instances) as a new
/// buyer each time, without a key.
pub async fn drain(
    addrs: Vec<SocketAddr>,
    events: Arc<Vec<String>>,
    connections: usize,
    header: Option<&'static str>,
    clock: Clock,
    bound: Duration,
) -> Drained {
    let deadline = Instant::now() + bound;
    let done: Arc<Vec<Vec<AtomicBool>>> = Arc::new(
        addrs
            .iter()
            .map(|_| events.iter().map(|_| AtomicBool::new(false)).collect())
            .collect(),
    );
    let tasks: Vec<_> = (0..connections.max(addrs.len()))
        .map(|id| {
            let mut buyer = Buyer::new(id, &addrs, clock);
            let events = events.clone();
            let done = done.clone();
            let mut once = OneOff::new(header, id + 100_000);
            tokio::spawn(async move {
                let mine = &done[buyer.instance];
                let mut cursor = id;
                while Instant::now() < deadline && !buyer.gave_up() {
                    let Some(e) = next_event(&mut cursor, events.len(), |e| {
                        !mine[e].load(Ordering::Relaxed)
                    }) else {
                        break;
                    };
                    let who = once.next();
                    match buyer
                        .buy(&events[e], e, Phase::Drain, who.as_ref().zip(header))
                        .await
                    {
                        Outcome::SoldOut => mine[e].store(true, Ordering::Relaxed),
                        Outcome::Unavailable => tokio::time::sleep(DRAIN_RETRY).await,
                        _ => {}
                    }
                }
                buyer.ops
            })
        })
        .collect();
    let ops = collect(tasks).await;
    let unfinished = done
        .iter()
        .enumerate()
        .flat_map(|(i, per_event)| {
            per_event
                .iter()
                .enumerate()
                .filter(|(_, d)| !d.load(Ordering::Relaxed))
                .map(move |(e, _)| (i, e))
        })
        .collect();
    Drained { ops, unfinished }
}

async fn collect(tasks: Vec<tokio::task::JoinHandle<Vec<Op>>>) -> Vec<Op> {
    let mut all = Vec::new();
    for task in tasks {
        // A buyer task only ends by returning its record; a panic there is a harness bug.
        all.extend(task.await.expect("a buyer task does not panic"));
    }
    all.sort_by_key(|op| op.start);
    all
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_event_skips_closed_events_and_ends_when_all_are() {
        let mut cursor = 0;
        assert_eq!(next_event(&mut cursor, 3, |e| e != 1), Some(2));
        assert_eq!(next_event(&mut cursor, 3, |e| e != 1), Some(0));
        assert_eq!(next_event(&mut cursor, 3, |e| e != 1), Some(2));
        assert_eq!(next_event(&mut cursor, 3, |_| false), None);
    }
}
