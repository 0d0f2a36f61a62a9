//! `[auth]`: keys from configuration, the ClickHouse key snapshot and how long
//! it is trusted, and signed requests' clock skew and replay memory.

use serde::Deserialize;

use super::check::positive;
use super::ConfigError;
use crate::domain::Tier;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    pub keys: Vec<StaticKey>,
    pub clickhouse_keys: bool,
    pub refresh_interval_ms: u64,
    /// A ClickHouse key snapshot older than this (no reload succeeded) is no
    /// longer trusted: keys that cannot be judged get 503, readiness says why.
    pub max_snapshot_age_ms: u64,
    /// Largest distance between a signed request's timestamp and the clock.
    pub signature_max_skew_secs: u64,
    /// Nonces of signed requests remembered (across the skew window) to refuse replays.
    pub replay_cache_size: usize,
}

/// An API key from configuration. Only the SHA-256 of the secret is stored.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StaticKey {
    pub tenant_id: uuid::Uuid,
    pub secret_sha256: String,
    #[serde(default)]
    pub tier: Tier,
    #[serde(default)]
    pub anonymize_ip: bool,
}

impl AuthConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        positive("auth.refresh_interval_ms", self.refresh_interval_ms)?;
        if self.clickhouse_keys && self.max_snapshot_age_ms < 2 * self.refresh_interval_ms {
            return Err(ConfigError::new(
                "auth.max_snapshot_age_ms",
                "must be at least twice auth.refresh_interval_ms, or one slow reload fails every key",
            ));
        }
        positive("auth.signature_max_skew_secs", self.signature_max_skew_secs)?;
        positive("auth.replay_cache_size", self.replay_cache_size as u64)?;
        for (i, key) in self.keys.iter().enumerate() {
            let s = &key.secret_sha256;
            if s.len() != 64 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(ConfigError::new(
                    format!("auth.keys[{i}].secret_sha256"),
                    "must be 64 hexadecimal characters (the SHA-256 of the secret)",
                ));
            }
            if let Some(other) = self.keys[..i]
                .iter()
                .find(|k| k.tenant_id == key.tenant_id && k.tier != key.tier)
            {
                return Err(ConfigError::new(
                    format!("auth.keys[{i}].tier"),
                    format!(
                        "tenant {} already has tier {} from an earlier key: a tenant has one tier",
                        key.tenant_id,
                        other.tier.as_str()
                    ),
                ));
            }
        }
        Ok(())
    }
}
