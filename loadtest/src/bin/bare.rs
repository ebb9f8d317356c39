//! `bare`: the cheapest HTTP server that answers a purchase request, for bench.sh's baseline.
//!
//! A bare hyper 1 responder (multi-thread tokio runtime, HTTP/1.1 keep-alive, the same listen
//! backlog and `TCP_NODELAY` as ticketd) that answers `POST /buy/:id` with a fixed 200 JSON body
//! shaped like ticketd's sale, touching no store. What ticketd's purchase costs beyond it is what
//! ticketd adds (routing, metrics, the store, Redis); issue 16 states its targets as ratios to
//! this row. Anything else: 404.
//!
//! Usage: `bare --listen 127.0.0.1:3000`. Stops on SIGINT or SIGTERM.

#![forbid(unsafe_code)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::process::ExitCode;

use bytes::Bytes;
use clap::Parser;
use http::header::{HeaderValue, CONTENT_TYPE};
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::signal::unix::{signal, SignalKind};

/// ticketd's sale body, byte for byte the size of a real one.
const SALE: &[u8] = br#"{"event":"1","ticket":"1-000042","remaining":957}"#;

/// ticketd's listen backlog (`ticketd::server::BACKLOG`): 10,000 connects at once would
/// otherwise overflow the default of 1024 and measure SYN retries.
const BACKLOG: u32 = 8192;

#[derive(Debug, Parser)]
#[command(about = "A bare hyper responder answering POST /buy/:id with a fixed sale body")]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:3000")]
    listen: SocketAddr,
}

fn main() -> ExitCode {
    let args = Args::parse();
    // 10,000 connections need more descriptors than the usual soft limit.
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime can be built");
    runtime.block_on(serve(args.listen))
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

async fn serve(addr: SocketAddr) -> ExitCode {
    let listener = match bind(addr) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("bare: {addr}: {e}");
            return ExitCode::from(1);
        }
    };
    let (mut term, mut int) = (
        signal(SignalKind::terminate()).expect("SIGTERM handler"),
        signal(SignalKind::interrupt()).expect("SIGINT handler"),
    );
    eprintln!("bare: listening on {addr}");
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(_) => continue,
            },
            _ = term.recv() => break,
            _ = int.recv() => break,
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let _ = http1::Builder::new()
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), service_fn(answer))
                .await;
        });
    }
    ExitCode::SUCCESS
}

async fn answer<B>(req: Request<B>) -> Result<Response<Full<Bytes>>, Infallible> {
    let buy = req.method() == Method::POST && req.uri().path().starts_with("/buy/");
    let (status, body) = if buy {
        (StatusCode::OK, Bytes::from_static(SALE))
    } else {
        (
            StatusCode::NOT_FOUND,
            Bytes::from_static(br#"{"error":"not_found"}"#),
        )
    };
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    Ok(response)
}
