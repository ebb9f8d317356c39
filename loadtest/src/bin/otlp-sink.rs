//! `otlp-sink`: an OTLP/HTTP collector that takes every export and throws it away, for
//! measuring what tracing costs ticketd without measuring a collector (loadtest/tracing.sh).
//!
//! Usage: `otlp-sink 127.0.0.1:4318`. Answers `200` with an empty body (an empty
//! `ExportTraceServiceResponse`) to every request after reading its body; prints the requests
//! and bytes it took when stopped with SIGINT or SIGTERM.

#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper::{Request, Response};
use tokio::signal::unix::{signal, SignalKind};

#[derive(Default)]
struct Taken {
    requests: AtomicU64,
    bytes: AtomicU64,
}

fn main() -> ExitCode {
    let Some(Ok(addr)) = std::env::args().nth(1).map(|a| a.parse::<SocketAddr>()) else {
        eprintln!("usage: otlp-sink HOST:PORT");
        return ExitCode::from(1);
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime can be built");
    runtime.block_on(serve(addr))
}

async fn serve(addr: SocketAddr) -> ExitCode {
    let listener = match tokio::net::TcpListener::bind(addr).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("otlp-sink: {addr}: {e}");
            return ExitCode::from(1);
        }
    };
    let (mut term, mut int) = (
        signal(SignalKind::terminate()).expect("SIGTERM handler"),
        signal(SignalKind::interrupt()).expect("SIGINT handler"),
    );
    let taken = Arc::new(Taken::default());
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(_) => continue,
            },
            _ = term.recv() => break,
            _ = int.recv() => break,
        };
        let taken = taken.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| take(req, taken.clone()));
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                .await;
        });
    }
    println!(
        "otlp-sink: {} requests, {} bytes",
        taken.requests.load(Relaxed),
        taken.bytes.load(Relaxed)
    );
    ExitCode::SUCCESS
}

async fn take(
    req: Request<hyper::body::Incoming>,
    taken: Arc<Taken>,
) -> Result<Response<Full<Bytes>>, hyper::Error> {
    let body = req.into_body().collect().await?.to_bytes();
    taken.requests.fetch_add(1, Relaxed);
    taken.bytes.fetch_add(body.len() as u64, Relaxed);
    Ok(Response::new(Full::new(Bytes::new())))
}
