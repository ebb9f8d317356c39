//! One keep-alive connection: open it, then send the next request as soon as the previous
//! answer arrives (or at its `--rate` slot), until the run stops.
//!
//! Connections are opened through a shared semaphore, so 10,000 connects never arrive at once
//! and overflow the server's listen backlog. A failed connect, a connection lost mid-request or
//! a request past `--timeout` is counted and the connection re-opened with a short back-off:
//! nothing a server does can end the run early.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderName, AUTHORIZATION, CONTENT_LENGTH, HOST};
use http::{HeaderValue, Method, Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::{watch, Semaphore};
use tokio::time::{sleep, sleep_until, timeout, Instant};

use crate::body::str_field;
use crate::config::Plan;
use crate::stats::Stats;

/// State shared by every connection of a run.
#[derive(Debug)]
pub struct Shared {
    /// What to send where.
    pub plan: Plan,
    /// What came back.
    pub stats: Stats,
    /// Set once no new request may start.
    pub stopped: AtomicBool,
    /// Requests started so far.
    pub sent: AtomicU64,
    /// Bounds the connects in progress.
    pub connect_gate: Semaphore,
    /// Becomes `Some(start)` when the measured run starts (all connections tried once).
    pub go: watch::Sender<Option<Instant>>,
    /// Becomes `true` when the run stops; wakes connections waiting for a slot or a back-off.
    pub stop: watch::Sender<bool>,
}

impl Shared {
    /// Stops the run: no new request starts after this.
    pub fn stop(&self) {
        self.stopped.store(true, Ordering::Relaxed);
        self.stop.send_replace(true);
    }

    fn is_stopped(&self) -> bool {
        self.stopped.load(Ordering::Relaxed)
    }
}

type Sender = SendRequest<Empty<Bytes>>;

/// The header naming a purchase for safe retries.
const IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");

/// What one answer said, read before the shard lock is taken.
enum Seen {
    Sale { ticket: Box<str>, wrong_event: bool },
    SaleWithoutTicket,
    Error(String),
    Other,
}

/// Runs connection number `id` until the run stops.
pub async fn run_connection(shared: Arc<Shared>, id: usize, seed: u64) {
    let plan = &shared.plan;
    let mut rng = fastrand::Rng::with_seed(seed ^ (id as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let mut stop = shared.stop.subscribe();

    // Connect phase: a few tries before the clock starts.
    let mut sender = None;
    for attempt in 0..plan.connect_retries {
        if shared.is_stopped() {
            break;
        }
        match open(&shared).await {
            Ok(s) => {
                sender = Some(s);
                break;
            }
            Err(e) => {
                shared.stats.shard(id).add_connection_error(&e);
                pause(backoff(attempt), &mut stop).await;
            }
        }
    }
    shared.stats.ready.fetch_add(1, Ordering::Relaxed);
    let mut go = shared.go.subscribe();
    let start = tokio::select! {
        g = go.wait_for(Option::is_some) => match g {
            Ok(g) => g.expect("waited for Some"),
            Err(_) => return,
        },
        _ = stop.wait_for(|s| *s) => return,
    };

    let mut next_slot = plan
        .interval
        .map(|interval| start + interval.mul_f64(rng.f64()));
    let mut failed_connects = 0u32;
    let methods_with_body = !matches!(plan.method, Method::GET | Method::HEAD);
    let zero = HeaderValue::from_static("0");

    loop {
        if shared.is_stopped() {
            break;
        }
        if let Some(slot) = next_slot {
            tokio::select! {
                () = sleep_until(slot) => {}
                _ = stop.wait_for(|s| *s) => break,
            }
        }
        // A usable connection, re-opened if the last one is gone.
        let s = match sender.as_mut() {
            Some(s) if !s.is_closed() => s,
            _ => {
                sender = None;
                match open(&shared).await {
                    Ok(s) => {
                        failed_connects = 0;
                        shared.stats.shard(id).reconnects += 1;
                        sender.insert(s)
                    }
                    Err(e) => {
                        shared.stats.shard(id).add_connection_error(&e);
                        pause(backoff(failed_connects), &mut stop).await;
                        failed_connects = failed_connects.saturating_add(1);
                        continue;
                    }
                }
            }
        };
        if s.ready().await.is_err() {
            // Closed by the server between two requests (e.g. `connection: close`).
            sender = None;
            continue;
        }
        let n = shared.sent.fetch_add(1, Ordering::Relaxed);
        if let Some(total) = plan.stop.requests {
            if n >= total {
                shared.stop();
                break;
            }
        }
        let event = plan.picker.pick(&mut rng);
        let mut request = Request::new(Empty::<Bytes>::new());
        *request.method_mut() = plan.method.clone();
        *request.uri_mut() = plan.uris[event].clone();
        request.headers_mut().insert(HOST, plan.host.clone());
        if methods_with_body {
            request.headers_mut().insert(CONTENT_LENGTH, zero.clone());
        }
        if !plan.authorizations.is_empty() {
            // Request numbers are handed out in turn, so buyers are spread evenly.
            let buyer = (n % plan.authorizations.len() as u64) as usize;
            let token = plan.authorizations[buyer].clone();
            request.headers_mut().insert(AUTHORIZATION, token);
        }
        if let Some(keys) = &plan.idempotency_keys {
            request.headers_mut().insert(IDEMPOTENCY_KEY, keys.key(n));
        }

        let sent_at = Instant::now();
        let answer = timeout(plan.timeout, async {
            let response = s.send_request(request).await?;
            let status = response.status();
            let body = response.into_body().collect().await?.to_bytes();
            Ok::<_, hyper::Error>((status, body))
        })
        .await;
        let micros = u64::try_from(sent_at.elapsed().as_micros()).unwrap_or(u64::MAX);

        match answer {
            Err(_) => {
                shared.stats.shard(id).timeouts += 1;
                sender = None;
            }
            Ok(Err(e)) => {
                shared
                    .stats
                    .shard(id)
                    .add_connection_error(&format!("request: {}", error_chain(&e)));
                sender = None;
            }
            Ok(Ok((status, body))) => {
                let seen = read_answer(plan, event, status, &body);
                let mut c = shared.stats.shard(id);
                c.latency.saturating_record(micros.max(1));
                c.status[usize::from(status.as_u16()).min(999)] += 1;
                match seen {
                    Seen::Sale {
                        ticket,
                        wrong_event,
                    } => {
                        c.tickets[event].push(ticket);
                        if wrong_event {
                            c.wrong_event += 1;
                        }
                    }
                    Seen::SaleWithoutTicket => c.sales_without_ticket += 1,
                    Seen::Error(code) => c.add_error(&code),
                    Seen::Other => {}
                }
            }
        }

        if let (Some(slot), Some(interval)) = (next_slot.as_mut(), plan.interval) {
            *slot += interval;
            let now = Instant::now();
            if *slot < now {
                // Late: skip the missed slots rather than burst to catch up.
                let behind = now.duration_since(*slot).as_nanos() / interval.as_nanos().max(1);
                *slot += interval * u32::try_from(behind + 1).unwrap_or(u32::MAX);
            }
        }
    }
}

fn read_answer(plan: &Plan, event: usize, status: StatusCode, body: &[u8]) -> Seen {
    if status == StatusCode::OK && plan.per_event {
        return match str_field(body, "ticket") {
            Some(ticket) => Seen::Sale {
                wrong_event: str_field(body, "event").is_some_and(|e| *e != *plan.events[event]),
                ticket: ticket.into(),
            },
            None if plan.method == Method::POST => Seen::SaleWithoutTicket,
            None => Seen::Other,
        };
    }
    if !status.is_success() {
        if let Some(code) = str_field(body, "error") {
            return Seen::Error(code.into_owned());
        }
    }
    Seen::Other
}

/// Opens one connection (waiting for a slot of the connect gate) and spawns its driver.
async fn open(shared: &Arc<Shared>) -> Result<Sender, String> {
    let plan = &shared.plan;
    let stream = {
        let _permit = shared
            .connect_gate
            .acquire()
            .await
            .map_err(|e| e.to_string())?;
        match timeout(plan.timeout, TcpStream::connect(plan.addr)).await {
            Err(_) => return Err("connect: timed out".into()),
            Ok(Err(e)) => return Err(format!("connect: {e}")),
            Ok(Ok(stream)) => stream,
        }
    };
    let _ = stream.set_nodelay(true);
    let (sender, connection) = http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("handshake: {}", error_chain(&e)))?;
    shared.stats.open.fetch_add(1, Ordering::Relaxed);
    let owner = Arc::clone(shared);
    tokio::spawn(async move {
        // Errors surface on the request that was in flight; nothing to do here.
        let _ = connection.await;
        owner.stats.open.fetch_sub(1, Ordering::Relaxed);
    });
    Ok(sender)
}

/// Back-off before connect try `attempt + 1`: 10 ms doubling up to 1 s, with jitter.
fn backoff(attempt: u32) -> Duration {
    let base = 10u64 << attempt.min(7);
    Duration::from_millis(base.min(1000) + fastrand::u64(0..10))
}

/// Sleeps `d`, or less when the run stops.
async fn pause(d: Duration, stop: &mut watch::Receiver<bool>) {
    tokio::select! {
        () = sleep(d) => {}
        _ = stop.wait_for(|s| *s) => {}
    }
}

/// An error with its sources, e.g. `connection error: Connection reset by peer (os error 104)`.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        source = inner.source();
    }
    s
}
