//! Who buys: the buyer of a purchase, taken from a verified JWT (`--jwt-secret`,
//! `--jwt-public-key`), from a header set by an authenticating gateway (`--buyer-header`), or
//! nobody (anonymous purchases, when neither is set).
//!
//! [`Auth`] is built once at start-up from [`BuyerArgs`]; a bad key or setting stops start-up
//! with a message naming the setting. Per request, [`Auth::buyer`] answers before any store work:
//! every refusal is the same [`ApiError::Unauthorized`] (`401`, `WWW-Authenticate: Bearer`), and
//! the reason goes to the log at DEBUG only, so a flood of bad tokens costs no logging.
//!
//! A buyer id is [`MAX_BUYER_LEN`] bytes at most and holds no ASCII control character: the store
//! keeps buyer ids in records separated by `\n`, so a `sub` (or gateway header) holding one is
//! refused like a bad token.

pub mod cache;
pub mod jwt;

use std::fmt;

use http::header::{HeaderName, HeaderValue, AUTHORIZATION};
use http::HeaderMap;

use crate::config::BuyerArgs;
use crate::error::ApiError;

pub use jwt::JwtAuth;

/// Longest buyer id, in bytes.
pub const MAX_BUYER_LEN: usize = 256;

/// Longest bearer token looked at, in bytes; a longer one is refused unread (a real JWT of a
/// buyer is a few hundred bytes, and decoding costs time in proportion to its length).
pub const MAX_TOKEN_LEN: usize = 8 * 1024;

/// A validated buyer id: 1 to [`MAX_BUYER_LEN`] bytes of UTF-8 without ASCII control
/// characters (0x00-0x1F, 0x7F).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Buyer(Box<str>);

impl Buyer {
    /// The id, if `id` is a valid one (see [`Buyer`]).
    pub fn new(id: impl Into<Box<str>> + AsRef<str>) -> Option<Buyer> {
        is_valid_buyer_id(id.as_ref()).then(|| Buyer(id.into()))
    }

    /// The id.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The id, owned (no copy).
    pub fn into_inner(self) -> Box<str> {
        self.0
    }
}

impl fmt::Debug for Buyer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Buyer").field(&self.0).finish()
    }
}

impl fmt::Display for Buyer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Whether `id` may name a buyer: 1 to [`MAX_BUYER_LEN`] bytes, no ASCII control character.
pub fn is_valid_buyer_id(id: &str) -> bool {
    (1..=MAX_BUYER_LEN).contains(&id.len()) && !id.bytes().any(|b| b.is_ascii_control())
}

/// How a purchase names its buyer.
#[derive(Debug)]
pub enum Auth {
    /// Nobody: purchases are anonymous.
    Anonymous,
    /// `Authorization: Bearer <JWT>`, verified with one key; the buyer is the token's `sub`.
    Jwt(Box<JwtAuth>),
    /// This header, set by an authenticating gateway that strips it from client requests.
    Header(HeaderName),
}

impl Auth {
    /// The authentication the settings ask for.
    ///
    /// # Errors
    /// A message naming the setting: an unreadable or unusable key file, a secret that is too
    /// short, settings that exclude each other or need another.
    pub fn from_args(args: &BuyerArgs) -> Result<Auth, String> {
        let jwt_flag_without_key = [
            ("--jwt-issuer", args.jwt_issuer.is_some()),
            ("--jwt-audience", args.jwt_audience.is_some()),
        ];
        let auth =
            match (&args.jwt_secret, &args.jwt_public_key, &args.buyer_header) {
                (None, None, None) => Auth::Anonymous,
                (Some(secret), None, None) => {
                    let jwt = JwtAuth::hs256(secret.expose().as_bytes(), &jwt::Checks::from(args))
                        .map_err(|e| format!("--jwt-secret: {e}"))?;
                    Auth::Jwt(Box::new(jwt.with_cache(args.jwt_cache_size)))
                }
                (None, Some(path), None) => {
                    let named =
                        |e: &dyn fmt::Display| format!("--jwt-public-key {}: {e}", path.display());
                    let pem = std::fs::read(path).map_err(|e| named(&e))?;
                    let jwt =
                        JwtAuth::from_pem(&pem, &jwt::Checks::from(args)).map_err(|e| named(&e))?;
                    Auth::Jwt(Box::new(jwt.with_cache(args.jwt_cache_size)))
                }
                (None, None, Some(name)) => Auth::Header(name.clone()),
                _ => return Err(
                    "--jwt-secret, --jwt-public-key and --buyer-header exclude each other: set one"
                        .into(),
                ),
            };
        if !matches!(auth, Auth::Jwt(_)) {
            if let Some((flag, _)) = jwt_flag_without_key.iter().find(|(_, set)| *set) {
                return Err(format!("{flag} needs --jwt-secret or --jwt-public-key"));
            }
        }
        if args.max_per_buyer.is_some() && !auth.is_on() {
            return Err(
                "--max-per-buyer needs buyers: set --jwt-secret, --jwt-public-key or --buyer-header"
                    .into(),
            );
        }
        Ok(auth)
    }

    /// Whether purchases need a buyer (anything but [`Auth::Anonymous`]).
    pub fn is_on(&self) -> bool {
        !matches!(self, Auth::Anonymous)
    }

    /// The buyer of a request: `Ok(None)` when anonymous.
    ///
    /// # Errors
    /// [`ApiError::Unauthorized`] for every refusal: no credentials, several, malformed, badly
    /// signed, expired, wrong issuer or audience, an invalid buyer id.
    pub fn buyer(&self, headers: &HeaderMap) -> Result<Option<Buyer>, ApiError> {
        match self {
            Auth::Anonymous => Ok(None),
            Auth::Jwt(jwt) => {
                let candidate = bearer_candidate(headers);
                // A token verified before was well formed: its lookup comes first, so a buyer's
                // next purchases skip the byte-by-byte check of its form.
                let short = candidate.filter(|t| t.len() <= MAX_TOKEN_LEN);
                if let Some(buyer) = short.and_then(|t| jwt.cached(t)) {
                    return Ok(Some(buyer));
                }
                let Some(token) = candidate.and_then(well_formed) else {
                    tracing::debug!("refused: no single well-formed bearer token");
                    return Err(ApiError::Unauthorized);
                };
                match jwt.check(token) {
                    Ok(buyer) => Ok(Some(buyer)),
                    Err(e) => {
                        tracing::debug!(error = %e, "refused: token not accepted");
                        Err(ApiError::Unauthorized)
                    }
                }
            }
            Auth::Header(name) => {
                let buyer = single(headers, name)
                    .and_then(|v| std::str::from_utf8(v.as_bytes()).ok())
                    .and_then(Buyer::new);
                if buyer.is_none() {
                    tracing::debug!(header = %name, "refused: no single valid buyer header");
                }
                buyer.map(Some).ok_or(ApiError::Unauthorized)
            }
        }
    }
}

impl fmt::Display for Auth {
    /// For the start-up log line: `anonymous`, `jwt RS256`, `header x-buyer`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Auth::Anonymous => f.write_str("anonymous"),
            Auth::Jwt(jwt) => write!(f, "jwt {:?}", jwt.algorithm()),
            Auth::Header(name) => write!(f, "header {name}"),
        }
    }
}

/// The token of the request's one `Authorization: Bearer <token>` header (RFC 6750, section
/// 2.1: the scheme in any case, one or more spaces, then `b64token` characters), or `None`
/// when there is none, several, another scheme, or a token that is malformed or longer than
/// [`MAX_TOKEN_LEN`]. Allocates nothing.
pub fn bearer_token(headers: &HeaderMap) -> Option<&[u8]> {
    bearer_candidate(headers).and_then(well_formed)
}

/// What follows the scheme and its spaces in the request's one `Authorization: Bearer` header,
/// whatever its form: [`bearer_token`] before [`well_formed`].
fn bearer_candidate(headers: &HeaderMap) -> Option<&[u8]> {
    let value = single(headers, &AUTHORIZATION)?.as_bytes();
    let (scheme, rest) = value.split_at_checked(b"Bearer".len())?;
    if !scheme.eq_ignore_ascii_case(b"Bearer") || !rest.starts_with(b" ") {
        return None;
    }
    Some(rest.trim_ascii_start())
}

/// `token` if it is a `b64token` of at most [`MAX_TOKEN_LEN`] bytes.
fn well_formed(token: &[u8]) -> Option<&[u8]> {
    let chars = token
        .iter()
        .take_while(|&&b| B64TOKEN[usize::from(b)])
        .count();
    let well_formed =
        chars > 0 && token.len() <= MAX_TOKEN_LEN && token[chars..].iter().all(|&b| b == b'=');
    well_formed.then_some(token)
}

/// The bytes of RFC 6750's `b64token` before its `=` padding: ALPHA DIGIT `-._~+/` (a table:
/// a JWT is hundreds of them, and this runs on every purchase).
const B64TOKEN: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        table[b] =
            c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~' | b'+' | b'/');
        b += 1;
    }
    table
};

/// The value of `name` when the request holds it exactly once.
fn single<'a>(headers: &'a HeaderMap, name: &HeaderName) -> Option<&'a HeaderValue> {
    let mut all = headers.get_all(name).iter();
    let first = all.next()?;
    all.next().is_none().then_some(first)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    /// The buyer settings as the command line gives them.
    #[derive(Parser)]
    struct Flags {
        #[command(flatten)]
        buyers: BuyerArgs,
    }

    pub(crate) fn args(flags: &[&str]) -> BuyerArgs {
        let mut argv = vec!["ticketd"];
        argv.extend_from_slice(flags);
        Flags::try_parse_from(argv).expect("flags parse").buyers
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        map
    }

    #[test]
    fn buyer_ids() {
        assert_eq!(Buyer::new("buyer-1").unwrap().as_str(), "buyer-1");
        assert!(Buyer::new("ü ok, spaces too").is_some());
        assert!(Buyer::new("x".repeat(MAX_BUYER_LEN)).is_some());
        assert!(Buyer::new("x".repeat(MAX_BUYER_LEN + 1)).is_none());
        assert!(Buyer::new("").is_none());
        for bad in ["a\nb", "a\rb", "\0", "tab\t", "del\x7f", "\x1b[31m"] {
            assert!(Buyer::new(bad).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn bearer_tokens() {
        let token = |v: &str| bearer_token(&headers(&[("authorization", v)])).map(<[u8]>::to_vec);
        assert_eq!(token("Bearer a.b.c"), Some(b"a.b.c".to_vec()));
        assert_eq!(token("bearer   a.b-_c"), Some(b"a.b-_c".to_vec()));
        assert_eq!(token("BEARER abc=="), Some(b"abc==".to_vec()));
        for bad in [
            "Bearer",
            "Bearer ",
            "Bearer:a.b.c",
            "Bearera.b.c",
            "Basic dXNlcjpwYXNz",
            "Bearer a.b c",
            "Bearer a,b",
            "Bearer a=b",
            "Bearer \"a.b.c\"",
        ] {
            assert_eq!(token(bad), None, "{bad:?}");
        }
        assert_eq!(bearer_token(&HeaderMap::new()), None);
        let two = headers(&[("authorization", "Bearer a"), ("authorization", "Bearer b")]);
        assert_eq!(bearer_token(&two), None, "several Authorization headers");
        let long = format!("Bearer {}", "a".repeat(MAX_TOKEN_LEN + 1));
        assert_eq!(token(&long), None);
    }

    #[test]
    fn anonymous_when_nothing_is_set() {
        let auth = Auth::from_args(&args(&[])).unwrap();
        assert!(!auth.is_on());
        assert_eq!(auth.to_string(), "anonymous");
        let any = headers(&[("authorization", "Bearer junk"), ("x-buyer", "b")]);
        assert_eq!(auth.buyer(&any).unwrap(), None);
    }

    #[test]
    fn gateway_header() {
        let auth = Auth::from_args(&args(&["--buyer-header", "X-Buyer"])).unwrap();
        assert!(auth.is_on());
        assert_eq!(auth.to_string(), "header x-buyer");
        let buyer = auth.buyer(&headers(&[("x-buyer", "alice")])).unwrap();
        assert_eq!(buyer.unwrap().as_str(), "alice");
        for refused in [
            headers(&[]),
            headers(&[("x-buyer", "")]),
            headers(&[("x-buyer", "a"), ("x-buyer", "b")]),
            headers(&[("x-buyer", "tab\there")]),
            headers(&[("authorization", "Bearer a.b.c")]),
        ] {
            assert!(matches!(auth.buyer(&refused), Err(ApiError::Unauthorized)));
        }
        let mut latin1 = HeaderMap::new();
        latin1.insert("x-buyer", HeaderValue::from_bytes(b"caf\xe9").unwrap());
        assert!(auth.buyer(&latin1).is_err(), "not UTF-8");
    }

    #[test]
    fn settings_that_cannot_work() {
        let secret = "s".repeat(crate::config::MIN_JWT_SECRET_LEN);
        let mut both = args(&["--jwt-secret", &secret]);
        both.buyer_header = Some(HeaderName::from_static("x-buyer"));
        assert!(Auth::from_args(&both)
            .unwrap_err()
            .contains("exclude each other"));
        let mut issuer_alone = args(&["--buyer-header", "x-buyer"]);
        issuer_alone.jwt_issuer = Some("me".into());
        assert!(Auth::from_args(&issuer_alone)
            .unwrap_err()
            .starts_with("--jwt-issuer needs"));
        let mut limit_alone = args(&[]);
        limit_alone.max_per_buyer = Some(1);
        assert!(Auth::from_args(&limit_alone)
            .unwrap_err()
            .starts_with("--max-per-buyer needs"));
        let short = Auth::from_args(&args(&["--jwt-secret", "too-short"])).unwrap_err();
        assert!(short.starts_with("--jwt-secret: "), "{short}");
        assert!(
            !short.contains("too-short"),
            "never echoes the secret: {short}"
        );
        let missing = Auth::from_args(&args(&["--jwt-public-key", "/nonexistent/k.pem"]));
        assert!(missing
            .unwrap_err()
            .starts_with("--jwt-public-key /nonexistent/k.pem: "));
    }
}
