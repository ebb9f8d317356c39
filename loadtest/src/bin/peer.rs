//! `peer`: the idiomatic axum + redis-rs implementation of ticketd's purchase, for bench.sh.
//!
//! What a careful engineer writes first, and what ticketd is measured against (issue 16): an
//! axum router, one `redis::aio::ConnectionManager` shared by every request (its response
//! timeout raised, see [`RESPONSE_TIMEOUT`]), and one Lua script per purchase (`EVALSHA`) that
//! pops a ticket from the event's pool and records it in the ledger, atomically. It sells from the pools that `ticketd seed` builds (`event:{ID}:tickets`,
//! ledger `event:{ID}:sold`), so the load tester's ledger check works on it as on ticketd.
//!
//! `POST /buy/{id}` answers 200 `{"event":"1","ticket":"1-000042","remaining":957}`, 409
//! `{"error":"sold_out","event":"1"}` when the pool is empty (or the event does not exist: the
//! peer keeps no catalogue), 503 `{"error":"unavailable"}` on a Redis error.
//!
//! Usage: `peer --listen 127.0.0.1:3000 --redis-url redis://127.0.0.1:6390`. Stops on SIGINT or
//! SIGTERM.

#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::serve::ListenerExt;
use axum::{Json, Router};
use clap::Parser;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::Script;
use serde::Serialize;

/// Pops one ticket and records it in the ledger; `{ticket, pool left}`, or nil when sold out.
///
/// KEYS[1] `event:{ID}:tickets` (LIST), KEYS[2] `event:{ID}:sold` (HASH ticket -> record),
/// ARGV[1] the ledger record.
const PURCHASE: &str = r"
local ticket = redis.call('LPOP', KEYS[1])
if not ticket then
  return false
end
redis.call('HSET', KEYS[2], ticket, ARGV[1])
return {ticket, redis.call('LLEN', KEYS[1])}
";

/// Bound on one script call. redis-rs's default of 500 ms includes the wait behind every other
/// request on the one multiplexed connection: at 10,000 connections on two shared cores half the
/// purchases passed it and were answered 503 (their script may still have sold). The comparison
/// is of throughput, so the peer waits as long as the load tester does (`--timeout`, 10 s).
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(10);

/// ticketd's listen backlog: with the default of 1024, 10,000 connects at once measure SYN
/// retries rather than the server.
const BACKLOG: u32 = 8192;

#[derive(Debug, Parser)]
#[command(about = "The idiomatic axum + redis-rs purchase, for comparison with ticketd")]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:3000")]
    listen: SocketAddr,
    /// Redis holding the pools seeded by `ticketd seed`.
    #[arg(long, default_value = "redis://127.0.0.1:6379")]
    redis_url: String,
}

#[derive(Clone)]
struct AppState {
    redis: ConnectionManager,
    script: Arc<Script>,
    /// What the ledger records per sale.
    record: Arc<str>,
}

#[derive(Serialize)]
struct Sale {
    event: String,
    ticket: String,
    remaining: u64,
}

#[derive(Serialize)]
struct Refused {
    error: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    event: Option<String>,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    // 10,000 connections need more descriptors than the usual soft limit.
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    let redis = match connect(&args.redis_url).await {
        Ok(r) => r,
        Err(e) => {
            eprintln!("peer: {}: {e}", args.redis_url);
            return ExitCode::from(1);
        }
    };
    let state = AppState {
        redis,
        script: Arc::new(Script::new(PURCHASE)),
        record: format!("peer:{}", std::process::id()).into(),
    };
    let app = Router::new()
        .route("/buy/{id}", post(buy))
        .with_state(state);
    let listener = match bind(args.listen) {
        Ok(l) => l.tap_io(|tcp| {
            let _ = tcp.set_nodelay(true);
        }),
        Err(e) => {
            eprintln!("peer: {}: {e}", args.listen);
            return ExitCode::from(1);
        }
    };
    eprintln!("peer: listening on {}", args.listen);
    match axum::serve(listener, app)
        .with_graceful_shutdown(stopped())
        .await
    {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("peer: {e}");
            ExitCode::from(1)
        }
    }
}

/// The manager with one change from the defaults: a response timeout of
/// [`RESPONSE_TIMEOUT`] instead of redis-rs's 500 ms.
async fn connect(url: &str) -> redis::RedisResult<ConnectionManager> {
    let config = ConnectionManagerConfig::new().set_response_timeout(Some(RESPONSE_TIMEOUT));
    ConnectionManager::new_with_config(redis::Client::open(url)?, config).await
}

fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(BACKLOG)
}

async fn stopped() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

async fn buy(State(state): State<AppState>, Path(id): Path<String>) -> Response {
    let mut redis = state.redis.clone();
    let sold: redis::RedisResult<Option<(String, u64)>> = state
        .script
        .key(format!("event:{{{id}}}:tickets"))
        .key(format!("event:{{{id}}}:sold"))
        .arg(&*state.record)
        .invoke_async(&mut redis)
        .await;
    match sold {
        Ok(Some((ticket, remaining))) => Json(Sale {
            event: id,
            ticket,
            remaining,
        })
        .into_response(),
        Ok(None) => (
            StatusCode::CONFLICT,
            Json(Refused {
                error: "sold_out",
                event: Some(id),
            }),
        )
            .into_response(),
        Err(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(Refused {
                error: "unavailable",
                event: None,
            }),
        )
            .into_response(),
    }
}
