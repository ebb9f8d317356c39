//! The final report: throughput, answers by status and error code, latency percentiles,
//! connection trouble and the verification results, as text for people or JSON for scripts.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::ledger::EventLedger;
use crate::verify::EventCheck;

/// Latency summary in microseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Latency {
    /// Answers measured.
    pub count: u64,
    /// Fastest answer.
    pub min: u64,
    /// Mean.
    pub mean: f64,
    /// Median.
    pub p50: u64,
    /// 90th percentile.
    pub p90: u64,
    /// 99th percentile.
    pub p99: u64,
    /// 99.9th percentile.
    #[serde(rename = "p99.9")]
    pub p99_9: u64,
    /// Slowest answer.
    pub max: u64,
}

impl Latency {
    /// Summarises a histogram of microseconds (all zero when it is empty).
    pub fn from_histogram(h: &Histogram<u64>) -> Latency {
        if h.is_empty() {
            return Latency::default();
        }
        Latency {
            count: h.len(),
            min: h.min(),
            mean: h.mean(),
            p50: h.value_at_quantile(0.50),
            p90: h.value_at_quantile(0.90),
            p99: h.value_at_quantile(0.99),
            p99_9: h.value_at_quantile(0.999),
            max: h.max(),
        }
    }
}

/// Everything a run found.
#[derive(Debug, Serialize)]
pub struct Report {
    /// Every check passed.
    pub ok: bool,
    /// Target URL.
    pub url: String,
    /// Method of every request.
    pub method: String,
    /// Path template.
    pub path: String,
    /// Connections held.
    pub connections: usize,
    /// Seconds spent opening the connections before the clock started.
    pub connect_seconds: f64,
    /// Seconds from the start of the measured run until the last answer.
    pub elapsed_seconds: f64,
    /// Requests sent.
    pub requests: u64,
    /// Answers received.
    pub answers: u64,
    /// Answers per second over `elapsed_seconds`.
    pub requests_per_second: f64,
    /// Answers by status code.
    pub status: BTreeMap<String, u64>,
    /// Answers by the `error` code of their JSON body.
    pub errors: BTreeMap<String, u64>,
    /// Latency of the answers, in microseconds.
    pub latency_us: Latency,
    /// Failed connects and connections lost with a request in flight.
    pub connection_errors: u64,
    /// The same by message.
    pub connection_error_kinds: BTreeMap<String, u64>,
    /// Requests past `--timeout`.
    pub timeouts: u64,
    /// Connections re-opened during the run.
    pub reconnects: u64,
    /// 200 answers to a purchase without a `ticket` field.
    pub sales_without_ticket: u64,
    /// 200 answers naming another event than the one asked for.
    pub wrong_event: u64,
    /// Tickets received per event.
    pub events: Vec<EventCheck>,
    /// The Redis ledger per event (empty without `--redis-url`).
    pub ledger: Vec<EventLedger>,
    /// CPU seconds of each `--cpu-of` process during the measured run.
    pub cpu: Vec<crate::cpu::ProcessCpu>,
    /// Things that make a check weaker but do not fail it.
    pub warnings: Vec<String>,
    /// What failed.
    pub failures: Vec<String>,
}

/// A `HashMap` as a map sorted by key, for stable output.
pub fn sorted<K: ToString, V: Copy>(m: &HashMap<K, V>) -> BTreeMap<String, V> {
    m.iter().map(|(k, v)| (k.to_string(), *v)).collect()
}

/// Microseconds as `850µs`, `12.34ms` or `1.23s`.
pub fn human_us(us: u64) -> String {
    if us < 1_000 {
        format!("{us}µs")
    } else if us < 1_000_000 {
        format!("{:.2}ms", us as f64 / 1_000.0)
    } else {
        format!("{:.2}s", us as f64 / 1_000_000.0)
    }
}

impl Report {
    /// The report as lines of text.
    pub fn to_text(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "{} {}{} with {} connections: {} requests in {:.2}s (connections opened in {:.2}s)",
            self.method,
            self.url.trim_end_matches('/'),
            self.path,
            self.connections,
            self.requests,
            self.elapsed_seconds,
            self.connect_seconds
        );
        let _ = writeln!(
            s,
            "  throughput   {:.1} req/s ({} answers)",
            self.requests_per_second, self.answers
        );
        let status: Vec<String> = self
            .status
            .iter()
            .map(|(k, v)| format!("{k}: {v}"))
            .collect();
        let _ = writeln!(s, "  status       {}", or_none(&status.join("  ")));
        if !self.errors.is_empty() {
            let errors: Vec<String> = self
                .errors
                .iter()
                .map(|(k, v)| format!("{k}: {v}"))
                .collect();
            let _ = writeln!(s, "  errors       {}", errors.join("  "));
        }
        let l = &self.latency_us;
        let _ = writeln!(
            s,
            "  latency      p50 {}  p90 {}  p99 {}  p99.9 {}  max {}  (mean {}, min {})",
            human_us(l.p50),
            human_us(l.p90),
            human_us(l.p99),
            human_us(l.p99_9),
            human_us(l.max),
            human_us(l.mean.round() as u64),
            human_us(l.min)
        );
        let _ = writeln!(
            s,
            "  connections  {} errors, {} timeouts, {} re-opened",
            self.connection_errors, self.timeouts, self.reconnects
        );
        for (kind, n) in &self.connection_error_kinds {
            let _ = writeln!(s, "               {n} × {kind}");
        }
        for c in &self.cpu {
            let per_answer = c.seconds * 1e6 / self.answers.max(1) as f64;
            let _ = writeln!(
                s,
                "  cpu of {:<6} {:.2}s, {per_answer:.1}µs per answer",
                c.pid, c.seconds
            );
        }
        if self.sales_without_ticket > 0 {
            let _ = writeln!(
                s,
                "  note         {} answers 200 without a ticket field",
                self.sales_without_ticket
            );
        }
        if self.wrong_event > 0 {
            let _ = writeln!(
                s,
                "  wrong event  {} sales named another event than the one bought",
                self.wrong_event
            );
        }
        for e in &self.events {
            let cap = e
                .capacity
                .map_or_else(|| "unknown".to_string(), |c| c.to_string());
            let _ = writeln!(
                s,
                "  event {:<6} sold {} ({} distinct, {} duplicates) of capacity {cap}",
                e.event, e.sold, e.distinct, e.duplicates
            );
        }
        for e in &self.ledger {
            let mut balance = match e.unaccounted {
                Some(0) => "every ticket accounted for".to_string(),
                Some(n) if n > 0 => format!("{n} tickets unaccounted for"),
                Some(n) => format!("{} tickets more than the capacity", -n),
                None => "capacity unknown".to_string(),
            };
            if !e.settled {
                balance.push_str(" (ledger still changing when read)");
            }
            let _ = writeln!(
                s,
                "  ledger {:<5} {} of {} received tickets recorded as sold; ledger holds {} sales ({} not received by this run); pool {}, reserves {}; {balance}",
                e.event, e.recorded, e.received, e.ledger_sold, e.not_received, e.pool, e.reserves
            );
        }
        for w in &self.warnings {
            let _ = writeln!(s, "  warning      {w}");
        }
        if self.ok && self.answers == 0 {
            let _ = writeln!(s, "  result       NO ANSWER AT ALL");
        } else if self.ok {
            let _ = writeln!(s, "  result       OK");
        } else {
            for f in &self.failures {
                let _ = writeln!(s, "  FAILED       {f}");
            }
        }
        s
    }
}

fn or_none(s: &str) -> &str {
    if s.is_empty() {
        "none"
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_a_uniform_spread() {
        let mut h = Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3).unwrap();
        for v in 1..=1000 {
            h.record(v).unwrap();
        }
        let l = Latency::from_histogram(&h);
        assert_eq!(l.count, 1000);
        assert_eq!(l.min, 1);
        assert_eq!(l.p50, 500);
        assert_eq!(l.p90, 900);
        assert_eq!(l.p99, 990);
        assert_eq!(l.p99_9, 999);
        assert_eq!(l.max, 1000);
        assert!((l.mean - 500.5).abs() < 0.01);
    }

    #[test]
    fn percentiles_see_a_slow_tail() {
        let mut h = Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3).unwrap();
        h.record_n(100, 9_990).unwrap();
        h.record_n(250_000, 10).unwrap();
        let l = Latency::from_histogram(&h);
        assert_eq!(l.p50, 100);
        assert_eq!(l.p99, 100);
        // 3 significant figures: within 0.1 %.
        assert!(l.p99_9 <= 100 || (l.p99_9 as f64 - 250_000.0).abs() / 250_000.0 < 0.001);
        assert!((l.max as f64 - 250_000.0).abs() / 250_000.0 < 0.001);
    }

    #[test]
    fn empty_histogram_is_all_zero() {
        let h = Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3).unwrap();
        assert_eq!(Latency::from_histogram(&h), Latency::default());
    }

    #[test]
    fn human_units() {
        assert_eq!(human_us(850), "850µs");
        assert_eq!(human_us(12_340), "12.34ms");
        assert_eq!(human_us(1_230_000), "1.23s");
    }
}
