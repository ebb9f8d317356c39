//! Learning each event's capacity before the run, so over-selling can be detected.
//!
//! With `--redis-url` the `events` catalogue hash is the source of truth; otherwise the server's
//! own `GET /metrics?format=json` (`.events.<id>.capacity`). Either may lack an event (or the
//! target may not be ticketd): the capacity is then unknown and only duplicates are checked,
//! with a warning in the report.

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use http::header::HOST;
use http::Request;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::config::Plan;

/// Capacities from the server's JSON metrics.
///
/// # Errors
/// When the server cannot be reached or does not answer 200 with the expected JSON.
pub async fn from_metrics(plan: &Plan) -> Result<HashMap<String, u64>, String> {
    let body = tokio::time::timeout(Duration::from_secs(10), get(plan))
        .await
        .map_err(|_| "GET /metrics timed out".to_string())??;
    parse_metrics(&body)
}

async fn get(plan: &Plan) -> Result<Bytes, String> {
    let stream = TcpStream::connect(plan.addr)
        .await
        .map_err(|e| format!("cannot connect to {}: {e}", plan.addr))?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(connection);
    let request = Request::get(plan.metrics_uri.clone())
        .header(HOST, plan.host.clone())
        .body(Empty::<Bytes>::new())
        .map_err(|e| e.to_string())?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| format!("GET {}: {e}", plan.metrics_uri))?;
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("GET {}: {e}", plan.metrics_uri))?
        .to_bytes();
    if !status.is_success() {
        return Err(format!("GET {} answered {status}", plan.metrics_uri));
    }
    Ok(body)
}

/// Reads `.events.<id>.capacity` of every event from a JSON metrics body.
///
/// # Errors
/// When the body is not JSON or has no `events` object.
pub fn parse_metrics(body: &[u8]) -> Result<HashMap<String, u64>, String> {
    let value: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| format!("metrics are not JSON: {e}"))?;
    let events = value
        .get("events")
        .and_then(serde_json::Value::as_object)
        .ok_or("metrics have no \"events\" object")?;
    Ok(events
        .iter()
        .filter_map(|(id, e)| Some((id.clone(), e.get("capacity")?.as_u64()?)))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capacities_from_metrics_json() {
        let body = br#"{"version":"0.1.0","store":"memory","events":{"1":{"capacity":5000,"remaining":5000,"sold":0},"2":{"capacity":7,"remaining":0}},"totals":{}}"#;
        let caps = parse_metrics(body).unwrap();
        assert_eq!(caps.len(), 2);
        assert_eq!(caps["1"], 5000);
        assert_eq!(caps["2"], 7);
        assert!(parse_metrics(b"# HELP x").is_err());
        assert!(parse_metrics(br#"{"status":"ok"}"#).is_err());
    }
}
