//! The `Idempotency-Key` request header (IETF httpapi draft "The Idempotency-Key HTTP Header
//! Field"): a client names a purchase, so that a retry of it is answered, not sold again.
//!
//! The value is an RFC 8941 structured-field String: printable ASCII (0x20-0x7E) inside double
//! quotes, with `\"` and `\\` as the only escapes, e.g. `Idempotency-Key: "8e03978e-40d5"`.
//! The key is the unescaped content, 1 to [`MAX_IDEMPOTENCY_KEY_LEN`] characters of it (counted
//! after unescaping). Refused with `400 bad_idempotency_key`: anything else, including an empty
//! string, parameters after the string (`"k";a=1`), a bare token (`k`), or several
//! `Idempotency-Key` headers (the same request cannot have two names).

use http::header::{HeaderName, HeaderValue};
use http::HeaderMap;

use crate::error::ApiError;

/// The header's name.
pub const IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");

/// Longest key, in characters of the unescaped content.
pub const MAX_IDEMPOTENCY_KEY_LEN: usize = 255;

/// A client's name for one purchase: the unescaped content of the header's string, 1 to
/// [`MAX_IDEMPOTENCY_KEY_LEN`] printable ASCII characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct IdempotencyKey(Box<str>);

impl IdempotencyKey {
    /// The key (unescaped).
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The key, owned (no copy).
    pub fn into_inner(self) -> Box<str> {
        self.0
    }

    /// Parses one header value (an RFC 8941 String, surrounding spaces allowed).
    pub fn parse(value: &[u8]) -> Option<IdempotencyKey> {
        parse_sf_string(value).map(IdempotencyKey)
    }
}

/// The request's idempotency key: `Ok(None)` without the header.
///
/// # Errors
/// [`ApiError::BadIdempotencyKey`] for a malformed value or several headers.
pub fn idempotency_key(headers: &HeaderMap) -> Result<Option<IdempotencyKey>, ApiError> {
    let mut all = headers.get_all(&IDEMPOTENCY_KEY).iter();
    let Some(value) = all.next() else {
        return Ok(None);
    };
    if all.next().is_some() {
        return Err(ApiError::BadIdempotencyKey);
    }
    IdempotencyKey::parse(value.as_bytes())
        .map(Some)
        .ok_or(ApiError::BadIdempotencyKey)
}

/// The header value that carries `key` (quoted and escaped), as a client sends it.
///
/// # Panics
/// When `key` holds a character outside printable ASCII (a key that [`IdempotencyKey::parse`]
/// would never give back).
pub fn header_value(key: &str) -> HeaderValue {
    let mut out = Vec::with_capacity(key.len() + 2);
    out.push(b'"');
    for b in key.bytes() {
        assert!((0x20..=0x7e).contains(&b), "a key is printable ASCII");
        if b == b'"' || b == b'\\' {
            out.push(b'\\');
        }
        out.push(b);
    }
    out.push(b'"');
    HeaderValue::from_bytes(&out).expect("printable ASCII is a valid header value")
}

/// RFC 8941, sections 4.2 and 4.2.5, for an Item that must be a bare String: the content,
/// unescaped, if it is 1 to [`MAX_IDEMPOTENCY_KEY_LEN`] characters.
fn parse_sf_string(value: &[u8]) -> Option<Box<str>> {
    let value = trim_sp(value);
    let inner = value.strip_prefix(b"\"")?;
    let mut escaped = false;
    let mut i = 0;
    let end = loop {
        match *inner.get(i)? {
            b'\\' => {
                // The escaped byte must be `"` or `\`.
                if !matches!(inner.get(i + 1), Some(b'"' | b'\\')) {
                    return None;
                }
                escaped = true;
                i += 2;
            }
            b'"' => break i,
            0x20..=0x7e => i += 1,
            _ => return None,
        }
    };
    if end + 1 != inner.len() {
        return None; // parameters or anything else after the string
    }
    let content = &inner[..end];
    let key: Box<str> = if escaped {
        let mut out = String::with_capacity(content.len());
        let mut bytes = content.iter();
        while let Some(&b) = bytes.next() {
            let b = if b == b'\\' {
                *bytes.next().expect("checked above: an escape has its byte")
            } else {
                b
            };
            out.push(char::from(b));
        }
        out.into_boxed_str()
    } else {
        std::str::from_utf8(content)
            .expect("checked above: printable ASCII")
            .into()
    };
    (1..=MAX_IDEMPOTENCY_KEY_LEN)
        .contains(&key.len())
        .then_some(key)
}

fn trim_sp(mut v: &[u8]) -> &[u8] {
    while let [b' ', rest @ ..] = v {
        v = rest;
    }
    while let [rest @ .., b' '] = v {
        v = rest;
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn key(v: &str) -> Option<String> {
        IdempotencyKey::parse(v.as_bytes()).map(|k| k.as_str().to_owned())
    }

    #[test]
    fn valid_keys() {
        assert_eq!(
            key(r#""8e03978e-40d5-43e8""#).as_deref(),
            Some("8e03978e-40d5-43e8")
        );
        assert_eq!(key(r#"  "a b"  "#).as_deref(), Some("a b"));
        assert_eq!(key(r#""say \"hi\"""#).as_deref(), Some(r#"say "hi""#));
        assert_eq!(key(r#""back\\slash""#).as_deref(), Some(r"back\slash"));
        assert_eq!(key(r#""\\""#).as_deref(), Some(r"\"));
        assert_eq!(key(r#""a\\b""#).as_deref(), Some(r"a\b"));
        assert_eq!(key(r#""\\\"""#).as_deref(), Some(r#"\""#));
        assert_eq!(
            key(r#""~!#$%&'()*+,-./:;<=>?@[]^_`{|}""#).as_deref(),
            Some("~!#$%&'()*+,-./:;<=>?@[]^_`{|}")
        );
        let longest = format!("\"{}\"", "k".repeat(MAX_IDEMPOTENCY_KEY_LEN));
        assert_eq!(
            key(&longest).map(|k| k.len()),
            Some(MAX_IDEMPOTENCY_KEY_LEN)
        );
        // The limit counts unescaped characters: 255 escaped quotes are 510 bytes on the wire.
        let escaped = format!("\"{}\"", r#"\""#.repeat(MAX_IDEMPOTENCY_KEY_LEN));
        assert_eq!(
            key(&escaped).map(|k| k.len()),
            Some(MAX_IDEMPOTENCY_KEY_LEN)
        );
    }

    #[test]
    fn malformed_keys() {
        for bad in [
            "",
            "\"\"",
            "abc",
            "\"abc",
            "abc\"",
            "\"abc\";ttl=1",
            "\"a\" \"b\"",
            "\"a\", \"b\"",
            "\"a\\b\"",
            "\"a\\\"",
            "\"tab\there\"",
            "\t\"a\"",
            ":YWJj:",
            "42",
        ] {
            assert_eq!(key(bad), None, "{bad:?}");
        }
        assert_eq!(IdempotencyKey::parse(b"\"caf\xc3\xa9\""), None, "non-ASCII");
        let too_long = format!("\"{}\"", "k".repeat(MAX_IDEMPOTENCY_KEY_LEN + 1));
        assert_eq!(key(&too_long), None);
    }

    #[test]
    fn from_headers() {
        let mut headers = HeaderMap::new();
        assert_eq!(idempotency_key(&headers).unwrap(), None);
        headers.insert("idempotency-key", HeaderValue::from_static("\"k-1\""));
        assert_eq!(idempotency_key(&headers).unwrap().unwrap().as_str(), "k-1");
        headers.append("idempotency-key", HeaderValue::from_static("\"k-1\""));
        assert!(matches!(
            idempotency_key(&headers),
            Err(ApiError::BadIdempotencyKey)
        ));
        let mut bare = HeaderMap::new();
        bare.insert("idempotency-key", HeaderValue::from_static("k-1"));
        assert!(matches!(
            idempotency_key(&bare),
            Err(ApiError::BadIdempotencyKey)
        ));
    }

    proptest! {
        #[test]
        fn every_key_round_trips(content in "[ -~]{1,255}") {
            let value = header_value(&content);
            let parsed = IdempotencyKey::parse(value.as_bytes()).expect("a quoted key parses");
            prop_assert_eq!(parsed.as_str(), content.as_str());
        }

        #[test]
        fn longer_keys_are_refused(content in "[ -~]{256,400}") {
            prop_assert!(IdempotencyKey::parse(header_value(&content).as_bytes()).is_none());
        }

        #[test]
        fn any_bytes_give_a_printable_key_or_nothing(
            // Quotes, escapes, spaces and a few others, so that many inputs are keys.
            bytes in proptest::collection::vec(
                prop::sample::select(b" \"\\a~;=\t\x7f\xc3".to_vec()),
                0..24,
            )
        ) {
            if let Some(k) = IdempotencyKey::parse(&bytes) {
                prop_assert!((1..=MAX_IDEMPOTENCY_KEY_LEN).contains(&k.as_str().len()));
                prop_assert!(k.as_str().bytes().all(|b| (0x20..=0x7e).contains(&b)));
                // Whatever parsed is exactly what a client would have sent for it.
                let sent = header_value(k.as_str());
                prop_assert_eq!(sent.as_bytes(), trim_sp(&bytes));
            }
        }
    }
}
