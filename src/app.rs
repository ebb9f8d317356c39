//! The HTTP service, built apart from serving it: a `Clone` handle on shared state whose
//! [`App::handle`] answers one request. Tests call it without a socket; [`crate::server::serve`]
//! drives it per connection.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::future::Either;
use http::header::{HeaderValue, ACCEPT, CONTENT_LENGTH, CONTENT_TYPE};
use http::{Request, StatusCode};
use opentelemetry::Context;
use tracing::Instrument;

use crate::auth::Auth;
use crate::catalog::Catalog;
use crate::error::ApiError;
use crate::event::Event;
use crate::in_flight::KeysInFlight;
use crate::metrics::{Metrics, Outcome, StorePath};
use crate::metrics_render::{render_json, render_text, Snapshot, TEXT_CONTENT_TYPE};
use crate::otel::spans;
use crate::response::{self, json, HttpResponse};
use crate::router::{route, Route};
use crate::sold_out::Seen;
use crate::store::purchaser::Purchaser;
use crate::store::{Sale, Store, StoreError};

/// What a purchase request buys and who buys it (`None`: anonymous).
type Target = (Arc<Event>, Option<Arc<Purchaser>>);

/// A route whose answer needs work: the store, the token, the metrics ([`App::at_once`]
/// answers the others).
#[derive(Debug, Clone, Copy)]
enum Work<'a> {
    Buy(&'a str),
    Tickets(&'a str),
    Readyz,
    Metrics,
}

/// Limits on what a client may send.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest accepted request body (`Content-Length`); the body itself is never read.
    pub max_body: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_body: 64 * 1024,
        }
    }
}

/// The service: store, catalogue and metrics behind one `Arc`.
#[derive(Debug)]
pub struct App<S> {
    inner: Arc<Inner<S>>,
}

impl<S> Clone for App<S> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

#[derive(Debug)]
struct Inner<S> {
    store: S,
    catalog: Arc<Catalog>,
    metrics: Arc<Metrics>,
    limits: Limits,
    /// Who buys: nobody known (anonymous), a verified token, or a gateway's header.
    auth: Auth,
    /// Keys of purchases not answered yet on this instance.
    keys: KeysInFlight,
}

impl<S: Store> App<S> {
    /// A service selling from `store` the events of `catalog`.
    pub fn new(store: S, catalog: Arc<Catalog>, metrics: Arc<Metrics>, limits: Limits) -> Self {
        Self {
            inner: Arc::new(Inner {
                store,
                catalog,
                metrics,
                limits,
                auth: Auth::Anonymous,
                keys: KeysInFlight::default(),
            }),
        }
    }

    /// This service, identifying buyers with `auth`. Call before cloning.
    ///
    /// # Panics
    /// If the service was cloned already.
    pub fn with_auth(mut self, auth: Auth) -> Self {
        Arc::get_mut(&mut self.inner)
            .expect("with_auth is called before the service is shared")
            .auth = auth;
        self
    }

    /// The metrics registry.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.inner.metrics
    }

    /// The catalogue.
    pub fn catalog(&self) -> &Arc<Catalog> {
        &self.inner.catalog
    }

    /// The store.
    pub fn store(&self) -> &S {
        &self.inner.store
    }

    /// Answers one request, as [`App::handle`] does, but does the request work of a purchase
    /// (routing, the catalogue, the buyer's token and key) at once, before the returned future
    /// is first polled, and drops the request there.
    ///
    /// Why: hyper calls the service as soon as it has parsed a request head, and then reads the
    /// socket again (to notice a closed connection) before it polls the answer. The request's
    /// URI and header values are slices of hyper's read buffer: while the request lives, that
    /// read must allocate a fresh buffer (8 KiB) instead of reusing the one the head came in,
    /// once per request (design.md, Findings).
    ///
    /// A route that needs no work (`/healthz`, `404`, `405`, a bad event id) is answered here
    /// too, as a ready future (counted in the request metrics, never in flight); every other
    /// one goes to [`App::handle`], boxed, so that hyper's per-connection room for this future
    /// is a purchase's size.
    pub fn respond<B>(self, req: Request<B>) -> impl Future<Output = HttpResponse> + Send + 'static
    where
        B: Send + Sync + 'static,
    {
        // Boxed: `handle` holds the request and every route's future (1.7 KiB), and hyper
        // keeps room for the service's future in every connection (design.md, Findings).
        let whole_path = |app: Self, req: Request<B>| {
            Either::Right(Box::pin(async move { app.handle(req).await }))
        };
        // Traced requests take the whole path: their span starts with the request.
        if crate::otel::enabled() {
            return whole_path(self, req);
        }
        let r = route(req.method(), req.uri().path());
        match Self::at_once(r) {
            Ok(now) => {
                self.inner
                    .metrics
                    .record_http(r.label(), now.status().as_u16());
                Either::Left(Either::Right(std::future::ready(now)))
            }
            Err(Work::Buy(id)) => {
                let purchase = self.purchase_target(&req, id);
                drop(req);
                Either::Left(Either::Left(async move {
                    let m = &self.inner.metrics;
                    let _in_flight = m.request_started();
                    // Matched here, not in a shared async fn: one more future layer costs
                    // every purchase about 60 instructions (callgrind).
                    let response = match purchase {
                        Ok((event, None)) => self.buy(event, false).await,
                        // Boxed as in `answer`: a known buyer's larger future must not size
                        // every connection's.
                        Ok((event, Some(who))) => Box::pin(self.buy_as(event, who, false)).await,
                        Err(refused) => refused.into_response(),
                    };
                    m.record_http(Route::Buy("").label(), response.status().as_u16());
                    response
                }))
            }
            Err(Work::Tickets(_) | Work::Readyz | Work::Metrics) => whole_path(self, req),
        }
    }

    /// The answer of a route that needs no work (no store, no state), or the work it needs.
    fn at_once(r: Route<'_>) -> Result<HttpResponse, Work<'_>> {
        Ok(match r {
            Route::BadEventId => ApiError::BadEventId.into_response(),
            Route::Healthz => json(StatusCode::OK, Bytes::from_static(br#"{"status":"ok"}"#)),
            Route::MethodNotAllowed(allow) => ApiError::MethodNotAllowed(allow).into_response(),
            Route::NotFound => ApiError::NotFound.into_response(),
            Route::Buy(id) => return Err(Work::Buy(id)),
            Route::Tickets(id) => return Err(Work::Tickets(id)),
            Route::Readyz => return Err(Work::Readyz),
            Route::Metrics => return Err(Work::Metrics),
        })
    }

    /// The event and purchaser (`None`: anonymous) of a purchase of event `id` once every check
    /// before the store passed, or the answer that refuses it: who buys first, then the body
    /// and the event, so a token is verified once per request, refused or not.
    fn purchase_target<B>(&self, req: &Request<B>, id: &str) -> Result<Target, ApiError> {
        let who = self.who(req)?;
        Ok((self.buy_target(req, id)?, who))
    }

    /// Answers one request. Never fails: every error is an HTTP answer.
    pub async fn handle<B>(&self, req: Request<B>) -> HttpResponse {
        if crate::otel::enabled() {
            if let Some(parent) = crate::otel::sampling::decide(req.headers()) {
                // Boxed: the traced path must not size the request future of the untraced one.
                return Box::pin(self.handle_traced(req, parent)).await;
            }
        }
        self.answer(req, false).await
    }

    /// [`App::handle`] inside a server span, a child of the caller's span if there is one.
    async fn handle_traced<B>(&self, req: Request<B>, parent: Option<Context>) -> HttpResponse {
        let span = spans::request(req.method(), &route(req.method(), req.uri().path()), parent);
        let response = self.answer(req, true).instrument(span.clone()).await;
        spans::record_response(&span, response.status());
        response
    }

    /// Answers `req`; `traced`: inside a request span, so a purchase gets its span too.
    async fn answer<B>(&self, req: Request<B>, traced: bool) -> HttpResponse {
        let m = &self.inner.metrics;
        let _in_flight = m.request_started();
        let r = route(req.method(), req.uri().path());
        let label = r.label();
        let response = match Self::at_once(r) {
            Ok(now) => now,
            Err(Work::Buy(id)) => {
                let target = self.purchase_target(&req, id);
                // Nothing of the request is needed past this point. Dropped before the store
                // call, it releases the head's bytes, so hyper reuses its read buffer for the
                // next request instead of allocating another while this purchase waits on Redis
                // (design.md, Measurements).
                drop(req);
                match target {
                    Ok((event, None)) => self.buy(event, traced).await,
                    Ok((event, Some(who))) => Box::pin(self.buy_as(event, who, traced)).await,
                    Err(refused) => refused.into_response(),
                }
            }
            Err(Work::Tickets(id)) => Box::pin(self.tickets(&req, id)).await,
            // Boxed: rare routes with kilobyte-sized Redis futures must not size the request
            // future of every connection (design.md, Measurements; a test bounds its size).
            Err(Work::Readyz) => Box::pin(self.readyz()).await,
            Err(Work::Metrics) => Box::pin(self.metrics_response(&req)).await,
        };
        m.record_http(label, response.status().as_u16());
        response
    }

    /// Who makes a purchase: `None` when anonymous. Refuses a request whose credentials or key
    /// do not check out, and a key without a buyer, before any store work.
    fn who<B>(&self, req: &Request<B>) -> Result<Option<Arc<Purchaser>>, ApiError> {
        let buyer = self.inner.auth.buyer(req.headers())?;
        let key = crate::idempotency_key::idempotency_key(req.headers())?;
        match (buyer, key) {
            (None, None) => Ok(None),
            // A key is per buyer: without one it would be shared by every client.
            (None, Some(_)) => Err(ApiError::KeyWithoutBuyer),
            (Some(buyer), key) => Ok(Some(Arc::new(Purchaser::new(
                buyer.into_inner(),
                key.map(|k| k.into_inner()),
            )))),
        }
    }

    /// A purchase by a known buyer (or with a key): one at a time per key on this instance.
    async fn buy_as(&self, event: Arc<Event>, who: Arc<Purchaser>, traced: bool) -> HttpResponse {
        let _in_flight = match &who.key {
            Some(key) => match self.inner.keys.enter(&who.buyer, key) {
                Some(guard) => Some(guard),
                None => {
                    let (path, result) = (StorePath::Redis, Ok(Sale::KeyInUse));
                    let seen = event.sold_out.before_store().1;
                    return self
                        .answer_purchase(&event, path, result, seen, Duration::ZERO)
                        .1;
                }
            },
            None => None,
        };
        // Keyed and known buyers always ask the store: a repeated key must get its first answer,
        // and a limit is the store's to judge. Their sold-out answers are remembered all the same.
        let (_, seen) = event.sold_out.before_store();
        let started = Instant::now();
        let purchase = self.inner.store.purchase_by(&event, &who);
        let (path, result) = if traced {
            let span = spans::purchase(&event);
            let (path, result) = purchase.instrument(span.clone()).await;
            let outcome = Self::outcome(&result);
            spans::record_purchase(&span, &event, path, outcome, &result);
            (path, result)
        } else {
            purchase.await
        };
        self.answer_purchase(&event, path, result, seen, started.elapsed())
            .1
    }

    /// `GET /events/:eventId/tickets`: the caller's tickets of the event.
    async fn tickets<B>(&self, req: &Request<B>, id: &str) -> HttpResponse {
        if !self.inner.auth.is_on() {
            // No buyer is ever known: nobody has tickets to list.
            return ApiError::NotFound.into_response();
        }
        let buyer = match self.inner.auth.buyer(req.headers()) {
            Ok(Some(buyer)) => buyer,
            Ok(None) | Err(_) => return ApiError::Unauthorized.into_response(),
        };
        let Some(event) = self.inner.catalog.get(id) else {
            return ApiError::UnknownEvent.into_response();
        };
        match self.inner.store.tickets(&event, buyer.as_str()).await {
            Ok(tickets) => json(StatusCode::OK, response::tickets_body(&event, &tickets)),
            Err(e) => {
                tracing::debug!(event = %event.id, error = %e, "could not list a buyer's tickets");
                ApiError::Unavailable.into_response()
            }
        }
    }

    /// The event a purchase request is for, or the answer that refuses it (body too large,
    /// unknown event).
    fn buy_target<B>(&self, req: &Request<B>, id: &str) -> Result<Arc<Event>, ApiError> {
        let too_large = req
            .headers()
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            .is_some_and(|n| n > self.inner.limits.max_body);
        if too_large {
            return Err(ApiError::PayloadTooLarge);
        }
        self.inner.catalog.get(id).ok_or(ApiError::UnknownEvent)
    }

    /// An anonymous purchase. Once the store said the event is sold out, answered from memory
    /// until tickets may be back ([`crate::sold_out`]): no store call.
    async fn buy(&self, event: Arc<Event>, traced: bool) -> HttpResponse {
        let (sold_out, seen) = event.sold_out.before_store();
        if sold_out {
            event.metrics.record_sold_out_from_memory();
            return ApiError::SoldOut(event.id.clone()).into_response();
        }
        if traced {
            // Boxed, like the traced request: the untraced purchase future stays as it was.
            return Box::pin(self.buy_traced(event, seen)).await;
        }
        let started = Instant::now();
        let (path, result) = self.inner.store.purchase(&event).await;
        self.answer_purchase(&event, path, result, seen, started.elapsed())
            .1
    }

    /// [`App::buy`] inside a `purchase` span that records what the store decided.
    async fn buy_traced(&self, event: Arc<Event>, seen: Seen) -> HttpResponse {
        let span = spans::purchase(&event);
        let started = Instant::now();
        let (path, result) = self
            .inner
            .store
            .purchase(&event)
            .instrument(span.clone())
            .await;
        let took = started.elapsed();
        let recorded = result.clone();
        let (outcome, response) = self.answer_purchase(&event, path, result, seen, took);
        spans::record_purchase(&span, &event, path, outcome, &recorded);
        response
    }

    /// The outcome a store's decision counts as.
    fn outcome(result: &Result<Sale, StoreError>) -> Outcome {
        match result {
            Ok(Sale::Sold { .. }) => Outcome::Sold,
            Ok(Sale::SoldOut) => Outcome::SoldOut,
            Ok(Sale::Replayed { .. }) => Outcome::Replayed,
            Ok(Sale::LimitReached) => Outcome::LimitReached,
            Ok(Sale::KeyInUse | Sale::KeyReused) => Outcome::KeyConflict,
            Err(_) => Outcome::Unavailable,
        }
    }

    /// Records what the store decided for one purchase (asked after `seen`) and answers it.
    fn answer_purchase(
        &self,
        event: &Arc<Event>,
        path: StorePath,
        result: Result<Sale, StoreError>,
        seen: Seen,
        took: Duration,
    ) -> (Outcome, HttpResponse) {
        let (outcome, response) = match result {
            Ok(Sale::Sold { ticket, remaining }) => {
                event.metrics.set_remaining(remaining);
                event.sold_out.sold();
                tracing::debug!(event = %event.id, ticket, path = path.label(), latency_us = took.as_micros() as u64, "sold");
                (Outcome::Sold, response::sale(event, ticket, remaining))
            }
            Ok(Sale::SoldOut) => {
                event.metrics.set_remaining(0);
                event.sold_out.answered_sold_out(seen);
                (
                    Outcome::SoldOut,
                    ApiError::SoldOut(event.id.clone()).into_response(),
                )
            }
            // The first answer again, byte for byte.
            Ok(Sale::Replayed { ticket, remaining }) => {
                (Outcome::Replayed, response::sale(event, ticket, remaining))
            }
            Ok(Sale::LimitReached) => (
                Outcome::LimitReached,
                ApiError::LimitReached(event.id.clone()).into_response(),
            ),
            Ok(Sale::KeyInUse) => (
                Outcome::KeyConflict,
                ApiError::IdempotencyKeyInUse.into_response(),
            ),
            Ok(Sale::KeyReused) => (
                Outcome::KeyConflict,
                ApiError::IdempotencyKeyReused.into_response(),
            ),
            // The store logged the cause (rate-limited); the buyer may retry.
            Err(_) => (Outcome::Unavailable, ApiError::Unavailable.into_response()),
        };
        event.metrics.record(outcome);
        self.inner.metrics.record_purchase(path, outcome, took);
        (outcome, response)
    }

    async fn readyz(&self) -> HttpResponse {
        if self.inner.store.ready().await {
            json(StatusCode::OK, Bytes::from_static(br#"{"status":"ready"}"#))
        } else {
            let mut r = ApiError::Unavailable.into_response();
            *r.body_mut() =
                Bytes::from_static(br#"{"error":"unavailable","status":"not_ready"}"#).into();
            r
        }
    }

    /// Unsold tickets per event, from the snapshot that [`crate::remaining::run`] keeps fresh:
    /// nothing is asked of the store.
    pub fn remaining_now(&self, events: &[Arc<crate::event::Event>]) -> Vec<u64> {
        events.iter().map(|e| e.metrics.remaining()).collect()
    }

    /// `/metrics`: the registry and the remaining snapshot, without a store round trip, so no
    /// number of scrapers adds work to Redis or delays a purchase.
    async fn metrics_response<B>(&self, req: &Request<B>) -> HttpResponse {
        let events = self.inner.catalog.events();
        let remaining = self.remaining_now(&events);
        let reserved = self.inner.store.reserved(&events);
        let snapshot = Snapshot {
            events: &events,
            remaining: &remaining,
            remaining_age: self.inner.metrics.remaining_age().as_secs_f64(),
            reserved: &reserved,
            store: self.inner.store.name(),
        };
        let wants_json = req
            .uri()
            .query()
            .is_some_and(|q| q.split('&').any(|p| p == "format=json"))
            || req
                .headers()
                .get(ACCEPT)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.contains("application/json"));
        let mut out = Vec::with_capacity(4096 + events.len() * 512);
        if wants_json {
            render_json(&mut out, &self.inner.metrics, &snapshot);
            json(StatusCode::OK, out)
        } else {
            render_text(&mut out, &self.inner.metrics, &snapshot);
            let mut r = json(StatusCode::OK, out);
            r.headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static(TEXT_CONTENT_TYPE));
            r
        }
    }
}
