//! `[tiers.*]`: rate limits, retention and quota of each service tier.

use serde::Deserialize;

use super::check::{burst, positive, rate};
use super::ConfigError;
use crate::domain::Tier;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TiersConfig {
    pub free: TierConfig,
    pub paid: TierConfig,
    pub enterprise: TierConfig,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TierConfig {
    pub events_per_second: f64,
    pub burst: u64,
    pub retention_hours: u64,
    pub rollup_retention_days: u64,
    pub monthly_event_quota: u64,
}

impl TiersConfig {
    pub fn get(&self, tier: Tier) -> &TierConfig {
        match tier {
            Tier::Free => &self.free,
            Tier::Paid => &self.paid,
            Tier::Enterprise => &self.enterprise,
        }
    }

    /// `batch`: `gateway.max_events_per_batch`, which every bucket must hold.
    pub fn validate(&self, batch: u64) -> Result<(), ConfigError> {
        for tier in Tier::ALL {
            let t = self.get(tier);
            let name = tier.as_str();
            rate(
                &format!("tiers.{name}.events_per_second"),
                t.events_per_second,
            )?;
            burst(&format!("tiers.{name}.burst"), t.burst, batch)?;
            positive(&format!("tiers.{name}.retention_hours"), t.retention_hours)?;
            positive(
                &format!("tiers.{name}.rollup_retention_days"),
                t.rollup_retention_days,
            )?;
        }
        Ok(())
    }
}
