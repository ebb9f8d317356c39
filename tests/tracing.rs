//! Distributed tracing end to end: ticketd runs as a process with the standard `OTEL_*`
//! variables pointing at an OTLP/HTTP receiver inside the test, and the test reads what it was
//! sent: a purchase continues its caller's trace, the Redis script call that carried it is in
//! the trace and linked to it, ratio 0 exports nothing, and a collector that is down changes
//! nothing for buyers.

mod support;

use hyper::{Method, StatusCode};
use support::otlp::Span;
use support::{Conn, OtlpReceiver, RedisServer, TicketdProcess};

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN: &str = "00f067aa0ba902b7";

fn traceparent(sampled: bool) -> String {
    format!(
        "00-{TRACE_ID}-{CALLER_SPAN}-{}",
        if sampled { "01" } else { "00" }
    )
}

/// ticketd with tracing to `endpoint` at `ratio`, exporting every 100 ms.
async fn traced(args: &[&str], endpoint: &str, ratio: &str) -> TicketdProcess {
    let env = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint),
        ("OTEL_TRACES_SAMPLER_ARG", ratio),
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
    ];
    let mut all = vec!["--stats-interval", "0"];
    all.extend_from_slice(args);
    TicketdProcess::spawn(&all, &env).await
}

async fn buy_with(addr: std::net::SocketAddr, event: &str, parent: &str) -> support::Answer {
    let mut c = Conn::open(addr).await.unwrap();
    c.send_with(
        Method::POST,
        &format!("/buy/{event}"),
        &[("traceparent", parent), ("tracestate", "caller=1")],
    )
    .await
    .unwrap()
}

fn named<'a>(spans: &'a [Span], name: &str) -> Vec<&'a Span> {
    spans.iter().filter(|s| s.name == name).collect()
}

#[tokio::test]
async fn a_purchase_continues_the_callers_trace() {
    let otlp = OtlpReceiver::start().await;
    let t = traced(
        &["--store", "memory", "--events", "1=5"],
        &otlp.endpoint(),
        "0",
    )
    .await;
    let a = buy_with(t.addr, "1", &traceparent(true)).await;
    assert_eq!(a.status, StatusCode::OK);
    let ticket = a.json()["ticket"].as_str().unwrap().to_owned();

    let spans = otlp
        .wait_for("server and purchase span", |s| {
            !named(s, "POST /buy/:eventId").is_empty() && !named(s, "purchase").is_empty()
        })
        .await;
    let server = named(&spans, "POST /buy/:eventId")[0];
    assert_eq!(server.trace_id, TRACE_ID, "{server:#?}");
    assert_eq!(server.parent_span_id, CALLER_SPAN);
    assert_eq!(server.service, "ticketd");
    assert_eq!(server.attr("http.route"), Some("/buy/:eventId"));
    assert_eq!(server.attr("http.response.status_code"), Some("200"));
    assert_eq!(server.attr("ticketd.event"), Some("1"));
    let purchase = named(&spans, "purchase")[0];
    assert_eq!(purchase.trace_id, TRACE_ID);
    assert_eq!(purchase.parent_span_id, server.span_id);
    assert_eq!(purchase.attr("ticketd.store.path"), Some("memory"));
    assert_eq!(purchase.attr("ticketd.outcome"), Some("sold"));
    assert_eq!(purchase.attr("ticketd.ticket"), Some(ticket.as_str()));
    // Tracing on turned on no debug log: the per-purchase DEBUG line is not there.
    assert!(!t.log_text().contains("latency_us"), "{}", t.log_text());

    // The caller decided not to sample: nothing of that request is exported.
    let before = otlp.spans().len();
    let a = buy_with(t.addr, "1", &traceparent(false)).await;
    assert_eq!(a.status, StatusCode::OK);
    // A sampled request after it: once its spans are in, the unsampled one's would be too.
    let other = "0af7651916cd43dd8448eb211c80319c";
    let mut c = Conn::open(t.addr).await.unwrap();
    c.send_with(
        Method::POST,
        "/buy/1",
        &[("traceparent", &format!("00-{other}-b7ad6b7169203331-01"))],
    )
    .await
    .unwrap();
    let spans = otlp
        .wait_for("the second sampled trace", |s| {
            s.iter().filter(|s| s.trace_id == other).count() >= 2
        })
        .await;
    assert_eq!(spans.len(), before + 2, "{spans:#?}");
}

#[tokio::test]
async fn ratio_zero_without_a_parent_exports_nothing() {
    let otlp = OtlpReceiver::start().await;
    let t = traced(
        &["--store", "memory", "--events", "1=100"],
        &otlp.endpoint(),
        "0",
    )
    .await;
    let mut c = Conn::open(t.addr).await.unwrap();
    for _ in 0..20 {
        assert_eq!(c.buy("1").await.unwrap().status, StatusCode::OK);
    }
    // A sampled request marks the point by which the others would have been exported.
    let marker = buy_with(t.addr, "1", &traceparent(true)).await;
    assert_eq!(marker.status, StatusCode::OK);
    let spans = otlp
        .wait_for("the marker's spans", |s| {
            s.iter().filter(|s| s.trace_id == TRACE_ID).count() >= 2
        })
        .await;
    assert!(
        spans.iter().all(|s| s.trace_id == TRACE_ID),
        "only the marker's trace: {spans:#?}"
    );
    let m = t.metrics_json().await;
    assert_eq!(m["tracing"]["enabled"], true);
    assert_eq!(m["tracing"]["spans_dropped"], 0);
}

#[tokio::test]
async fn the_redis_call_is_in_the_trace_and_linked_to_the_purchase() {
    let redis = RedisServer::start();
    let otlp = OtlpReceiver::start().await;
    let url = redis.url();
    let t = traced(
        &["--store", "redis", "--redis-url", &url, "--events", "1=50"],
        &otlp.endpoint(),
        "0",
    )
    .await;
    t.wait_ready().await;
    let a = buy_with(t.addr, "1", &traceparent(true)).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text());

    let spans = otlp
        .wait_for("the script call's span", |s| {
            !named(s, "EVALSHA purchase").is_empty() && !named(s, "purchase").is_empty()
        })
        .await;
    let purchase = named(&spans, "purchase")[0];
    assert_eq!(purchase.attr("ticketd.store.path"), Some("redis"));
    let call = named(&spans, "EVALSHA purchase")[0];
    assert_eq!(call.trace_id, TRACE_ID, "{call:#?}");
    assert_eq!(call.parent_span_id, purchase.span_id);
    assert!(
        call.links
            .contains(&(TRACE_ID.to_owned(), purchase.span_id.clone())),
        "{call:#?}"
    );
    assert_eq!(call.attr("ticketd.batch.size"), Some("1"));
    assert_eq!(call.attr("ticketd.batch.sold"), Some("1"));
    assert_eq!(call.attr("db.system.name"), Some("redis"));
    assert_eq!(call.service, "ticketd");
}

#[tokio::test]
async fn a_collector_that_is_down_changes_nothing_for_buyers() {
    // A port nobody listens on.
    let port = support::redis::free_port();
    let endpoint = format!("http://127.0.0.1:{port}");
    let t = traced(&["--store", "memory", "--events", "1=300"], &endpoint, "1").await;
    let mut c = Conn::open(t.addr).await.unwrap();
    for i in 0..300 {
        let a = c.buy("1").await.unwrap();
        assert_eq!(a.status, StatusCode::OK, "purchase {i}: {}", a.text());
    }
    assert_eq!(c.buy("1").await.unwrap().status, StatusCode::CONFLICT);
    t.wait_for_log("cannot export spans to the trace collector")
        .await;
    let m = t.metrics_json().await;
    assert_eq!(m["tracing"]["enabled"], true);
    let failed = m["tracing"]["spans_export_failed"].as_u64().unwrap();
    assert!(failed > 0, "{m}");
    // One WARN for the whole run, not one per batch.
    let warns = t
        .log_text()
        .matches("cannot export spans to the trace collector")
        .count();
    assert_eq!(warns, 1, "{}", t.log_text());
}

#[tokio::test]
async fn without_an_endpoint_nothing_is_traced() {
    let t = TicketdProcess::spawn(
        &[
            "--store",
            "memory",
            "--events",
            "1=5",
            "--stats-interval",
            "0",
        ],
        &[],
    )
    .await;
    let a = buy_with(t.addr, "1", &traceparent(true)).await;
    assert_eq!(a.status, StatusCode::OK);
    let m = t.metrics_json().await;
    assert_eq!(m["tracing"]["enabled"], false);
    let text = support::http::request(t.addr, Method::GET, "/metrics")
        .await
        .text();
    assert!(
        text.contains("ticketd_trace_spans_dropped_total 0"),
        "{text}"
    );
}

// Two workers: the receiver keeps answering while this one blocks waiting for the exit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_exports_what_is_queued_before_exit() {
    let otlp = OtlpReceiver::start().await;
    // The default schedule (5 s): only the flush at exit can deliver the spans this soon.
    let env = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", otlp.endpoint()),
        ("OTEL_TRACES_SAMPLER_ARG", "0".to_owned()),
    ];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let mut t = TicketdProcess::spawn(
        &[
            "--store",
            "memory",
            "--events",
            "1=5",
            "--stats-interval",
            "0",
        ],
        &env,
    )
    .await;
    let started = std::time::Instant::now();
    assert_eq!(
        buy_with(t.addr, "1", &traceparent(true)).await.status,
        StatusCode::OK
    );
    t.signal("TERM");
    assert_eq!(t.wait(), Some(0));
    assert!(started.elapsed() < std::time::Duration::from_secs(4));
    let spans = otlp.spans();
    assert_eq!(named(&spans, "POST /buy/:eventId").len(), 1, "{spans:#?}");
}

#[tokio::test]
async fn a_full_queue_drops_and_counts_and_never_holds_up_a_purchase() {
    // A collector that takes the connection and never answers: the first export hangs, the
    // two-span queue stays full.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", silent.local_addr().unwrap());
    let env = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
        ("OTEL_TRACES_SAMPLER_ARG", "1"),
        ("OTEL_BSP_MAX_QUEUE_SIZE", "2"),
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
    ];
    let t = TicketdProcess::spawn(
        &[
            "--store",
            "memory",
            "--events",
            "1=50",
            "--stats-interval",
            "0",
        ],
        &env,
    )
    .await;
    let mut c = Conn::open(t.addr).await.unwrap();
    let started = std::time::Instant::now();
    for i in 0..50 {
        let a = c.buy("1").await.unwrap();
        assert_eq!(a.status, StatusCode::OK, "purchase {i}: {}", a.text());
    }
    assert!(
        started.elapsed() < std::time::Duration::from_secs(5),
        "purchases waited for the exporter: {:?}",
        started.elapsed()
    );
    let m = t.metrics_json().await;
    let dropped = m["tracing"]["spans_dropped"].as_u64().unwrap();
    assert!(dropped >= 90, "{m}");
    let text = support::http::request(t.addr, Method::GET, "/metrics")
        .await
        .text();
    let in_text: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("ticketd_trace_spans_dropped_total "))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no dropped-spans counter in {text}"));
    assert!(in_text >= dropped, "{in_text} < {dropped}");
    drop(silent);
}

#[tokio::test]
async fn a_fallback_sale_is_in_the_purchase_trace() {
    let mut redis = RedisServer::start();
    let otlp = OtlpReceiver::start().await;
    let url = redis.url();
    let t = traced(
        &[
            "--store",
            "redis",
            "--redis-url",
            &url,
            "--events",
            "f=100",
            "--fallback-reserve",
            "20",
        ],
        &otlp.endpoint(),
        "0",
    )
    .await;
    t.wait_ready().await;
    t.wait_until(
        |a| a.json()["fallback"]["reserved"]["f"] == 20,
        "/metrics?format=json",
    )
    .await;
    redis.kill();
    let a = buy_with(t.addr, "f", &traceparent(true)).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text());
    let spans = otlp
        .wait_for("the fallback sale's span", |s| {
            !named(s, "fallback sale").is_empty() && !named(s, "purchase").is_empty()
        })
        .await;
    let purchase = named(&spans, "purchase")[0];
    assert_eq!(purchase.attr("ticketd.store.path"), Some("fallback"));
    let sale = named(&spans, "fallback sale")[0];
    assert_eq!(sale.trace_id, TRACE_ID);
    assert_eq!(sale.parent_span_id, purchase.span_id);
    assert_eq!(sale.attr("ticketd.ticket"), purchase.attr("ticketd.ticket"));
    assert!(sale.attr("ticketd.ticket").is_some(), "{sale:#?}");
}

#[tokio::test]
async fn background_work_has_its_own_traces_at_the_ratio() {
    let redis = RedisServer::start();
    let otlp = OtlpReceiver::start().await;
    let url = redis.url();
    let _t = traced(
        &["--store", "redis", "--redis-url", &url, "--events", "b=100"],
        &otlp.endpoint(),
        "1",
    )
    .await;
    let spans = otlp
        .wait_for("a reserve claim's span", |s| {
            !named(s, "claim reserve").is_empty()
        })
        .await;
    let claim = named(&spans, "claim reserve")[0];
    assert_eq!(claim.parent_span_id, "", "a root of its own: {claim:#?}");
    assert_eq!(claim.attr("ticketd.event"), Some("b"));
    assert_eq!(claim.service, "ticketd");
}

#[tokio::test]
async fn requests_without_a_parent_are_traced_at_the_ratio() {
    let otlp = OtlpReceiver::start().await;
    let t = traced(
        &["--store", "memory", "--events", "1=1000"],
        &otlp.endpoint(),
        "0.5",
    )
    .await;
    let mut c = Conn::open(t.addr).await.unwrap();
    for _ in 0..200 {
        assert_eq!(c.buy("1").await.unwrap().status, StatusCode::OK);
    }
    // The marker's spans come after every earlier one.
    assert_eq!(
        buy_with(t.addr, "1", &traceparent(true)).await.status,
        StatusCode::OK
    );
    let spans = otlp
        .wait_for("the marker's spans", |s| {
            s.iter().filter(|s| s.trace_id == TRACE_ID).count() >= 2
        })
        .await;
    let roots = spans
        .iter()
        .filter(|s| s.name == "POST /buy/:eventId" && s.trace_id != TRACE_ID)
        .count();
    // Half of 200, give or take six standard deviations: the edge's choice is the SDK's too.
    assert!((60..=140).contains(&roots), "{roots} of 200 traced at 0.5");
    let purchases = named(&spans, "purchase").len();
    assert_eq!(
        purchases,
        roots + 1,
        "every traced request has its purchase span"
    );
}
