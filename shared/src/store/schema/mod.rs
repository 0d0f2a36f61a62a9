//! ClickHouse schema: versioned, idempotent migrations.
//!
//! Each [`Migration`] has a number and a list of statements rendered from the
//! configuration (database, broker list, topics, consumer group). Applied versions
//! are recorded in `<db>.schema_migrations`; running [`migrate`] again applies
//! only what is missing, and every statement is itself `IF NOT EXISTS`, so a run
//! interrupted between a statement and its record is safe to repeat.
//!
//! Data path: the Kafka engine table `events_queue` reads every `events_*` topic
//! (JSONEachRow, one [`crate::event::EventRow`] per message) and the materialized
//! view `events_mv` writes each block into `events`, a ReplacingMergeTree ordered
//! by `(tenant_id, type, timestamp, id)`: a client retry carries the same id and the
//! same client timestamp and collapses into one row (query with `FINAL` for exact
//! counts before background merges run).

mod durability;

use std::collections::BTreeSet;

use crate::config::Config;
use crate::store::{ident, literal};

/// Values the migration statements are rendered with.
#[derive(Debug, Clone)]
pub struct SchemaContext {
    pub database: String,
    pub kafka_brokers: String,
    pub kafka_group: String,
    pub topics: Vec<String>,
}

impl SchemaContext {
    pub fn from_config(cfg: &Config) -> Self {
        SchemaContext {
            database: cfg.clickhouse.database.clone(),
            kafka_brokers: cfg.clickhouse.kafka_brokers.clone(),
            kafka_group: cfg.clickhouse.kafka_group.clone(),
            topics: cfg.kafka.topics(),
        }
    }

    fn table(&self, name: &str) -> String {
        format!("{}.{}", ident(&self.database), ident(name))
    }
}

pub struct Migration {
    pub version: u32,
    pub name: &'static str,
    pub statements: fn(&SchemaContext) -> Vec<String>,
}

/// Columns shared verbatim by `events_queue` and `events` (after the ids and times),
/// as created by migrations 1 and 2. Never edit: later columns go in a new list.
const EVENT_COLUMNS: &[(&str, &str)] = &[
    ("user_agent", "String"),
    ("ip", "String"),
    ("screen_width", "Nullable(UInt32)"),
    ("screen_height", "Nullable(UInt32)"),
    ("viewport_width", "Nullable(UInt32)"),
    ("viewport_height", "Nullable(UInt32)"),
    ("timezone", "LowCardinality(String)"),
    ("language", "LowCardinality(String)"),
    ("title", "String"),
    ("path", "String"),
    ("url", "String"),
    ("referrer", "String"),
    ("element", "String"),
    ("selector", "String"),
    ("text", "String"),
    ("x", "Nullable(Float64)"),
    ("y", "Nullable(Float64)"),
    ("depth", "Nullable(Float64)"),
    ("lcp", "Nullable(Float64)"),
    ("fcp", "Nullable(Float64)"),
    ("fid", "Nullable(Float64)"),
    ("inp", "Nullable(Float64)"),
    ("cls", "Nullable(Float64)"),
    ("ttfb", "Nullable(Float64)"),
    ("dom_content_loaded", "Nullable(Float64)"),
    ("load_time", "Nullable(Float64)"),
    ("name", "String"),
    ("properties", "String"),
];

/// Server-side enrichment columns (migration 3), also shared verbatim.
const ENRICHMENT_COLUMNS: &[(&str, &str)] = &[
    ("client_ip", "String"),
    ("browser", "LowCardinality(String)"),
    ("browser_version", "LowCardinality(String)"),
    ("os", "LowCardinality(String)"),
    ("os_version", "LowCardinality(String)"),
    ("device", "LowCardinality(String)"),
    ("country", "LowCardinality(String)"),
    ("region", "LowCardinality(String)"),
    ("city", "LowCardinality(String)"),
    ("is_bot", "Bool"),
];

fn column_defs(lists: &[&[(&str, &str)]]) -> String {
    lists
        .iter()
        .flat_map(|l| l.iter())
        .map(|(n, t)| format!("    {} {t}", ident(n)))
        .collect::<Vec<_>>()
        .join(",\n")
}

fn column_names(lists: &[&[(&str, &str)]]) -> String {
    lists
        .iter()
        .flat_map(|l| l.iter())
        .map(|(n, _)| ident(n))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The Kafka engine table reading every `events_*` topic.
fn queue_ddl(c: &SchemaContext, extra_times: &str, lists: &[&[(&str, &str)]]) -> String {
    queue_ddl_with(c, extra_times, lists, "")
}

fn queue_ddl_with(
    c: &SchemaContext,
    extra_times: &str,
    lists: &[&[(&str, &str)]],
    extra_settings: &str,
) -> String {
    format!(
        "CREATE TABLE IF NOT EXISTS {queue} (\n    \
         `id` UUID,\n    `tenant_id` UUID,\n    `session_id` UUID,\n    \
         `type` String,\n    `timestamp_ms` Int64,\n    `received_at_ms` Int64,\n    \
         `sent_at_ms` Nullable(Int64),\n{extra_times}{cols}\n) ENGINE = Kafka\n\
         SETTINGS kafka_broker_list = {brokers}, kafka_topic_list = {topics}, \
         kafka_group_name = {group}, kafka_format = 'JSONEachRow', \
         kafka_num_consumers = 1, kafka_flush_interval_ms = 500, \
         kafka_max_block_size = 65536{extra_settings}",
        queue = c.table("events_queue"),
        cols = column_defs(lists),
        brokers = literal(&c.kafka_brokers),
        topics = literal(&c.topics.join(",")),
        group = literal(&c.kafka_group),
    )
}

/// The materialized view moving each consumed block into `events`.
fn view_ddl(c: &SchemaContext, extra_times: &str, lists: &[&[(&str, &str)]]) -> String {
    view_ddl_where(c, extra_times, lists, "")
}

fn view_ddl_where(
    c: &SchemaContext,
    extra_times: &str,
    lists: &[&[(&str, &str)]],
    condition: &str,
) -> String {
    format!(
        "CREATE MATERIALIZED VIEW IF NOT EXISTS {mv} TO {events} AS\n\
         SELECT id, tenant_id, session_id, type, \
         fromUnixTimestamp64Milli(timestamp_ms, 'UTC') AS timestamp, \
         fromUnixTimestamp64Milli(received_at_ms, 'UTC') AS received_at, \
         if(sent_at_ms IS NULL, NULL, \
         fromUnixTimestamp64Milli(assumeNotNull(sent_at_ms), 'UTC')) AS sent_at, \
         {extra_times}{cols}\nFROM {queue}{condition}",
        mv = c.table("events_mv"),
        events = c.table("events"),
        queue = c.table("events_queue"),
        cols = column_names(lists),
    )
}

/// Every migration, in order. Never edit an applied one: add a new version.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "events table",
        statements: |c| {
            vec![format!(
                "CREATE TABLE IF NOT EXISTS {events} (\n    \
                 `id` UUID,\n    `tenant_id` UUID,\n    `session_id` UUID,\n    \
                 `type` LowCardinality(String),\n    \
                 `timestamp` DateTime64(3, 'UTC'),\n    \
                 `received_at` DateTime64(3, 'UTC'),\n    \
                 `sent_at` Nullable(DateTime64(3, 'UTC')),\n{cols}\n) \
                 ENGINE = ReplacingMergeTree(received_at)\n\
                 PARTITION BY toYYYYMM(timestamp)\n\
                 ORDER BY (tenant_id, type, timestamp, id)",
                events = c.table("events"),
                cols = column_defs(&[EVENT_COLUMNS]),
            )]
        },
    },
    Migration {
        version: 2,
        name: "kafka ingestion of events_* topics",
        statements: |c| {
            vec![
                queue_ddl(c, "", &[EVENT_COLUMNS]),
                view_ddl(c, "", &[EVENT_COLUMNS]),
            ]
        },
    },
    Migration {
        version: 3,
        name: "server-side enrichment columns",
        statements: |c| {
            let events = c.table("events");
            let mut v = vec![format!(
                "ALTER TABLE {events} ADD COLUMN IF NOT EXISTS `corrected_timestamp` \
                 DateTime64(3, 'UTC') DEFAULT timestamp AFTER `sent_at`"
            )];
            for (name, ty) in ENRICHMENT_COLUMNS {
                v.push(format!(
                    "ALTER TABLE {events} ADD COLUMN IF NOT EXISTS {} {ty}",
                    ident(name)
                ));
            }
            // A Kafka engine table cannot be altered: replace it and its view. The
            // consumer group (and so its committed offsets) stays the same.
            v.push(format!("DROP VIEW IF EXISTS {}", c.table("events_mv")));
            v.push(format!("DROP TABLE IF EXISTS {}", c.table("events_queue")));
            let both: &[&[(&str, &str)]] = &[EVENT_COLUMNS, ENRICHMENT_COLUMNS];
            v.push(queue_ddl(c, "    `corrected_timestamp_ms` Int64,\n", both));
            v.push(view_ddl(
                c,
                "fromUnixTimestamp64Milli(corrected_timestamp_ms, 'UTC') AS corrected_timestamp, ",
                both,
            ));
            v
        },
    },
    Migration {
        version: 4,
        name: "tenants, API keys and the audit log",
        statements: |c| {
            vec![
                format!(
                    "CREATE TABLE IF NOT EXISTS {} (\n    \
                     `tenant_id` UUID,\n    `name` String,\n    \
                     `tier` LowCardinality(String),\n    `anonymize_ip` Bool,\n    \
                     `created_at` DateTime64(3, 'UTC'),\n    \
                     `updated_at` DateTime64(3, 'UTC')\n) \
                     ENGINE = ReplacingMergeTree(updated_at) ORDER BY tenant_id",
                    c.table("tenants")
                ),
                format!(
                    "CREATE TABLE IF NOT EXISTS {} (\n    \
                     `key_id` UUID,\n    `tenant_id` UUID,\n    \
                     `secret_sha256` String,\n    `kind` LowCardinality(String),\n    \
                     `description` String,\n    `allowed_origins` Array(String),\n    \
                     `ip_allowlist` Array(String),\n    `require_signature` Bool,\n    \
                     `created_at` DateTime64(3, 'UTC'),\n    \
                     `expires_at` Nullable(DateTime64(3, 'UTC')),\n    \
                     `revoked_at` Nullable(DateTime64(3, 'UTC')),\n    \
                     `updated_at` DateTime64(3, 'UTC')\n) \
                     ENGINE = ReplacingMergeTree(updated_at) ORDER BY key_id",
                    c.table("api_keys")
                ),
                format!(
                    "CREATE TABLE IF NOT EXISTS {} (\n    \
                     `at` DateTime64(3, 'UTC'),\n    `actor` String,\n    \
                     `action` LowCardinality(String),\n    `tenant_id` Nullable(UUID),\n    \
                     `target` String,\n    `detail` String\n) \
                     ENGINE = MergeTree ORDER BY at",
                    c.table("audit_log")
                ),
            ]
        },
    },
    Migration {
        version: 5,
        name: "sessions, rollups and workerd bookkeeping tables",
        statements: |c| {
            let t = |n: &str| c.table(n);
            vec![
                format!(
                    "CREATE TABLE IF NOT EXISTS {} (\n    \
                     `tenant_id` UUID,\n    `session_id` UUID,\n    \
                     `session_start` DateTime64(3, 'UTC'),\n    `session_end` DateTime64(3, 'UTC'),\n    \
                     `duration_ms` Int64,\n    `events` UInt32,\n    `pageviews` UInt32,\n    \
                     `entry_path` String,\n    `exit_path` String,\n    `is_bounce` Bool,\n    \
                     `computed_at` DateTime64(3, 'UTC')\n) \
                     ENGINE = ReplacingMergeTree(computed_at) PARTITION BY toYYYYMM(session_start) \
                     ORDER BY (tenant_id, session_id, session_start)",
                    t("sessions")
                ),
                format!(
                    "CREATE TABLE IF NOT EXISTS {} (\n    \
                     `tenant_id` UUID,\n    `type` LowCardinality(String),\n    \
                     `hour` DateTime('UTC'),\n    `events` UInt64,\n    `sessions` UInt64,\n    \
                     `bots` UInt64,\n    `computed_at` DateTime64(3, 'UTC')\n) \
                     ENGINE = ReplacingMergeTree(computed_at) PARTITION BY toYYYYMM(hour) \
                     ORDER BY (tenant_id, type, hour)",
                    t("rollups_hourly")
                ),
                format!(
                    "CREATE TABLE IF NOT EXISTS {} (\n    \
                     `tenant_id` UUID,\n    `type` LowCardinality(String),\n    \
                     `day` Date,\n    `events` UInt64,\n    `sessions` UInt64,\n    \
                     `bots` UInt64,\n    `computed_at` DateTime64(3, 'UTC')\n) \
                     ENGINE = ReplacingMergeTree(computed_at) PARTITION BY toYYYYMM(day) \
                     ORDER BY (tenant_id, type, day)",
                    t("rollups_daily")
                ),
                format!(
                    "CREATE TABLE IF NOT EXISTS {} (\n    \
                     `received_at` DateTime64(3, 'UTC'),\n    `topic` String,\n    \
                     `partition` Int64,\n    `offset` Int64,\n    `raw` String,\n    `error` String\n) \
                     ENGINE = MergeTree ORDER BY received_at",
                    t("dead_letter")
                ),
                format!(
                    "CREATE TABLE IF NOT EXISTS {} (\n    \
                     `job_id` UUID,\n    `kind` LowCardinality(String),\n    `tenant_id` UUID,\n    \
                     `range_start` DateTime64(3, 'UTC'),\n    `range_end` DateTime64(3, 'UTC'),\n    \
                     `chunk_hours` UInt32,\n    `chunks_total` UInt32,\n    `chunks_done` UInt32,\n    \
                     `status` LowCardinality(String),\n    `error` String,\n    \
                     `created_at` DateTime64(3, 'UTC'),\n    `updated_at` DateTime64(3, 'UTC')\n) \
                     ENGINE = ReplacingMergeTree(updated_at) ORDER BY job_id",
                    t("backfill_jobs")
                ),
                format!(
                    "CREATE TABLE IF NOT EXISTS {} (\n    \
                     `at` DateTime64(3, 'UTC'),\n    `rule` LowCardinality(String),\n    \
                     `tenant_id` Nullable(UUID),\n    `channel` LowCardinality(String),\n    \
                     `status` LowCardinality(String),\n    `detail` String\n) \
                     ENGINE = MergeTree ORDER BY at",
                    t("notifications_log")
                ),
                format!(
                    "CREATE TABLE IF NOT EXISTS {} (\n    \
                     `at` DateTime64(3, 'UTC'),\n    `source` LowCardinality(String),\n    \
                     `name` LowCardinality(String),\n    `labels` Map(String, String),\n    \
                     `value` Float64\n) \
                     ENGINE = MergeTree ORDER BY (name, at) TTL toDateTime(at) + INTERVAL 30 DAY",
                    t("internal_metrics")
                ),
            ]
        },
    },
    Migration {
        version: 6,
        name: "monthly usage and quota marks",
        statements: |c| {
            vec![format!(
                "CREATE TABLE IF NOT EXISTS {} (\n    \
                 `tenant_id` UUID,\n    `month` Date,\n    `events` UInt64,\n    \
                 `quota` UInt64,\n    `over_quota` Bool,\n    \
                 `computed_at` DateTime64(3, 'UTC')\n) \
                 ENGINE = ReplacingMergeTree(computed_at) ORDER BY (tenant_id, month)",
                c.table("tenant_usage")
            )]
        },
    },
    Migration {
        version: 7,
        name: "compression verification table",
        statements: |c| {
            vec![format!(
                "CREATE TABLE IF NOT EXISTS {} AS {} ENGINE = MergeTree ORDER BY (tenant_id, id)",
                c.table("compression_verify"),
                c.table("events")
            )]
        },
    },
    Migration {
        version: 8,
        name: "dead letters: unparseable messages go to dead_letter",
        statements: |c| {
            let both: &[&[(&str, &str)]] = &[EVENT_COLUMNS, ENRICHMENT_COLUMNS];
            vec![
                format!("DROP VIEW IF EXISTS {}", c.table("events_mv")),
                format!("DROP TABLE IF EXISTS {}", c.table("events_queue")),
                queue_ddl_with(
                    c,
                    "    `corrected_timestamp_ms` Int64,\n",
                    both,
                    ", kafka_handle_error_mode = 'stream'",
                ),
                view_ddl_where(
                    c,
                    "fromUnixTimestamp64Milli(corrected_timestamp_ms, 'UTC') AS corrected_timestamp, ",
                    both,
                    " WHERE length(_error) = 0",
                ),
                format!(
                    "CREATE MATERIALIZED VIEW IF NOT EXISTS {dlmv} TO {dl} AS \
                     SELECT now64(3) AS received_at, _topic AS topic, toInt64(_partition) AS partition, \
                     toInt64(_offset) AS offset, _raw_message AS raw, _error AS error \
                     FROM {queue} WHERE length(_error) > 0",
                    dlmv = c.table("dead_letter_mv"),
                    dl = c.table("dead_letter"),
                    queue = c.table("events_queue"),
                ),
            ]
        },
    },
    Migration {
        version: 9,
        name: "bounded times, quota usage by arrival, leases and the archive catalogue",
        statements: durability::statements,
    },
    Migration {
        version: 10,
        name: "Ed25519 public keys for signed requests",
        statements: |c| {
            vec![format!(
                "ALTER TABLE {} ADD COLUMN IF NOT EXISTS `signing_public_key` String DEFAULT '' AFTER `require_signature`",
                c.table("api_keys")
            )]
        },
    },
];

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
    client
        .query(&format!(
            "CREATE DATABASE IF NOT EXISTS {}",
            ident(&ctx.database)
        ))
        .execute()
        .await
        .map_err(boot)?;
    let log = ctx.table("schema_migrations");
    client
        .query(&format!(
            "CREATE TABLE IF NOT EXISTS {log} (version UInt32, name String, \
             applied_at DateTime64(3, 'UTC')) ENGINE = ReplacingMergeTree ORDER BY version"
        ))
        .execute()
        .await
        .map_err(boot)?;
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
        for sql in (m.statements)(ctx) {
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
            properties: String::new(),
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
            .map(|(n, _)| n.to_string())
            .collect();
        assert_eq!(fields, cols);
    }
}
