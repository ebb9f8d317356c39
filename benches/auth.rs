//! What naming the buyer costs a purchase: `Auth::buyer` on a realistic request, for each way
//! of authenticating (HS256, RS256, ES256, EdDSA, a gateway's header), beside a baseline that
//! only finds the bearer token in the headers (no decoding, no signature). The JWT ratios to
//! that baseline are the price of the signature and of the crate's decoding.
//!
//! The keys are the test keys of `tests/data/`; each `Auth` is built through `Auth::from_args`
//! from the command line, as the server builds it.

use std::hint::black_box;
use std::path::Path;
use std::time::Duration;

use clap::Parser;
use criterion::{criterion_group, criterion_main, Criterion};
use http::{HeaderMap, HeaderValue};
use jsonwebtoken::{encode, get_current_timestamp, Algorithm, EncodingKey, Header};
use ticketd::auth::{bearer_token, Auth};
use ticketd::config::Cli;

const SECRET: &str = "0123456789abcdef0123456789abcdef";

fn data(file: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(file)
}

fn auth(flags: &[&str]) -> Auth {
    let mut argv = vec!["ticketd"];
    argv.extend_from_slice(flags);
    let cli = Cli::try_parse_from(argv).expect("flags parse");
    Auth::from_args(&cli.serve.buyers).expect("settings are usable")
}

/// A request's headers as a browser or app sends them, with `Authorization: Bearer <token>`
/// signed by `key`.
fn request(alg: Algorithm, key: &EncodingKey) -> HeaderMap {
    let claims = serde_json::json!({
        "sub": "buyer-123456",
        "exp": get_current_timestamp() + 3600,
        "iat": get_current_timestamp(),
        "iss": "https://id.example",
        "aud": "tickets",
    });
    let token = encode(&Header::new(alg), &claims, key).expect("signs");
    let mut headers = common_headers();
    headers.insert(
        "authorization",
        HeaderValue::from_str(&format!("Bearer {token}")).expect("ASCII"),
    );
    headers
}

fn common_headers() -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert("host", HeaderValue::from_static("tickets.example"));
    headers.insert("user-agent", HeaderValue::from_static("Mozilla/5.0"));
    headers.insert("accept", HeaderValue::from_static("application/json"));
    headers.insert("content-length", HeaderValue::from_static("0"));
    headers
}

fn pem(file: &str) -> Vec<u8> {
    std::fs::read(data(file)).expect("test key")
}

fn verify(c: &mut Criterion) {
    // Every token verified every time (no cache), but the `_cached` cases: the same token again.
    let checks = [
        "--jwt-issuer",
        "https://id.example",
        "--jwt-audience",
        "tickets",
        "--jwt-cache-size",
        "0",
    ];
    let mut cases: Vec<(&str, Auth, HeaderMap)> = Vec::new();
    let hs = EncodingKey::from_secret(SECRET.as_bytes());
    let mut flags = vec!["--jwt-secret", SECRET];
    flags.extend_from_slice(&checks);
    cases.push(("hs256", auth(&flags), request(Algorithm::HS256, &hs)));
    for (name, alg, public, private) in [
        (
            "rs256",
            Algorithm::RS256,
            "jwt-rs256.pub.pem",
            "jwt-rs256.key.pem",
        ),
        (
            "es256",
            Algorithm::ES256,
            "jwt-es256.pub.pem",
            "jwt-es256.key.pem",
        ),
        (
            "eddsa",
            Algorithm::EdDSA,
            "jwt-eddsa.pub.pem",
            "jwt-eddsa.key.pem",
        ),
    ] {
        let key = match alg {
            Algorithm::RS256 => EncodingKey::from_rsa_pem(&pem(private)),
            Algorithm::ES256 => EncodingKey::from_ec_pem(&pem(private)),
            _ => EncodingKey::from_ed_pem(&pem(private)),
        }
        .expect("test key parses");
        let path = data(public);
        let mut flags = vec!["--jwt-public-key", path.to_str().expect("UTF-8 path")];
        flags.extend_from_slice(&checks);
        cases.push((name, auth(&flags), request(alg, &key)));
        if alg == Algorithm::EdDSA {
            flags.truncate(flags.len() - 2);
            cases.push(("eddsa_cached", auth(&flags), request(alg, &key)));
        }
    }
    flags = vec!["--jwt-secret", SECRET];
    flags.extend_from_slice(&checks[..4]);
    cases.push(("hs256_cached", auth(&flags), request(Algorithm::HS256, &hs)));
    let mut gateway = common_headers();
    gateway.insert("x-buyer", HeaderValue::from_static("buyer-123456"));
    cases.push(("header", auth(&["--buyer-header", "x-buyer"]), gateway));

    let mut g = c.benchmark_group("buyer");
    let baseline = &cases[0].2;
    g.bench_function("baseline_find_bearer_token", |b| {
        b.iter(|| black_box(bearer_token(black_box(baseline)).map(<[u8]>::len)))
    });
    for (name, auth, headers) in &cases {
        assert!(
            auth.buyer(headers).expect("accepted").is_some(),
            "{name}: the benchmarked request is accepted"
        );
        g.bench_function(*name, |b| {
            b.iter(|| black_box(auth.buyer(black_box(headers))).is_ok())
        });
    }
    let refused = {
        let mut h = common_headers();
        h.insert("authorization", HeaderValue::from_static("Bearer a.b.c"));
        h
    };
    let hs256 = &cases[0].1;
    g.bench_function("hs256_refused_malformed", |b| {
        b.iter(|| black_box(hs256.buyer(black_box(&refused))).is_err())
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = verify
}
criterion_main!(benches);
