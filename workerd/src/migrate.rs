//! `workerd migrate`: creates the broker topics, then applies the ClickHouse
//! schema migrations (see `shared::store::schema`). Idempotent: a second run changes nothing.

use std::time::Duration;

use shared::config::{ClickHouseConfig, KafkaConfig};
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

/// The topics of `[kafka]` on its brokers, then the schema in `[clickhouse]`.
pub async fn run(
    kafka: &KafkaConfig,
    clickhouse: &ClickHouseConfig,
) -> Result<MigrationReport, MigrateError> {
    shared::kafka::ensure_topics(
        &kafka.brokers,
        &kafka.topics(),
        kafka.partitions,
        kafka.replication_factor,
        Duration::from_secs(15),
    )
    .await
    .map_err(|source| MigrateError::Topics {
        brokers: kafka.brokers.clone(),
        source,
    })?;
    let client = shared::store::client(clickhouse);
    let ctx = SchemaContext::new(clickhouse, kafka);
    Ok(shared::store::schema::migrate(&client, &ctx).await?)
}
