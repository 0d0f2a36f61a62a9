//! Where a request presents its key: `Authorization: Bearer`, `X-API-Key`,
//! `Authorization: Basic` (how Segment's SDKs send their write key: the key as
//! the user, with or without a password; or the tenant id as user and the
//! secret as password), or
//! (browser keys, for `sendBeacon`, which cannot set headers) the `api_key`
//! query parameter, percent-decoded as browsers encode it
//! (`encodeURIComponent` turns the key's `:` into `%3A`).

use std::borrow::Cow;

use hyper::header::{HeaderMap, AUTHORIZATION};

/// The key a request presents, and where it came from.
pub(super) struct Presented<'a> {
    pub raw: Cow<'a, str>,
    pub from_query: bool,
}

pub(super) fn presented_key<'a>(
    headers: &'a HeaderMap,
    query: Option<&'a str>,
) -> Option<Presented<'a>> {
    if let Some(v) = headers.get(AUTHORIZATION).and_then(|v| v.to_str().ok()) {
        let v = v.trim();
        if v.len() > 7 && v[..7].eq_ignore_ascii_case("bearer ") {
            return Some(Presented {
                raw: Cow::Borrowed(v[7..].trim()),
                from_query: false,
            });
        }
        if v.len() > 6 && v[..6].eq_ignore_ascii_case("basic ") {
            return basic(v[6..].trim()).map(|raw| Presented {
                raw: Cow::Owned(raw),
                from_query: false,
            });
        }
    }
    if let Some(v) = headers.get("x-api-key").and_then(|v| v.to_str().ok()) {
        return Some(Presented {
            raw: Cow::Borrowed(v.trim()),
            from_query: false,
        });
    }
    query_param(query?, "api_key").map(|raw| Presented {
        raw,
        from_query: true,
    })
}

/// The key in HTTP Basic credentials: `base64(user:password)` decodes to
/// `<key>:` (Segment: write key as user, no password) or `<tenant>:<secret>`
/// (tenant as user, secret as password); both give `<tenant>:<secret>`.
fn basic(b64: &str) -> Option<String> {
    use base64::Engine as _;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .ok()
        .filter(|b| b.len() <= 512)?;
    let text = String::from_utf8(bytes).ok()?;
    Some(text.strip_suffix(':').unwrap_or(&text).to_string())
}

/// The first value of `name` in a query string, decoded as a form field
/// (`%XX` escapes, `+` for a space). A value that does not decode to UTF-8 is
/// passed on as written, to be refused as a malformed key.
pub(crate) fn query_param<'a>(query: &'a str, name: &str) -> Option<Cow<'a, str>> {
    query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(k, _)| form_decode(k) == name)
        .map(|(_, v)| form_decode(v))
}

/// A form field or query value decoded (`%XX` escapes, `+` for a space); a
/// value that does not decode to UTF-8 is returned as written.
pub(crate) fn form_decode(s: &str) -> Cow<'_, str> {
    if !s.contains(['%', '+']) {
        return Cow::Borrowed(s);
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => match (hex(b[i + 1]), hex(b[i + 2])) {
                (Some(high), Some(low)) => {
                    out.push(high << 4 | low);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            c => out.push(c),
        }
        i += 1;
    }
    match String::from_utf8(out) {
        Ok(decoded) => Cow::Owned(decoded),
        Err(_) => Cow::Borrowed(s),
    }
}

fn hex(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn browser_encoded_keys_decode() {
        let key = "6f1c2d3e-0000-4000-8000-000000000001:0123abcd";
        // encodeURIComponent(key)
        let q = "beacon=1&api_key=6f1c2d3e-0000-4000-8000-000000000001%3A0123abcd";
        assert_eq!(query_param(q, "api_key").as_deref(), Some(key));
        assert_eq!(
            query_param(&format!("api_key={key}"), "api_key").as_deref(),
            Some(key)
        );
        assert_eq!(
            query_param("api%5Fkey=a%3ab", "api_key").as_deref(),
            Some("a:b")
        );
        assert_eq!(query_param("x=1", "api_key"), None);
        assert_eq!(query_param("a=b+c%20d", "a").as_deref(), Some("b c d"));
    }

    #[test]
    fn basic_credentials_carry_the_key_either_way() {
        use base64::Engine as _;
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        let key = "6f1c2d3e-0000-4000-8000-000000000001:0123abcd";
        let mut h = HeaderMap::new();
        for creds in [format!("{key}:"), key.to_string()] {
            h.insert(
                AUTHORIZATION,
                format!("Basic {}", b64(&creds)).parse().expect("header"),
            );
            let p = presented_key(&h, None).expect("presented");
            assert_eq!((p.raw.as_ref(), p.from_query), (key, false));
        }
        h.insert(AUTHORIZATION, "Basic !!!".parse().expect("header"));
        assert!(
            presented_key(&h, None).is_none(),
            "undecodable: no key presented"
        );
    }

    #[test]
    fn broken_escapes_are_kept_as_written() {
        assert_eq!(query_param("k=%3", "k").as_deref(), Some("%3"));
        assert_eq!(query_param("k=%zz", "k").as_deref(), Some("%zz"));
        assert_eq!(query_param("k=%ff%fe", "k").as_deref(), Some("%ff%fe"));
        assert_eq!(query_param("k=ab%", "k").as_deref(), Some("ab%"));
    }
}
