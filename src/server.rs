//! Serving: the accept loop, one hyper HTTP/1.1 connection task per client, and graceful
//! shutdown (stop accepting, let in-flight requests finish within a bound).

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use crate::app::App;
use crate::connection::drive;
use crate::drain::Drain;
use crate::head_deadline::Progress;
use crate::metrics::Metrics;
use crate::store::Store;
use crate::throttle::Throttle;

/// Listen backlog: a flash sale opens thousands of connections at once, and the default of
/// 1024 drops SYNs (clients then wait a full second to retry). The kernel caps it at somaxconn.
pub const BACKLOG: u32 = 8192;

/// Binds `addr` with [`BACKLOG`] and `SO_REUSEADDR` (a restarted instance can bind at once).
///
/// # Errors
/// The address is taken, not local, or not permitted.
pub fn bind(addr: std::net::SocketAddr) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(BACKLOG)
}

/// Connection-level settings.
#[derive(Debug, Clone, Copy)]
pub struct ServeOptions {
    /// A connection must finish each request head within this time of being accepted or of
    /// its last answer (the slow-loris bound, [`crate::head_deadline`]).
    pub header_read_timeout: Duration,
    /// Largest buffered request head; larger headers get `431`.
    pub max_header_bytes: usize,
    /// How long in-flight requests may take to finish after a shutdown signal.
    pub drain_timeout: Duration,
}

impl Default for ServeOptions {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(10),
            max_header_bytes: 16 * 1024,
            drain_timeout: Duration::from_secs(10),
        }
    }
}

/// Serves `app` on `listener` until `shutdown` completes, then drains.
///
/// # Errors
/// None in practice: accept errors (out of file descriptors and the like) are logged and
/// retried; the signature leaves room for fatal listener errors.
pub async fn serve<S: Store>(
    listener: TcpListener,
    app: App<S>,
    options: ServeOptions,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    let drain = Drain::new();
    let mut builder = http1::Builder::new();
    builder
        // The slow-loris bound is armed once per connection (head_deadline), not by hyper for
        // every request.
        .header_read_timeout(None::<Duration>)
        .max_buf_size(options.max_header_bytes.max(8192))
        .keep_alive(true)
        // One copy of the short answer into the head's buffer and one write, instead of a
        // queue of buffers for writev: 390 fewer instructions per purchase (design.md,
        // Findings).
        .writev(false);
    let accept_errors = Throttle::new(Duration::from_secs(5));
    tokio::pin!(shutdown);
    loop {
        let (stream, _peer) = tokio::select! {
            biased;
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    if let Some(held_back) = accept_errors.allow() {
                        tracing::warn!(error = %e, held_back, "accept failed; retrying");
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let guard = ConnectionGuard::new(app.metrics().clone());
        let app = app.clone();
        let progress = Progress::new(options.header_read_timeout);
        let requests = Arc::clone(&progress);
        let service = service_fn(move |req| {
            let answering = requests.answering();
            let answer = app.clone().respond(req);
            async move {
                let answer = answer.await;
                drop(answering);
                Ok::<_, Infallible>(answer)
            }
        });
        let conn = builder.serve_connection(TokioIo::new(stream), service);
        let watch = drain.watch();
        tokio::spawn(async move {
            let _guard = guard;
            match drive(conn, &progress, &watch).await {
                Some(Ok(())) => {}
                Some(Err(e)) => tracing::debug!(error = %e, "connection ended with an error"),
                None => tracing::debug!("closed: no request head within the bound"),
            }
        });
    }
    drop(listener);
    tracing::info!("stopped accepting; draining in-flight requests");
    tokio::select! {
        () = drain.shutdown() => tracing::info!("all connections closed"),
        () = tokio::time::sleep(options.drain_timeout) => {
            tracing::warn!(timeout = ?options.drain_timeout, open = drain.open(), "drain bound reached; closing the remaining connections");
        }
    }
    Ok(())
}

/// Counts a connection open for as long as it lives.
struct ConnectionGuard(Arc<Metrics>);

impl ConnectionGuard {
    fn new(metrics: Arc<Metrics>) -> Self {
        metrics.connection_opened();
        Self(metrics)
    }
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.0.connection_closed();
    }
}
