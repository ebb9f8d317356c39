//! A minimal HTTP/1.1 client on hyper's connection API: one keep-alive connection per [`Conn`],
//! every exchange bounded in time by the caller.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1::SendRequest;
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;

/// One HTTP answer.
#[derive(Debug, Clone)]
pub struct Answer {
    /// The status code.
    pub status: u16,
    /// The whole body.
    pub body: Bytes,
}

impl Answer {
    /// The body as JSON (`Null` when it is not JSON).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }

    /// The `error` code of a refusal's body (`sold_out`, `limit_reached`, ...).
    pub fn error_code(&self) -> Option<String> {
        self.json()
            .get("error")
            .and_then(|t| t.as_str())
            .map(str::to_owned)
    }

    /// The `remaining` of a sale's body.
    pub fn remaining(&self) -> Option<u64> {
        self.json().get("remaining").and_then(|r| r.as_u64())
    }

    /// The `ticket` of a sale's body.
    pub fn ticket(&self) -> Option<String> {
        self.json()
            .get("ticket")
            .and_then(|t| t.as_str())
            .map(str::to_owned)
    }
}

/// Why an exchange got no HTTP answer.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// Connecting failed (refused, reset).
    #[error("connect: {0}")]
    Connect(std::io::Error),
    /// The connection failed during the exchange.
    #[error("connection: {0}")]
    Connection(#[from] hyper::Error),
    /// No answer within the bound.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// The request could not be built (a bad path).
    #[error("request: {0}")]
    Request(#[from] hyper::http::Error),
}

/// A keep-alive connection.
#[derive(Debug)]
pub struct Conn {
    sender: SendRequest<Empty<Bytes>>,
}

impl Conn {
    /// Opens a connection to `addr` within `bound`.
    ///
    /// # Errors
    /// [`HttpError::Connect`] or [`HttpError::Timeout`].
    pub async fn open(addr: SocketAddr, bound: Duration) -> Result<Self, HttpError> {
        let connect = async {
            let stream = tokio::net::TcpStream::connect(addr)
                .await
                .map_err(HttpError::Connect)?;
            stream.set_nodelay(true).map_err(HttpError::Connect)?;
            let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .map_err(HttpError::Connection)?;
            tokio::spawn(async move {
                let _ = conn.await;
            });
            Ok(Self { sender })
        };
        tokio::time::timeout(bound, connect)
            .await
            .map_err(|_| HttpError::Timeout(bound))?
    }

    /// Sends one request and reads the whole answer, within `bound`.
    ///
    /// # Errors
    /// [`HttpError::Connection`] or [`HttpError::Timeout`]; the connection is then unusable.
    pub async fn send(
        &mut self,
        method: Method,
        path: &str,
        bound: Duration,
    ) -> Result<Answer, HttpError> {
        self.send_with(method, path, &[], bound).await
    }

    /// [`Self::send`] with extra request headers.
    ///
    /// # Errors
    /// As [`Self::send`]; [`HttpError::Request`] for a header that cannot be sent.
    pub async fn send_with(
        &mut self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        bound: Duration,
    ) -> Result<Answer, HttpError> {
        let exchange = async {
            self.sender.ready().await?;
            let mut request = Request::builder()
                .method(method)
                .uri(path)
                .header("host", "ticketd");
            for (name, value) in headers {
                request = request.header(*name, *value);
            }
            let request = request.body(Empty::new())?;
            let response = self.sender.send_request(request).await?;
            let status = response.status().as_u16();
            let body = response.into_body().collect().await?.to_bytes();
            Ok(Answer { status, body })
        };
        tokio::time::timeout(bound, exchange)
            .await
            .map_err(|_| HttpError::Timeout(bound))?
    }
}

/// One request on a fresh connection, everything within `bound`.
///
/// # Errors
/// See [`Conn::open`] and [`Conn::send`].
pub async fn request(addr: SocketAddr, path: &str, bound: Duration) -> Result<Answer, HttpError> {
    let mut conn = Conn::open(addr, bound).await?;
    conn.send(Method::GET, path, bound).await
}
