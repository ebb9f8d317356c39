//! Who the load test buys as: HS256 tokens for `--buyers` buyers, signed once at start-up with
//! the server's `--jwt-secret`, and a fresh `Idempotency-Key` per request
//! (`--idempotency-keys`).
//!
//! Both are ready-made header values: a request clones one token (a reference count) and
//! formats only its key, so buyers cost the measured loop almost nothing.

use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::HeaderValue;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde::Serialize;

/// Buyers signed for when `--jwt-secret` is given without `--buyers`.
pub const DEFAULT_BUYERS: u64 = 1000;

/// How long the signed tokens are valid: longer than any run.
const TOKEN_LIFETIME_SECS: u64 = 3600;

#[derive(Serialize)]
struct Claims<'a> {
    sub: &'a str,
    exp: u64,
    iat: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    iss: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    aud: Option<&'a str>,
}

/// `Authorization: Bearer <JWT>` values for buyers `buyer-0` .. `buyer-<n-1>`, each token
/// HS256-signed with `secret`, valid for an hour, with `iss` and `aud` when given.
///
/// # Errors
/// A message when signing fails.
pub fn bearer_tokens(
    secret: &str,
    buyers: u64,
    issuer: Option<&str>,
    audience: Option<&str>,
) -> Result<Vec<HeaderValue>, String> {
    let key = EncodingKey::from_secret(secret.as_bytes());
    let header = Header::new(Algorithm::HS256);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_err(|e| e.to_string())?
        .as_secs();
    (0..buyers)
        .map(|i| {
            let sub = format!("buyer-{i}");
            let claims = Claims {
                sub: &sub,
                exp: now + TOKEN_LIFETIME_SECS,
                iat: now,
                iss: issuer,
                aud: audience,
            };
            let token = encode(&header, &claims, &key).map_err(|e| format!("--jwt-secret: {e}"))?;
            HeaderValue::from_str(&format!("Bearer {token}")).map_err(|e| e.to_string())
        })
        .collect()
}

/// Fresh `Idempotency-Key` values: `"<run>-<n>"`, where `<run>` is random per run, so that a
/// second run against the same server (which keeps keys for hours) never repeats a key.
#[derive(Debug)]
pub struct IdempotencyKeys {
    /// `"` and the run's prefix, e.g. `"3f9a0c1d2e4b5a69-`.
    prefix: Box<[u8]>,
}

impl IdempotencyKeys {
    /// Keys of a new run.
    pub fn new() -> Self {
        Self::with_run(fastrand::u64(..))
    }

    fn with_run(run: u64) -> Self {
        Self {
            prefix: format!("\"{run:016x}-").into_bytes().into(),
        }
    }

    /// The key of request number `n` of this run, as a structured-field string.
    pub fn key(&self, n: u64) -> HeaderValue {
        let mut digits = itoa::Buffer::new();
        let digits = digits.format(n).as_bytes();
        let mut out = Vec::with_capacity(self.prefix.len() + digits.len() + 1);
        out.extend_from_slice(&self.prefix);
        out.extend_from_slice(digits);
        out.push(b'"');
        HeaderValue::from_maybe_shared(Bytes::from(out)).expect("hex, digits and quotes")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{decode, DecodingKey, Validation};

    #[derive(serde::Deserialize)]
    struct Read {
        sub: String,
        aud: Option<String>,
    }

    #[test]
    fn tokens_name_each_buyer() {
        let secret = "0123456789abcdef0123456789abcdef";
        let tokens = bearer_tokens(secret, 3, None, Some("tickets")).unwrap();
        assert_eq!(tokens.len(), 3);
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_audience(&["tickets"]);
        for (i, value) in tokens.iter().enumerate() {
            let token = value.to_str().unwrap().strip_prefix("Bearer ").unwrap();
            let read = decode::<Read>(
                token,
                &DecodingKey::from_secret(secret.as_bytes()),
                &validation,
            )
            .unwrap()
            .claims;
            assert_eq!(read.sub, format!("buyer-{i}"));
            assert_eq!(read.aud.as_deref(), Some("tickets"));
        }
    }

    #[test]
    fn keys_are_quoted_and_unique() {
        let keys = IdempotencyKeys::with_run(0xabc);
        assert_eq!(keys.key(0), "\"0000000000000abc-0\"");
        assert_eq!(
            keys.key(u64::MAX),
            "\"0000000000000abc-18446744073709551615\""
        );
        assert_ne!(keys.key(1), keys.key(2));
        assert_ne!(IdempotencyKeys::new().prefix, IdempotencyKeys::new().prefix);
    }
}
