//! Signed requests: Ed25519, so that no secret travels and the gateway holds
//! only public keys.
//!
//! A signing key (`workerd key issue --signing-public-key FILE`) is presented
//! by its id, never by a secret. Each request carries:
//!
//! - `X-Overwatch-Key-Id`: the key's id;
//! - `X-Overwatch-Timestamp`: Unix seconds, within `auth.signature_max_skew_secs`;
//! - `X-Overwatch-Nonce`: 16 to 64 characters of `[A-Za-z0-9_-]`, new per request;
//! - `X-Overwatch-Signature`: base64 of the Ed25519 signature of [`message`].
//!
//! The signed message binds the method, the path and query, the timestamp, the
//! nonce and the SHA-256 of the body as sent (compressed, if it is). A nonce is
//! remembered until its timestamp leaves the skew window, so a captured request
//! cannot be replayed. Why Ed25519 and not HMAC: with HMAC the gateway would
//! hold the signing key, and a leak of `api_keys` would let anyone sign.

use std::collections::HashMap;
use std::sync::Mutex;

use base64::Engine as _;
use ed25519_dalek::{Signature, VerifyingKey};
use hyper::header::HeaderMap;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::error::ApiError;

pub const KEY_ID_HEADER: &str = "x-overwatch-key-id";
pub const TIMESTAMP_HEADER: &str = "x-overwatch-timestamp";
pub const NONCE_HEADER: &str = "x-overwatch-nonce";
pub const SIGNATURE_HEADER: &str = "x-overwatch-signature";
/// First line of every signed message (the scheme and its version).
pub const SCHEME: &str = "OVERWATCH-ED25519-V1";

/// The bytes a client signs: the scheme, method, path and query, timestamp,
/// nonce and hex SHA-256 of the body, one per line, no trailing newline.
pub fn message(method: &str, path_and_query: &str, ts: &str, nonce: &str, body: &[u8]) -> String {
    message_of_digest(
        method,
        path_and_query,
        ts,
        nonce,
        &Sha256::digest(body).into(),
    )
}

/// [`message`] for a body whose SHA-256 is already known (the gateway hashes
/// a body frame by frame, as it was read, without joining it first).
pub fn message_of_digest(
    method: &str,
    path_and_query: &str,
    ts: &str,
    nonce: &str,
    body_sha256: &[u8; 32],
) -> String {
    let digest = hex::encode(body_sha256);
    format!("{SCHEME}\n{method}\n{path_and_query}\n{ts}\n{nonce}\n{digest}")
}

/// The signature headers of a request that presents a key id.
#[derive(Debug, Clone)]
pub struct Presented {
    pub key_id: Uuid,
    ts: String,
    when: i64,
    nonce: String,
    signature: Signature,
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
}

/// Two presentations are the same request when key, time, nonce and signature agree.
impl PartialEq for Presented {
    fn eq(&self, other: &Self) -> bool {
        self.key_id == other.key_id
            && self.when == other.when
            && self.nonce == other.nonce
            && self.signature == other.signature
    }
}

impl Eq for Presented {}

/// Reads the signature headers: `None` when the request presents no key id
/// (it uses a bearer key), an error when they are incomplete or malformed.
pub fn presented(headers: &HeaderMap) -> Option<Result<Presented, ApiError>> {
    let key_id = header(headers, KEY_ID_HEADER)?;
    Some(parse(headers, key_id))
}

fn parse(headers: &HeaderMap, key_id: &str) -> Result<Presented, ApiError> {
    let key_id = Uuid::try_parse(key_id)
        .map_err(|_| ApiError::Unauthorized("X-Overwatch-Key-Id must be a key id (UUID)"))?;
    let (Some(ts), Some(nonce), Some(sig)) = (
        header(headers, TIMESTAMP_HEADER),
        header(headers, NONCE_HEADER),
        header(headers, SIGNATURE_HEADER),
    ) else {
        return Err(ApiError::Unauthorized(
            "a signed request needs X-Overwatch-Timestamp, X-Overwatch-Nonce and X-Overwatch-Signature",
        ));
    };
    let when: i64 = ts
        .parse()
        .map_err(|_| ApiError::Unauthorized("X-Overwatch-Timestamp must be Unix seconds"))?;
    let nonce_ok = (16..=64).contains(&nonce.len())
        && nonce
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if !nonce_ok {
        return Err(ApiError::Unauthorized(
            "X-Overwatch-Nonce must be 16 to 64 characters of A-Z, a-z, 0-9, - and _",
        ));
    }
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(sig)
        .map_err(|_| ApiError::Unauthorized("X-Overwatch-Signature must be base64"))?;
    let signature = Signature::from_slice(&bytes)
        .map_err(|_| ApiError::Unauthorized("X-Overwatch-Signature must be 64 bytes"))?;
    Ok(Presented {
        key_id,
        ts: ts.to_string(),
        when,
        nonce: nonce.to_string(),
        signature,
    })
}

/// Nonces seen inside the skew window, bounded by `auth.replay_cache_size`.
pub struct ReplayCache {
    seen: Mutex<HashMap<(Uuid, String), i64>>,
    capacity: usize,
    skew_secs: i64,
}

impl ReplayCache {
    pub fn new(capacity: usize, skew_secs: u64) -> ReplayCache {
        ReplayCache {
            seen: Mutex::new(HashMap::new()),
            capacity,
            skew_secs: i64::try_from(skew_secs).unwrap_or(i64::MAX / 2),
        }
    }

    pub fn skew_secs(&self) -> i64 {
        self.skew_secs
    }

    /// Records a verified request's nonce; refuses one seen before. When full of
    /// live nonces the request is refused as retryable (503), never let through.
    fn remember(&self, key: Uuid, nonce: &str, when: i64, now: i64) -> Result<(), ApiError> {
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        let id = (key, nonce.to_string());
        if seen.contains_key(&id) {
            return Err(ApiError::Unauthorized(
                "this X-Overwatch-Nonce was already used: a replayed request",
            ));
        }
        if seen.len() >= self.capacity {
            seen.retain(|_, expires| *expires >= now);
            if seen.len() >= self.capacity {
                return Err(ApiError::KeysUnavailable(
                    "the replay cache is full (auth.replay_cache_size)".into(),
                ));
            }
        }
        // Forgettable once the timestamp itself would be refused.
        seen.insert(id, when + self.skew_secs);
        Ok(())
    }

    pub fn len(&self) -> usize {
        self.seen.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What a signed request is checked against.
pub struct Request<'a> {
    pub method: &'a str,
    pub path_and_query: &'a str,
    /// SHA-256 of the body as sent.
    pub body_sha256: [u8; 32],
    pub now_secs: i64,
}

/// Checks a presented signature against `public` and the request, then
/// records its nonce.
pub fn verify(
    p: &Presented,
    public: &VerifyingKey,
    req: &Request<'_>,
    replay: &ReplayCache,
) -> Result<(), ApiError> {
    if (req.now_secs - p.when).abs() > replay.skew_secs() {
        return Err(ApiError::Unauthorized(
            "X-Overwatch-Timestamp is too far from the gateway's clock (auth.signature_max_skew_secs)",
        ));
    }
    let msg = message_of_digest(
        req.method,
        req.path_and_query,
        &p.ts,
        &p.nonce,
        &req.body_sha256,
    );
    public
        .verify_strict(msg.as_bytes(), &p.signature)
        .map_err(|_| ApiError::Unauthorized("X-Overwatch-Signature does not match this request"))?;
    replay.remember(p.key_id, &p.nonce, p.when, req.now_secs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::{Signer, SigningKey};
    use hyper::header::HeaderValue;

    fn signed(key: &SigningKey, id: Uuid, ts: &str, nonce: &str, body: &[u8]) -> HeaderMap {
        let msg = message("POST", "/ingest", ts, nonce, body);
        let sig =
            base64::engine::general_purpose::STANDARD.encode(key.sign(msg.as_bytes()).to_bytes());
        let mut h = HeaderMap::new();
        for (n, v) in [
            (KEY_ID_HEADER, id.to_string()),
            (TIMESTAMP_HEADER, ts.to_string()),
            (NONCE_HEADER, nonce.to_string()),
            (SIGNATURE_HEADER, sig),
        ] {
            h.insert(n, HeaderValue::from_str(&v).expect("header"));
        }
        h
    }

    fn check(
        h: &HeaderMap,
        public: &VerifyingKey,
        body: &[u8],
        now: i64,
        cache: &ReplayCache,
    ) -> Result<(), ApiError> {
        let p = presented(h).expect("key id")?;
        let req = Request {
            method: "POST",
            path_and_query: "/ingest",
            body_sha256: Sha256::digest(body).into(),
            now_secs: now,
        };
        verify(&p, public, &req, cache)
    }

    #[test]
    fn valid_replayed_stale_forged_and_tampered() {
        let key = SigningKey::from_bytes(&[7u8; 32]);
        let public = key.verifying_key();
        let id = Uuid::new_v4();
        let body = br#"{"events":[]}"#;
        let now = 1_700_000_000;
        let cache = ReplayCache::new(10, 300);
        let h = signed(&key, id, "1700000000", "nonce-0123456789ab", body);
        assert!(check(&h, &public, body, now, &cache).is_ok());
        let replay = check(&h, &public, body, now + 1, &cache);
        assert!(matches!(replay, Err(ApiError::Unauthorized(m)) if m.contains("replayed")));
        let h2 = signed(&key, id, "1700000000", "nonce-other-012345", body);
        assert!(
            check(&h2, &public, body, now + 301, &cache).is_err(),
            "stale"
        );
        assert!(
            check(&h2, &public, b"{}", now, &cache).is_err(),
            "other body"
        );
        let other = SigningKey::from_bytes(&[8u8; 32]).verifying_key();
        assert!(check(&h2, &other, body, now, &cache).is_err(), "other key");
        assert!(
            check(&h2, &public, body, now, &cache).is_ok(),
            "still unused"
        );
        let mut short = h2.clone();
        short.insert(NONCE_HEADER, HeaderValue::from_static("short"));
        assert!(check(&short, &public, body, now, &cache).is_err());
        let mut missing = h2;
        missing.remove(SIGNATURE_HEADER);
        assert!(check(&missing, &public, body, now, &cache).is_err());
        assert!(presented(&HeaderMap::new()).is_none(), "a bearer request");
    }

    #[test]
    fn a_full_cache_refuses_as_retryable_and_forgets_expired_nonces() {
        let key = SigningKey::from_bytes(&[9u8; 32]);
        let public = key.verifying_key();
        let id = Uuid::new_v4();
        let cache = ReplayCache::new(2, 300);
        let now = 1_700_000_000;
        for n in ["aaaaaaaaaaaaaaaa", "bbbbbbbbbbbbbbbb"] {
            let h = signed(&key, id, "1700000000", n, b"x");
            check(&h, &public, b"x", now, &cache).expect("fresh");
        }
        let h = signed(&key, id, "1700000000", "cccccccccccccccc", b"x");
        assert!(matches!(
            check(&h, &public, b"x", now, &cache),
            Err(ApiError::KeysUnavailable(_))
        ));
        // Once the first two timestamps leave the window, their nonces go.
        let later = 1_700_000_400;
        let h = signed(&key, id, "1700000400", "dddddddddddddddd", b"x");
        check(&h, &public, b"x", later, &cache).expect("room again");
        assert_eq!(cache.len(), 1);
    }
}
