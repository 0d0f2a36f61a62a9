//! The columns `events_queue` and `events` share, and the DDL of the Kafka
//! engine table and its materialized view, rendered for a migration.

use super::SchemaContext;
use crate::store::{ident, literal};

/// Columns shared verbatim by `events_queue` and `events` (after the ids and times),
/// as created by migrations 1 and 2. Never edit: later columns go in a new list.
pub(super) const EVENT_COLUMNS: &[(&str, &str)] = &[
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
pub(super) const ENRICHMENT_COLUMNS: &[(&str, &str)] = &[
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

/// Who the event is about (migration 14), shared verbatim.
pub(super) const IDENTITY_COLUMNS: &[(&str, &str)] = &[
    ("distinct_id", "String"),
    ("user_id", "String"),
    ("anonymous_id", "String"),
];

pub(super) fn column_defs(lists: &[&[(&str, &str)]]) -> String {
    lists
        .iter()
        .flat_map(|l| l.iter())
        .map(|(n, t)| format!("    {} {t}", ident(n)))
        .collect::<Vec<_>>()
        .join(",\n")
}

pub(super) fn column_names(lists: &[&[(&str, &str)]]) -> String {
    lists
        .iter()
        .flat_map(|l| l.iter())
        .map(|(n, _)| ident(n))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The column definitions of a consumed row: the row's own fields, then
/// `extra_times` (whole lines), then `lists`. The Kafka table and, since
/// migration 16, `events_stream` have them.
pub(super) fn consumed_column_defs(extra_times: &str, lists: &[&[(&str, &str)]]) -> String {
    format!(
        "    `id` UUID,\n    `tenant_id` UUID,\n    `session_id` UUID,\n    \
         `type` String,\n    `timestamp_ms` Int64,\n    `received_at_ms` Int64,\n    \
         `sent_at_ms` Nullable(Int64),\n{extra_times}{cols}",
        cols = column_defs(lists),
    )
}

/// The names of a consumed row's columns since migration 9 (with
/// `corrected_timestamp_ms`), then `lists`: what the dead-letter view
/// serialises and what `events_queue_mv` copies.
pub(super) fn consumed_column_names(lists: &[&[(&str, &str)]]) -> String {
    format!(
        "id, tenant_id, session_id, type, timestamp_ms, received_at_ms, sent_at_ms, \
         corrected_timestamp_ms, {}",
        column_names(lists)
    )
}

/// The Kafka engine table reading every events topic of the configuration.
pub(super) fn queue_ddl(c: &SchemaContext, extra_times: &str, lists: &[&[(&str, &str)]]) -> String {
    queue_ddl_with(c, extra_times, lists, "")
}

pub(super) fn queue_ddl_with(
    c: &SchemaContext,
    extra_times: &str,
    lists: &[&[(&str, &str)]],
    extra_settings: &str,
) -> String {
    format!(
        "CREATE TABLE IF NOT EXISTS {queue} (\n{cols}\n) ENGINE = Kafka\n\
         SETTINGS kafka_broker_list = {brokers}, kafka_topic_list = {topics}, \
         kafka_group_name = {group}, kafka_format = 'JSONEachRow', \
         kafka_num_consumers = 1, kafka_flush_interval_ms = 500, \
         kafka_max_block_size = 65536{extra_settings}",
        queue = c.table("events_queue"),
        cols = consumed_column_defs(extra_times, lists),
        brokers = literal(&c.kafka_brokers),
        topics = literal(&c.topics.join(",")),
        group = literal(&c.kafka_group),
    )
}

/// The materialized view moving each consumed block into `events`.
pub(super) fn view_ddl(c: &SchemaContext, extra_times: &str, lists: &[&[(&str, &str)]]) -> String {
    view_ddl_where(c, extra_times, lists, "")
}

pub(super) fn view_ddl_where(
    c: &SchemaContext,
    extra_times: &str,
    lists: &[&[(&str, &str)]],
    condition: &str,
) -> String {
    view_ddl_from(c, "events_queue", extra_times, lists, condition)
}

/// `events_mv` reading the table `source` (the Kafka table, or since migration
/// 16 the stream its one view fills).
pub(super) fn view_ddl_from(
    c: &SchemaContext,
    source: &str,
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
        queue = c.table(source),
        cols = column_names(lists),
    )
}
