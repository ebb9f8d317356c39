//! Routing by slicing the request path: no allocation, no regex, no percent-decoding.
//!
//! Event ids never need percent-encoding, so a `%` in an id is refused as it stands: a
//! percent-encoded brace can never be decoded into a Redis key.

use http::Method;

use crate::event::validate_event_id;

/// Where a request goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route<'a> {
    /// `POST /buy/:eventId` with a well-formed id.
    Buy(&'a str),
    /// `POST /buy/...` or `GET /events/.../tickets` whose id is empty, too long or holds a
    /// forbidden character.
    BadEventId,
    /// `GET /events/:eventId/tickets` with a well-formed id: the caller's tickets.
    Tickets(&'a str),
    /// `GET /healthz`: liveness, no I/O.
    Healthz,
    /// `GET /readyz`: readiness, asks the store.
    Readyz,
    /// `GET /metrics`.
    Metrics,
    /// A known path with another method; the value is the `Allow` header.
    MethodNotAllowed(&'static str),
    /// Anything else.
    NotFound,
}

impl Route<'_> {
    /// A short, fixed label of the route for metrics and logs.
    pub fn label(&self) -> &'static str {
        match self {
            Route::Buy(_) | Route::BadEventId => "buy",
            Route::Tickets(_) => "tickets",
            Route::Healthz => "healthz",
            Route::Readyz => "readyz",
            Route::Metrics => "metrics",
            Route::MethodNotAllowed(_) => "method_not_allowed",
            Route::NotFound => "not_found",
        }
    }
}

/// Routes `method` and `path` (the path without its query string).
///
/// ```
/// use http::Method;
/// use ticketd::router::{route, Route};
/// assert_eq!(route(&Method::POST, "/buy/1"), Route::Buy("1"));
/// assert_eq!(route(&Method::POST, "/buy/%7B1%7D"), Route::BadEventId);
/// assert_eq!(route(&Method::GET, "/buy/1"), Route::MethodNotAllowed("POST"));
/// ```
pub fn route<'a>(method: &Method, path: &'a str) -> Route<'a> {
    if let Some(id) = path.strip_prefix("/buy/") {
        if method != Method::POST {
            return Route::MethodNotAllowed("POST");
        }
        // `/buy/1/` and `/buy/1/x` name no resource; the id itself never holds a '/'.
        if id.contains('/') {
            return Route::NotFound;
        }
        return match validate_event_id(id) {
            Ok(()) => Route::Buy(id),
            Err(_) => Route::BadEventId,
        };
    }
    let get_like = method == Method::GET || method == Method::HEAD;
    if let Some(id) = path
        .strip_prefix("/events/")
        .and_then(|rest| rest.strip_suffix("/tickets"))
    {
        if id.contains('/') {
            return Route::NotFound;
        }
        if !get_like {
            return Route::MethodNotAllowed("GET, HEAD");
        }
        return match validate_event_id(id) {
            Ok(()) => Route::Tickets(id),
            Err(_) => Route::BadEventId,
        };
    }
    let fixed = match path {
        "/healthz" => Route::Healthz,
        "/readyz" => Route::Readyz,
        "/metrics" => Route::Metrics,
        _ => return Route::NotFound,
    };
    if get_like {
        fixed
    } else {
        Route::MethodNotAllowed("GET, HEAD")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn post(path: &str) -> Route<'_> {
        route(&Method::POST, path)
    }

    #[test]
    fn buy_routes() {
        assert_eq!(post("/buy/1"), Route::Buy("1"));
        assert_eq!(
            post("/buy/Spring_Gala-2027"),
            Route::Buy("Spring_Gala-2027")
        );
        let id64 = format!("/buy/{}", "a".repeat(64));
        assert_eq!(post(&id64), Route::Buy(&id64[5..]));
        assert_eq!(post(&format!("/buy/{}", "a".repeat(65))), Route::BadEventId);
    }

    #[test]
    fn malformed_ids() {
        for path in [
            "/buy/",
            "/buy/a{b",
            "/buy/a}b",
            "/buy/%7B1%7D",
            "/buy/%31",
            "/buy/a%20b",
            "/buy/a.b",
            "/buy/a:b",
            "/buy/é",
        ] {
            assert_eq!(post(path), Route::BadEventId, "{path}");
        }
    }

    #[test]
    fn extra_segments_and_odd_paths() {
        for path in [
            "/buy/1/", "/buy/1/x", "/buy//1", "/buy", "/", "", "/BUY/1", "/buyx/1", "//buy/1",
        ] {
            assert_eq!(post(path), Route::NotFound, "{path:?}");
        }
    }

    #[test]
    fn methods() {
        for m in [
            Method::GET,
            Method::PUT,
            Method::DELETE,
            Method::PATCH,
            Method::HEAD,
        ] {
            assert_eq!(route(&m, "/buy/1"), Route::MethodNotAllowed("POST"), "{m}");
        }
        assert_eq!(route(&Method::GET, "/healthz"), Route::Healthz);
        assert_eq!(route(&Method::HEAD, "/healthz"), Route::Healthz);
        assert_eq!(route(&Method::GET, "/readyz"), Route::Readyz);
        assert_eq!(route(&Method::GET, "/metrics"), Route::Metrics);
        assert_eq!(
            route(&Method::POST, "/metrics"),
            Route::MethodNotAllowed("GET, HEAD")
        );
        assert_eq!(route(&Method::GET, "/healthz/"), Route::NotFound);
        assert_eq!(
            route(&Method::GET, "/events/gala-1/tickets"),
            Route::Tickets("gala-1")
        );
        assert_eq!(
            route(&Method::POST, "/events/1/tickets"),
            Route::MethodNotAllowed("GET, HEAD")
        );
        assert_eq!(
            route(&Method::GET, "/events/%7B1%7D/tickets"),
            Route::BadEventId
        );
        assert_eq!(route(&Method::GET, "/events//tickets"), Route::BadEventId);
        assert_eq!(route(&Method::GET, "/events/1/x/tickets"), Route::NotFound);
        assert_eq!(route(&Method::GET, "/events/1"), Route::NotFound);
        assert_eq!(route(&Method::GET, "/nope"), Route::NotFound);
    }
}
