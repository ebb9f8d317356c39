//! Purchase statistics in the log: every `--stats-interval` one INFO line with tickets sold and
//! the sell rate since the last line, remaining per event, errors, and the store mode; nothing
//! while none of it changed.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use crate::app::App;
use crate::metrics::{Outcome, StorePath};
use crate::store::Store;

/// Logs one statistics line per `every` until the process ends. `every` of zero: never.
pub async fn run<S: Store>(app: App<S>, every: Duration) {
    if every.is_zero() {
        return;
    }
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    let mut last = (Instant::now(), total_sold(&app));
    // What the previous line said: an idle service does not repeat it every interval.
    let mut said = String::new();
    loop {
        tick.tick().await;
        let events = app.catalog().events();
        let remaining = app.remaining_now(&events);
        let sold = total_sold(&app);
        let elapsed = last.0.elapsed().as_secs_f64().max(1e-3);
        let rate = (sold - last.1) as f64 / elapsed;
        last = (Instant::now(), sold);
        let m = app.metrics();
        let (unavailable, errors): (u64, u64) = events.iter().fold((0, 0), |acc, e| {
            (
                acc.0 + e.metrics.count(Outcome::Unavailable),
                acc.1 + e.metrics.count(Outcome::Error),
            )
        });
        let mut per_event = String::new();
        for (e, r) in events.iter().zip(&remaining) {
            let _ = write!(
                per_event,
                "{}{}={}",
                if per_event.is_empty() { "" } else { "," },
                e.id,
                r
            );
        }
        let (_, fallback) = m.fallback();
        let mode = match (app.store().name(), fallback) {
            ("redis", 1..) => "fallback",
            ("redis-cluster", 1..) => "fallback on some shards",
            (name, _) => name,
        };
        let fallback_sold = m.store_purchases(StorePath::Fallback, Outcome::Sold);
        let now = format!("{sold} {per_event} {unavailable} {errors} {fallback_sold} {mode}");
        if now == said {
            continue;
        }
        said = now;
        tracing::info!(
            sold,
            rate_per_s = (rate * 10.0).round() / 10.0,
            remaining = %per_event,
            unavailable,
            errors,
            fallback_sold,
            mode,
            "purchase statistics"
        );
    }
}

fn total_sold<S: Store>(app: &App<S>) -> u64 {
    app.catalog()
        .events()
        .iter()
        .map(|e| e.metrics.count(Outcome::Sold))
        .sum()
}
