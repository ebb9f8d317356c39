//! Verifying a buyer's JWT with one key: HS256 from `--jwt-secret`, or RS256, ES256 (P-256) or
//! EdDSA (Ed25519) from the PEM public key of `--jwt-public-key`, told apart by the key itself.
//!
//! The work is `jsonwebtoken`'s, on its pure-Rust (RustCrypto) backend. What this file decides:
//! the one algorithm a token's header must name (so a public key is never taken for an HMAC
//! secret), `exp` and `sub` required, `nbf` checked when present, `iss` and `aud` required and
//! checked when set, [`crate::config::DEFAULT_JWT_LEEWAY`] of clock skew by default, and a key
//! checked at start-up (the crate parses an asymmetric key only when it verifies).

use std::fmt;
use std::time::Duration;

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

use super::cache::TokenCache;
use super::Buyer;
use crate::config::{BuyerArgs, MIN_JWT_SECRET_LEN};

/// Smallest RSA modulus accepted, in bits.
pub const MIN_RSA_BITS: usize = 2048;

/// What a token must satisfy besides its signature.
#[derive(Debug, Clone, Default)]
pub struct Checks {
    /// Required `iss`, if any.
    pub issuer: Option<String>,
    /// Required `aud` (a token's string, or one of its array), if any.
    pub audience: Option<String>,
    /// Clock skew allowed on `exp` and `nbf`, in whole seconds.
    pub leeway: Duration,
}

impl From<&BuyerArgs> for Checks {
    fn from(args: &BuyerArgs) -> Self {
        Checks {
            issuer: args.jwt_issuer.clone(),
            audience: args.jwt_audience.clone(),
            leeway: args.jwt_leeway,
        }
    }
}

/// A key and the checks every token must pass, and the tokens that passed them.
pub struct JwtAuth {
    key: DecodingKey,
    validation: Validation,
    algorithm: Algorithm,
    /// Tokens verified before and their buyers (`--jwt-cache-size`; `None`: every token is
    /// verified every time).
    cache: Option<TokenCache>,
}

impl fmt::Debug for JwtAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The key stays out: an HS256 secret must not reach a log.
        f.debug_struct("JwtAuth")
            .field("algorithm", &self.algorithm)
            .field("validation", &self.validation)
            .field("cache", &self.cache)
            .finish_non_exhaustive()
    }
}

/// The claims read from a token beyond those the crate checks. `sub` is required; a token
/// whose `sub` is no string fails to decode.
#[derive(Deserialize)]
struct Claims {
    sub: Box<str>,
    /// Checked by the crate; kept to know how long the verified token may be cached.
    exp: u64,
}

/// Why a token was refused (logged at DEBUG, never sent).
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    /// Signature, shape, algorithm, time or issuer/audience: the crate's verdict.
    #[error("{0}")]
    Token(#[from] jsonwebtoken::errors::Error),
    /// A valid token whose `sub` cannot name a buyer.
    #[error("sub is not a valid buyer id (1-256 bytes, no control characters)")]
    BadSubject,
}

impl JwtAuth {
    /// HS256 with `secret`.
    ///
    /// # Errors
    /// A secret shorter than [`MIN_JWT_SECRET_LEN`] bytes (the message does not hold it).
    pub fn hs256(secret: &[u8], checks: &Checks) -> Result<JwtAuth, String> {
        if secret.len() < MIN_JWT_SECRET_LEN {
            return Err(format!(
                "too short ({} bytes): an HS256 secret must be at least {MIN_JWT_SECRET_LEN} bytes",
                secret.len()
            ));
        }
        let key = DecodingKey::from_secret(secret);
        Ok(JwtAuth::with(key, Algorithm::HS256, checks))
    }

    /// RS256, ES256 or EdDSA, as the PEM public key (SPKI `PUBLIC KEY`, or PKCS#1
    /// `RSA PUBLIC KEY`) says.
    ///
    /// # Errors
    /// Not a PEM public key, a private key, an EC key not on P-256, an RSA key under
    /// [`MIN_RSA_BITS`] bits, or a key that does not parse.
    pub fn from_pem(pem: &[u8], checks: &Checks) -> Result<JwtAuth, String> {
        if pem
            .windows(b"PRIVATE KEY".len())
            .any(|w| w == b"PRIVATE KEY")
        {
            return Err(
                "holds a private key: give the public key (openssl pkey -in KEY -pubout)".into(),
            );
        }
        let (key, algorithm) = if let Ok(key) = DecodingKey::from_rsa_pem(pem) {
            (key, Algorithm::RS256)
        } else if let Ok(key) = DecodingKey::from_ec_pem(pem) {
            (key, Algorithm::ES256)
        } else if let Ok(key) = DecodingKey::from_ed_pem(pem) {
            (key, Algorithm::EdDSA)
        } else {
            return Err("not a PEM public key of RSA, EC (P-256) or Ed25519".into());
        };
        // Parses the key now: the crate would only when verifying, failing every request.
        let jwk = Jwk::from_decoding_key(&key, Some(algorithm))
            .map_err(|e| format!("unusable {algorithm:?} key: {e}"))?;
        match &jwk.algorithm {
            AlgorithmParameters::RSA(rsa) => {
                // `n` is unpadded base64url: 4 characters for 3 bytes.
                let bits = rsa.n.len() * 6 / 8 * 8;
                if bits < MIN_RSA_BITS {
                    return Err(format!(
                        "an RSA key of about {bits} bits is too small: at least {MIN_RSA_BITS}"
                    ));
                }
            }
            AlgorithmParameters::EllipticCurve(ec) if ec.curve != EllipticCurve::P256 => {
                return Err(format!("an EC key on {:?}: ES256 needs P-256", ec.curve));
            }
            _ => {}
        }
        Ok(JwtAuth::with(key, algorithm, checks))
    }

    fn with(key: DecodingKey, algorithm: Algorithm, checks: &Checks) -> JwtAuth {
        let mut validation = Validation::new(algorithm);
        validation.leeway = checks.leeway.as_secs();
        validation.validate_exp = true;
        validation.validate_nbf = true;
        let mut required = vec!["exp", "sub"];
        if let Some(issuer) = &checks.issuer {
            validation.set_issuer(&[issuer]);
            required.push("iss");
        }
        match &checks.audience {
            Some(audience) => {
                validation.set_audience(&[audience]);
                required.push("aud");
            }
            // Unset means unchecked: otherwise the crate refuses every token that names one.
            None => validation.validate_aud = false,
        }
        validation.set_required_spec_claims(&required);
        JwtAuth {
            key,
            validation,
            algorithm,
            cache: None,
        }
    }

    /// The one algorithm accepted.
    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// Keeps up to `capacity` verified tokens (0: none), so that a token seen before costs a
    /// lookup instead of a signature check until it expires ([`TokenCache`]).
    #[must_use]
    pub fn with_cache(mut self, capacity: usize) -> JwtAuth {
        self.cache = TokenCache::new(capacity);
        self
    }

    /// The buyer named by `token`, if its signature and claims pass (or passed before, and the
    /// token has not expired since). The tests' way in; a request goes through `Auth::buyer`,
    /// which checks the token's form between [`JwtAuth::cached`] and [`JwtAuth::check`].
    ///
    /// # Errors
    /// Why the token was refused.
    #[cfg(test)]
    pub fn verify(&self, token: &[u8]) -> Result<Buyer, Refused> {
        match self.cached(token) {
            Some(buyer) => Ok(buyer),
            None => self.check(token),
        }
    }

    /// The buyer of `token` if it passed [`JwtAuth::verify`] before and has not expired since:
    /// a lookup, no signature check. Such a token was well formed, so a request can look its
    /// bytes up before checking their form.
    pub fn cached(&self, token: &[u8]) -> Option<Buyer> {
        self.cache
            .as_ref()?
            .get(token, jsonwebtoken::get_current_timestamp())
    }

    /// [`JwtAuth::verify`] without the cache lookup: checks the signature and claims, and keeps
    /// the token in the cache when they pass. Only for bytes that passed the form check
    /// (`Auth::buyer` looks the cache up before that check).
    ///
    /// # Errors
    /// Why the token was refused.
    pub(super) fn check(&self, token: &[u8]) -> Result<Buyer, Refused> {
        let data = jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation)?;
        let buyer = Buyer::new(data.claims.sub).ok_or(Refused::BadSubject)?;
        if let Some(cache) = &self.cache {
            let until = data.claims.exp.saturating_add(self.validation.leeway);
            cache.insert(token, buyer.clone(), until);
        }
        Ok(buyer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Auth;
    use crate::error::ApiError;
    use http::{HeaderMap, HeaderValue};
    use jsonwebtoken::{encode, get_current_timestamp, EncodingKey, Header};
    use serde_json::{json, Value};

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";
    /// A test key of tests/data, read when the test runs (not compiled in: a release build,
    /// such as the container's, copies no test data).
    fn data(name: &str) -> Vec<u8> {
        let path = format!("{}/tests/data/{name}", env!("CARGO_MANIFEST_DIR"));
        std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    static RS256_KEY: std::sync::LazyLock<Vec<u8>> =
        std::sync::LazyLock::new(|| data("jwt-rs256.key.pem"));
    static RS256_PUB: std::sync::LazyLock<Vec<u8>> =
        std::sync::LazyLock::new(|| data("jwt-rs256.pub.pem"));
    static ES256_KEY: std::sync::LazyLock<Vec<u8>> =
        std::sync::LazyLock::new(|| data("jwt-es256.key.pem"));
    static ES256_PUB: std::sync::LazyLock<Vec<u8>> =
        std::sync::LazyLock::new(|| data("jwt-es256.pub.pem"));
    static EDDSA_KEY: std::sync::LazyLock<Vec<u8>> =
        std::sync::LazyLock::new(|| data("jwt-eddsa.key.pem"));
    static EDDSA_PUB: std::sync::LazyLock<Vec<u8>> =
        std::sync::LazyLock::new(|| data("jwt-eddsa.pub.pem"));
    static P384_PUB: std::sync::LazyLock<Vec<u8>> =
        std::sync::LazyLock::new(|| data("jwt-p384.pub.pem"));

    fn checks() -> Checks {
        Checks {
            leeway: Duration::from_secs(30),
            ..Checks::default()
        }
    }

    fn now() -> i64 {
        i64::try_from(get_current_timestamp()).unwrap()
    }

    fn hs256(claims: &Value) -> String {
        sign(Algorithm::HS256, &EncodingKey::from_secret(SECRET), claims)
    }

    fn sign(alg: Algorithm, key: &EncodingKey, claims: &Value) -> String {
        encode(&Header::new(alg), claims, key).unwrap()
    }

    fn buyer_of(jwt: &JwtAuth, token: &str) -> Option<String> {
        jwt.verify(token.as_bytes())
            .ok()
            .map(|b| b.as_str().to_owned())
    }

    #[test]
    fn valid_token_names_its_buyer() {
        let jwt = JwtAuth::hs256(SECRET, &checks()).unwrap();
        let token = hs256(&json!({"sub": "buyer-7", "exp": now() + 60}));
        assert_eq!(buyer_of(&jwt, &token).as_deref(), Some("buyer-7"));
    }

    #[test]
    fn expiry_allows_the_leeway_and_no_more() {
        let jwt = JwtAuth::hs256(SECRET, &checks()).unwrap();
        let within = hs256(&json!({"sub": "b", "exp": now() - 10}));
        assert_eq!(buyer_of(&jwt, &within).as_deref(), Some("b"));
        let beyond = hs256(&json!({"sub": "b", "exp": now() - 60}));
        assert!(matches!(
            jwt.verify(beyond.as_bytes()),
            Err(Refused::Token(e)) if *e.kind() == jsonwebtoken::errors::ErrorKind::ExpiredSignature
        ));
        let not_yet = hs256(&json!({"sub": "b", "exp": now() + 600, "nbf": now() + 300}));
        assert_eq!(buyer_of(&jwt, &not_yet), None, "nbf beyond the leeway");
        let nearly = hs256(&json!({"sub": "b", "exp": now() + 600, "nbf": now() + 10}));
        assert_eq!(
            buyer_of(&jwt, &nearly).as_deref(),
            Some("b"),
            "nbf within it"
        );
    }

    #[test]
    fn exp_and_sub_are_required() {
        let jwt = JwtAuth::hs256(SECRET, &checks()).unwrap();
        for claims in [
            json!({"sub": "b"}),
            json!({"sub": "b", "exp": "tomorrow"}),
            json!({"exp": now() + 60}),
            json!({"sub": 42, "exp": now() + 60}),
        ] {
            assert_eq!(buyer_of(&jwt, &hs256(&claims)), None, "{claims}");
        }
    }

    #[test]
    fn a_verified_token_is_kept_and_a_refused_one_never_is() {
        let jwt = JwtAuth::hs256(SECRET, &checks()).unwrap().with_cache(100);
        let kept = || jwt.cache.as_ref().unwrap().len();
        let claims = json!({"sub": "buyer-7", "exp": now() + 60});
        let token = hs256(&claims);
        assert_eq!(buyer_of(&jwt, &token).as_deref(), Some("buyer-7"));
        assert_eq!(kept(), 1);
        assert_eq!(
            buyer_of(&jwt, &token).as_deref(),
            Some("buyer-7"),
            "from the cache"
        );
        assert_eq!(kept(), 1);
        // The same claims badly signed, a signature flipped, an expired token: refused, not kept.
        let other = EncodingKey::from_secret(b"another secret, 32 bytes or more!");
        assert_eq!(
            buyer_of(&jwt, &sign(Algorithm::HS256, &other, &claims)),
            None
        );
        let (head, sig) = token.rsplit_once('.').unwrap();
        let flipped = if sig.starts_with('A') { "B" } else { "A" };
        assert_eq!(
            buyer_of(&jwt, &format!("{head}.{flipped}{}", &sig[1..])),
            None
        );
        let expired = hs256(&json!({"sub": "buyer-7", "exp": now() - 60}));
        assert_eq!(buyer_of(&jwt, &expired), None);
        assert_eq!(kept(), 1);
        // Kept until its `exp` plus the leeway: the cache answers what the crate would.
        let late = hs256(&json!({"sub": "buyer-8", "exp": now() - 10}));
        assert_eq!(buyer_of(&jwt, &late).as_deref(), Some("buyer-8"));
        assert_eq!(buyer_of(&jwt, &late).as_deref(), Some("buyer-8"));
        assert!(JwtAuth::hs256(SECRET, &checks()).unwrap().cache.is_none());
    }

    #[test]
    fn bad_signatures_and_shapes_are_refused() {
        let jwt = JwtAuth::hs256(SECRET, &checks()).unwrap();
        let claims = json!({"sub": "b", "exp": now() + 60});
        let other = EncodingKey::from_secret(b"another secret, 32 bytes or more!");
        assert_eq!(
            buyer_of(&jwt, &sign(Algorithm::HS256, &other, &claims)),
            None
        );
        let good = hs256(&claims);
        let (head, sig) = good.rsplit_once('.').unwrap();
        let flipped = if sig.starts_with('A') { "B" } else { "A" };
        assert_eq!(
            buyer_of(&jwt, &format!("{head}.{flipped}{}", &sig[1..])),
            None
        );
        let (_, payload_sig) = good.split_once('.').unwrap();
        let none_header = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0"; // {"alg":"none","typ":"JWT"}
        assert_eq!(
            buyer_of(&jwt, &format!("{none_header}.{payload_sig}")),
            None
        );
        let hs512 = sign(Algorithm::HS512, &EncodingKey::from_secret(SECRET), &claims);
        assert_eq!(
            buyer_of(&jwt, &hs512),
            None,
            "only the configured algorithm"
        );
        for junk in ["", "a.b", "a.b.c", "a.b.c.d", "...."] {
            assert_eq!(buyer_of(&jwt, junk), None, "{junk:?}");
        }
    }

    #[test]
    fn issuer_and_audience_when_set() {
        let checks = Checks {
            issuer: Some("https://id.example".into()),
            audience: Some("tickets".into()),
            ..checks()
        };
        let jwt = JwtAuth::hs256(SECRET, &checks).unwrap();
        let exp = now() + 60;
        let ok = json!({"sub": "b", "exp": exp, "iss": "https://id.example", "aud": "tickets"});
        assert_eq!(buyer_of(&jwt, &hs256(&ok)).as_deref(), Some("b"));
        let in_list =
            json!({"sub": "b", "exp": exp, "iss": "https://id.example", "aud": ["x", "tickets"]});
        assert_eq!(buyer_of(&jwt, &hs256(&in_list)).as_deref(), Some("b"));
        for bad in [
            json!({"sub": "b", "exp": exp, "iss": "https://id.example", "aud": "shop"}),
            json!({"sub": "b", "exp": exp, "iss": "https://id.example"}),
            json!({"sub": "b", "exp": exp, "iss": "https://evil.example", "aud": "tickets"}),
            json!({"sub": "b", "exp": exp, "aud": "tickets"}),
        ] {
            assert_eq!(buyer_of(&jwt, &hs256(&bad)), None, "{bad}");
        }
        let unchecked = JwtAuth::hs256(SECRET, &self::checks()).unwrap();
        assert_eq!(
            buyer_of(
                &unchecked,
                &hs256(&json!({"sub": "b", "exp": exp, "aud": "shop", "iss": "x"}))
            )
            .as_deref(),
            Some("b"),
            "neither is checked when unset"
        );
    }

    #[test]
    fn sub_must_be_a_valid_buyer_id() {
        let jwt = JwtAuth::hs256(SECRET, &checks()).unwrap();
        for sub in ["a\nb", "", "\u{7f}", &"x".repeat(257)] {
            let token = hs256(&json!({"sub": sub, "exp": now() + 60}));
            assert!(
                matches!(jwt.verify(token.as_bytes()), Err(Refused::BadSubject)),
                "{sub:?}"
            );
        }
    }

    #[test]
    fn each_asymmetric_algorithm() {
        for (public, private, alg) in [
            (
                &RS256_PUB[..],
                EncodingKey::from_rsa_pem(&RS256_KEY[..]),
                Algorithm::RS256,
            ),
            (
                &ES256_PUB[..],
                EncodingKey::from_ec_pem(&ES256_KEY[..]),
                Algorithm::ES256,
            ),
            (
                &EDDSA_PUB[..],
                EncodingKey::from_ed_pem(&EDDSA_KEY[..]),
                Algorithm::EdDSA,
            ),
        ] {
            let jwt = JwtAuth::from_pem(public, &checks()).unwrap();
            assert_eq!(jwt.algorithm(), alg);
            let private = private.unwrap();
            let token = sign(alg, &private, &json!({"sub": "buyer-1", "exp": now() + 60}));
            assert_eq!(
                buyer_of(&jwt, &token).as_deref(),
                Some("buyer-1"),
                "{alg:?}"
            );
            let expired = sign(alg, &private, &json!({"sub": "buyer-1", "exp": now() - 60}));
            assert_eq!(buyer_of(&jwt, &expired), None, "{alg:?}");
            let hs = hs256(&json!({"sub": "b", "exp": now() + 60}));
            assert_eq!(buyer_of(&jwt, &hs), None, "{alg:?} refuses HS256");
        }
    }

    #[test]
    fn a_public_key_is_never_an_hmac_secret() {
        // The classic confusion: HS256 signed with the server's public key as the secret.
        let jwt = JwtAuth::from_pem(&RS256_PUB[..], &checks()).unwrap();
        let forged = sign(
            Algorithm::HS256,
            &EncodingKey::from_secret(&RS256_PUB[..]),
            &json!({"sub": "mallory", "exp": now() + 60}),
        );
        assert_eq!(buyer_of(&jwt, &forged), None);
    }

    #[test]
    fn unusable_keys_fail_at_start_up() {
        for (pem, needle) in [
            (&RS256_KEY[..], "private key"),
            (&P384_PUB[..], "ES256 needs P-256"),
            (&b"not a pem"[..], "not a PEM public key"),
            (
                &b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n"[..],
                "not a PEM public key",
            ),
        ] {
            let e = JwtAuth::from_pem(pem, &checks()).unwrap_err();
            assert!(e.contains(needle), "{e}");
        }
        let e = JwtAuth::hs256(b"short", &checks()).unwrap_err();
        assert!(e.contains("at least 32") && !e.contains("short\""), "{e}");
    }

    #[test]
    fn through_auth_every_refusal_is_unauthorized() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("es256.pem");
        std::fs::write(&path, &ES256_PUB[..]).unwrap();
        let auth = Auth::from_args(&crate::auth::tests::args(&[
            "--jwt-public-key",
            path.to_str().unwrap(),
            "--jwt-audience",
            "tickets",
        ]))
        .unwrap();
        assert!(auth.is_on());
        assert_eq!(auth.to_string(), "jwt ES256");
        let key = EncodingKey::from_ec_pem(&ES256_KEY[..]).unwrap();
        let request = |token: &str| {
            let mut headers = HeaderMap::new();
            let value = format!("Bearer {token}");
            headers.insert("authorization", HeaderValue::from_str(&value).unwrap());
            auth.buyer(&headers)
        };
        let good = sign(
            Algorithm::ES256,
            &key,
            &json!({"sub": "b-1", "exp": now() + 60, "aud": "tickets"}),
        );
        assert_eq!(request(&good).unwrap().unwrap().as_str(), "b-1");
        let wrong_aud = sign(
            Algorithm::ES256,
            &key,
            &json!({"sub": "b-1", "exp": now() + 60, "aud": "x"}),
        );
        assert!(matches!(request(&wrong_aud), Err(ApiError::Unauthorized)));
        assert!(matches!(request("a.b.c"), Err(ApiError::Unauthorized)));
        assert!(matches!(
            auth.buyer(&HeaderMap::new()),
            Err(ApiError::Unauthorized)
        ));
    }

    #[test]
    fn a_cached_token_is_refused_in_a_header_that_would_refuse_it() {
        // The cache is asked before the token's form is checked: what surrounds the token must
        // refuse it all the same.
        let auth = Auth::Jwt(Box::new(
            JwtAuth::hs256(SECRET, &checks()).unwrap().with_cache(100),
        ));
        let good = hs256(&json!({"sub": "b-1", "exp": now() + 60}));
        let with = |values: &[String]| {
            let mut headers = HeaderMap::new();
            for v in values {
                headers.append("authorization", HeaderValue::from_str(v).unwrap());
            }
            auth.buyer(&headers)
        };
        let bearer = format!("Bearer {good}");
        assert_eq!(
            with(std::slice::from_ref(&bearer))
                .unwrap()
                .unwrap()
                .as_str(),
            "b-1"
        );
        let Auth::Jwt(jwt) = &auth else {
            unreachable!()
        };
        assert!(jwt.cached(good.as_bytes()).is_some(), "kept");
        for refused in [
            vec![bearer.clone(), bearer.clone()],
            vec![format!("Basic {good}")],
            vec![format!("Bearer{good}")],
            vec![format!("Bearer {good} x")],
            vec![format!("Bearer {good},")],
        ] {
            assert!(
                matches!(with(&refused), Err(ApiError::Unauthorized)),
                "{refused:?}"
            );
        }
        assert_eq!(
            with(&[format!("bearer   {good}")])
                .unwrap()
                .unwrap()
                .as_str(),
            "b-1",
            "scheme in any case, several spaces"
        );
    }
}
