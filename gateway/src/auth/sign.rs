//! Optional request signing for server SDKs.
//!
//! A key issued with `--require-signature` must send `X-Overwatch-Timestamp`
//! (Unix seconds) and `X-Overwatch-Signature`: the hex HMAC-SHA256 of
//! `"<timestamp>.<raw request body>"`. The HMAC key is the SHA-256 of the key's
//! secret (the gateway never stores the secret itself), so a client computes
//! `hmac_sha256(sha256(secret), timestamp + "." + body)`. Requests more than
//! [`MAX_SKEW_SECS`] away from the gateway's clock are refused as replays.

use hmac::{Hmac, Mac};
use hyper::header::HeaderMap;
use sha2::Sha256;

use crate::error::ApiError;

pub const TIMESTAMP_HEADER: &str = "x-overwatch-timestamp";
pub const SIGNATURE_HEADER: &str = "x-overwatch-signature";
/// Largest accepted distance between the request's timestamp and the gateway's clock.
pub const MAX_SKEW_SECS: i64 = 300;

fn mac(key: &[u8; 32], timestamp: &str, body: &[u8]) -> Hmac<Sha256> {
    // HMAC accepts keys of any length; this cannot fail.
    let mut m = <Hmac<Sha256> as Mac>::new_from_slice(key).unwrap_or_else(|_| unreachable!());
    m.update(timestamp.as_bytes());
    m.update(b".");
    m.update(body);
    m
}

/// The signature a client sends (hex).
pub fn sign(key: &[u8; 32], timestamp: &str, body: &[u8]) -> String {
    hex::encode(mac(key, timestamp, body).finalize().into_bytes())
}

/// Checks the signature headers against the raw body.
pub fn verify(
    headers: &HeaderMap,
    body: &[u8],
    key: &[u8; 32],
    now_secs: i64,
) -> Result<(), ApiError> {
    let header = |name| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    };
    let (Some(ts), Some(sig)) = (header(TIMESTAMP_HEADER), header(SIGNATURE_HEADER)) else {
        return Err(ApiError::Unauthorized(
            "this key requires X-Overwatch-Timestamp and X-Overwatch-Signature",
        ));
    };
    let when: i64 = ts
        .parse()
        .map_err(|_| ApiError::Unauthorized("X-Overwatch-Timestamp must be Unix seconds"))?;
    if (now_secs - when).abs() > MAX_SKEW_SECS {
        return Err(ApiError::Unauthorized(
            "X-Overwatch-Timestamp is more than 5 minutes from the gateway's clock",
        ));
    }
    let sig = hex::decode(sig)
        .map_err(|_| ApiError::Unauthorized("X-Overwatch-Signature must be hex"))?;
    mac(key, ts, body)
        .verify_slice(&sig)
        .map_err(|_| ApiError::Unauthorized("X-Overwatch-Signature does not match the body"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::header::HeaderValue;

    fn headers(ts: &str, sig: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(TIMESTAMP_HEADER, HeaderValue::from_str(ts).expect("ts"));
        h.insert(SIGNATURE_HEADER, HeaderValue::from_str(sig).expect("sig"));
        h
    }

    #[test]
    fn valid_stale_forged_and_missing() {
        let key = [7u8; 32];
        let body = br#"{"events":[]}"#;
        let now = 1_700_000_000;
        let good = sign(&key, "1700000000", body);
        assert!(verify(&headers("1700000000", &good), body, &key, now).is_ok());
        assert!(verify(&headers("1700000000", &good), body, &key, now + 299).is_ok());
        let stale = verify(&headers("1700000000", &good), body, &key, now + 301);
        assert!(matches!(stale, Err(ApiError::Unauthorized(m)) if m.contains("5 minutes")));
        assert!(
            verify(&headers("1700000000", &good), b"{}", &key, now).is_err(),
            "other body"
        );
        assert!(
            verify(&headers("1700000000", &good), body, &[8u8; 32], now).is_err(),
            "other key"
        );
        assert!(verify(&HeaderMap::new(), body, &key, now).is_err());
    }
}
