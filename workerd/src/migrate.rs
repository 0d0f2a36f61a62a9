//! `workerd migrate`: creates the broker topics, then applies the ClickHouse
//! schema migrations (see `shared::store::schema`). Idempotent: a second run changes nothing.

use std::time::Duration;

use shared::config::Config;
use shared::store::schema::{MigrationReport, SchemaContext};

#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error("creating topics on {brokers} failed: {source}")]
    Topics {
        brokers: String,
        #[source]
        source: shared::kafka::KafkaError,
    },
    #[error(transparent)]
    Schema(#[from] shared::store::schema::MigrationError),
}

pub async fn run(cfg: &Config) -> Result<MigrationReport, MigrateError> {
    shared::kafka::ensure_topics(
        &cfg.kafka.brokers,
        &cfg.kafka.topics(),
        cfg.kafka.partitions,
        cfg.kafka.replication_factor,
        Duration::from_secs(15),
    )
    .await
    .map_err(|source| MigrateError::Topics {
        brokers: cfg.kafka.brokers.clone(),
        source,
    })?;
    let client = shared::store::client(&cfg.clickhouse);
    let report = shared::store::schema::migrate(&client, &SchemaContext::from_config(cfg)).await?;
    Ok(report)
}
