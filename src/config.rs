//! Command-line and environment configuration (clap): every flag also reads an environment
//! variable, and bad configuration ends the process with one line naming the setting and exit
//! code 64 (`EX_USAGE`).

use std::net::SocketAddr;
use std::str::FromStr;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::event::{validate_event_id, EventIdError};

/// Exit code for bad configuration (`EX_USAGE` of sysexits.h).
pub const EXIT_CONFIG: u8 = 64;

/// Largest accepted capacity of one event.
pub const MAX_CAPACITY: u64 = 1_000_000_000;

/// ticketd sells tickets for many events at once, from Redis through one atomic Lua script,
/// and keeps answering from memory when Redis fails.
#[derive(Debug, Parser)]
#[command(name = "ticketd", version, args_conflicts_with_subcommands = true)]
pub struct Cli {
    /// `seed`, or nothing to run the service.
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Settings of the service (when no subcommand is given).
    #[command(flatten)]
    pub serve: ServeArgs,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the service (the default).
    Serve(Box<ServeArgs>),
    /// Create missing events in Redis (idempotent), or replace them with --reset, then exit.
    Seed(SeedArgs),
    /// List every instance's fallback reserve per event, live or held back; `release` returns
    /// a held-back one to the pool.
    Reserves(ReservesArgs),
}

/// Settings of `ticketd reserves`.
#[derive(Debug, Clone, Args)]
pub struct ReservesArgs {
    /// Redis URL and log format.
    #[command(flatten)]
    pub common: CommonArgs,
    /// Nothing to list; `release` to return a held-back reserve to the pool.
    #[command(subcommand)]
    pub command: Option<ReservesCommand>,
}

/// Subcommands of `ticketd reserves`.
#[derive(Debug, Clone, Subcommand)]
pub enum ReservesCommand {
    /// Return a held-back reserve to the pool: only when its instance's journal is lost for
    /// good (restarting the instance on its --journal-dir returns it safely).
    Release {
        /// The event.
        #[arg(long)]
        event: String,
        /// The instance (16 hex digits, as `ticketd reserves` lists it).
        #[arg(long)]
        instance: String,
        /// Confirm: tickets the instance sold while cut off may be sold again.
        #[arg(long)]
        yes: bool,
    },
}

/// Settings shared by every command.
#[derive(Debug, Clone, Args)]
pub struct CommonArgs {
    /// Redis to sell from. Unset: the service runs in memory (with `--store auto`), and `seed`
    /// and `--store redis` use redis://127.0.0.1:6379.
    #[arg(long, env = "REDIS_URL", value_parser = parse_redis_url, global = true)]
    pub redis_url: Option<String>,
    /// Log format: human-readable lines or one JSON object per line. Filter with RUST_LOG.
    #[arg(long, env = "TICKETD_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text, global = true)]
    pub log_format: LogFormat,
}

/// Settings of the service.
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Redis URL and log format.
    #[command(flatten)]
    pub common: CommonArgs,
    /// Address to listen on.
    #[arg(long, env = "TICKETD_LISTEN", default_value = "127.0.0.1:3000")]
    pub listen: SocketAddr,
    /// Events that must exist, as ID=COUNT[,ID=COUNT...]; missing ones are seeded at start-up,
    /// existing ones are left as they are.
    #[arg(long, env = "TICKETD_EVENTS", default_value = "", value_parser = parse_events)]
    pub events: EventSpecs,
    /// Where tickets live: redis; memory (nothing persisted); auto: Redis when a Redis URL is
    /// configured (503 until it answers, never memory), memory when none is.
    #[arg(long, env = "TICKETD_STORE", value_enum, default_value_t = StoreKind::Auto)]
    pub store: StoreKind,
    /// Clients (connections) in the fred pool; each pipelines concurrent commands.
    #[arg(long, env = "TICKETD_REDIS_POOL_SIZE", default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub redis_pool_size: u16,
    /// Bound on one Redis purchase call (e.g. 250ms, 1s); past it the buyer gets 503.
    #[arg(long, env = "TICKETD_REDIS_TIMEOUT", default_value = "250ms", value_parser = parse_duration)]
    pub redis_timeout: Duration,
    /// Purchases in flight to Redis at most (per instance); more wait in the process, so that
    /// queueing under overload is never mistaken for a failing Redis.
    #[arg(long, env = "TICKETD_REDIS_MAX_IN_FLIGHT", default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub redis_max_in_flight: u32,
    /// Replicas that must hold a purchase before its buyer hears of it (`WAIT` after every
    /// round of script calls): a primary that dies after answering then cannot take the sale
    /// with it. Unset: 1 on a Redis Cluster, 0 on a single Redis (which has no failover).
    #[arg(long, env = "TICKETD_REDIS_REPLICA_ACKS", value_parser = clap::value_parser!(u32).range(0..=16))]
    pub redis_replica_acks: Option<u32>,
    /// How long a purchase may wait for a Redis slot before it is shed with 503.
    #[arg(long, env = "TICKETD_QUEUE_TIMEOUT", default_value = "2s", value_parser = parse_duration)]
    pub queue_timeout: Duration,
    /// How long to wait for Redis at start-up before serving (503 until Redis answers).
    #[arg(long, env = "TICKETD_CONNECT_TIMEOUT", default_value = "2s", value_parser = parse_duration)]
    pub connect_timeout: Duration,
    /// How often to re-read the event catalogue from Redis (events seeded while running).
    #[arg(long, env = "TICKETD_CATALOG_REFRESH", default_value = "5s", value_parser = parse_duration)]
    pub catalog_refresh: Duration,
    /// Bound on finishing in-flight requests after SIGTERM/SIGINT.
    #[arg(long, env = "TICKETD_SHUTDOWN_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub shutdown_timeout: Duration,
    /// A connection must finish each request's headers within this time of being opened or of
    /// its last answer; one that trickles its headers or sits idle is closed.
    #[arg(long, env = "TICKETD_HEADER_TIMEOUT", default_value = "10s", value_parser = parse_header_timeout)]
    pub header_timeout: Duration,
    /// Tickets per event this instance claims from the pool while Redis is healthy, to sell
    /// from memory when Redis fails (0: no fallback sales, 503 while Redis is down). Reserved
    /// tickets are invisible to other instances until handed back.
    #[arg(long, env = "TICKETD_FALLBACK_RESERVE", default_value_t = 200, value_parser = clap::value_parser!(u64).range(0..=crate::store::reserve::MAX_RESERVE))]
    pub fallback_reserve: u64,
    /// Lease on a reserve: an instance cut off from Redis stops selling from its reserve before
    /// it runs out; another instance that watched it expire holds the reserve back (never
    /// returns it to the pool) until its owner comes back or an operator releases it.
    #[arg(long, env = "TICKETD_RESERVE_LEASE", default_value = "15s", value_parser = parse_lease)]
    pub reserve_lease: Duration,
    /// How often one background task reads the remaining tickets of every event from the store
    /// for `/metrics` (a scrape reads that snapshot and costs the store nothing).
    #[arg(long, env = "TICKETD_METRICS_REFRESH", default_value = "1s", value_parser = parse_refresh)]
    pub metrics_refresh: Duration,
    /// How often to log a purchase-statistics line (sold, rate, remaining, errors, mode);
    /// 0 turns it off.
    #[arg(long, env = "TICKETD_STATS_INTERVAL", default_value = "10s", value_parser = parse_duration)]
    pub stats_interval: Duration,
    /// Largest request body accepted on /buy (bytes; the body is ignored).
    #[arg(long, env = "TICKETD_MAX_BODY", default_value_t = 65536)]
    pub max_body: u64,
    /// The instance's identity and its crash-safe journal of fallback sales (Redis store only).
    /// Restarted on the same directory, an instance is the same instance: it settles what it
    /// sold during an outage before it sells anything. One live process per directory.
    #[arg(long, env = "TICKETD_JOURNAL_DIR", default_value = DEFAULT_JOURNAL_DIR)]
    pub journal_dir: std::path::PathBuf,
    /// Distributed tracing (OpenTelemetry over OTLP/HTTP); off unless an endpoint is set.
    #[command(flatten)]
    pub trace: TraceArgs,
    /// Who buys: authentication (a JWT or a gateway's header), limits per buyer, and
    /// `Idempotency-Key` replays.
    #[command(flatten)]
    pub buyers: BuyerArgs,
}

/// `--jwt-leeway` when none is given: the clock skew allowed on `exp` and `nbf`.
pub const DEFAULT_JWT_LEEWAY: &str = "30s";

/// `--jwt-cache-size` when none is given.
pub const DEFAULT_JWT_CACHE_SIZE: usize = 65_536;

/// Largest `--jwt-leeway`: more would keep an expired token usable for long.
pub const MAX_JWT_LEEWAY: Duration = Duration::from_secs(300);

/// Shortest HS256 secret accepted: 32 bytes, the size of the hash (RFC 7518, section 3.2).
pub const MIN_JWT_SECRET_LEN: usize = 32;

/// Shortest and longest `--idempotency-ttl`.
pub const IDEMPOTENCY_TTL_RANGE: std::ops::RangeInclusive<Duration> =
    Duration::from_secs(1)..=Duration::from_secs(30 * 24 * 3600);

/// Who buys. At most one of `--jwt-secret`, `--jwt-public-key` and `--buyer-header` (the
/// `identity` group); with none, purchases are anonymous, as before buyers existed.
#[derive(Debug, Clone, Args)]
pub struct BuyerArgs {
    /// HS256 secret, at least 32 bytes (never shown by --help or in logs): `POST /buy` then
    /// needs `Authorization: Bearer <JWT>` signed with it, and the buyer is the token's `sub`.
    #[arg(long, env = "TICKETD_JWT_SECRET", value_name = "SECRET", hide_env_values = true, groups = ["identity", "jwt"], value_parser = parse_secret)]
    pub jwt_secret: Option<Secret>,
    /// PEM public key (RS256, ES256 on P-256, or EdDSA on Ed25519, told apart by the key):
    /// `POST /buy` then needs `Authorization: Bearer <JWT>` signed by its private key.
    #[arg(long, env = "TICKETD_JWT_PUBLIC_KEY", value_name = "PATH", groups = ["identity", "jwt"])]
    pub jwt_public_key: Option<std::path::PathBuf>,
    /// A token's `iss` must be this (and present). Unset: not checked.
    #[arg(
        long,
        env = "TICKETD_JWT_ISSUER",
        value_name = "ISSUER",
        requires = "jwt"
    )]
    pub jwt_issuer: Option<String>,
    /// A token's `aud` must be or hold this (and be present). Unset: not checked, so any
    /// token of the same signer is accepted; set it when the signer serves other services too.
    #[arg(
        long,
        env = "TICKETD_JWT_AUDIENCE",
        value_name = "AUDIENCE",
        requires = "jwt"
    )]
    pub jwt_audience: Option<String>,
    /// Clock skew allowed on a token's `exp` and `nbf` (at most 5m).
    #[arg(long, env = "TICKETD_JWT_LEEWAY", default_value = DEFAULT_JWT_LEEWAY, value_parser = parse_leeway)]
    pub jwt_leeway: Duration,
    /// Verified tokens kept, with their buyers, until they expire: a token seen before costs a
    /// lookup instead of a signature check (0: verify every time). About 300 bytes each for a
    /// typical token, so the default holds at most about 20 MiB.
    #[arg(long, env = "TICKETD_JWT_CACHE_SIZE", value_name = "TOKENS", default_value_t = DEFAULT_JWT_CACHE_SIZE)]
    pub jwt_cache_size: usize,
    /// Trust this request header, set by an authenticating gateway, as the buyer instead of a
    /// token. The gateway must strip it from client requests, or any client can name itself.
    #[arg(long, env = "TICKETD_BUYER_HEADER", value_name = "NAME", group = "identity", value_parser = parse_header_name)]
    pub buyer_header: Option<http::HeaderName>,
    /// No buyer gets more than N tickets of one event (1 to 1,000,000). Unset: no limit.
    /// Needs a buyer identity (a JWT flag or --buyer-header).
    #[arg(long, env = "TICKETD_MAX_PER_BUYER", value_name = "N", requires = "identity", value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub max_per_buyer: Option<u32>,
    /// How long the answer to a purchase with an `Idempotency-Key` is kept and replayed to a
    /// retry with the same key (1s to 30 days, e.g. 10m, 24h).
    #[arg(long, env = "TICKETD_IDEMPOTENCY_TTL", default_value = "24h", value_parser = parse_idempotency_ttl)]
    pub idempotency_ttl: Duration,
}

/// A secret setting: its value never shows in `Debug` output (logs, panics) nor in `--help`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Box<str>);

impl Secret {
    /// The secret itself, for the one place that uses it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

impl From<&str> for Secret {
    fn from(s: &str) -> Self {
        Self(s.into())
    }
}

fn parse_secret(s: &str) -> Result<Secret, String> {
    // Its length is checked where the key is made (`Auth::from_args`): a clap error would echo
    // the value, and a mistyped secret is still a secret.
    Ok(Secret(s.into()))
}

fn parse_header_name(s: &str) -> Result<http::HeaderName, String> {
    let name = http::HeaderName::from_bytes(s.trim().as_bytes())
        .map_err(|_| format!("'{s}' is not a header name"))?;
    if name == http::header::AUTHORIZATION || name == http::header::HOST {
        return Err(format!("'{s}' cannot carry a buyer id"));
    }
    Ok(name)
}

fn parse_leeway(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if d > MAX_JWT_LEEWAY {
        return Err(format!("'{s}' is too long: at most 5m"));
    }
    Ok(d)
}

fn parse_idempotency_ttl(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if !IDEMPOTENCY_TTL_RANGE.contains(&d) {
        return Err(format!("'{s}' is out of range: from 1s to 720h (30 days)"));
    }
    Ok(d)
}

/// Distributed tracing settings, under the standard OpenTelemetry variable names. Other
/// resource attributes come from `OTEL_RESOURCE_ATTRIBUTES`, the export queue from `OTEL_BSP_*`.
#[derive(Debug, Clone, Default, Args)]
pub struct TraceArgs {
    /// OTLP/HTTP collector base URL (e.g. http://127.0.0.1:4318); spans go to its /v1/traces.
    /// Unset (and no traces endpoint): tracing is off and costs nothing.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT", value_name = "URL")]
    pub otlp_endpoint: Option<String>,
    /// Full OTLP/HTTP URL for spans; overrides --otlp-endpoint.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", value_name = "URL")]
    pub otlp_traces_endpoint: Option<String>,
    /// Which traces to record [default: parentbased_traceidratio]: a request that carries a
    /// `traceparent` follows its caller's decision; others are sampled at --trace-sampler-arg.
    #[arg(long, env = "OTEL_TRACES_SAMPLER", value_enum)]
    pub trace_sampler: Option<SamplerKind>,
    /// Ratio of traces the *traceidratio samplers record, 0 to 1 [default: 0.01].
    #[arg(long, env = "OTEL_TRACES_SAMPLER_ARG", value_parser = parse_ratio, value_name = "RATIO")]
    pub trace_sampler_arg: Option<f64>,
    /// The `service.name` of the spans [default: ticketd, unless OTEL_RESOURCE_ATTRIBUTES
    /// names one].
    #[arg(long, env = "OTEL_SERVICE_NAME", value_name = "NAME")]
    pub otel_service_name: Option<String>,
}

/// The standard OpenTelemetry samplers (`OTEL_TRACES_SAMPLER`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
#[allow(missing_docs)] // the names are the standard ones
pub enum SamplerKind {
    #[value(name = "always_on")]
    AlwaysOn,
    #[value(name = "always_off")]
    AlwaysOff,
    #[value(name = "traceidratio")]
    TraceIdRatio,
    #[value(name = "parentbased_always_on")]
    ParentBasedAlwaysOn,
    #[value(name = "parentbased_always_off")]
    ParentBasedAlwaysOff,
    #[value(name = "parentbased_traceidratio")]
    ParentBasedTraceIdRatio,
}

fn parse_ratio(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(r) if (0.0..=1.0).contains(&r) => Ok(r),
        _ => Err(format!("{s:?} is not a ratio between 0 and 1")),
    }
}

/// `--journal-dir` when none is given: relative to the working directory.
pub const DEFAULT_JOURNAL_DIR: &str = "ticketd-journal";

/// Redis when no `--redis-url` is given to a command that needs one.
pub const DEFAULT_REDIS_URL: &str = "redis://127.0.0.1:6379";

impl CommonArgs {
    /// The configured Redis URL, or [`DEFAULT_REDIS_URL`].
    pub fn redis_url(&self) -> &str {
        self.redis_url.as_deref().unwrap_or(DEFAULT_REDIS_URL)
    }
}

/// Settings of `ticketd seed`.
#[derive(Debug, Clone, Args)]
pub struct SeedArgs {
    /// Redis URL and log format.
    #[command(flatten)]
    pub common: CommonArgs,
    /// Events to create, as ID=COUNT[,ID=COUNT...].
    #[arg(long, env = "TICKETD_EVENTS", value_parser = parse_events)]
    pub events: EventSpecs,
    /// Replace the pool and the sales ledger of every listed event.
    #[arg(long)]
    pub reset: bool,
}

/// Which store sells.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum StoreKind {
    /// Redis when a Redis URL is configured, memory when none is.
    Auto,
    /// Redis only; purchases answer 503 while it cannot be reached.
    Redis,
    /// Process memory only; nothing is persisted.
    Memory,
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// `ID=COUNT` pairs in the order given, ids unique.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventSpecs(pub Vec<(String, u64)>);

impl EventSpecs {
    /// `(id, capacity)` pairs.
    pub fn iter(&self) -> impl Iterator<Item = (&str, u64)> {
        self.0.iter().map(|(id, n)| (id.as_str(), *n))
    }
}

impl FromStr for EventSpecs {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let mut out: Vec<(String, u64)> = Vec::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (id, count) = part
                .split_once('=')
                .ok_or_else(|| format!("'{part}' is not ID=COUNT"))?;
            let id = id.trim();
            validate_event_id(id).map_err(|e| match e {
                EventIdError::Empty => format!("'{part}' has an empty event id"),
                other => format!("'{id}': {other}"),
            })?;
            let count: u64 = count
                .trim()
                .parse()
                .map_err(|_| format!("'{part}': COUNT must be a whole number"))?;
            if count > MAX_CAPACITY {
                return Err(format!("'{part}': COUNT may be at most {MAX_CAPACITY}"));
            }
            if out.iter().any(|(known, _)| known == id) {
                return Err(format!("event '{id}' is listed twice"));
            }
            out.push((id.to_owned(), count));
        }
        Ok(Self(out))
    }
}

fn parse_events(s: &str) -> Result<EventSpecs, String> {
    s.parse()
}

/// Parses `250ms`, `2s`, `1m`, `24h` or a bare number of milliseconds.
///
/// # Errors
/// A message saying what was expected.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (digits, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("'{s}' is not a duration like 250ms, 2s or 1m"))?;
    let secs = |per: u64| {
        n.checked_mul(per)
            .map(Duration::from_secs)
            .ok_or_else(|| format!("'{s}' is too long"))
    };
    match unit {
        "" | "ms" => Ok(Duration::from_millis(n)),
        "s" => Ok(Duration::from_secs(n)),
        "m" => secs(60),
        "h" => secs(3600),
        _ => Err(format!("'{s}' has an unknown unit (use ms, s, m or h)")),
    }
}

/// [`parse_duration`], refusing less than `ms` milliseconds with `why` said after the minimum.
fn parse_at_least(s: &str, ms: u64, why: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if d < Duration::from_millis(ms) {
        return Err(format!("'{s}' is too short: at least {ms}ms{why}"));
    }
    Ok(d)
}

fn parse_refresh(s: &str) -> Result<Duration, String> {
    parse_at_least(s, 10, "")
}

fn parse_header_timeout(s: &str) -> Result<Duration, String> {
    parse_at_least(s, 100, ", or no client could send a request in time")
}

fn parse_lease(s: &str) -> Result<Duration, String> {
    parse_at_least(s, 500, " for a lease")
}

fn parse_redis_url(s: &str) -> Result<String, String> {
    if s.starts_with("rediss://") || s.starts_with("rediss-cluster://") {
        return Err(format!(
            "'{s}': TLS to Redis is not built into ticketd; reach Redis over a private network, or through a local TLS tunnel (stunnel, a service mesh sidecar) with a redis:// URL"
        ));
    }
    if s.starts_with("redis://") || s.starts_with("redis-cluster://") {
        Ok(s.to_owned())
    } else {
        Err(format!(
            "'{s}' is not a redis:// (one server) or redis-cluster:// (a cluster) URL"
        ))
    }
}

/// Whether `url` names a Redis Cluster (`redis-cluster://host:port?node=host:port&...`).
pub fn is_cluster_url(url: &str) -> bool {
    url.starts_with("redis-cluster://")
}

/// Parses the command line, or ends the process: `--help`/`--version` print and exit 0, a bad
/// setting prints one line naming it and exits with [`EXIT_CONFIG`].
pub fn parse_or_exit() -> Cli {
    match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            use clap::error::ErrorKind;
            if matches!(
                e.kind(),
                ErrorKind::DisplayHelp
                    | ErrorKind::DisplayVersion
                    | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
            ) {
                e.exit();
            }
            let rendered = e.render().to_string();
            let line = rendered
                .lines()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("invalid configuration");
            eprintln!("ticketd: {}", line.trim_start_matches("error: "));
            std::process::exit(i32::from(EXIT_CONFIG));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_parse() {
        let e: EventSpecs = "1=10000, 2=5000,gala_2027=3".parse().unwrap();
        assert_eq!(
            e.0,
            vec![
                ("1".into(), 10000),
                ("2".into(), 5000),
                ("gala_2027".into(), 3)
            ]
        );
        assert_eq!("".parse::<EventSpecs>().unwrap(), EventSpecs::default());
        assert_eq!(
            "1=0".parse::<EventSpecs>().unwrap().0,
            vec![("1".into(), 0)]
        );
    }

    #[test]
    fn bad_events_say_what_is_wrong() {
        for (input, needle) in [
            ("1", "not ID=COUNT"),
            ("=5", "empty event id"),
            ("a{b=5", "may only hold"),
            ("1=x", "whole number"),
            ("1=-1", "whole number"),
            ("1=2000000000", "at most"),
            ("1=1,1=2", "listed twice"),
        ] {
            let err = input.parse::<EventSpecs>().unwrap_err();
            assert!(err.contains(needle), "{input}: {err}");
        }
        let long = format!("{}=1", "a".repeat(65));
        assert!(long
            .parse::<EventSpecs>()
            .unwrap_err()
            .contains("longer than 64"));
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("1m"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_duration("40"), Ok(Duration::from_millis(40)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        assert!(parse_duration("fast").is_err());
        assert!(parse_duration("2d").is_err());
        assert!(parse_duration(&format!("{}h", u64::MAX)).is_err());
    }

    #[test]
    fn cli_defaults_and_env_names() {
        let cli = Cli::try_parse_from(["ticketd"]).unwrap();
        assert!(cli.command.is_none());
        assert_eq!(cli.serve.listen, "127.0.0.1:3000".parse().unwrap());
        assert_eq!(cli.serve.common.redis_url, None, "no Redis configured");
        assert_eq!(cli.serve.common.redis_url(), "redis://127.0.0.1:6379");
        assert_eq!(cli.serve.store, StoreKind::Auto);
        let cli = Cli::try_parse_from(["ticketd", "seed", "--events", "1=5", "--reset"]).unwrap();
        match cli.command {
            Some(Command::Seed(s)) => {
                assert!(s.reset);
                assert_eq!(s.events.0, vec![("1".into(), 5)]);
            }
            other => panic!("{other:?}"),
        }
        assert!(Cli::try_parse_from(["ticketd", "--events", "1=x"]).is_err());
        assert!(Cli::try_parse_from(["ticketd", "--redis-url", "http://x"]).is_err());
        for tls in ["rediss://h:6379", "rediss-cluster://h:6379"] {
            let e = Cli::try_parse_from(["ticketd", "--redis-url", tls]).unwrap_err();
            assert!(e.to_string().contains("TLS"), "{e}");
        }
        let url = "redis-cluster://127.0.0.1:7000?node=127.0.0.1:7001";
        let cli = Cli::try_parse_from(["ticketd", "--redis-url", url]).unwrap();
        assert!(is_cluster_url(cli.serve.common.redis_url()));
        assert!(Cli::try_parse_from(["ticketd", "--redis-pool-size", "0"]).is_err());
        let e = Cli::try_parse_from(["ticketd", "--header-timeout", "0s"]).unwrap_err();
        assert!(e.to_string().contains("at least 100ms"), "{e}");
        assert_eq!(cli_header_timeout("100ms"), Duration::from_millis(100));
        assert!(
            Cli::try_parse_from(["ticketd", "seed"]).is_err(),
            "seed needs --events"
        );
    }

    fn cli_header_timeout(value: &str) -> Duration {
        let cli = Cli::try_parse_from(["ticketd", "--header-timeout", value]).unwrap();
        cli.serve.header_timeout
    }

    #[test]
    fn buyer_settings() {
        let serve = |args: &[&str]| {
            let mut argv = vec!["ticketd"];
            argv.extend_from_slice(args);
            Cli::try_parse_from(argv).map(|cli| cli.serve.buyers)
        };
        let b = serve(&[]).unwrap();
        assert!(b.jwt_secret.is_none() && b.jwt_public_key.is_none() && b.buyer_header.is_none());
        assert_eq!(b.jwt_leeway, Duration::from_secs(30));
        assert_eq!(b.idempotency_ttl, Duration::from_secs(24 * 3600));
        assert_eq!(b.max_per_buyer, None);

        let secret = "s".repeat(MIN_JWT_SECRET_LEN);
        let b = serve(&["--jwt-secret", &secret, "--jwt-audience", "tickets"]).unwrap();
        assert_eq!(b.jwt_secret.as_ref().map(Secret::expose), Some(&*secret));
        assert!(
            !format!("{b:?}").contains(&secret),
            "Debug redacts the secret"
        );
        let b = serve(&["--buyer-header", "X-Buyer", "--max-per-buyer", "4"]).unwrap();
        assert_eq!(b.buyer_header.as_ref().map(|h| h.as_str()), Some("x-buyer"));
        assert_eq!(b.max_per_buyer, Some(4));

        for (args, needle) in [
            (
                vec!["--jwt-secret", &secret, "--jwt-public-key", "k.pem"],
                "cannot be used",
            ),
            (
                vec!["--jwt-secret", &secret, "--buyer-header", "x-buyer"],
                "cannot be used",
            ),
            (
                vec!["--jwt-public-key", "k.pem", "--buyer-header", "x-b"],
                "cannot be used",
            ),
            (vec!["--jwt-issuer", "me"], "--jwt-secret"),
            (
                vec!["--buyer-header", "x-b", "--jwt-audience", "a"],
                "--jwt-secret",
            ),
            (vec!["--max-per-buyer", "2"], "--jwt-secret"),
            (
                vec!["--buyer-header", "x-b", "--max-per-buyer", "0"],
                "max-per-buyer",
            ),
            (vec!["--buyer-header", "x b"], "not a header name"),
            (vec!["--buyer-header", "authorization"], "cannot carry"),
            (vec!["--jwt-leeway", "10m"], "at most 5m"),
            (vec!["--idempotency-ttl", "500ms"], "out of range"),
            (vec!["--idempotency-ttl", "721h"], "out of range"),
        ] {
            let e = serve(&args).unwrap_err().to_string();
            assert!(e.contains(needle), "{args:?}: {e}");
        }
        assert!(serve(&["--idempotency-ttl", "720h"]).is_ok());
        assert!(serve(&["--idempotency-ttl", "1s"]).is_ok());
    }

    #[test]
    fn help_never_shows_the_secret() {
        let command = <Cli as clap::CommandFactory>::command();
        let arg = command
            .get_arguments()
            .find(|a| a.get_id() == "jwt_secret")
            .expect("--jwt-secret is declared");
        assert!(arg.is_hide_env_values_set());
        assert!(arg.get_default_values().is_empty());
    }
}
