//! One load test from start to end: learn capacities, open the connections, run the clock,
//! drain, merge the counts, verify, and build the report.
//!
//! The run is bounded on every side: the sending window ends at `--duration` (or after
//! `--requests`), requests in flight then get at most `--timeout` more, and Ctrl-C stops it
//! early with a report all the same.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::config::{Args, Plan};
use crate::cpu::{cpu_seconds, ProcessCpu};
use crate::ledger::Ledger;
use crate::report::{sorted, Latency, Report};
use crate::stats::Stats;
use crate::verify::check_tickets;
use crate::worker::{run_connection, Shared};
use crate::{capacity, progress};

/// File descriptors kept free besides the connections (Redis, metrics, stdio).
const SPARE_FDS: u64 = 64;

/// Runs the load test described by `args`.
///
/// # Errors
/// A usage or runtime problem that prevents a meaningful run (exit code 1). Verification
/// failures are not errors: they are in the report.
pub async fn run(args: &Args) -> Result<Report, String> {
    let plan = Plan::from_args(args)?;
    raise_fd_limit(plan.connections as u64 + SPARE_FDS)?;

    let mut warnings = Vec::new();
    let ledger = match &args.redis_url {
        Some(url) if plan.per_event => Some(Ledger::connect(url).await?),
        Some(_) => {
            warnings.push("the path has no {event}: --redis-url is not used".into());
            None
        }
        None => None,
    };
    let capacities = learn_capacities(&plan, ledger.as_ref(), &mut warnings).await?;

    let (go, _) = watch::channel(None);
    let (stop, _) = watch::channel(false);
    let shared = Arc::new(Shared {
        stats: Stats::new(plan.events.len()),
        stopped: AtomicBool::new(false),
        sent: AtomicU64::new(0),
        connect_gate: Semaphore::new(plan.connect_concurrency),
        go,
        stop,
        plan,
    });
    let plan = &shared.plan;

    let ctrl_c = {
        let shared = Arc::clone(&shared);
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                eprintln!("interrupted: stopping");
                shared.stop();
            }
        })
    };
    let progress = (!args.no_progress).then(|| tokio::spawn(progress::run(Arc::clone(&shared))));

    // Connect phase: every connection tries to open before the clock starts.
    let connect_started = Instant::now();
    let seed = fastrand::u64(..);
    let mut workers = JoinSet::new();
    for id in 0..plan.connections {
        workers.spawn(run_connection(Arc::clone(&shared), id, seed));
    }
    let mut stop_rx = shared.stop.subscribe();
    while shared.stats.ready.load(Ordering::Relaxed) < plan.connections as u64 && !*stop_rx.borrow()
    {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let connect_seconds = connect_started.elapsed().as_secs_f64();
    let opened = shared.stats.open_now();
    if opened < plan.connections as u64 {
        warnings.push(format!(
            "only {opened} of {} connections were open when the clock started",
            plan.connections
        ));
    }

    // Measured run.
    let cpu_before: Vec<Option<f64>> = args.cpu_of.iter().map(|&p| cpu_seconds(p)).collect();
    let start = Instant::now();
    shared.go.send_replace(Some(start));
    tokio::select! {
        () = tokio::time::sleep(plan.stop.duration) => {}
        _ = stop_rx.wait_for(|s| *s) => {}
    }
    shared.stop();
    // Requests in flight get up to --timeout to finish.
    let drain = tokio::time::sleep(plan.timeout + Duration::from_millis(500));
    tokio::pin!(drain);
    loop {
        tokio::select! {
            next = workers.join_next() => if next.is_none() { break },
            () = &mut drain => {
                warnings.push(format!(
                    "{} connections were still busy {:?} after the stop and were abandoned",
                    workers.len(),
                    plan.timeout
                ));
                workers.abort_all();
                while workers.join_next().await.is_some() {}
                break;
            }
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    let cpu = cpu_used(&args.cpu_of, &cpu_before, &mut warnings);
    ctrl_c.abort();
    if let Some(p) = progress {
        let _ = p.await;
    }

    let mut totals = shared.stats.take_totals(plan.events.len());
    let requests = shared.sent.load(Ordering::Relaxed);
    let requests = plan.stop.requests.map_or(requests, |n| requests.min(n));
    let tickets = std::mem::take(&mut totals.tickets);
    let check = if plan.per_event {
        check_tickets(&plan.events, tickets, &capacities)
    } else {
        check_tickets(&[], Vec::new(), &capacities)
    };
    let mut failures = check.failures;
    if totals.wrong_event > 0 {
        failures.push(format!(
            "{} sales named another event than the one bought",
            totals.wrong_event
        ));
    }

    let mut ledger_report = Vec::new();
    if let Some(ledger) = ledger {
        for (event, received) in plan.events.iter().zip(&check.received) {
            let e = ledger
                .check_event(
                    event,
                    received,
                    capacities.get(event).copied(),
                    args.ledger_wait,
                )
                .await?;
            if e.missing > 0 {
                failures.push(format!(
                    "event {event}: {} ticket(s) sold to this run are not in event:{{{event}}}:sold (e.g. {})",
                    e.missing,
                    e.missing_examples.join(", ")
                ));
            }
            if e.not_received > 0 {
                let msg = format!(
                    "event {event}: the ledger holds {} sale(s) this run did not receive (other clients, or requests that timed out)",
                    e.not_received
                );
                if args.strict_ledger {
                    failures.push(msg);
                } else {
                    warnings.push(msg);
                }
            }
            if let Some(n) = e.unaccounted.filter(|n| *n != 0) {
                let total = e.ledger_sold + e.pool + e.reserves;
                let msg = format!(
                    "event {event}: sold {} + pool {} + reserves {} = {total} tickets, but the capacity is {}{}",
                    e.ledger_sold,
                    e.pool,
                    e.reserves,
                    i64::try_from(total).unwrap_or(i64::MAX) + n,
                    if e.settled {
                        ""
                    } else {
                        " (the ledger was still changing when read)"
                    }
                );
                if e.settled && (args.strict_ledger || n < 0) {
                    failures.push(msg);
                } else {
                    warnings.push(msg);
                }
            }
            ledger_report.push(e);
        }
        ledger.close().await;
    }

    let answers = totals.answers();
    Ok(Report {
        ok: failures.is_empty(),
        url: plan.url.clone(),
        method: plan.method.to_string(),
        path: plan.path_template.clone(),
        connections: plan.connections,
        connect_seconds,
        elapsed_seconds: elapsed,
        requests,
        answers,
        requests_per_second: answers as f64 / elapsed.max(1e-9),
        status: totals
            .status
            .iter()
            .enumerate()
            .filter(|(_, n)| **n > 0)
            .map(|(code, n)| (code.to_string(), *n))
            .collect(),
        errors: sorted(&totals.errors),
        latency_us: Latency::from_histogram(&totals.latency),
        connection_errors: totals.connection_errors,
        connection_error_kinds: sorted(&totals.connection_error_kinds),
        timeouts: totals.timeouts,
        reconnects: totals.reconnects,
        sales_without_ticket: totals.sales_without_ticket,
        wrong_event: totals.wrong_event,
        events: check.events,
        ledger: ledger_report,
        cpu,
        warnings,
        failures,
    })
}

/// CPU seconds each of `pids` used since `before` was read; a process that could not be read
/// at either end is left out, with a warning.
fn cpu_used(pids: &[u32], before: &[Option<f64>], warnings: &mut Vec<String>) -> Vec<ProcessCpu> {
    let mut out = Vec::new();
    for (&pid, before) in pids.iter().zip(before) {
        match (before, cpu_seconds(pid)) {
            (Some(before), Some(after)) => out.push(ProcessCpu {
                pid,
                seconds: after - before,
            }),
            _ => warnings.push(format!("--cpu-of {pid}: /proc/{pid}/stat is not readable")),
        }
    }
    out
}

/// Lifts the soft open-file limit to the hard one; fails when even that is below `needed`.
fn raise_fd_limit(needed: u64) -> Result<(), String> {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) if limit < needed => Err(format!(
            "the open-file limit is {limit}, too low for the connections asked for (needs {needed}); raise it with ulimit -n"
        )),
        Ok(_) => Ok(()),
        Err(e) => Err(format!("cannot raise the open-file limit: {e}")),
    }
}

/// Capacities per event: from Redis when given, else from the server's metrics.
async fn learn_capacities(
    plan: &Plan,
    ledger: Option<&Ledger>,
    warnings: &mut Vec<String>,
) -> Result<HashMap<String, u64>, String> {
    if !plan.per_event {
        return Ok(HashMap::new());
    }
    let (capacities, source) = match ledger {
        Some(l) => (l.capacities().await?, "the Redis events hash"),
        None => match capacity::from_metrics(plan).await {
            Ok(c) => (c, "GET /metrics?format=json"),
            Err(e) => {
                warnings.push(format!(
                    "capacities unknown ({e}): over-selling is not checked"
                ));
                return Ok(HashMap::new());
            }
        },
    };
    for event in &plan.events {
        if !capacities.contains_key(event) {
            warnings.push(format!(
                "event {event} is not in {source}: its capacity is unknown"
            ));
        }
    }
    Ok(capacities)
}
