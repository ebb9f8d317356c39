//! One run of one schedule: start Redis and the instances (they seed the events), buy while the
//! nemesis works, heal everything, sell the events out, stop the instances gracefully, read
//! Redis, and judge the history.

use std::fmt::{self, Write as _};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fred::prelude::ClientLike;

use crate::checker::{self, Verdict};
use crate::cluster::{Cluster, Spec};
use crate::error::HarnessError;
use crate::generator::{self, Load};
use crate::history::{Clock, History, Phase};
use crate::ledger;
use crate::nemesis;
use crate::schedule::Schedule;
use crate::ticketd::Binary;

/// How long the buyers go on after the last fault before healing.
const TAIL: Duration = Duration::ZERO;

/// Everything about a run but the schedule.
#[derive(Debug, Clone)]
pub struct Options {
    /// Redis, instances, events and ticketd's flags.
    pub spec: Spec,
    /// Buyers while the nemesis works.
    pub load: Load,
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
    /// 250 ms Redis timeout, `buyers` connections buying about 100 tickets a second in all.
    pub fn standard(binary: Binary, instances: usize, buyers: usize) -> Self {
        let buyers = buyers.max(1);
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
            },
            load: Load {
                connections: buyers,
                pause: Duration::from_secs_f64(buyers as f64 / 100.0),
            },
            drain_connections: buyers,
            drain_bound: Duration::from_secs(60),
            keep_failed: false,
            keep_all: false,
        }
    }

    /// The schedule of `seed` for these options.
    pub fn schedule(&self, seed: u64) -> Schedule {
        Schedule::generate(seed, self.spec.instances, self.spec.lease)
    }
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
        clock,
        stop.clone(),
    ));

    nemesis::run(&mut cluster, schedule, clock, clock.now()).await?;
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

    let client = cluster.redis.client().await?;
    let mut states = Vec::with_capacity(events.len());
    for (id, capacity) in &options.spec.events {
        states.push(ledger::read(&client, id, *capacity).await?);
    }
    let _ = client.quit().await;

    let (windows, problems) = cluster.log.snapshot();
    let history = History {
        events: events.to_vec(),
        ops,
        windows,
        problems,
    };
    let verdict = checker::check(&history, &states);
    let kept = if options.keep_all || (!verdict.passed() && options.keep_failed) {
        let dir = cluster.dir();
        let _ = std::fs::write(dir.join("history.txt"), dump(&history));
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

/// The history as text, one request or window per line, by time.
fn dump(history: &History) -> String {
    let mut out = String::new();
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
            "{:.3} {:.3} {phase} buyer {} instance {} {} conn@{:.3} {}{}",
            op.start.as_secs_f64(),
            op.end.as_secs_f64(),
            op.buyer,
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
        format!(
            "seed {:<6} faults {} [{}]  sales {} ({} during faults)  nobody {}  held {}{left}  {:.1}s  {verdict}",
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
            "requests {}: 200 {}, 409 {}, 503 {}, other {}, no answer {} excused + {} not",
            t.requests, t.sold, t.sold_out, t.unavailable, t.other, t.excused, t.unanswered
        )?;
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

/// Checks that `redis-server` can be run.
///
/// # Errors
/// [`HarnessError::RedisMissing`].
pub fn require_redis() -> Result<(), HarnessError> {
    std::process::Command::new("redis-server")
        .arg("--version")
        .output()
        .map(|_| ())
        .map_err(HarnessError::RedisMissing)
}
