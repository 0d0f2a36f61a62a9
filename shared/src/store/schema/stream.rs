//! Migration 16: the Kafka table feeds one view, so its consumers start with
//! every view attached at once.
//!
//! ClickHouse's Kafka engine streams to whichever views are attached when a
//! streaming pass starts, and a pass lasts up to the flush interval. With the
//! three views (`events_mv`, `dead_letter_mv`, `usage_daily_mv`) reading the
//! Kafka table directly, a replaced table began consuming as soon as the first
//! of them existed: a message consumed in that pass reached only that view and
//! was committed (an unparseable message produced right after a migration
//! vanished instead of landing in `dead_letter`; a good one would not have been
//! counted in `usage_daily`).
//!
//! Now `events_queue_mv` is the Kafka table's only view. It copies each consumed
//! row, with its broker position and parse error as plain columns, into
//! `events_stream` (engine `Null`: it stores nothing), and the three views read
//! `events_stream`. The views are created first; the Kafka table and then its
//! view come last, and that single `CREATE` starts consumption with every
//! view in place. The old Kafka table is dropped before its views: dropping it
//! waits for its streaming pass, which ends with the views it started with.
//! A later change of the views drops `events_queue_mv` first (consumption
//! pauses, the group keeps its offsets) and creates it last.

use super::columns::{
    consumed_column_defs, consumed_column_names, queue_ddl_with, ENRICHMENT_COLUMNS, EVENT_COLUMNS,
    IDENTITY_COLUMNS,
};
use super::durability::{views_from, ViewSource};
use super::SchemaContext;

/// The columns of every migration since 15: the event, its enrichment, its identity.
const ALL: &[&[(&str, &str)]] = &[EVENT_COLUMNS, ENRICHMENT_COLUMNS, IDENTITY_COLUMNS];

/// The time column the queue carries beside the event's own (migration 9).
const EXTRA_TIMES: &str = "    `corrected_timestamp_ms` Int64,\n";

/// The Kafka table's virtual columns as `events_stream` keeps them.
const BROKER_COLUMNS: &[(&str, &str, &str)] = &[
    ("kafka_topic", "String", "_topic"),
    ("kafka_partition", "UInt64", "toUInt64(_partition)"),
    ("kafka_offset", "UInt64", "_offset"),
    ("kafka_raw", "String", "_raw_message"),
    ("kafka_error", "String", "_error"),
];

/// Where the views of migration 16 read.
pub(super) const STREAM: ViewSource = ViewSource {
    table: "events_stream",
    topic: "kafka_topic",
    partition: "kafka_partition",
    offset: "kafka_offset",
    raw: "kafka_raw",
    error: "kafka_error",
};

pub(super) fn statements(c: &SchemaContext) -> Vec<String> {
    // The Kafka table first: its last pass ends with all of its views.
    let mut v = vec![format!("DROP TABLE IF EXISTS {}", c.table("events_queue"))];
    for view in ["dead_letter_mv", "events_mv", "usage_daily_mv"] {
        v.push(format!("DROP VIEW IF EXISTS {}", c.table(view)));
    }
    v.push(stream_ddl(c));
    v.extend(views_from(c, ALL, &STREAM));
    v.extend(queue_and_view(c));
    v
}

/// The Kafka table and its one view, in the order that starts consumption
/// last: for this migration and any later one that replaces them.
fn queue_and_view(c: &SchemaContext) -> Vec<String> {
    let broker = BROKER_COLUMNS
        .iter()
        .map(|(name, _, from)| format!("{from} AS {name}"))
        .collect::<Vec<_>>()
        .join(", ");
    vec![
        queue_ddl_with(c, EXTRA_TIMES, ALL, ", kafka_handle_error_mode = 'stream'"),
        format!(
            "CREATE MATERIALIZED VIEW IF NOT EXISTS {mv} TO {stream} AS \
             SELECT {cols}, {broker} FROM {queue}",
            mv = c.table("events_queue_mv"),
            stream = c.table("events_stream"),
            queue = c.table("events_queue"),
            cols = consumed_column_names(ALL),
        ),
    ]
}

/// `events_stream`: the queue's columns and its broker columns, stored nowhere.
fn stream_ddl(c: &SchemaContext) -> String {
    let broker = BROKER_COLUMNS
        .iter()
        .map(|(name, ty, _)| format!("    `{name}` {ty}"))
        .collect::<Vec<_>>()
        .join(",\n");
    format!(
        "CREATE TABLE IF NOT EXISTS {stream} (\n{cols},\n{broker}\n) ENGINE = Null",
        stream = c.table("events_stream"),
        cols = consumed_column_defs(EXTRA_TIMES, ALL),
    )
}
