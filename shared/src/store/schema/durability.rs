//! Migration 9: nothing accepted can stop consumption or be lost after the gateway.
//!
//! - `events_mv` only takes rows whose times ClickHouse can store and whose
//!   client `timestamp` lies inside [`TIME_WINDOW_CEILING`] around its arrival;
//!   every other row (and every unparseable message) goes to `dead_letter` with
//!   the reason, so one message can never fail the insert of a consumed block
//!   (a block touching more than `max_partitions_per_insert_block` months fails
//!   and is retried forever, for every tenant).
//! - `usage_daily` counts the events each tenant's accepted messages carried by
//!   the UTC day the gateway received them (quotas: `workerd`'s `quota` job).
//! - `leases`: who holds which lease (see `workerd`'s `lease` module).
//! - `archives`: the catalogue of verified cold-storage archives, one row per
//!   tenant and day; `archive_stage`: where archived days are read back while a
//!   job that holds the tenant's lease merges or recomputes them.

use super::columns::{consumed_column_names, view_ddl_from, ENRICHMENT_COLUMNS, EVENT_COLUMNS};
use super::SchemaContext;
use crate::event::{RECEIVED_AT_RANGE_MS, TIME_WINDOW_CEILING};

/// The condition a consumed row must meet to enter `events`; `error` is the
/// column holding the message's parse error.
pub(super) fn storable(error: &str) -> String {
    let past = TIME_WINDOW_CEILING.past_hours as i64 * 3_600_000;
    let future = TIME_WINDOW_CEILING.future_minutes as i64 * 60_000;
    let (lo, hi) = RECEIVED_AT_RANGE_MS;
    format!(
        "length({error}) = 0 AND received_at_ms BETWEEN {lo} AND {hi} \
         AND timestamp_ms BETWEEN received_at_ms - {past} AND received_at_ms + {future} \
         AND (sent_at_ms IS NULL OR assumeNotNull(sent_at_ms) BETWEEN received_at_ms - {past} AND received_at_ms + {future}) \
         AND corrected_timestamp_ms BETWEEN received_at_ms - {wide} AND received_at_ms + {wide}",
        wide = 2 * (past + future),
    )
}

pub(super) fn statements(c: &SchemaContext) -> Vec<String> {
    let both: &[&[(&str, &str)]] = &[EVENT_COLUMNS, ENRICHMENT_COLUMNS];
    let usage = c.table("usage_daily");
    // Order matters while messages flow: the Kafka table feeds whichever views are
    // attached, so the dead-letter view must never be attached alone (it would
    // skip good rows). It goes first and comes back last; usage counting starts
    // after this month's earlier events are counted.
    vec![
        format!(
            "CREATE TABLE IF NOT EXISTS {usage} (\n    `tenant_id` UUID,\n    `day` Date,\n    \
             `events` UInt64\n) ENGINE = SummingMergeTree(events) PARTITION BY toYYYYMM(day) \
             ORDER BY (tenant_id, day)"
        ),
        // This month's events received before the usage view existed.
        format!(
            "INSERT INTO {usage} (tenant_id, day, events) \
             SELECT tenant_id, toDate(received_at), count() FROM {events} FINAL \
             WHERE received_at >= toStartOfMonth(now('UTC')) \
             AND (SELECT count() FROM {usage}) = 0 GROUP BY tenant_id, toDate(received_at)",
            events = c.table("events"),
        ),
        format!("DROP VIEW IF EXISTS {}", c.table("dead_letter_mv")),
        format!("DROP VIEW IF EXISTS {}", c.table("events_mv")),
    ]
    .into_iter()
    .chain(views(c, both))
    .chain([
        format!(
            "CREATE TABLE IF NOT EXISTS {} (\n    `name` String,\n    `holder` UUID,\n    \
             `expires_at` DateTime64(3, 'UTC'),\n    `updated_at` DateTime64(6, 'UTC')\n) \
             ENGINE = ReplacingMergeTree(updated_at) ORDER BY (name, holder) \
             TTL toDateTime(expires_at) + INTERVAL 1 DAY",
            c.table("leases")
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS {} (\n    `tenant_id` UUID,\n    `day` Date,\n    \
             `location` String,\n    `events` UInt64,\n    `updated_at` DateTime64(3, 'UTC')\n) \
             ENGINE = ReplacingMergeTree(updated_at) ORDER BY (tenant_id, day)",
            c.table("archives")
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS {} AS {} ENGINE = MergeTree ORDER BY (tenant_id, type, timestamp, id)",
            c.table("archive_stage"),
            c.table("events")
        ),
    ])
    .collect()
}

/// Where the views read consumed rows, and the names of the broker's columns there.
pub(super) struct ViewSource {
    pub table: &'static str,
    pub topic: &'static str,
    pub partition: &'static str,
    pub offset: &'static str,
    pub raw: &'static str,
    pub error: &'static str,
}

/// The Kafka table itself, with its virtual columns (migrations 9 to 15).
const QUEUE: ViewSource = ViewSource {
    table: "events_queue",
    topic: "_topic",
    partition: "_partition",
    offset: "_offset",
    raw: "_raw_message",
    error: "_error",
};

/// The three views on `events_queue` whose columns are `lists`: good rows to
/// `events`, the rest to `dead_letter` (with the reason), and usage counting.
/// Created in this order; dropped dead-letter view first (see [`statements`]).
pub(super) fn views(c: &SchemaContext, lists: &[&[(&str, &str)]]) -> Vec<String> {
    views_from(c, lists, &QUEUE)
}

/// The three views, reading `source`.
pub(super) fn views_from(
    c: &SchemaContext,
    lists: &[&[(&str, &str)]],
    source: &ViewSource,
) -> Vec<String> {
    let ok = storable(source.error);
    let row = format!(
        "formatRowNoNewline('JSONEachRow', {})",
        consumed_column_names(lists)
    );
    let usage = c.table("usage_daily");
    let queue = c.table(source.table);
    vec![
        view_ddl_from(
            c,
            source.table,
            "fromUnixTimestamp64Milli(corrected_timestamp_ms, 'UTC') AS corrected_timestamp, ",
            lists,
            &format!(" WHERE {ok}"),
        ),
        format!(
            "CREATE MATERIALIZED VIEW IF NOT EXISTS {dlmv} TO {dl} AS \
             SELECT now64(3) AS received_at, {topic} AS topic, toInt64({partition}) AS partition, \
             toInt64({offset}) AS offset, if(length({error}) > 0, {raw}, {row}) AS raw, \
             if(length({error}) > 0, {error}, 'a time outside the range ClickHouse stores: the client \
             timestamp must lie within 400 days before and 1 day after received_at') AS error \
             FROM {queue} WHERE NOT ({ok})",
            dlmv = c.table("dead_letter_mv"),
            dl = c.table("dead_letter"),
            topic = source.topic,
            partition = source.partition,
            offset = source.offset,
            raw = source.raw,
            error = source.error,
        ),
        format!(
            "CREATE MATERIALIZED VIEW IF NOT EXISTS {mv} TO {usage} AS \
             SELECT tenant_id, toDate(fromUnixTimestamp64Milli(received_at_ms, 'UTC')) AS day, \
             count() AS events FROM {queue} WHERE {ok} GROUP BY tenant_id, day",
            mv = c.table("usage_daily_mv"),
        ),
    ]
}
