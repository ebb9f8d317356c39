//! Cheap reading of the few fields the load tester needs from an answer's JSON body.
//!
//! The server writes compact JSON (`{"event":"1","ticket":"1-000042","remaining":957}`), so a
//! scan for `"field":"` finds a string field without building a `serde_json::Value` per
//! response. Whitespace around the colon is tolerated, and a value with an escape falls back to
//! a full parse, so the fast path never changes the answer.

/// A string field of a top-level JSON object, e.g. `ticket` or `error`.
///
/// Returns `None` when the body has no such string field.
pub fn str_field<'a>(body: &'a [u8], field: &str) -> Option<std::borrow::Cow<'a, str>> {
    let key = field.as_bytes();
    let mut from = 0;
    while let Some(at) = find(&body[from..], key) {
        let start = from + at;
        from = start + 1;
        // The key must be a whole string: `"field"`.
        if start == 0 || body[start - 1] != b'"' {
            continue;
        }
        let mut i = start + key.len();
        if body.get(i) != Some(&b'"') {
            continue;
        }
        i += 1;
        i = skip_ws(body, i);
        if body.get(i) != Some(&b':') {
            continue;
        }
        i = skip_ws(body, i + 1);
        if body.get(i) != Some(&b'"') {
            return None;
        }
        let value_start = i + 1;
        let len = body[value_start..]
            .iter()
            .position(|&b| b == b'"' || b == b'\\')?;
        let end = value_start + len;
        if body[end] == b'\\' {
            return slow_str_field(body, field).map(std::borrow::Cow::Owned);
        }
        return std::str::from_utf8(&body[value_start..end])
            .ok()
            .map(std::borrow::Cow::Borrowed);
    }
    None
}

fn skip_ws(body: &[u8], mut i: usize) -> usize {
    while body.get(i).is_some_and(u8::is_ascii_whitespace) {
        i += 1;
    }
    i
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() || haystack.len() < needle.len() {
        return None;
    }
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn slow_str_field(body: &[u8], field: &str) -> Option<String> {
    let value: serde_json::Value = serde_json::from_slice(body).ok()?;
    value.get(field)?.as_str().map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticket_of_a_sale() {
        let body = br#"{"event":"1","ticket":"1-000042","remaining":957}"#;
        assert_eq!(str_field(body, "ticket").as_deref(), Some("1-000042"));
        assert_eq!(str_field(body, "event").as_deref(), Some("1"));
        assert_eq!(str_field(body, "error"), None);
        assert_eq!(str_field(body, "remaining"), None);
    }

    #[test]
    fn error_code() {
        let body = br#"{"error":"sold_out","event":"1"}"#;
        assert_eq!(str_field(body, "error").as_deref(), Some("sold_out"));
        assert_eq!(str_field(body, "ticket"), None);
        assert_eq!(
            str_field(br#"{"error":"unavailable","status":"not_ready"}"#, "error").as_deref(),
            Some("unavailable")
        );
    }

    #[test]
    fn spaces_and_lookalike_keys() {
        let body = br#"{ "xticket": "no", "ticket" : "gala-7" }"#;
        assert_eq!(str_field(body, "ticket").as_deref(), Some("gala-7"));
        // A value that contains the key text is not mistaken for the key.
        let body = br#"{"event":"ticket","ticket":"t-1"}"#;
        assert_eq!(str_field(body, "ticket").as_deref(), Some("t-1"));
    }

    #[test]
    fn escapes_fall_back_to_a_parser() {
        let body = br#"{"ticket":"a\"b"}"#;
        assert_eq!(str_field(body, "ticket").as_deref(), Some("a\"b"));
    }

    #[test]
    fn not_json_or_truncated() {
        assert_eq!(str_field(b"", "ticket"), None);
        assert_eq!(str_field(b"ok", "ticket"), None);
        assert_eq!(str_field(br#"{"ticket":"1-0"#, "ticket"), None);
        assert_eq!(str_field(br#"{"ticket":42}"#, "ticket"), None);
    }
}
