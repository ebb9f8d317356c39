//! The once-a-second progress line on stderr, so a person watching a long run sees throughput
//! and errors as they happen (off with `--no-progress`).

use std::sync::Arc;
use std::time::Duration;

use tokio::time::{interval_at, Instant, MissedTickBehavior};

use crate::worker::Shared;

/// Prints a progress line every second until the run stops: "connecting" lines while the
/// connections open, then throughput and errors counted from the start of the clock.
pub async fn run(shared: Arc<Shared>) {
    let mut stop = shared.stop.subscribe();
    let mut go = shared.go.subscribe();
    let start = loop {
        tokio::select! {
            g = go.wait_for(Option::is_some) => match g {
                Ok(g) => break g.expect("waited for Some"),
                Err(_) => return,
            },
            () = tokio::time::sleep(Duration::from_secs(1)) => eprintln!(
                "connecting: {} of {} connections tried, {} open",
                shared.stats.ready.load(std::sync::atomic::Ordering::Relaxed),
                shared.plan.connections,
                shared.stats.open_now()
            ),
            _ = stop.wait_for(|s| *s) => return,
        }
    };
    let mut tick = interval_at(start + Duration::from_secs(1), Duration::from_secs(1));
    tick.set_missed_tick_behavior(MissedTickBehavior::Skip);
    let mut last_answers = 0u64;
    let mut last_at = start;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let p = shared.stats.progress();
        let now = Instant::now();
        let rate =
            (p.answers - last_answers) as f64 / now.duration_since(last_at).as_secs_f64().max(1e-3);
        last_answers = p.answers;
        last_at = now;
        eprintln!(
            "{:>5.1}s  {:>8.0} req/s  answers {}  2xx {}  4xx {}  5xx {}  conn errors {}  timeouts {}  open {}",
            now.duration_since(start).as_secs_f64(),
            rate,
            p.answers,
            p.ok,
            p.client_errors,
            p.server_errors,
            p.connection_errors,
            p.timeouts,
            shared.stats.open_now()
        );
    }
}
