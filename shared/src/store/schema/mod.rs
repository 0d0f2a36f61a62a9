//! ClickHouse schema: versioned, idempotent migrations.
//!
//! Each [`Migration`] has a number and a list of statements rendered from the
//! configuration (database, broker list, topics, consumer group). Applied versions
//! are recorded in `<db>.schema_migrations`; running [`migrate`] again applies
//! only what is missing, and every statement is itself `IF NOT EXISTS`, so a run
//! interrupted between a statement and its record is safe to repeat.
//!
//! Data path: the Kafka engine table `events_queue` reads the events topics of
//! both layouts (`events` and every `events_<type>`, see
//! [`crate::config::TopicLayout`]) as JSONEachRow (newline-separated
//! [`crate::event::EventRow`]s per message); its one view `events_queue_mv`
//! copies each block into the Null table `events_stream` (migration 16, see
//! `stream`), and the materialized
//! view `events_mv` writes each block into `events`, a ReplacingMergeTree ordered
//! by `(tenant_id, type, timestamp, id)`: a client retry carries the same id and the
//! same client timestamp and collapses into one row (query with `FINAL` for exact
//! counts before background merges run).

pub mod cluster;
mod columns;
mod durability;
mod migrations;
mod stream;

use std::collections::BTreeSet;

use crate::config::{ClickHouseConfig, KafkaConfig};
use crate::store::{ident, Db};

pub use migrations::MIGRATIONS;

/// Values the migration statements are rendered with.
#[derive(Debug, Clone)]
pub struct SchemaContext {
    pub database: String,
    pub kafka_brokers: String,
    pub kafka_group: String,
    pub topics: Vec<String>,
    /// `clickhouse.cluster`; `None`: one server.
    pub cluster: Option<String>,
}

impl SchemaContext {
    /// The database and how ClickHouse reads the broker (`[clickhouse]`), and
    /// the topics (`[kafka]`).
    pub fn new(clickhouse: &ClickHouseConfig, kafka: &KafkaConfig) -> Self {
        SchemaContext {
            database: clickhouse.database.clone(),
            kafka_brokers: clickhouse.kafka_brokers.clone(),
            kafka_group: clickhouse.kafka_group.clone(),
            topics: kafka.topics(),
            cluster: (!clickhouse.cluster.is_empty()).then(|| clickhouse.cluster.clone()),
        }
    }

    /// `statements` as they run here: rewritten for the cluster, if any.
    pub fn render(&self, statements: Vec<String>) -> Vec<String> {
        match &self.cluster {
            None => statements,
            Some(c) => statements
                .iter()
                .flat_map(|s| cluster::adapt(s, &self.database, c))
                .collect(),
        }
    }

    /// The database and the migration log, before any migration.
    pub fn bootstrap(&self) -> Vec<String> {
        self.render(vec![
            format!("CREATE DATABASE IF NOT EXISTS {}", ident(&self.database)),
            format!(
                "CREATE TABLE IF NOT EXISTS {} (version UInt32, name String, \
                 applied_at DateTime64(3, 'UTC')) ENGINE = ReplacingMergeTree ORDER BY version",
                self.table("schema_migrations")
            ),
        ])
    }

    /// Every statement of every migration, in order, as it runs here.
    pub fn all_statements(&self) -> Vec<(u32, String)> {
        let mut out: Vec<(u32, String)> = self.bootstrap().into_iter().map(|s| (0, s)).collect();
        for m in MIGRATIONS {
            out.extend(
                self.render((m.statements)(self))
                    .into_iter()
                    .map(|s| (m.version, s)),
            );
        }
        out
    }

    fn table(&self, name: &str) -> String {
        Db::new(&self.database).table(name)
    }
}

pub struct Migration {
    pub version: u32,
    pub name: &'static str,
    pub statements: fn(&SchemaContext) -> Vec<String>,
}

/// What a [`migrate`] run did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MigrationReport {
    pub applied: Vec<u32>,
    pub already: Vec<u32>,
}

#[derive(Debug, thiserror::Error)]
#[error("migration {version} ({name}) failed: {source}")]
pub struct MigrationError {
    pub version: u32,
    pub name: &'static str,
    #[source]
    pub source: clickhouse::error::Error,
}

/// Applies every migration not yet recorded in `<db>.schema_migrations`.
pub async fn migrate(
    client: &clickhouse::Client,
    ctx: &SchemaContext,
) -> Result<MigrationReport, MigrationError> {
    let boot = |source| MigrationError {
        version: 0,
        name: "bootstrap",
        source,
    };
    for sql in ctx.bootstrap() {
        client.query(&sql).execute().await.map_err(boot)?;
    }
    let log = ctx.table("schema_migrations");
    let done: BTreeSet<u32> = client
        .query(&format!("SELECT version FROM {log} FINAL"))
        .fetch_all::<u32>()
        .await
        .map_err(boot)?
        .into_iter()
        .collect();

    let mut report = MigrationReport::default();
    for m in MIGRATIONS {
        if done.contains(&m.version) {
            report.already.push(m.version);
            continue;
        }
        let fail = |source| MigrationError {
            version: m.version,
            name: m.name,
            source,
        };
        for sql in ctx.render((m.statements)(ctx)) {
            client.query(&sql).execute().await.map_err(fail)?;
        }
        client
            .query(&format!(
                "INSERT INTO {log} (version, name, applied_at) VALUES (?, ?, now64(3))"
            ))
            .bind(m.version)
            .bind(m.name)
            .execute()
            .await
            .map_err(fail)?;
        tracing::info!(version = m.version, name = m.name, "migration applied");
        report.applied.push(m.version);
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::columns::{ENRICHMENT_COLUMNS, EVENT_COLUMNS, IDENTITY_COLUMNS};
    use super::*;

    #[test]
    fn versions_are_strictly_increasing() {
        let v: Vec<u32> = MIGRATIONS.iter().map(|m| m.version).collect();
        assert!(v.windows(2).all(|w| w[0] < w[1]), "{v:?}");
    }

    #[test]
    fn queue_columns_match_event_row() {
        // Every column the Kafka table declares must be a field the gateway produces.
        let row = crate::event::EventRow {
            id: uuid::Uuid::nil(),
            tenant_id: uuid::Uuid::nil(),
            session_id: uuid::Uuid::nil(),
            kind: "custom",
            timestamp_ms: 0,
            received_at_ms: 0,
            sent_at_ms: Some(0),
            corrected_timestamp_ms: 0,
            user_agent: Some(""),
            ip: Some(""),
            screen_width: Some(0),
            screen_height: Some(0),
            viewport_width: Some(0),
            viewport_height: Some(0),
            timezone: Some(""),
            language: Some(""),
            title: Some(""),
            path: Some(""),
            url: Some(""),
            referrer: Some(""),
            element: Some(""),
            selector: Some(""),
            text: Some(""),
            x: Some(0.0),
            y: Some(0.0),
            depth: Some(0.0),
            lcp: Some(0.0),
            fcp: Some(0.0),
            fid: Some(0.0),
            inp: Some(0.0),
            cls: Some(0.0),
            ttfb: Some(0.0),
            dom_content_loaded: Some(0.0),
            load_time: Some(0.0),
            name: Some(""),
            properties: "".into(),
            client_ip: "",
            browser: "",
            browser_version: "",
            os: "",
            os_version: "",
            device: "",
            country: "",
            region: "",
            city: "",
            is_bot: false,
            distinct_id: "d",
            user_id: "u",
            anonymous_id: "a",
        };
        let v = serde_json::to_value(&row).expect("serializes");
        let mut fields: BTreeSet<String> = v.as_object().expect("object").keys().cloned().collect();
        for fixed in [
            "id",
            "tenant_id",
            "session_id",
            "type",
            "timestamp_ms",
            "received_at_ms",
            "sent_at_ms",
            "corrected_timestamp_ms",
        ] {
            assert!(fields.remove(fixed), "{fixed}");
        }
        let cols: BTreeSet<String> = EVENT_COLUMNS
            .iter()
            .chain(ENRICHMENT_COLUMNS)
            .chain(IDENTITY_COLUMNS)
            .map(|(n, _)| n.to_string())
            .collect();
        assert_eq!(fields, cols);
    }
}
