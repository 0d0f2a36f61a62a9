//! `[clickhouse]`: the server both binaries talk to and how it reads the broker.

use serde::Deserialize;

use super::check::{http_url, identifier, not_blank};
use super::{ConfigError, Secret};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClickHouseConfig {
    pub url: String,
    pub database: String,
    pub user: String,
    pub password: Secret,
    /// The brokers as ClickHouse's Kafka engine reaches them.
    pub kafka_brokers: String,
    pub kafka_group: String,
    /// A cluster (as named in the servers' `remote_servers`) to create the
    /// schema on: `ON CLUSTER` migrations, replicated and distributed tables
    /// (`shared::store::schema::cluster`). Empty: one server.
    pub cluster: String,
}

impl ClickHouseConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        http_url("clickhouse.url", &self.url)?;
        identifier("clickhouse.database", &self.database)?;
        not_blank("clickhouse.user", &self.user)?;
        not_blank("clickhouse.kafka_brokers", &self.kafka_brokers)?;
        not_blank("clickhouse.kafka_group", &self.kafka_group)?;
        if !self.cluster.is_empty() {
            identifier("clickhouse.cluster", &self.cluster)?;
        }
        Ok(())
    }
}
