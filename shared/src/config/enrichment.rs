//! `[enrichment]`: the GeoIP database, the user-agent cache and its per-request
//! parse budget, and the bot patterns.

use serde::Deserialize;

use super::check::{positive, readable_file};
use super::ConfigError;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnrichmentConfig {
    pub geoip_db: String,
    pub ua_cache_size: usize,
    pub bot_patterns: Vec<String>,
    /// User agents parsed (cache misses) per request; further events keep their
    /// `user_agent` and are enriched later by workerd's enrichment job.
    pub max_ua_parses_per_request: usize,
}

impl EnrichmentConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        positive("enrichment.ua_cache_size", self.ua_cache_size as u64)?;
        for (i, pattern) in self.bot_patterns.iter().enumerate() {
            if let Err(err) = regex::Regex::new(pattern) {
                return Err(ConfigError::new(
                    format!("enrichment.bot_patterns[{i}]"),
                    format!("not a valid regular expression: {err}"),
                ));
            }
        }
        if !self.geoip_db.is_empty() {
            readable_file("enrichment.geoip_db", &self.geoip_db)?;
        }
        Ok(())
    }
}
