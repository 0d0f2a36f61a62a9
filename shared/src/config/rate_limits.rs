//! `[rate_limits]`: the gateway-wide bucket, per-tenant overrides, and how many
//! tenants' buckets are kept.

use serde::Deserialize;

use super::check::{burst, positive, rate};
use super::ConfigError;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitsConfig {
    pub global_events_per_second: f64,
    pub global_burst: u64,
    pub max_tenants: usize,
    pub overrides: Vec<RateOverride>,
    /// How often replicas share their tenants' demand through ClickHouse so
    /// that together they admit each tenant's rate (0: each replica enforces
    /// the whole rate alone).
    pub cluster_sync_interval_ms: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateOverride {
    pub tenant_id: uuid::Uuid,
    pub events_per_second: f64,
    pub burst: u64,
}

impl RateLimitsConfig {
    /// `batch`: `gateway.max_events_per_batch`, which every bucket must hold.
    pub fn validate(&self, batch: u64) -> Result<(), ConfigError> {
        if self.global_events_per_second != 0.0 || self.global_burst != 0 {
            rate(
                "rate_limits.global_events_per_second",
                self.global_events_per_second,
            )?;
            burst("rate_limits.global_burst", self.global_burst, batch)?;
        }
        positive("rate_limits.max_tenants", self.max_tenants as u64)?;
        if self.cluster_sync_interval_ms != 0 && self.cluster_sync_interval_ms < 100 {
            return Err(ConfigError::new(
                "rate_limits.cluster_sync_interval_ms",
                "must be at least 100 (ms), or 0 for per-replica limits",
            ));
        }
        for (i, o) in self.overrides.iter().enumerate() {
            rate(
                &format!("rate_limits.overrides[{i}].events_per_second"),
                o.events_per_second,
            )?;
            burst(&format!("rate_limits.overrides[{i}].burst"), o.burst, batch)?;
        }
        Ok(())
    }
}
