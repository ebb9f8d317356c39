//! Command-line flags and the run plan built from them.
//!
//! Everything a run needs is parsed and checked here, before the first connection: the target
//! address (loopback only unless `--allow-remote`, so a typo cannot aim a flood elsewhere), the
//! request paths of each event, the weights, and the stop condition. Workers then read the
//! resulting [`Plan`] without re-parsing anything.

use std::net::{SocketAddr, ToSocketAddrs};
use std::time::Duration;

use clap::Parser;
use http::{HeaderValue, Method, Uri};

use crate::buyers::{bearer_tokens, IdempotencyKeys, DEFAULT_BUYERS};
use crate::pick::EventPicker;

/// Load tester for ticketd: keep-alive HTTP/1.1 connections each sending its next request as
/// soon as the previous answer arrives, an HDR latency histogram, and a check that no ticket was
/// sold twice or beyond an event's capacity (optionally against the Redis ledger).
///
/// Exit code: 0 when every check passed, 2 on a verification failure, 1 on a usage or runtime
/// error.
#[derive(Debug, Parser)]
#[command(name = "loadtest", version)]
pub struct Args {
    /// Server to load: http://HOST[:PORT][/PREFIX]. Only loopback addresses unless
    /// --allow-remote.
    #[arg(long, default_value = "http://127.0.0.1:3000")]
    pub url: String,

    /// Keep-alive connections held open at once, each with one request in flight.
    #[arg(long, short = 'c', default_value_t = 2000, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub connections: u64,

    /// How long to send requests (e.g. 10s, 500ms, 2m); 10s when --requests is absent. With
    /// --requests it caps the run (default cap 10m). Connections are opened before this clock
    /// starts.
    #[arg(long, short = 'd', value_parser = parse_duration)]
    pub duration: Option<Duration>,

    /// Send this many requests in all, then stop (or at --duration, whichever comes first).
    #[arg(long, short = 'n', value_parser = clap::value_parser!(u64).range(1..))]
    pub requests: Option<u64>,

    /// Events to buy, as ID[:WEIGHT][,ID[:WEIGHT]...] (e.g. 1,2,3 or 1:5,2:1). Each request
    /// picks one at random, in proportion to its weight (default weight 1).
    #[arg(long, default_value = "1", value_parser = parse_events)]
    pub events: EventList,

    /// Fixed total request rate in requests/s, spread evenly across connections. Without it
    /// every connection sends as fast as answers come back. A connection whose answer comes
    /// late skips the slots it missed, so this is a ceiling.
    #[arg(long, value_parser = parse_rate)]
    pub rate: Option<f64>,

    /// HTTP method of every request.
    #[arg(long, default_value = "POST", value_parser = parse_method)]
    pub method: Method,

    /// Request path; `{event}` is replaced by the event picked for the request
    /// (e.g. `--method GET --path /healthz` to measure the health check).
    #[arg(long, default_value = "/buy/{event}")]
    pub path: String,

    /// Bound on one request (and on opening one connection); a request past it counts as a
    /// timeout and its connection is re-opened.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub timeout: Duration,

    /// Print the report as one JSON object on stdout instead of text.
    #[arg(long)]
    pub json: bool,

    /// Redis holding the server's ledger (e.g. redis://127.0.0.1:6390). Capacities are then read
    /// from its `events` hash, and after the run every ticket received must be recorded in
    /// `event:{ID}:sold`.
    #[arg(long)]
    pub redis_url: Option<String>,

    /// Also fail when the ledger holds sales this run did not receive, or when sold + unsold
    /// tickets do not add up to the capacity (only with --redis-url).
    #[arg(long, requires = "redis_url")]
    pub strict_ledger: bool,

    /// How long to keep re-checking received tickets missing from the ledger (sales made from
    /// an instance's fallback reserve are written to the ledger later) before failing, and to
    /// wait for the ledger's counts to stop changing (purchases answered 503 are made void a
    /// moment later).
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub ledger_wait: Duration,

    /// Also report the CPU time (user + system, from `/proc/PID/stat`) that process PID spent
    /// during the measured run: the server, its Redis. Repeatable.
    #[arg(long = "cpu-of", value_name = "PID")]
    pub cpu_of: Vec<u32>,

    /// Do not print a progress line to stderr every second.
    #[arg(long)]
    pub no_progress: bool,

    /// Connections being opened at the same time, so thousands of connects do not overflow the
    /// server's listen backlog.
    #[arg(long, default_value_t = 128, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub connect_concurrency: u64,

    /// Tries to open each connection before the run starts; a connection still closed after
    /// them keeps retrying during the run.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..))]
    pub connect_retries: u32,

    /// Worker threads of the client (default: one per CPU).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=256))]
    pub threads: Option<u64>,

    /// Allow a target that is not a loopback address.
    #[arg(long)]
    pub allow_remote: bool,

    /// The server's --jwt-secret: every request carries `Authorization: Bearer <JWT>`, one of
    /// --buyers HS256 tokens signed at start-up (`sub` buyer-0, buyer-1, ...; valid for an
    /// hour), taken in turn so requests spread evenly over the buyers.
    #[arg(long, value_name = "SECRET")]
    pub jwt_secret: Option<String>,

    /// Buyers to sign tokens for [default: 1000].
    #[arg(long, value_name = "N", requires = "jwt_secret", value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub buyers: Option<u64>,

    /// `iss` of the signed tokens (the server's --jwt-issuer).
    #[arg(long, value_name = "ISSUER", requires = "jwt_secret")]
    pub jwt_issuer: Option<String>,

    /// `aud` of the signed tokens (the server's --jwt-audience).
    #[arg(long, value_name = "AUDIENCE", requires = "jwt_secret")]
    pub jwt_audience: Option<String>,

    /// Send a fresh, unique `Idempotency-Key` with every request.
    #[arg(long)]
    pub idempotency_keys: bool,
}

/// The `--events` list: ids in the order given, with their weights.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventList(pub Vec<(String, u32)>);

/// Everything the workers need, checked once.
#[derive(Debug)]
pub struct Plan {
    /// Address every connection goes to.
    pub addr: SocketAddr,
    /// The URL as given, for the report.
    pub url: String,
    /// `Host` header of every request.
    pub host: HeaderValue,
    /// Request method.
    pub method: Method,
    /// The path template as given, for the report.
    pub path_template: String,
    /// Whether the path names the event (`{event}`): only then are tickets tracked per event.
    pub per_event: bool,
    /// Event ids, in `--events` order.
    pub events: Vec<String>,
    /// Request URI of each event (same order); one entry when the path has no `{event}`.
    pub uris: Vec<Uri>,
    /// Random choice of an event by weight.
    pub picker: EventPicker,
    /// Connections to hold open.
    pub connections: usize,
    /// Stop condition.
    pub stop: StopAt,
    /// Time between two requests of one connection under `--rate`.
    pub interval: Option<Duration>,
    /// Bound on a request and on a connect.
    pub timeout: Duration,
    /// Concurrent connects.
    pub connect_concurrency: usize,
    /// Connect tries before the run starts.
    pub connect_retries: u32,
    /// Base URL + `/metrics?format=json`, for learning capacities.
    pub metrics_uri: Uri,
    /// `Authorization` values, one per buyer (empty: no `Authorization` header).
    pub authorizations: Vec<HeaderValue>,
    /// A fresh `Idempotency-Key` for every request, with `--idempotency-keys`.
    pub idempotency_keys: Option<IdempotencyKeys>,
}

/// Cap on a `--requests` run without `--duration`.
pub const REQUESTS_TIME_CAP: Duration = Duration::from_secs(600);

/// When a run ends: after `duration` of sending, or after `requests` requests in all, whichever
/// comes first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StopAt {
    /// Longest time to send requests.
    pub duration: Duration,
    /// Requests to send in all, if bounded by count.
    pub requests: Option<u64>,
}

impl Plan {
    /// Checks the flags and resolves the target.
    ///
    /// # Errors
    /// A message for the user when a flag is unusable.
    pub fn from_args(args: &Args) -> Result<Plan, String> {
        let uri: Uri = args
            .url
            .parse()
            .map_err(|e| format!("--url {:?}: {e}", args.url))?;
        if uri.scheme_str() != Some("http") {
            return Err(format!("--url {:?}: only http:// is supported", args.url));
        }
        let authority = uri
            .authority()
            .ok_or_else(|| format!("--url {:?}: no host", args.url))?;
        let port = authority.port_u16().unwrap_or(80);
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']');
        let addr = (host, port)
            .to_socket_addrs()
            .map_err(|e| format!("--url {:?}: cannot resolve {host}: {e}", args.url))?
            .next()
            .ok_or_else(|| format!("--url {:?}: {host} has no address", args.url))?;
        if !addr.ip().is_loopback() && !args.allow_remote {
            return Err(format!(
                "--url {:?} resolves to {addr}, not a loopback address; pass --allow-remote to load it",
                args.url
            ));
        }
        let host_header = HeaderValue::from_str(authority.as_str())
            .map_err(|e| format!("--url {:?}: {e}", args.url))?;
        let prefix = uri.path().trim_end_matches('/');
        if !args.path.starts_with('/') {
            return Err(format!("--path {:?} must start with /", args.path));
        }
        let per_event = args.path.contains("{event}");
        let events: Vec<String> = args.events.0.iter().map(|(id, _)| id.clone()).collect();
        let mut uris = Vec::new();
        let templates: Vec<String> = if per_event {
            events
                .iter()
                .map(|id| format!("{prefix}{}", args.path.replace("{event}", id)))
                .collect()
        } else {
            vec![format!("{prefix}{}", args.path)]
        };
        for t in templates {
            uris.push(
                t.parse::<Uri>()
                    .map_err(|e| format!("--path {:?}: {e}", args.path))?,
            );
        }
        let weights: Vec<u32> = args.events.0.iter().map(|(_, w)| *w).collect();
        let picker = EventPicker::new(if per_event { &weights } else { &[1] })?;
        let connections = usize::try_from(args.connections).map_err(|e| e.to_string())?;
        let stop = StopAt {
            duration: match (args.duration, args.requests) {
                (Some(d), _) => d,
                (None, Some(_)) => REQUESTS_TIME_CAP,
                (None, None) => Duration::from_secs(10),
            },
            requests: args.requests,
        };
        if stop.duration.is_zero() {
            return Err("--duration must be above 0".into());
        }
        if args.timeout.is_zero() {
            return Err("--timeout must be above 0".into());
        }
        let interval = args
            .rate
            .map(|rate| Duration::from_secs_f64(connections as f64 / rate));
        let authorizations = match &args.jwt_secret {
            Some(secret) => bearer_tokens(
                secret,
                args.buyers.unwrap_or(DEFAULT_BUYERS),
                args.jwt_issuer.as_deref(),
                args.jwt_audience.as_deref(),
            )?,
            None => Vec::new(),
        };
        let metrics_uri = format!("{prefix}/metrics?format=json")
            .parse()
            .map_err(|e| format!("--url {:?}: {e}", args.url))?;
        Ok(Plan {
            addr,
            url: args.url.clone(),
            host: host_header,
            method: args.method.clone(),
            path_template: args.path.clone(),
            per_event,
            events,
            uris,
            picker,
            connections,
            stop,
            interval,
            timeout: args.timeout,
            connect_concurrency: usize::try_from(args.connect_concurrency)
                .map_err(|e| e.to_string())?,
            connect_retries: args.connect_retries,
            metrics_uri,
            authorizations,
            idempotency_keys: args.idempotency_keys.then(IdempotencyKeys::new),
        })
    }
}

/// Whether `id` is a valid event id: `[A-Za-z0-9_-]{1,64}`, as the server requires.
pub fn valid_event_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Parses `--events`: `ID[:WEIGHT][,ID[:WEIGHT]...]`, ids unique, weights at least 1.
///
/// # Errors
/// A message saying which entry is wrong.
pub fn parse_events(s: &str) -> Result<EventList, String> {
    let mut out: Vec<(String, u32)> = Vec::new();
    for part in s.split(',').map(str::trim) {
        if part.is_empty() {
            return Err(format!("empty entry in {s:?}"));
        }
        let (id, weight) = match part.split_once(':') {
            Some((id, w)) => {
                let w: u32 = w
                    .parse()
                    .map_err(|_| format!("weight of {id:?} is not a whole number: {w:?}"))?;
                (id, w)
            }
            None => (part, 1),
        };
        if !valid_event_id(id) {
            return Err(format!(
                "event id {id:?} is not 1-64 characters of A-Z a-z 0-9 _ -"
            ));
        }
        if weight == 0 {
            return Err(format!("weight of {id:?} must be at least 1"));
        }
        if out.iter().any(|(seen, _)| seen == id) {
            return Err(format!("event {id:?} is listed twice"));
        }
        out.push((id.to_string(), weight));
    }
    Ok(EventList(out))
}

/// Parses `250ms`, `10s`, `2m`, `1h` or a bare number of seconds (fractions allowed: `1.5s`).
///
/// # Errors
/// A message saying what was expected.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let value: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like 500ms, 10s or 2m"))?;
    let seconds = match unit {
        "ms" => value / 1000.0,
        "" | "s" => value,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        _ => return Err(format!("{s:?}: unit must be ms, s, m or h")),
    };
    if !(0.0..=1e9).contains(&seconds) {
        return Err(format!("{s:?} is out of range"));
    }
    Ok(Duration::from_secs_f64(seconds))
}

fn parse_rate(s: &str) -> Result<f64, String> {
    let rate: f64 = s
        .parse()
        .map_err(|_| format!("{s:?} is not a number of requests per second"))?;
    if !(rate.is_finite() && rate > 0.0) {
        return Err(format!("{s:?}: the rate must be above 0"));
    }
    Ok(rate)
}

fn parse_method(s: &str) -> Result<Method, String> {
    Method::from_bytes(s.to_ascii_uppercase().as_bytes())
        .map_err(|_| format!("{s:?} is not an HTTP method"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(extra: &[&str]) -> Args {
        let mut argv = vec!["loadtest"];
        argv.extend_from_slice(extra);
        Args::try_parse_from(argv).expect("flags parse")
    }

    #[test]
    fn events_with_and_without_weights() {
        assert_eq!(
            parse_events("1,2,3").unwrap().0,
            vec![("1".into(), 1), ("2".into(), 1), ("3".into(), 1)]
        );
        assert_eq!(
            parse_events("1:5, gala-2024:1").unwrap().0,
            vec![("1".into(), 5), ("gala-2024".into(), 1)]
        );
        assert!(parse_events("1,1").is_err());
        assert!(parse_events("1:0").is_err());
        assert!(parse_events("1:x").is_err());
        assert!(parse_events("a b").is_err());
        assert!(parse_events("").is_err());
        assert!(parse_events(&"x".repeat(65)).is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10s").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("1.5").unwrap(), Duration::from_millis(1500));
        assert!(parse_duration("ten").is_err());
        assert!(parse_duration("5d").is_err());
    }

    #[test]
    fn plan_defaults() {
        let plan = Plan::from_args(&args(&[])).unwrap();
        assert_eq!(plan.connections, 2000);
        assert_eq!(
            plan.stop,
            StopAt {
                duration: Duration::from_secs(10),
                requests: None
            }
        );
        assert_eq!(plan.method, Method::POST);
        assert_eq!(plan.uris[0], "/buy/1");
        assert_eq!(plan.host, "127.0.0.1:3000");
        assert_eq!(plan.metrics_uri, "/metrics?format=json");
    }

    #[test]
    fn plan_paths_and_limits() {
        let plan = Plan::from_args(&args(&[
            "--url",
            "http://localhost:3001/api/",
            "--events",
            "a:2,b",
            "--requests",
            "100",
            "--rate",
            "1000",
            "-c",
            "10",
        ]))
        .unwrap();
        assert_eq!(plan.uris, vec!["/api/buy/a", "/api/buy/b"]);
        assert_eq!(
            plan.stop,
            StopAt {
                duration: REQUESTS_TIME_CAP,
                requests: Some(100)
            }
        );
        assert_eq!(plan.interval, Some(Duration::from_millis(10)));
        assert!(plan.addr.ip().is_loopback());
        let health = Plan::from_args(&args(&[
            "--method", "get", "--path", "/healthz", "--events", "1,2",
        ]))
        .unwrap();
        assert!(!health.per_event);
        assert_eq!(health.uris, vec!["/healthz"]);
        assert_eq!(health.method, Method::GET);
    }

    #[test]
    fn remote_targets_need_a_flag() {
        let err = Plan::from_args(&args(&["--url", "http://192.0.2.1:3000"])).unwrap_err();
        assert!(err.contains("loopback"), "{err}");
        assert!(Plan::from_args(&args(&["--url", "https://127.0.0.1:3000"])).is_err());
    }

    #[test]
    fn buyers_and_keys() {
        let plan = Plan::from_args(&args(&[])).unwrap();
        assert!(plan.authorizations.is_empty() && plan.idempotency_keys.is_none());
        let secret = "0123456789abcdef0123456789abcdef";
        let plan = Plan::from_args(&args(&["--jwt-secret", secret, "--idempotency-keys"])).unwrap();
        assert_eq!(plan.authorizations.len(), DEFAULT_BUYERS as usize);
        assert!(plan.idempotency_keys.is_some());
        let plan = Plan::from_args(&args(&["--jwt-secret", secret, "--buyers", "7"])).unwrap();
        assert_eq!(plan.authorizations.len(), 7);
        assert!(Args::try_parse_from(["loadtest", "--buyers", "7"]).is_err());
        assert!(
            Args::try_parse_from(["loadtest", "--jwt-secret", secret, "--buyers", "0"]).is_err()
        );
    }

    #[test]
    fn duration_caps_a_requests_run() {
        let plan = Plan::from_args(&args(&["-d", "1s", "-n", "5"])).unwrap();
        assert_eq!(plan.stop.duration, Duration::from_secs(1));
        assert_eq!(plan.stop.requests, Some(5));
    }
}
