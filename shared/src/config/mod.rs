//! Layered, strict configuration of both binaries, one file per section.
//!
//! Layers, later wins: `config/default.toml` (compiled in) → the file passed with
//! `--config` → environment variables `OVERWATCH__SECTION__KEY` ([`layers`]).
//! Unknown keys are rejected; each section checks its own values beside its
//! fields, and [`Config::validate`] adds the checks that span sections. Every
//! error names the offending key, so `main` prints it and exits with
//! [`Exit::Config`](crate::runtime::exit::Exit::Config).
//!
//! Components take only the sections they use; the binaries' assembly is
//! the one place that hands a whole `Config` around.

mod auth;
mod check;
mod clickhouse;
mod cold_storage;
mod enrichment;
mod gateway;
mod jobs;
mod kafka;
mod layers;
mod limits;
mod log;
mod notifications;
mod rate_limits;
mod secret;
mod telemetry;
mod tiers;
mod workerd;

use std::path::Path;

use serde::Deserialize;

pub use auth::{AuthConfig, StaticKey};
pub use check::parse_net;
pub use clickhouse::ClickHouseConfig;
pub use cold_storage::{ColdStorageConfig, LocalColdStorage, S3ColdStorage};
pub use enrichment::EnrichmentConfig;
pub use gateway::{AllocatorConfig, ForwardedHeader, GatewayConfig};
pub use jobs::{JobsConfig, Schedule};
pub use kafka::{Compression, KafkaConfig, PartitionKey, TopicLayout};
pub use limits::LimitsConfig;
pub use log::{LogConfig, LogFormat};
pub use notifications::{
    ChannelConfig, EmailChannel, HookChannel, LogChannel, NotificationsConfig, SmtpTls,
    WebhookChannel,
};
pub use rate_limits::{RateLimitsConfig, RateOverride};
pub use secret::Secret;
pub use telemetry::TelemetryConfig;
pub use tiers::{TierConfig, TiersConfig};
pub use workerd::WorkerdConfig;

use crate::runtime::exit::Exit;

/// Prefix of environment overrides; sections and keys are separated by `__`.
pub const ENV_PREFIX: &str = "OVERWATCH__";

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub gateway: GatewayConfig,
    pub limits: LimitsConfig,
    pub tiers: TiersConfig,
    pub rate_limits: RateLimitsConfig,
    pub enrichment: EnrichmentConfig,
    pub jobs: JobsConfig,
    pub notifications: NotificationsConfig,
    pub kafka: KafkaConfig,
    pub clickhouse: ClickHouseConfig,
    pub workerd: WorkerdConfig,
    pub auth: AuthConfig,
    pub log: LogConfig,
    pub telemetry: TelemetryConfig,
    pub cold_storage: ColdStorageConfig,
}

/// A configuration error; `key` is the dotted path of the offending setting.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("configuration error at `{key}`: {message}")]
pub struct ConfigError {
    pub key: String,
    pub message: String,
}

impl ConfigError {
    pub fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError {
            key: key.into(),
            message: message.into(),
        }
    }
}

impl Config {
    /// Loads defaults, then `file` (if any), then `OVERWATCH__*` variables of the
    /// process environment, and validates the result.
    pub fn load(file: Option<&Path>) -> Result<Config, ConfigError> {
        Self::load_from(file, std::env::vars())
    }

    /// [`Config::load`] for a binary's `main`: on error prints `<bin>: <error>`
    /// (which names the key) and gives the exit status to end with.
    pub fn load_or_exit(bin: &str, file: Option<&Path>) -> Result<Config, Exit> {
        Self::load(file).map_err(|e| {
            eprintln!("{bin}: {e}");
            Exit::Config
        })
    }

    /// As [`Config::load`], with the environment given explicitly (for tests).
    pub fn load_from(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let root = layers::merged(file, env)?;
        let config: Config =
            serde_path_to_error::deserialize(toml::Value::Table(root)).map_err(|e| {
                let path = e.path().to_string();
                let inner = e.into_inner().to_string();
                // toml appends "in `section`" on a second line; the key says it already.
                let inner = inner.lines().next().unwrap_or_default().to_string();
                let key = layers::unknown_field_key(&path, &inner).unwrap_or(path);
                ConfigError::new(key, inner)
            })?;
        config.validate()?;
        Ok(config)
    }

    /// Each section's checks, then those that span sections.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let batch = self.gateway.max_events_per_batch as u64;
        self.gateway.validate()?;
        self.limits.validate()?;
        self.tiers.validate(batch)?;
        self.rate_limits.validate(batch)?;
        self.enrichment.validate()?;
        self.jobs.validate()?;
        self.notifications.validate()?;
        self.kafka.validate()?;
        self.clickhouse.validate()?;
        self.workerd.validate()?;
        self.auth.validate()?;
        self.log.validate()?;
        self.telemetry.validate()?;
        self.cold_storage.validate()?;
        if self.limits.max_decompressed_bytes < self.gateway.max_body_bytes {
            return Err(ConfigError::new(
                "limits.max_decompressed_bytes",
                "must be at least gateway.max_body_bytes",
            ));
        }
        if !self.clickhouse.cluster.is_empty()
            && self.kafka.partition_key == kafka::PartitionKey::RoundRobin
        {
            return Err(ConfigError::new(
                "kafka.partition_key",
                "must be \"tenant\" or \"session\" with clickhouse.cluster: round-robin \
                 partitions would put a retried event on another shard than its first copy, \
                 where FINAL cannot collapse them",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
