//! Every migration, in order. Never edit an applied one: add a new version.

use super::columns::{
    column_defs, queue_ddl, queue_ddl_with, view_ddl, view_ddl_where, ENRICHMENT_COLUMNS,
    EVENT_COLUMNS, IDENTITY_COLUMNS,
};
use super::{durability, Migration};
use crate::store::ident;

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
    Migration {
        version: 11,
        name: "the enrichment job's lookup tables",
        statements: |c| {
            // Join tables the enrichment job fills and reads with joinGet;
            // created here so that no job runs DDL.
            vec![
                format!(
                    "CREATE TABLE IF NOT EXISTS {} (ua String, browser String, browser_version String, \
                     os String, os_version String, device String, is_bot Bool) ENGINE = Join(ANY, LEFT, ua)",
                    c.table("enrich_ua_map")
                ),
                format!(
                    "CREATE TABLE IF NOT EXISTS {} (addr String, country String, region String, city String) \
                     ENGINE = Join(ANY, LEFT, addr)",
                    c.table("enrich_geo_map")
                ),
            ]
        },
    },
    Migration {
        version: 12,
        name: "job run history (which replica ran what, when)",
        statements: |c| {
            vec![format!(
                "CREATE TABLE IF NOT EXISTS {} (\n    \
                 `job` LowCardinality(String),\n    `instance` String,\n    `holder` UUID,\n    \
                 `started_at` DateTime64(3, 'UTC'),\n    `finished_at` DateTime64(3, 'UTC'),\n    \
                 `outcome` LowCardinality(String),\n    `rows_affected` UInt64,\n    `error` String\n) \
                 ENGINE = MergeTree ORDER BY (job, started_at) \
                 TTL toDateTime(started_at) + INTERVAL 30 DAY",
                c.table("job_runs")
            )]
        },
    },
    Migration {
        version: 13,
        name: "gateway replicas' rate-limit demand (cluster-wide rate limits)",
        statements: |c| {
            vec![format!(
                "CREATE TABLE IF NOT EXISTS {} (\n    \
                 `at` DateTime64(3, 'UTC') DEFAULT now64(3),\n    `instance` String,\n    \
                 `tenant_id` UUID,\n    `offered` UInt64,\n    `rate` Float64\n) \
                 ENGINE = MergeTree ORDER BY at \
                 TTL toDateTime(at) + INTERVAL 1 HOUR",
                c.table("rate_usage")
            )]
        },
    },
    Migration {
        version: 14,
        name: "identity: distinct id, user id and anonymous id",
        statements: |c| {
            let mut v = Vec::new();
            // The staging tables were created AS events: they take the same
            // columns in the same order, so `SELECT *` still lines up.
            for table in ["events", "archive_stage", "compression_verify"] {
                for (name, ty) in IDENTITY_COLUMNS {
                    v.push(format!(
                        "ALTER TABLE {} ADD COLUMN IF NOT EXISTS {} {ty}",
                        c.table(table),
                        ident(name)
                    ));
                }
            }
            v.extend(replace_queue(c));
            v
        },
    },
    Migration {
        version: 15,
        name: "the single events topic beside the per-type topics",
        // The queue is created with every topic of both layouts
        // (`kafka.topic_layout`), so the gateway may switch between them.
        statements: replace_queue,
    },
    Migration {
        version: 16,
        name: "the Kafka table feeds one view, so consumption starts with every view attached",
        statements: super::stream::statements,
    },
];

/// The Kafka table cannot be altered: it is replaced, with its views (the
/// dead-letter view first, as in migration 9), reading the topics of the
/// configuration with the same consumer group, so it resumes at the
/// committed offsets (and a topic new to the group from its start).
fn replace_queue(c: &super::SchemaContext) -> Vec<String> {
    let mut v = Vec::new();
    for view in ["dead_letter_mv", "events_mv", "usage_daily_mv"] {
        v.push(format!("DROP VIEW IF EXISTS {}", c.table(view)));
    }
    v.push(format!("DROP TABLE IF EXISTS {}", c.table("events_queue")));
    let all: &[&[(&str, &str)]] = &[EVENT_COLUMNS, ENRICHMENT_COLUMNS, IDENTITY_COLUMNS];
    v.push(queue_ddl_with(
        c,
        "    `corrected_timestamp_ms` Int64,\n",
        all,
        ", kafka_handle_error_mode = 'stream'",
    ));
    v.extend(durability::views(c, all));
    v
}
