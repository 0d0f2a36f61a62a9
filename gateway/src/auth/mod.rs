//! API-key authentication.
//!
//! Keys are `<tenant_id>:<secret>`, sent as `Authorization: Bearer <key>` or
//! `X-API-Key: <key>`. Only the SHA-256 of each secret is held, and digests are
//! compared in constant time. Keys come from `auth.keys` in the configuration.

use std::collections::HashMap;

use hyper::header::{HeaderMap, AUTHORIZATION};
use sha2::{Digest, Sha256};
use shared::config::Tier;
use uuid::Uuid;

use crate::error::ApiError;

/// Who a request's key belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Principal {
    pub tenant: Uuid,
    pub tier: Tier,
    pub anonymize_ip: bool,
}

#[derive(Debug, Default)]
pub struct KeyStore {
    by_tenant: HashMap<Uuid, Tenant>,
}

#[derive(Debug)]
struct Tenant {
    tier: Tier,
    anonymize_ip: bool,
    digests: Vec<[u8; 32]>,
}

impl KeyStore {
    pub fn from_config(keys: &[shared::config::StaticKey]) -> KeyStore {
        let mut by_tenant: HashMap<Uuid, Tenant> = HashMap::new();
        for k in keys {
            let mut digest = [0u8; 32];
            // Config validation guarantees 64 hex characters.
            for (i, chunk) in k.secret_sha256.as_bytes().chunks(2).enumerate().take(32) {
                let hex = std::str::from_utf8(chunk).unwrap_or("00");
                digest[i] = u8::from_str_radix(hex, 16).unwrap_or(0);
            }
            let t = by_tenant.entry(k.tenant_id).or_insert(Tenant {
                tier: k.tier,
                anonymize_ip: k.anonymize_ip,
                digests: Vec::new(),
            });
            t.tier = k.tier;
            t.anonymize_ip |= k.anonymize_ip;
            t.digests.push(digest);
        }
        KeyStore { by_tenant }
    }

    /// The tenant the request's key belongs to.
    pub fn authenticate(&self, headers: &HeaderMap) -> Result<Principal, ApiError> {
        let raw = key_from_headers(headers).ok_or(ApiError::Unauthorized(
            "missing API key: send `Authorization: Bearer <tenant_id>:<secret>` or `X-API-Key`",
        ))?;
        let (tenant, secret) = raw.split_once(':').ok_or(ApiError::Unauthorized(
            "malformed API key: expected <tenant_id>:<secret>",
        ))?;
        let tenant = Uuid::try_parse(tenant.trim())
            .map_err(|_| ApiError::Unauthorized("malformed API key: tenant id is not a UUID"))?;
        let digest: [u8; 32] = Sha256::digest(secret.as_bytes()).into();
        let Some(t) = self.by_tenant.get(&tenant) else {
            return Err(ApiError::Unauthorized("unknown API key"));
        };
        // Check every candidate so timing does not tell which one matched.
        let matched = t
            .digests
            .iter()
            .fold(false, |acc, k| acc | ct_eq(k, &digest));
        if matched {
            Ok(Principal {
                tenant,
                tier: t.tier,
                anonymize_ip: t.anonymize_ip,
            })
        } else {
            Err(ApiError::Unauthorized("unknown API key"))
        }
    }
}

fn key_from_headers(headers: &HeaderMap) -> Option<&str> {
    if let Some(v) = headers.get(AUTHORIZATION).and_then(|v| v.to_str().ok()) {
        let v = v.trim();
        if v.len() > 7 && v[..7].eq_ignore_ascii_case("bearer ") {
            return Some(v[7..].trim());
        }
    }
    headers
        .get("x-api-key")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
}

fn ct_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Hex SHA-256 of a secret, the form `auth.keys[].secret_sha256` takes.
pub fn hash_secret(secret: &str) -> String {
    Sha256::digest(secret.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::header::HeaderValue;

    fn store() -> KeyStore {
        KeyStore::from_config(&[shared::config::StaticKey {
            tenant_id: Uuid::nil(),
            secret_sha256: hash_secret("secret"),
            tier: Tier::Paid,
            anonymize_ip: false,
        }])
    }

    fn headers(name: &'static str, value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(name, HeaderValue::from_str(value).expect("header"));
        h
    }

    #[test]
    fn bearer_and_x_api_key_are_accepted() {
        let s = store();
        let key = "00000000-0000-0000-0000-000000000000:secret";
        let who = Some(Principal {
            tenant: Uuid::nil(),
            tier: Tier::Paid,
            anonymize_ip: false,
        });
        assert_eq!(
            s.authenticate(&headers("authorization", &format!("Bearer {key}")))
                .ok(),
            who
        );
        assert_eq!(s.authenticate(&headers("x-api-key", key)).ok(), who);
    }

    #[test]
    fn wrong_missing_or_malformed_keys_are_401() {
        let s = store();
        for h in [
            HeaderMap::new(),
            headers(
                "authorization",
                "Bearer 00000000-0000-0000-0000-000000000000:wrong",
            ),
            headers(
                "authorization",
                "Bearer 11111111-1111-1111-1111-111111111111:secret",
            ),
            headers("authorization", "Bearer nocolon"),
            headers("authorization", "Basic abc"),
        ] {
            assert!(
                matches!(s.authenticate(&h), Err(ApiError::Unauthorized(_))),
                "{h:?}"
            );
        }
    }
}
