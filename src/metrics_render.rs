//! Renders the registry: Prometheus text format 0.0.4, or JSON with the same data.
//!
//! Numbers go straight into one caller-provided buffer with `itoa`/`ryu`; no string is built per
//! sample.

use std::sync::Arc;

use crate::event::Event;
use crate::metrics::names::{self, Family};
use crate::metrics::{
    Metrics, Outcome, RedisErrorKind, StorePath, LATENCY_BUCKETS, ROUTES, STATUSES,
};

/// `content-type` of the text format.
pub const TEXT_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// What a scrape shows besides the registry.
#[derive(Debug)]
pub struct Snapshot<'a> {
    /// Every event, in catalogue order.
    pub events: &'a [Arc<Event>],
    /// Unsold tickets of each event, same order (the snapshot: [`crate::remaining`]).
    pub remaining: &'a [u64],
    /// Seconds since `remaining` was read from the store.
    pub remaining_age: f64,
    /// Unsold tickets of each event in this instance's fallback reserve, same order.
    pub reserved: &'a [u64],
    /// The running store's name.
    pub store: &'a str,
}

/// `{"<event>":<n>,...}`.
fn per_event(out: &mut Vec<u8>, events: &[Arc<Event>], values: impl Iterator<Item = u64>) {
    out.push(b'{');
    for (i, (e, n)) in events.iter().zip(values).enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.push(b'"');
        out.extend_from_slice(e.id.as_bytes());
        out.extend_from_slice(b"\":");
        out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
    }
    out.push(b'}');
}

fn header(out: &mut Vec<u8>, (name, kind, help): Family) {
    out.extend_from_slice(b"# HELP ");
    out.extend_from_slice(name.as_bytes());
    out.push(b' ');
    out.extend_from_slice(help.as_bytes());
    out.extend_from_slice(b"\n# TYPE ");
    out.extend_from_slice(name.as_bytes());
    out.push(b' ');
    out.extend_from_slice(kind.as_bytes());
    out.push(b'\n');
}

/// Writes a label value with `\`, `"` and newline escaped as the text format requires.
pub fn write_label_value(out: &mut Vec<u8>, value: &str) {
    for &b in value.as_bytes() {
        match b {
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'"' => out.extend_from_slice(b"\\\""),
            b'\n' => out.extend_from_slice(b"\\n"),
            _ => out.push(b),
        }
    }
}

/// One sample: `name{k="v",...} value`.
fn sample(out: &mut Vec<u8>, name: &str, labels: &[(&str, &str)], value: u64) {
    sample_start(out, name, labels);
    out.extend_from_slice(itoa::Buffer::new().format(value).as_bytes());
    out.push(b'\n');
}

fn sample_f64(out: &mut Vec<u8>, name: &str, labels: &[(&str, &str)], value: f64) {
    sample_start(out, name, labels);
    write_f64(out, value);
    out.push(b'\n');
}

fn sample_start(out: &mut Vec<u8>, name: &str, labels: &[(&str, &str)]) {
    out.extend_from_slice(name.as_bytes());
    if !labels.is_empty() {
        out.push(b'{');
        for (i, (k, v)) in labels.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.extend_from_slice(k.as_bytes());
            out.extend_from_slice(b"=\"");
            write_label_value(out, v);
            out.push(b'"');
        }
        out.push(b'}');
    }
    out.push(b' ');
}

fn write_f64(out: &mut Vec<u8>, v: f64) {
    if v.is_finite() {
        out.extend_from_slice(ryu::Buffer::new().format(v).as_bytes());
    } else if v.is_nan() {
        out.extend_from_slice(b"NaN");
    } else if v > 0.0 {
        out.extend_from_slice(b"+Inf");
    } else {
        out.extend_from_slice(b"-Inf");
    }
}

/// Appends the whole registry in Prometheus text format 0.0.4 to `out`.
pub fn render_text(out: &mut Vec<u8>, m: &Metrics, s: &Snapshot<'_>) {
    header(out, names::PURCHASES);
    for e in s.events {
        for o in Outcome::ALL {
            sample(
                out,
                names::PURCHASES.0,
                &[("event", &e.id), ("outcome", o.label())],
                e.metrics.count(o),
            );
        }
    }
    header(out, names::TICKETS_SOLD);
    for e in s.events {
        sample(
            out,
            names::TICKETS_SOLD.0,
            &[("event", &e.id)],
            e.metrics.count(Outcome::Sold),
        );
    }
    header(out, names::TICKETS_REMAINING);
    for (e, r) in s.events.iter().zip(s.remaining) {
        sample(out, names::TICKETS_REMAINING.0, &[("event", &e.id)], *r);
    }
    header(out, names::REMAINING_AGE);
    sample_f64(out, names::REMAINING_AGE.0, &[], s.remaining_age);
    header(out, names::CAPACITY);
    for e in s.events {
        sample(out, names::CAPACITY.0, &[("event", &e.id)], e.capacity);
    }
    header(out, names::STORE_PURCHASES);
    for p in StorePath::ALL {
        for o in Outcome::ALL {
            sample(
                out,
                names::STORE_PURCHASES.0,
                &[("path", p.label()), ("outcome", o.label())],
                m.store_purchases(p, o),
            );
        }
    }
    header(out, names::LATENCY);
    let le_names: Vec<String> = LATENCY_BUCKETS.iter().map(|b| b.to_string()).collect();
    let bucket = format!("{}_bucket", names::LATENCY.0);
    for p in StorePath::ALL {
        let (counts, sum) = m.latency(p).snapshot();
        for (i, c) in counts.iter().enumerate() {
            let le = le_names.get(i).map_or("+Inf", String::as_str);
            sample(out, &bucket, &[("path", p.label()), ("le", le)], *c);
        }
        sample_f64(
            out,
            &format!("{}_sum", names::LATENCY.0),
            &[("path", p.label())],
            sum,
        );
        sample(
            out,
            &format!("{}_count", names::LATENCY.0),
            &[("path", p.label())],
            counts[counts.len() - 1],
        );
    }
    header(out, names::HTTP_REQUESTS);
    let mut code = itoa::Buffer::new();
    for (r, route) in ROUTES.iter().enumerate() {
        for (si, status) in STATUSES.iter().enumerate() {
            let n = m.http(r, si);
            if n == 0 {
                continue;
            }
            let status = if *status == 0 {
                "other"
            } else {
                code.format(*status)
            };
            sample(
                out,
                names::HTTP_REQUESTS.0,
                &[("route", route), ("code", status)],
                n,
            );
        }
    }
    header(out, names::HTTP_IN_FLIGHT);
    sample(out, names::HTTP_IN_FLIGHT.0, &[], m.in_flight());
    let (open, total) = m.connections();
    header(out, names::CONNECTIONS_OPEN);
    sample(out, names::CONNECTIONS_OPEN.0, &[], open);
    header(out, names::CONNECTIONS);
    sample(out, names::CONNECTIONS.0, &[], total);
    let (activations, active) = m.fallback();
    header(out, names::FALLBACK_ACTIVATIONS);
    sample(out, names::FALLBACK_ACTIVATIONS.0, &[], activations);
    header(out, names::FALLBACK_MODE);
    sample(out, names::FALLBACK_MODE.0, &[], active);
    header(out, names::OUTAGES_UNCONFIRMED);
    sample(
        out,
        names::OUTAGES_UNCONFIRMED.0,
        &[],
        m.outages_unconfirmed(),
    );
    let shards = m.shard_modes();
    if !shards.is_empty() {
        header(out, names::SHARD_FALLBACK_MODE);
        for (shard, on) in &shards {
            sample(
                out,
                names::SHARD_FALLBACK_MODE.0,
                &[("shard", shard)],
                u64::from(*on),
            );
        }
    }
    header(out, names::REDIS_ERRORS);
    for k in RedisErrorKind::ALL {
        sample(
            out,
            names::REDIS_ERRORS.0,
            &[("kind", k.label())],
            m.redis_errors(k),
        );
    }
    header(out, names::SCRIPT_RELOADS);
    sample(out, names::SCRIPT_RELOADS.0, &[], m.script_reloads());
    header(out, names::BATCHES);
    sample(out, names::BATCHES.0, &[], m.redis_batches());
    header(out, names::CANCELLED);
    sample(out, names::CANCELLED.0, &[], m.cancelled());
    header(out, names::SHED);
    sample(out, names::SHED.0, &[], m.shed());
    header(out, names::RESERVE);
    for (e, r) in s.events.iter().zip(s.reserved) {
        sample(out, names::RESERVE.0, &[("event", &e.id)], *r);
    }
    header(out, names::QUARANTINED);
    for e in s.events {
        sample(
            out,
            names::QUARANTINED.0,
            &[("event", &e.id)],
            e.metrics.held_back(),
        );
    }
    let (settled, conflicts, held_back) = m.settlement();
    header(out, names::SETTLED);
    sample(out, names::SETTLED.0, &[], settled);
    header(out, names::CONFLICTS);
    sample(out, names::CONFLICTS.0, &[], conflicts);
    header(out, names::HELD_BACK);
    sample(out, names::HELD_BACK.0, &[], held_back);
    let (over_limit, keys_twice) = m.buyer_findings();
    header(out, names::OVER_LIMIT);
    sample(out, names::OVER_LIMIT.0, &[], over_limit);
    header(out, names::KEYS_TWICE);
    sample(out, names::KEYS_TWICE.0, &[], keys_twice);
    let (cancel_failed, journal_failed) = m.failures();
    header(out, names::CANCEL_FAILED);
    sample(out, names::CANCEL_FAILED.0, &[], cancel_failed);
    header(out, names::JOURNAL_FAILED);
    sample(out, names::JOURNAL_FAILED.0, &[], journal_failed);
    header(out, names::SPANS_DROPPED);
    sample(
        out,
        names::SPANS_DROPPED.0,
        &[],
        crate::otel::export::dropped(),
    );
    header(out, names::SPANS_EXPORT_FAILED);
    sample(
        out,
        names::SPANS_EXPORT_FAILED.0,
        &[],
        crate::otel::export::failed(),
    );
    header(out, names::BUILD_INFO);
    sample(
        out,
        names::BUILD_INFO.0,
        &[("version", env!("CARGO_PKG_VERSION")), ("store", s.store)],
        1,
    );
    header(out, names::START_TIME);
    sample_f64(out, names::START_TIME.0, &[], m.start_time());
}

/// Appends the same data as one JSON object to `out`.
pub fn render_json(out: &mut Vec<u8>, m: &Metrics, s: &Snapshot<'_>) {
    let mut n = itoa::Buffer::new();
    let mut num = |out: &mut Vec<u8>, v: u64| out.extend_from_slice(n.format(v).as_bytes());
    out.extend_from_slice(br#"{"version":""#);
    out.extend_from_slice(env!("CARGO_PKG_VERSION").as_bytes());
    out.extend_from_slice(br#"","store":""#);
    out.extend_from_slice(s.store.as_bytes());
    out.extend_from_slice(br#"","events":{"#);
    let mut totals = [0u64; Outcome::ALL.len()];
    for (i, (e, r)) in s.events.iter().zip(s.remaining).enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.push(b'"');
        out.extend_from_slice(e.id.as_bytes());
        out.extend_from_slice(br#"":{"capacity":"#);
        num(out, e.capacity);
        out.extend_from_slice(br#","remaining":"#);
        num(out, *r);
        for o in Outcome::ALL {
            let c = e.metrics.count(o);
            totals[o as usize] += c;
            out.extend_from_slice(b",\"");
            out.extend_from_slice(o.label().as_bytes());
            out.extend_from_slice(b"\":");
            num(out, c);
        }
        out.push(b'}');
    }
    out.extend_from_slice(br#"},"totals":{"remaining":"#);
    num(out, s.remaining.iter().sum());
    out.extend_from_slice(br#","remaining_age_seconds":"#);
    write_f64(out, s.remaining_age);
    for o in Outcome::ALL {
        out.extend_from_slice(b",\"");
        out.extend_from_slice(o.label().as_bytes());
        out.extend_from_slice(b"\":");
        num(out, totals[o as usize]);
    }
    out.extend_from_slice(br#"},"paths":{"#);
    for (i, p) in StorePath::ALL.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.push(b'"');
        out.extend_from_slice(p.label().as_bytes());
        out.extend_from_slice(b"\":{");
        for o in Outcome::ALL {
            out.push(b'"');
            out.extend_from_slice(o.label().as_bytes());
            out.extend_from_slice(b"\":");
            num(out, m.store_purchases(*p, o));
            out.push(b',');
        }
        let (counts, sum) = m.latency(*p).snapshot();
        out.extend_from_slice(br#""latency_seconds":{"count":"#);
        num(out, counts[counts.len() - 1]);
        out.extend_from_slice(br#","sum":"#);
        write_f64(out, sum);
        out.extend_from_slice(br#","buckets":{"#);
        for (b, c) in counts.iter().enumerate() {
            if b > 0 {
                out.push(b',');
            }
            out.push(b'"');
            match LATENCY_BUCKETS.get(b) {
                Some(le) => write_f64(out, *le),
                None => out.extend_from_slice(b"+Inf"),
            }
            out.extend_from_slice(b"\":");
            num(out, *c);
        }
        out.extend_from_slice(b"}}}");
    }
    let (activations, active) = m.fallback();
    let (settled, conflicts, held_back) = m.settlement();
    let (cancel_failed, journal_failed) = m.failures();
    out.extend_from_slice(br#"},"fallback":{"active":"#);
    out.extend_from_slice(if active > 0 { b"true" } else { b"false" });
    out.extend_from_slice(br#","activations":"#);
    num(out, activations);
    out.extend_from_slice(br#","settled":"#);
    num(out, settled);
    out.extend_from_slice(br#","conflicts":"#);
    num(out, conflicts);
    let (over_limit, keys_twice) = m.buyer_findings();
    out.extend_from_slice(br#","buyers_over_limit":"#);
    num(out, over_limit);
    out.extend_from_slice(br#","keys_used_twice":"#);
    num(out, keys_twice);
    out.extend_from_slice(br#","reserves_held_back":"#);
    num(out, held_back);
    out.extend_from_slice(br#","cancellations_failed":"#);
    num(out, cancel_failed);
    out.extend_from_slice(br#","journal_failures":"#);
    num(out, journal_failed);
    out.extend_from_slice(br#","reserved":"#);
    per_event(out, s.events, s.reserved.iter().copied());
    out.extend_from_slice(br#","quarantined":"#);
    per_event(
        out,
        s.events,
        s.events.iter().map(|e| e.metrics.held_back()),
    );
    out.extend_from_slice(br#"},"redis":{"script_reloads":"#);
    num(out, m.script_reloads());
    out.extend_from_slice(br#","purchase_batches":"#);
    num(out, m.redis_batches());
    out.extend_from_slice(br#","cancelled_purchases":"#);
    num(out, m.cancelled());
    out.extend_from_slice(br#","shed":"#);
    num(out, m.shed());
    out.extend_from_slice(br#","outages_unconfirmed":"#);
    num(out, m.outages_unconfirmed());
    out.extend_from_slice(br#","errors":{"#);
    for (i, k) in RedisErrorKind::ALL.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.push(b'"');
        out.extend_from_slice(k.label().as_bytes());
        out.extend_from_slice(b"\":");
        num(out, m.redis_errors(*k));
    }
    let (open, total) = m.connections();
    out.extend_from_slice(br#"}},"http":{"in_flight":"#);
    num(out, m.in_flight());
    out.extend_from_slice(br#","connections_open":"#);
    num(out, open);
    out.extend_from_slice(br#","connections_total":"#);
    num(out, total);
    out.extend_from_slice(br#"},"tracing":{"enabled":"#);
    out.extend_from_slice(if crate::otel::enabled() {
        b"true"
    } else {
        b"false"
    });
    out.extend_from_slice(br#","spans_dropped":"#);
    num(out, crate::otel::export::dropped());
    out.extend_from_slice(br#","spans_export_failed":"#);
    num(out, crate::otel::export::failed());
    out.extend_from_slice(br#"},"process_start_time_seconds":"#);
    write_f64(out, m.start_time());
    out.push(b'}');
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::Catalog;
    use std::time::Duration;

    #[test]
    fn label_values_are_escaped() {
        let mut out = Vec::new();
        write_label_value(&mut out, "a\"b\\c\nd");
        assert_eq!(out, br#"a\"b\\c\nd"#);
        let mut out = Vec::new();
        sample(&mut out, "x_total", &[("k", "v\"1")], 3);
        assert_eq!(out, b"x_total{k=\"v\\\"1\"} 3\n");
    }

    fn small() -> (Metrics, Catalog) {
        let m = Metrics::new();
        let c = Catalog::new([("1", 10)]);
        let e = c.get("1").unwrap();
        e.metrics.record(Outcome::Sold);
        e.metrics.record(Outcome::Sold);
        e.metrics.record(Outcome::SoldOut);
        m.record_purchase(StorePath::Redis, Outcome::Sold, Duration::from_micros(300));
        m.record_http("buy", 200);
        (m, c)
    }

    #[test]
    fn exact_text_of_a_small_registry() {
        let (m, c) = small();
        let events = c.events();
        let mut out = Vec::new();
        render_text(
            &mut out,
            &m,
            &Snapshot {
                events: &events,
                remaining: &[8],
                remaining_age: 0.5,
                reserved: &[0],
                store: "redis",
            },
        );
        let text = String::from_utf8(out).unwrap();
        let expect_lines = [
            "# HELP ticketd_purchases_total Purchase attempts by event and outcome (sold, sold_out, unavailable, error; with buyers also limit_reached, replayed, key_conflict).",
            "# TYPE ticketd_purchases_total counter",
            "ticketd_purchases_total{event=\"1\",outcome=\"sold\"} 2",
            "ticketd_purchases_total{event=\"1\",outcome=\"sold_out\"} 1",
            "ticketd_purchases_total{event=\"1\",outcome=\"unavailable\"} 0",
            "ticketd_purchases_total{event=\"1\",outcome=\"error\"} 0",
            "ticketd_purchases_total{event=\"1\",outcome=\"limit_reached\"} 0",
            "ticketd_purchases_total{event=\"1\",outcome=\"replayed\"} 0",
            "ticketd_purchases_total{event=\"1\",outcome=\"key_conflict\"} 0",
            "# HELP ticketd_tickets_sold_total Tickets this instance sold, by event.",
            "# TYPE ticketd_tickets_sold_total counter",
            "ticketd_tickets_sold_total{event=\"1\"} 2",
            "# HELP ticketd_tickets_remaining Unsold tickets per event (pool + reserves), from a snapshot one background task reads from the store every --metrics-refresh and this instance's sales update; a scrape does not ask the store.",
            "# TYPE ticketd_tickets_remaining gauge",
            "ticketd_tickets_remaining{event=\"1\"} 8",
            "# HELP ticketd_remaining_snapshot_age_seconds Seconds since ticketd_tickets_remaining (and ticketd_tickets_quarantined) was last read from the store; grows while the store does not answer.",
            "# TYPE ticketd_remaining_snapshot_age_seconds gauge",
            "ticketd_remaining_snapshot_age_seconds 0.5",
            "# HELP ticketd_event_capacity Tickets per event in all.",
            "# TYPE ticketd_event_capacity gauge",
            "ticketd_event_capacity{event=\"1\"} 10",
        ];
        let head: Vec<&str> = text.lines().take(expect_lines.len()).collect();
        assert_eq!(head, expect_lines);
        for line in [
            "ticketd_store_purchases_total{path=\"redis\",outcome=\"sold\"} 1",
            "ticketd_purchase_duration_seconds_bucket{path=\"redis\",le=\"0.00025\"} 0",
            "ticketd_purchase_duration_seconds_bucket{path=\"redis\",le=\"0.0005\"} 1",
            "ticketd_purchase_duration_seconds_bucket{path=\"redis\",le=\"+Inf\"} 1",
            "ticketd_purchase_duration_seconds_sum{path=\"redis\"} 0.0003",
            "ticketd_purchase_duration_seconds_count{path=\"redis\"} 1",
            "ticketd_http_requests_total{route=\"buy\",code=\"200\"} 1",
            "ticketd_fallback_mode 0",
            "ticketd_redis_errors_total{kind=\"timeout\"} 0",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line}\n{text}");
        }
        assert!(text.ends_with('\n'));
    }

    #[test]
    fn json_carries_the_same_numbers() {
        let (m, c) = small();
        let events = c.events();
        let mut out = Vec::new();
        render_json(
            &mut out,
            &m,
            &Snapshot {
                events: &events,
                remaining: &[8],
                remaining_age: 0.5,
                reserved: &[0],
                store: "redis",
            },
        );
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["events"]["1"]["sold"], 2);
        assert_eq!(v["events"]["1"]["sold_out"], 1);
        assert_eq!(v["events"]["1"]["remaining"], 8);
        assert_eq!(v["totals"]["remaining_age_seconds"], 0.5);
        assert_eq!(v["totals"]["sold"], 2);
        assert_eq!(v["paths"]["redis"]["sold"], 1);
        assert_eq!(v["paths"]["redis"]["latency_seconds"]["count"], 1);
        assert_eq!(v["fallback"]["active"], false);
    }
}
