//! One run of one schedule: start Redis (one server or a cluster) and the instances (they seed
//! the events), buy while the nemesis works, heal everything, sell the events out, stop the
//! instances gracefully, read Redis, and judge the history.

use std::fmt::{self, Write as _};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::checker::{self, Verdict};
use crate::cluster::{Cluster, Spec, BUYER_HEADER};
use crate::error::HarnessError;
use crate::generator::{self, KnownBuyers, Load};
use crate::history::{BuyerRules, Clock, History, Phase};
use crate::nemesis;
use crate::redis_cluster::{event_slot, SHARDS};
use crate::schedule::{RedisMode, Schedule};
use crate::ticketd::Binary;

/// How long the buyers go on after the last fault before healing.
const TAIL: Duration = Duration::ZERO;
/// Paced connections that buy as known buyers, by default.
pub const KNOWN_CONNECTIONS: usize = 8;
/// Buyer ids they share: few, so that the limit bites (10 × 3 events × 3 tickets).
pub const KNOWN_BUYERS: usize = 10;
/// `--max-per-buyer` of the instances when buyers are known.
pub const MAX_PER_BUYER: u32 = 3;

/// Everything about a run but the schedule.
#[derive(Debug, Clone)]
pub struct Options {
    /// Redis, instances, events and ticketd's flags.
    pub spec: Spec,
    /// Buyers while the nemesis works.
    pub load: Load,
    /// How many of them buy as known buyers with `Idempotency-Key`s (none when the binary has
    /// no `--buyer-header`, or `spec.max_per_buyer` is `None`).
    pub known: Option<KnownBuyers>,
    /// Connections that sell the events out at the end.
    pub drain_connections: usize,
    /// Bound on selling out.
    pub drain_bound: Duration,
    /// Keep the run's directory (logs, AOF, journals, the history) when it fails.
    pub keep_failed: bool,
    /// Keep it always.
    pub keep_all: bool,
}

impl Options {
    /// The standard run: events `a=1500,b=1500,c=1000`, reserves of 100, a 3 s lease, a
    /// 250 ms Redis timeout, `buyers` connections buying about 100 tickets a second in all. When
    /// the binary knows buyers, [`KNOWN_CONNECTIONS`] of them (at most an eighth) buy as
    /// [`KNOWN_BUYERS`] known buyers with keys, under `--max-per-buyer` [`MAX_PER_BUYER`].
    pub fn standard(binary: Binary, instances: usize, buyers: usize) -> Self {
        let buyers = buyers.max(1);
        let known = (binary.buyers && buyers >= 8).then(|| KnownBuyers {
            connections: KNOWN_CONNECTIONS.min(buyers / 8),
            buyers: KNOWN_BUYERS,
            header: BUYER_HEADER,
        });
        Self {
            spec: Spec {
                binary,
                instances,
                events: [("a", 1500), ("b", 1500), ("c", 1000)]
                    .map(|(id, n)| (id.to_owned(), n))
                    .to_vec(),
                reserve: 100,
                lease: Duration::from_secs(3),
                redis_timeout: Duration::from_millis(250),
                redis: RedisMode::Single,
                max_per_buyer: known.as_ref().map(|_| MAX_PER_BUYER),
            },
            load: Load {
                connections: buyers,
                pause: Duration::from_secs_f64(buyers as f64 / 100.0),
            },
            known,
            drain_connections: buyers,
            drain_bound: Duration::from_secs(60),
            keep_failed: false,
            keep_all: false,
        }
    }

    /// The standard run on a Redis Cluster of three primaries with one replica each: the same
    /// capacities, one event on each primary (see [`cluster_events`]).
    pub fn cluster(binary: Binary, instances: usize, buyers: usize) -> Self {
        let mut options = Self::standard(binary, instances, buyers);
        let capacities: Vec<u64> = options.spec.events.iter().map(|e| e.1).collect();
        options.spec.events = cluster_events(&capacities);
        options.spec.redis = RedisMode::Cluster;
        options
    }

    /// The standard run on `redis`.
    pub fn on(redis: RedisMode, binary: Binary, instances: usize, buyers: usize) -> Self {
        match redis {
            RedisMode::Single => Self::standard(binary, instances, buyers),
            RedisMode::Cluster => Self::cluster(binary, instances, buyers),
        }
    }

    /// Without known buyers: every purchase anonymous, ticketd without buyer flags.
    pub fn anonymous(mut self) -> Self {
        self.known = None;
        self.spec.max_per_buyer = None;
        self
    }

    /// Known buyer connections: `connections` of the paced ones (0: none).
    pub fn with_known_connections(mut self, connections: usize) -> Self {
        match (&mut self.known, connections) {
            (_, 0) => return self.anonymous(),
            (Some(k), n) => k.connections = n.min(self.load.connections),
            (None, _) => {}
        }
        self
    }

    /// The schedule of `seed` for these options.
    pub fn schedule(&self, seed: u64) -> Schedule {
        Schedule::generate_for(self.spec.redis, seed, self.spec.instances, self.spec.lease)
    }
}

/// The lowest slot of each shard as `redis-cli --cluster create` assigns them to three
/// primaries (`Cluster::start` checks that the events did land on every primary).
const SHARD_STARTS: [u16; SHARDS] = [0, 5461, 10923];

/// Events of `capacities` spread over the shards, event `k` on shard `k % 3`: for each, the
/// first of `a`, `b`, ..., `z`, `a1`, ... not taken whose slot (CRC16 of the id, modulo 16384)
/// that shard serves. With three events: `b`, `c` and `a`.
pub fn cluster_events(capacities: &[u64]) -> Vec<(String, u64)> {
    let shard = |slot: u16| SHARD_STARTS.iter().rposition(|&s| s <= slot).unwrap_or(0);
    let candidates = (0u32..).map(|i| {
        let letter = char::from(b'a' + (i % 26) as u8);
        match i / 26 {
            0 => letter.to_string(),
            n => format!("{letter}{n}"),
        }
    });
    let mut events: Vec<(String, u64)> = Vec::with_capacity(capacities.len());
    for (k, &capacity) in capacities.iter().enumerate() {
        let id = candidates
            .clone()
            .find(|id| {
                shard(event_slot(id)) == k % SHARDS && events.iter().all(|(taken, _)| taken != id)
            })
            .expect("every shard serves some id");
        events.push((id, capacity));
    }
    events
}

/// What one run found.
#[derive(Debug)]
pub struct Report {
    /// The schedule that ran.
    pub schedule: Schedule,
    /// The checker's judgement.
    pub verdict: Verdict,
    /// Sales (`200`) while the nemesis worked.
    pub sold_during_faults: usize,
    /// Wall time of the whole run.
    pub elapsed: Duration,
    /// Where the run's directory was kept (see [`Options::keep_failed`]).
    pub kept: Option<PathBuf>,
}

/// Stops the buyers if the run ends early (an error), so no task outlives it.
struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// Runs `schedule`.
///
/// # Errors
/// The harness could not start or restart Redis or an instance, or read Redis at the end.
pub async fn run(options: &Options, schedule: &Schedule) -> Result<Report, HarnessError> {
    let began = Instant::now();
    let clock = Clock::start();
    let mut cluster = Cluster::start(&options.spec, clock).await?;
    let events = Arc::new(options.spec.event_ids());
    let stop = Arc::new(AtomicBool::new(false));
    let _stop_on_drop = StopOnDrop(stop.clone());
    let buyers = tokio::spawn(generator::buy_paced(
        cluster.addrs(),
        events.clone(),
        options.load,
        options.known.clone(),
        clock,
        stop.clone(),
    ));

    let fallback = nemesis::run(&mut cluster, schedule, clock, clock.now()).await?;
    tokio::time::sleep(TAIL).await;
    cluster.heal().await?;
    stop.store(true, Ordering::Relaxed);
    // A buyer task only returns its record; a panic there is a harness bug.
    let mut ops = buyers.await.expect("the buyers do not panic");
    let sold_during_faults = ops
        .iter()
        .filter(|op| matches!(op.outcome, crate::history::Outcome::Sold(_)))
        .count();

    let drained = generator::drain(
        cluster.addrs(),
        events.clone(),
        options.drain_connections,
        options.known.as_ref().map(|k| k.header),
        clock,
        options.drain_bound,
    )
    .await;
    ops.extend(drained.ops);
    for (i, e) in drained.unfinished {
        cluster.log.problem(format!(
            "instance {i} never answered 409 for event {} within {:?} of selling out",
            events[e], options.drain_bound
        ));
    }
    cluster.stop_all().await;

    let states = cluster.read_states(&options.spec.events).await?;
    if options.spec.redis == RedisMode::Cluster {
        // Every instance came back on its journal and stopped gracefully: each took back the
        // reserves held back for it and then handed them to the pool (as tests/cluster.rs
        // asserts; with one Redis, builds without --journal-dir leave reserves held back).
        for s in &states {
            if s.held_total() > 0 || s.reserved() > 0 {
                cluster.log.problem(format!(
                    "event {}: after the graceful stop of every instance, {} tickets are held back and {} left in reserves {:?}",
                    s.id,
                    s.held_total(),
                    s.reserved(),
                    s.reserves.keys().collect::<Vec<_>>()
                ));
            }
        }
    }

    let (windows, problems) = cluster.log.snapshot();
    let history = History {
        events: events.to_vec(),
        ops,
        windows,
        problems,
        fallback,
        event_shards: cluster.event_shards.clone(),
        buyers: options.spec.max_per_buyer.map(|n| BuyerRules {
            max_per_buyer: n,
            instances: options.spec.instances,
            end_of_sale: options.spec.instances as u64 * options.spec.reserve,
        }),
    };
    let verdict = checker::check(&history, &states);
    let kept = if options.keep_all || (!verdict.passed() && options.keep_failed) {
        let dir = cluster.dir();
        let _ = std::fs::write(dir.join("history.txt"), dump(&history, cluster.notes()));
        let _ = std::fs::write(dir.join("schedule.txt"), schedule.to_string());
        Some(cluster.keep_dir())
    } else {
        None
    };
    Ok(Report {
        schedule: schedule.clone(),
        verdict,
        sold_during_faults,
        elapsed: began.elapsed(),
        kept,
    })
}

/// The history as text, one request, window or node fault per line, by time.
fn dump(history: &History, notes: &[(Duration, String)]) -> String {
    let mut out = String::new();
    for (at, what) in notes {
        let _ = writeln!(out, "nemesis {:.3} {what}", at.as_secs_f64());
    }
    for f in &history.fallback {
        let _ = writeln!(
            out,
            "fallback {} {} {:.3}..{:.3}",
            f.label,
            f.shard
                .map_or("every shard".to_owned(), |s| format!("shard {s}")),
            f.from.as_secs_f64(),
            f.to.as_secs_f64()
        );
    }
    for w in &history.windows {
        let _ = writeln!(
            out,
            "window instance {} {:?} {:.3}..{}",
            w.instance,
            w.outage,
            w.from.as_secs_f64(),
            w.to.map_or("never".to_owned(), |t| format!("{:.3}", t.as_secs_f64()))
        );
    }
    for op in &history.ops {
        let phase = match op.phase {
            Phase::Faults => "faults",
            Phase::Drain => "drain",
        };
        let _ = writeln!(
            out,
            "{:.3} {:.3} {phase} buyer {}{} instance {} {} conn@{:.3} {}{}",
            op.start.as_secs_f64(),
            op.end.as_secs_f64(),
            op.buyer,
            op.known
                .as_ref()
                .map_or(String::new(), |k| format!(" as {} key {}", k.buyer, k.key)),
            op.instance,
            history.events.get(op.event).map_or("?", String::as_str),
            op.connected.as_secs_f64(),
            op.outcome,
            op.error
                .as_deref()
                .map_or(String::new(), |e| format!(" ({e})"))
        );
    }
    out
}

impl Report {
    /// One line: seed, faults, sales, sold to nobody, held back, verdict.
    pub fn line(&self) -> String {
        let v = &self.verdict;
        let mut broken: Vec<String> = v
            .violations
            .iter()
            .map(|x| x.invariant.number().to_string())
            .collect();
        broken.dedup();
        let verdict = if v.passed() {
            "PASS".to_owned()
        } else {
            format!("FAIL (invariants {})", broken.join(", "))
        };
        let left = match v.left() {
            0 => String::new(),
            n => format!("  left {n}"),
        };
        let known = v.buyers.as_ref().map_or(String::new(), |b| {
            format!(
                "  keys {} (200s {}), 2 tickets {}, over N {}",
                b.keys,
                b.sold,
                b.keys_twice.len(),
                b.over_limit.len()
            )
        });
        format!(
            "seed {:<6} faults {} [{}]  sales {} ({} during faults)  nobody {}  held {}{left}{known}  {:.1}s  {verdict}",
            self.schedule.seed,
            self.schedule.steps.len(),
            self.schedule.labels().join(" "),
            v.tally.sold,
            self.sold_during_faults,
            v.nobody(),
            v.held(),
            self.elapsed.as_secs_f64(),
        )
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{}", self.line())?;
        write!(f, "{}", self.schedule)?;
        let t = &self.verdict.tally;
        writeln!(
            f,
            "requests {}: 200 {}, 409 {} (+ limit {}, key in use {}), 503 {}, other {}, no answer {} excused + {} not",
            t.requests,
            t.sold,
            t.sold_out,
            t.limited,
            t.key_in_use,
            t.unavailable,
            t.other,
            t.excused,
            t.unanswered
        )?;
        if let Some(b) = &self.verdict.buyers {
            writeln!(f, "{b}")?;
            for line in b.keys_twice.iter().chain(&b.over_limit) {
                writeln!(f, "  allowed: {line}")?;
            }
        }
        for e in &self.verdict.events {
            writeln!(
                f,
                "event {}: capacity {}, ledger {}, received {}, nobody {}, pool {}, reserves {}, stale {}, held {}",
                e.id, e.capacity, e.ledger, e.received, e.nobody, e.pool, e.reserved, e.stale, e.held
            )?;
        }
        if !self.verdict.passed() {
            writeln!(f, "violations:")?;
            for v in &self.verdict.violations {
                writeln!(f, "  {v}")?;
            }
        }
        if let Some(dir) = &self.kept {
            writeln!(
                f,
                "kept the run's logs, AOF and history in {}",
                dir.display()
            )?;
        }
        Ok(())
    }
}

/// Runs the schedules of `seeds` one after the other and returns their reports.
///
/// # Errors
/// The harness failed (see [`run`]).
pub async fn run_seeds(options: &Options, seeds: &[u64]) -> Result<Vec<Report>, HarnessError> {
    let mut reports = Vec::with_capacity(seeds.len());
    for &seed in seeds {
        reports.push(run(options, &options.schedule(seed)).await?);
    }
    Ok(reports)
}

/// Checks that `redis-server` (and for a cluster `redis-cli`, which forms it) can be run.
///
/// # Errors
/// [`HarnessError::RedisMissing`].
pub fn require_redis(redis: RedisMode) -> Result<(), HarnessError> {
    let programs: &[&str] = match redis {
        RedisMode::Single => &["redis-server"],
        RedisMode::Cluster => &["redis-server", "redis-cli"],
    };
    for program in programs {
        std::process::Command::new(program)
            .arg("--version")
            .output()
            .map_err(HarnessError::RedisMissing)?;
    }
    Ok(())
}
