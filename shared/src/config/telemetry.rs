//! `[telemetry]`: metric snapshots into ClickHouse, librdkafka statistics and
//! OpenTelemetry export.

use serde::Deserialize;

use super::check::fraction;
use super::ConfigError;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetryConfig {
    /// OTLP/HTTP collector base URL (e.g. `http://otel-collector:4318`); empty = off.
    pub otlp_endpoint: String,
    /// Fraction of new traces kept (0.0 … 1.0); an incoming sampled parent is honoured.
    pub sampling_ratio: f64,
    /// `service.name` of exported spans; empty = the binary's name.
    pub service_name: String,
    /// How often metrics are written into `internal_metrics` (0 = never).
    pub snapshot_interval_secs: u64,
    /// librdkafka statistics interval feeding the producer metrics (0 = off).
    pub kafka_statistics_interval_ms: u64,
}

impl TelemetryConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        fraction(
            "telemetry.sampling_ratio",
            self.sampling_ratio,
            "0.0 and 1.0",
        )?;
        let url = &self.otlp_endpoint;
        if !(url.is_empty() || url.starts_with("http://") || url.starts_with("https://")) {
            return Err(ConfigError::new(
                "telemetry.otlp_endpoint",
                "must be an http:// or https:// URL (OTLP over HTTP), or empty",
            ));
        }
        Ok(())
    }
}
