//! `[limits]`: what one request and one event may hold.

use serde::Deserialize;

use super::check::positive;
use super::ConfigError;
use crate::event::TIME_WINDOW_CEILING;

/// Per-request and per-event limits enforced by the gateway.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    pub max_decompressed_bytes: u64,
    pub max_properties: usize,
    pub max_properties_depth: usize,
    pub max_properties_bytes: usize,
    /// Oldest client `timestamp` accepted, in hours before the arrival time;
    /// older events get 422 `timestamp_out_of_range` (see docs/api.md).
    pub max_event_age_hours: u64,
    /// Furthest a client `timestamp` may lie ahead of the arrival time.
    pub max_future_minutes: u64,
}

impl LimitsConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        positive("limits.max_decompressed_bytes", self.max_decompressed_bytes)?;
        positive(
            "limits.max_properties_depth",
            self.max_properties_depth as u64,
        )?;
        positive(
            "limits.max_properties_bytes",
            self.max_properties_bytes as u64,
        )?;
        let ceiling = TIME_WINDOW_CEILING;
        if self.max_event_age_hours == 0 || self.max_event_age_hours > ceiling.past_hours {
            return Err(ConfigError::new(
                "limits.max_event_age_hours",
                format!(
                    "must be between 1 and {} (the bound ClickHouse enforces; load older history with `workerd import`)",
                    ceiling.past_hours
                ),
            ));
        }
        if self.max_future_minutes > ceiling.future_minutes {
            return Err(ConfigError::new(
                "limits.max_future_minutes",
                format!("must be at most {}", ceiling.future_minutes),
            ));
        }
        Ok(())
    }
}
