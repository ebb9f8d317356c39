//! Building HTTP responses: JSON bodies written byte by byte with `itoa` into one exact-size
//! buffer, no serializer and no formatting machinery on the purchase path.
//!
//! Event ids and ticket ids are validated ASCII without quotes or backslashes, so they can be
//! written into JSON strings as they are.

use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_TYPE};
use http::{Response, StatusCode};
use http_body_util::Full;

use crate::event::Event;

/// The response type of every route.
pub type HttpResponse = Response<Full<Bytes>>;

/// `content-type` of every JSON answer.
pub const JSON: HeaderValue = HeaderValue::from_static("application/json");

/// A response with `status`, JSON content type and `body`.
pub fn json(status: StatusCode, body: impl Into<Bytes>) -> HttpResponse {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    response.headers_mut().insert(CONTENT_TYPE, JSON);
    response
}

/// The body of a sale: `{"event":"1","ticket":"1-000042","remaining":957}`.
pub fn sale_body(event: &Event, ticket: u64, remaining: u64) -> Vec<u8> {
    const A: &[u8] = br#"{"event":""#;
    const B: &[u8] = br#"","ticket":""#;
    const C: &[u8] = br#"","remaining":"#;
    let mut out = Vec::with_capacity(A.len() + B.len() + C.len() + 2 * event.id.len() + 48);
    out.extend_from_slice(A);
    out.extend_from_slice(event.id.as_bytes());
    out.extend_from_slice(B);
    event.write_ticket_id(ticket, &mut out);
    out.extend_from_slice(C);
    out.extend_from_slice(itoa::Buffer::new().format(remaining).as_bytes());
    out.push(b'}');
    out
}

/// The body of a buyer's tickets: `{"event":"1","tickets":["1-000042","1-000107"]}`.
pub fn tickets_body(event: &Event, tickets: &[Bytes]) -> Vec<u8> {
    let mut out = Vec::with_capacity(32 + event.id.len() + tickets.len() * (event.id.len() + 12));
    out.extend_from_slice(br#"{"event":""#);
    out.extend_from_slice(event.id.as_bytes());
    out.extend_from_slice(br#"","tickets":["#);
    for (i, t) in tickets.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.push(b'"');
        out.extend_from_slice(t);
        out.push(b'"');
    }
    out.extend_from_slice(b"]}");
    out
}

/// `200` with the body of a sale.
pub fn sale(event: &Event, ticket: u64, remaining: u64) -> HttpResponse {
    json(StatusCode::OK, sale_body(event, ticket, remaining))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sale_body_is_exact_json() {
        let event = Event::new("1", 1000, 0);
        let body = sale_body(&event, 42, 957);
        assert_eq!(
            std::str::from_utf8(&body).unwrap(),
            r#"{"event":"1","ticket":"1-000042","remaining":957}"#
        );
        let parsed: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(parsed["remaining"], 957);
    }

    #[test]
    fn tickets_body_is_exact_json() {
        let event = Event::new("1", 1000, 0);
        let body = tickets_body(
            &event,
            &[
                Bytes::from_static(b"1-000042"),
                Bytes::from_static(b"1-000107"),
            ],
        );
        assert_eq!(
            std::str::from_utf8(&body).unwrap(),
            r#"{"event":"1","tickets":["1-000042","1-000107"]}"#
        );
        assert_eq!(
            tickets_body(&event, &[]),
            br#"{"event":"1","tickets":[]}"#.to_vec()
        );
    }

    #[test]
    fn sale_response_has_json_type() {
        let event = Event::new("gala", 10, 0);
        let response = sale(&event, 1, 0);
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()[CONTENT_TYPE], "application/json");
    }
}
