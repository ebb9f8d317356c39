//! Buyers through HTTP, with ticketd as real processes on a real redis-server: tokens checked
//! before any store work, the per-buyer limit under 200 concurrent purchases through two
//! instances, an `Idempotency-Key` replayed on another instance, in flight, reused for another
//! event, and across a Redis outage, and a buyer's list of tickets.

mod support;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hyper::{Method, StatusCode};
use jsonwebtoken::{encode, EncodingKey, Header};
use serde_json::json;
use support::{Answer, Conn, RedisServer, TicketdProcess};

const SECRET: &str = "a-test-secret-of-at-least-32-bytes!!";
const AUDIENCE: &str = "tickets";

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// An HS256 token for `sub`, expiring `exp` (unix s), for `aud`, signed with `secret`.
fn token_with(sub: &str, exp: u64, aud: &str, secret: &str) -> String {
    let claims = json!({ "sub": sub, "exp": exp, "aud": aud });
    encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

/// A valid token for `sub`.
fn token(sub: &str) -> String {
    token_with(sub, now() + 3600, AUDIENCE, SECRET)
}

async fn start(redis: &RedisServer, events: &str, extra: &[&str]) -> TicketdProcess {
    let mut args = vec![
        "--jwt-secret",
        SECRET,
        "--jwt-audience",
        AUDIENCE,
        "--fallback-reserve",
        "20",
        "--reserve-lease",
        "3s",
    ];
    args.extend_from_slice(extra);
    let t = TicketdProcess::on_redis(redis, events, &args).await;
    t.wait_ready().await;
    t
}

/// `POST /buy/<event>` as `sub` (no token when `None`), with `key` if given.
async fn buy(t: &TicketdProcess, event: &str, bearer: Option<&str>, key: Option<&str>) -> Answer {
    let auth = bearer.map(|b| format!("Bearer {b}"));
    let key = key.map(|k| format!("\"{k}\""));
    let mut headers = Vec::new();
    if let Some(a) = &auth {
        headers.push(("authorization", a.as_str()));
    }
    if let Some(k) = &key {
        headers.push(("idempotency-key", k.as_str()));
    }
    Conn::open(t.addr)
        .await
        .unwrap()
        .send_with(Method::POST, &format!("/buy/{event}"), &headers)
        .await
        .unwrap()
}

async fn sold_in_redis(redis: &RedisServer, event: &str) -> u64 {
    use fred::prelude::*;
    redis
        .client()
        .await
        .hlen(format!("event:{{{event}}}:sold"))
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_checked_before_any_store_work() {
    let redis = RedisServer::start();
    let t = start(&redis, "1=100", &[]).await;
    let refused = [
        (None, "no token"),
        (Some("not-a-jwt".to_owned()), "malformed"),
        (
            Some(token_with("alice", now() - 600, AUDIENCE, SECRET)),
            "expired",
        ),
        (
            Some(token_with(
                "alice",
                now() + 600,
                AUDIENCE,
                "another-secret-of-at-least-32-bytes",
            )),
            "badly signed",
        ),
        (
            Some(token_with("alice", now() + 600, "elsewhere", SECRET)),
            "wrong audience",
        ),
    ];
    for (bearer, why) in &refused {
        let a = buy(&t, "1", bearer.as_deref(), None).await;
        assert_eq!(a.status, StatusCode::UNAUTHORIZED, "{why}: {}", a.text());
        assert_eq!(a.json(), json!({"error": "unauthorized"}), "{why}");
        assert_eq!(a.headers["www-authenticate"], "Bearer", "{why}");
    }
    // Refused before the catalogue is even looked at.
    let a = buy(&t, "no-such-event", None, None).await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    assert_eq!(sold_in_redis(&redis, "1").await, 0, "nothing reached Redis");
    let a = buy(&t, "1", Some(&token("alice")), None).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text());
    assert_eq!(sold_in_redis(&redis, "1").await, 1);
    // A malformed key is refused, and sells nothing.
    let a = Conn::open(t.addr)
        .await
        .unwrap()
        .send_with(
            Method::POST,
            "/buy/1",
            &[
                ("authorization", &format!("Bearer {}", token("alice"))),
                ("idempotency-key", "no-quotes"),
            ],
        )
        .await
        .unwrap();
    assert_eq!(a.status, StatusCode::BAD_REQUEST, "{}", a.text());
    assert_eq!(sold_in_redis(&redis, "1").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_purchases_of_one_buyer_through_two_instances_sell_exactly_the_limit() {
    let redis = RedisServer::start();
    let a = start(&redis, "1=1000", &["--max-per-buyer", "2"]).await;
    let b = start(&redis, "1=1000", &["--max-per-buyer", "2"]).await;
    let bearer = token("alice");
    let buys = (0..200).map(|i| {
        let t = if i % 2 == 0 { &a } else { &b };
        buy(t, "1", Some(&bearer), None)
    });
    let answers = futures_util::future::join_all(buys).await;
    let ok: Vec<&Answer> = answers
        .iter()
        .filter(|a| a.status == StatusCode::OK)
        .collect();
    let limit: Vec<&Answer> = answers
        .iter()
        .filter(|a| a.status == StatusCode::CONFLICT)
        .collect();
    assert_eq!(
        ok.len(),
        2,
        "{:?}",
        answers.iter().map(Answer::text).collect::<Vec<_>>()
    );
    assert_eq!(limit.len(), 198);
    assert_eq!(
        limit[0].json(),
        json!({"error": "limit_reached", "event": "1"})
    );
    // The buyer's list holds exactly those two, on either instance.
    let mut bought: Vec<String> = ok
        .iter()
        .map(|a| a.json()["ticket"].as_str().unwrap().to_owned())
        .collect();
    bought.sort();
    for t in [&a, &b] {
        let list = tickets(t, &bearer, "1").await;
        assert_eq!(list.status, StatusCode::OK);
        assert_eq!(list.json(), json!({"event": "1", "tickets": bought}));
    }
    // Another buyer's list is empty; no token is refused.
    assert_eq!(
        tickets(&a, &token("bob"), "1").await.json(),
        json!({"event": "1", "tickets": []})
    );
    let anonymous = support::http::request(a.addr, Method::GET, "/events/1/tickets").await;
    assert_eq!(anonymous.status, StatusCode::UNAUTHORIZED);
    assert_eq!(sold_in_redis(&redis, "1").await, 2);
}

async fn tickets(t: &TicketdProcess, bearer: &str, event: &str) -> Answer {
    Conn::open(t.addr)
        .await
        .unwrap()
        .send_with(
            Method::GET,
            &format!("/events/{event}/tickets"),
            &[("authorization", &format!("Bearer {bearer}"))],
        )
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_is_replayed_on_another_instance_and_refused_for_another_event() {
    let redis = RedisServer::start();
    let events = "1=100,2=100";
    let a = start(&redis, events, &[]).await;
    let b = start(&redis, events, &[]).await;
    let bearer = token("alice");
    let first = buy(&a, "1", Some(&bearer), Some("order-1")).await;
    assert_eq!(first.status, StatusCode::OK, "{}", first.text());
    // Others buy in between: the repeat's body is still the first one, byte for byte.
    for _ in 0..3 {
        buy(&a, "1", Some(&token("bob")), None).await;
    }
    for t in [&b, &a] {
        let again = buy(t, "1", Some(&bearer), Some("order-1")).await;
        assert_eq!(again.status, StatusCode::OK);
        assert_eq!(again.body, first.body);
    }
    for t in [&b, &a] {
        let other = buy(t, "2", Some(&bearer), Some("order-1")).await;
        assert_eq!(
            other.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{}",
            other.text()
        );
        assert_eq!(other.json(), json!({"error": "idempotency_key_reused"}));
    }
    // The same key of another buyer is another purchase.
    let bob = buy(&b, "1", Some(&token("bob")), Some("order-1")).await;
    assert_eq!(bob.status, StatusCode::OK);
    assert_ne!(bob.json()["ticket"], first.json()["ticket"]);
    assert_eq!(
        sold_in_redis(&redis, "1").await,
        5,
        "alice once, bob four times"
    );
    assert_eq!(sold_in_redis(&redis, "2").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeat_while_the_first_is_in_flight_is_told_so() {
    let redis = RedisServer::start();
    let t = start(&redis, "1=100", &["--redis-timeout", "5s"]).await;
    let bearer = token("alice");
    // Redis stops answering: the first purchase waits in flight.
    redis.signal("STOP");
    let first = {
        let bearer = bearer.clone();
        let addr = t.addr;
        tokio::spawn(async move {
            Conn::open(addr)
                .await
                .unwrap()
                .send_with(
                    Method::POST,
                    "/buy/1",
                    &[
                        ("authorization", &format!("Bearer {bearer}")),
                        ("idempotency-key", "\"k\""),
                    ],
                )
                .await
                .unwrap()
        })
    };
    // Once the first is in flight (the scrape that asks is the other request in flight), the
    // repeat is answered at once, while the first still waits.
    t.wait_until(
        |a| a.json()["http"]["in_flight"].as_u64() >= Some(2),
        "/metrics?format=json",
    )
    .await;
    let repeat = buy(&t, "1", Some(&bearer), Some("k")).await;
    assert_eq!(repeat.status, StatusCode::CONFLICT, "{}", repeat.text());
    assert_eq!(repeat.json(), json!({"error": "idempotency_key_in_use"}));
    redis.signal("CONT");
    let first = first.await.unwrap();
    assert_eq!(first.status, StatusCode::OK, "{}", first.text());
    let again = buy(&t, "1", Some(&bearer), Some("k")).await;
    assert_eq!(again.body, first.body);
    assert_eq!(sold_in_redis(&redis, "1").await, 1);
}

/// Buys as `bearer` (with `key`, if any) on `t` right after Redis went away, until the answer is
/// no longer `503` (bounded: the breaker opens on the first failed round); returns it.
async fn buy_in_outage(t: &TicketdProcess, bearer: &str, key: Option<&str>) -> Answer {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let r = buy(t, "1", Some(bearer), key).await;
        if r.status != StatusCode::SERVICE_UNAVAILABLE || tokio::time::Instant::now() > deadline {
            return r;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_sold_during_an_outage_answers_the_same_ticket_after_it() {
    let mut redis = RedisServer::start();
    let a = start(&redis, "1=200", &["--max-per-buyer", "2"]).await;
    let b = start(&redis, "1=200", &["--max-per-buyer", "2"]).await;
    for t in [&a, &b] {
        t.wait_until(
            |r| r.json()["fallback"]["reserved"]["1"].as_u64() == Some(20),
            "/metrics?format=json",
        )
        .await;
    }
    let bearer = token("alice");
    redis.kill();
    let first = buy_in_outage(&a, &bearer, Some("outage-1")).await;
    assert_eq!(first.status, StatusCode::OK, "{}", first.text());
    // During the outage, the instance that sold it answers the key again...
    let again = buy(&a, "1", Some(&bearer), Some("outage-1")).await;
    assert_eq!(again.body, first.body);
    // ...and holds the buyer to the limit from what it knows; the other instance knows
    // nothing of it and sells up to the limit too: the bound design.md states.
    let second = buy(&a, "1", Some(&bearer), None).await;
    assert_eq!(second.status, StatusCode::OK, "{}", second.text());
    let third = buy(&a, "1", Some(&bearer), None).await;
    assert_eq!(third.status, StatusCode::CONFLICT, "{}", third.text());
    let mut on_b = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while on_b < 2 && tokio::time::Instant::now() < deadline {
        if buy(&b, "1", Some(&bearer), None).await.status == StatusCode::OK {
            on_b += 1;
        } else {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    assert_eq!(on_b, 2, "b sold from its reserve");
    redis.start_again();
    for t in [&a, &b] {
        t.wait_ready().await;
    }
    // After the settlement, any instance answers the key with the ticket sold in the outage.
    for t in [&b, &a] {
        let after = buy(t, "1", Some(&bearer), Some("outage-1")).await;
        assert_eq!(after.status, StatusCode::OK);
        assert_eq!(after.body, first.body, "the same answer after the outage");
    }
    // The buyer went over the limit across instances: logged by whichever settled last, and
    // counted.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let over = loop {
        let logs = a.log_text() + &b.log_text();
        if let Some(line) = logs.lines().find(|l| l.contains("BUYERS OVER THE LIMIT")) {
            break line.to_owned();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no WARN about the limit"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(over.contains("alice holds 4"), "{over}");
    let counted: u64 = [a.metrics_json().await, b.metrics_json().await]
        .iter()
        .map(|m| m["fallback"]["buyers_over_limit"].as_u64().unwrap_or(0))
        .sum();
    assert_eq!(counted, 1);
    let list = tickets(&b, &bearer, "1").await.json();
    assert_eq!(list["tickets"].as_array().unwrap().len(), 4, "{list}");
    assert_eq!(
        buy(&b, "1", Some(&bearer), None).await.status,
        StatusCode::CONFLICT,
        "over the limit: nothing more from Redis"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_instance_remembers_what_its_reserves_sold_each_buyer() {
    // The limit while Redis is down is per instance, not per process: a restart between two
    // outages must not give the buyer the limit again from the same instance's reserves.
    let mut redis = RedisServer::start();
    let mut a = start(&redis, "1=200", &["--max-per-buyer", "2"]).await;
    let reserved = |r: &Answer| r.json()["fallback"]["reserved"]["1"].as_u64() == Some(20);
    a.wait_until(reserved, "/metrics?format=json").await;
    let bearer = token("alice");
    redis.kill();
    for n in 1..=2 {
        let r = buy_in_outage(&a, &bearer, None).await;
        assert_eq!(
            r.status,
            StatusCode::OK,
            "sale {n} from the reserve: {}",
            r.text()
        );
    }
    assert_eq!(
        buy(&a, "1", Some(&bearer), None).await.status,
        StatusCode::CONFLICT
    );
    redis.start_again();
    a.wait_until(
        |r| r.json()["fallback"]["active"] == false && reserved(r),
        "/metrics?format=json",
    )
    .await;
    assert_eq!(
        sold_in_redis(&redis, "1").await,
        2,
        "the outage's sales settled"
    );
    // A crash and a restart on the same journal directory: the same instance, a new run.
    a.restart().await;
    a.wait_ready().await;
    a.wait_until(reserved, "/metrics?format=json").await;
    redis.kill();
    let r = buy_in_outage(&a, &bearer, None).await;
    assert_eq!(
        (r.status, r.json()),
        (
            StatusCode::CONFLICT,
            json!({"error": "limit_reached", "event": "1"})
        ),
        "this instance already sold alice the limit from its reserves"
    );
    // Another buyer still buys from the reserve.
    let bob = buy_in_outage(&a, &token("bob"), None).await;
    assert_eq!(bob.status, StatusCode::OK, "{}", bob.text());
    redis.start_again();
    a.wait_until(
        |r| r.json()["fallback"]["active"] == false,
        "/metrics?format=json",
    )
    .await;
    let list = tickets(&a, &bearer, "1").await.json();
    assert_eq!(list["tickets"].as_array().unwrap().len(), 2, "{list}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_without_a_buyer_is_refused() {
    // Without authentication a key would be shared by every client, who could then be answered
    // another client's ticket: refused, and nothing sold.
    let redis = RedisServer::start();
    let t = TicketdProcess::on_redis(&redis, "1=10", &[]).await;
    t.wait_ready().await;
    let a = buy(&t, "1", None, Some("k")).await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST, "{}", a.text());
    assert_eq!(a.json(), json!({"error": "idempotency_key_needs_a_buyer"}));
    assert_eq!(sold_in_redis(&redis, "1").await, 0);
    assert_eq!(buy(&t, "1", None, None).await.status, StatusCode::OK);
}
