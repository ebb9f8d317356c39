//! The errors a client can see, and the one place they become HTTP status codes and bodies.
//!
//! Each answer carries a short JSON body with a stable `error` code. Causes (Redis errors and the
//! like) are logged by the layer that saw them, never sent to the client.

use bytes::Bytes;
use http::header::{HeaderValue, ALLOW, RETRY_AFTER, WWW_AUTHENTICATE};
use http::StatusCode;

use crate::response::{json, HttpResponse};

/// Seconds a client is asked to wait before retrying a `503`.
const RETRY_AFTER_SECS: HeaderValue = HeaderValue::from_static("1");

/// The challenge of every `401`: the purchase path takes bearer tokens (RFC 6750).
const BEARER: HeaderValue = HeaderValue::from_static("Bearer");

/// Everything a request can fail with, as the client sees it.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The event id is empty, too long or holds a forbidden character.
    #[error("malformed event id")]
    BadEventId,
    /// No event has this id.
    #[error("unknown event")]
    UnknownEvent,
    /// Every ticket of the event is sold.
    #[error("event {0} is sold out")]
    SoldOut(Box<str>),
    /// The store cannot sell right now (Redis failing and no fallback ticket left).
    #[error("store unavailable")]
    Unavailable,
    /// No such path.
    #[error("not found")]
    NotFound,
    /// The path exists, the method does not; the value is the `Allow` header.
    #[error("method not allowed")]
    MethodNotAllowed(&'static str),
    /// A request body over the limit.
    #[error("payload too large")]
    PayloadTooLarge,
    /// Authentication is on and the request has no acceptable buyer: no token, a malformed,
    /// badly signed or expired one, a wrong issuer or audience, an unusable `sub`, or no
    /// gateway header. Which of these is logged at DEBUG only, never sent.
    #[error("unauthorized")]
    Unauthorized,
    /// The buyer already holds `--max-per-buyer` tickets of this event.
    #[error("buyer reached the limit of event {0}")]
    LimitReached(Box<str>),
    /// A purchase with the same `Idempotency-Key` is still in progress.
    #[error("idempotency key in use")]
    IdempotencyKeyInUse,
    /// The `Idempotency-Key` was used before for a different request (another event).
    #[error("idempotency key reused for another request")]
    IdempotencyKeyReused,
    /// The `Idempotency-Key` header is not one quoted string of 1 to 255 characters.
    #[error("malformed idempotency key")]
    BadIdempotencyKey,
    /// An `Idempotency-Key` on a request whose buyer is not known (authentication off): a key
    /// is per buyer, and without one it would be shared by every client, who could then be
    /// answered another client's ticket.
    #[error("idempotency key without a buyer")]
    KeyWithoutBuyer,
}

impl ApiError {
    /// The HTTP status of this error.
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadEventId | ApiError::BadIdempotencyKey | ApiError::KeyWithoutBuyer => {
                StatusCode::BAD_REQUEST
            }
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::LimitReached(_) | ApiError::IdempotencyKeyInUse => StatusCode::CONFLICT,
            ApiError::IdempotencyKeyReused => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::UnknownEvent | ApiError::NotFound => StatusCode::NOT_FOUND,
            ApiError::SoldOut(_) => StatusCode::CONFLICT,
            ApiError::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        }
    }

    /// The stable error code in the body.
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::BadEventId => "bad_event_id",
            ApiError::UnknownEvent => "unknown_event",
            ApiError::SoldOut(_) => "sold_out",
            ApiError::Unavailable => "unavailable",
            ApiError::NotFound => "not_found",
            ApiError::MethodNotAllowed(_) => "method_not_allowed",
            ApiError::PayloadTooLarge => "payload_too_large",
            ApiError::Unauthorized => "unauthorized",
            ApiError::LimitReached(_) => "limit_reached",
            ApiError::IdempotencyKeyInUse => "idempotency_key_in_use",
            ApiError::IdempotencyKeyReused => "idempotency_key_reused",
            ApiError::BadIdempotencyKey => "bad_idempotency_key",
            ApiError::KeyWithoutBuyer => "idempotency_key_needs_a_buyer",
        }
    }

    /// The JSON body: `{"error":"<code>"}`, plus the event for `sold_out` and `limit_reached`.
    pub fn body(&self) -> Bytes {
        match self {
            ApiError::SoldOut(event) | ApiError::LimitReached(event) => {
                let code = self.code();
                Bytes::from(format!(r#"{{"error":"{code}","event":"{event}"}}"#))
            }
            other => {
                let code = other.code();
                let mut out = Vec::with_capacity(code.len() + 12);
                out.extend_from_slice(br#"{"error":""#);
                out.extend_from_slice(code.as_bytes());
                out.extend_from_slice(br#""}"#);
                Bytes::from(out)
            }
        }
    }

    /// The whole HTTP answer.
    pub fn into_response(self) -> HttpResponse {
        let mut response = json(self.status(), self.body());
        match self {
            ApiError::MethodNotAllowed(allow) => {
                response
                    .headers_mut()
                    .insert(ALLOW, HeaderValue::from_static(allow));
            }
            ApiError::Unavailable => {
                response.headers_mut().insert(RETRY_AFTER, RETRY_AFTER_SECS);
            }
            ApiError::Unauthorized => {
                response.headers_mut().insert(WWW_AUTHENTICATE, BEARER);
            }
            _ => {}
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(e: ApiError) -> (StatusCode, String) {
        (e.status(), String::from_utf8(e.body().to_vec()).unwrap())
    }

    #[test]
    fn bodies_and_statuses() {
        assert_eq!(
            body(ApiError::SoldOut("1".into())),
            (
                StatusCode::CONFLICT,
                r#"{"error":"sold_out","event":"1"}"#.into()
            )
        );
        assert_eq!(
            body(ApiError::UnknownEvent),
            (StatusCode::NOT_FOUND, r#"{"error":"unknown_event"}"#.into())
        );
        assert_eq!(
            body(ApiError::BadEventId),
            (
                StatusCode::BAD_REQUEST,
                r#"{"error":"bad_event_id"}"#.into()
            )
        );
        assert_eq!(
            body(ApiError::NotFound),
            (StatusCode::NOT_FOUND, r#"{"error":"not_found"}"#.into())
        );
        assert_eq!(
            body(ApiError::Unavailable).0,
            StatusCode::SERVICE_UNAVAILABLE
        );
    }

    #[test]
    fn buyer_and_idempotency_bodies() {
        for (error, status, json) in [
            (
                ApiError::Unauthorized,
                StatusCode::UNAUTHORIZED,
                r#"{"error":"unauthorized"}"#,
            ),
            (
                ApiError::LimitReached("gala".into()),
                StatusCode::CONFLICT,
                r#"{"error":"limit_reached","event":"gala"}"#,
            ),
            (
                ApiError::IdempotencyKeyInUse,
                StatusCode::CONFLICT,
                r#"{"error":"idempotency_key_in_use"}"#,
            ),
            (
                ApiError::IdempotencyKeyReused,
                StatusCode::UNPROCESSABLE_ENTITY,
                r#"{"error":"idempotency_key_reused"}"#,
            ),
            (
                ApiError::BadIdempotencyKey,
                StatusCode::BAD_REQUEST,
                r#"{"error":"bad_idempotency_key"}"#,
            ),
            (
                ApiError::KeyWithoutBuyer,
                StatusCode::BAD_REQUEST,
                r#"{"error":"idempotency_key_needs_a_buyer"}"#,
            ),
        ] {
            assert_eq!(body(error), (status, json.to_owned()));
        }
    }

    #[test]
    fn headers() {
        let r = ApiError::MethodNotAllowed("POST").into_response();
        assert_eq!(r.headers()[ALLOW], "POST");
        let r = ApiError::Unavailable.into_response();
        assert_eq!(r.headers()[RETRY_AFTER], "1");
        assert_eq!(r.headers()["content-type"], "application/json");
        let r = ApiError::Unauthorized.into_response();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(r.headers()[WWW_AUTHENTICATE], "Bearer");
        for other in [
            ApiError::BadIdempotencyKey,
            ApiError::LimitReached("1".into()),
        ] {
            assert!(!other
                .into_response()
                .headers()
                .contains_key(WWW_AUTHENTICATE));
        }
    }
}
