//! What a failed test prints about its consumption: ClickHouse's view of the
//! test database's Kafka consumers and the broker's offsets of their group.
//!
//! A test that waited in vain for ClickHouse to consume (in CI, where nobody can
//! look afterwards) otherwise leaves only "timed out"; with this the failure says
//! whether the consumer held partitions, where its offsets were, what errors it
//! kept, and how far the group's committed offsets are behind what was produced.

use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::TopicPartitionList;

use crate::config::Config;

/// ClickHouse's `system.kafka_consumers` rows of `cfg`'s database, one per line.
pub(super) async fn clickhouse_consumers(client: &clickhouse::Client, cfg: &Config) -> String {
    let sql = "SELECT table, consumer_id, assignments.topic AS topics, \
               assignments.partition_id AS partitions, assignments.current_offset AS offsets, \
               exceptions.text AS errors, num_messages_read, num_commits, last_poll_time, \
               last_rebalance_time, num_rebalance_assignments, num_rebalance_revocations, \
               is_currently_used, dependencies, missing_dependencies \
               FROM system.kafka_consumers WHERE database = ?";
    let read = async {
        let mut cursor = client
            .query(sql)
            .bind(&cfg.clickhouse.database)
            .fetch_bytes("JSONEachRow")?;
        let mut text = Vec::new();
        while let Some(chunk) = cursor.next().await? {
            text.extend_from_slice(&chunk);
        }
        Ok::<_, clickhouse::error::Error>(String::from_utf8_lossy(&text).into_owned())
    };
    match tokio::time::timeout(Duration::from_secs(10), read).await {
        Ok(Ok(rows)) if rows.trim().is_empty() => "no Kafka consumers".to_string(),
        Ok(Ok(rows)) => rows,
        Ok(Err(e)) => format!("cannot read system.kafka_consumers: {e}"),
        Err(_) => "system.kafka_consumers did not answer within 10 s".to_string(),
    }
}

/// The rows each table of `cfg`'s database holds (`events 1, dead_letter 0, …`).
pub(super) async fn table_rows(client: &clickhouse::Client, cfg: &Config) -> String {
    let sql = "SELECT name, assumeNotNull(total_rows) FROM system.tables WHERE database = ? \
               AND total_rows IS NOT NULL ORDER BY name";
    let read = client
        .query(sql)
        .bind(&cfg.clickhouse.database)
        .fetch_all::<(String, u64)>();
    match tokio::time::timeout(Duration::from_secs(10), read).await {
        Ok(Ok(rows)) => rows
            .iter()
            .map(|(name, n)| format!("{name} {n}"))
            .collect::<Vec<_>>()
            .join(", "),
        Ok(Err(e)) => format!("cannot count rows: {e}"),
        Err(_) => "system.tables did not answer within 10 s".to_string(),
    }
}

/// For each of `cfg`'s topic partitions: the broker's high watermark (what was
/// produced) and the offset ClickHouse's group committed (what was consumed).
/// Blocking (librdkafka calls): run it off any async runtime. Reading the
/// committed offsets does not join the group.
pub(super) fn broker_offsets(cfg: &Config) -> String {
    let consumer: BaseConsumer = match rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &cfg.clickhouse.kafka_brokers)
        .set("group.id", &cfg.clickhouse.kafka_group)
        .create()
    {
        Ok(c) => c,
        Err(e) => return format!("cannot open a client to the broker: {e}"),
    };
    let wait = Duration::from_secs(3);
    let mut wanted = TopicPartitionList::new();
    let mut high = Vec::new();
    for topic in cfg.kafka.topics() {
        for p in 0..cfg.kafka.partitions {
            wanted.add_partition(&topic, p);
            high.push(match consumer.fetch_watermarks(&topic, p, wait) {
                Ok((_, h)) => h.to_string(),
                Err(e) => format!("? ({e})"),
            });
        }
    }
    let committed = match consumer.committed_offsets(wanted.clone(), wait) {
        Ok(list) => list,
        Err(e) => {
            return format!(
                "cannot read group {}'s offsets: {e}",
                cfg.clickhouse.kafka_group
            )
        }
    };
    wanted
        .elements()
        .iter()
        .zip(high)
        .map(|(tp, high)| {
            let done = committed
                .find_partition(tp.topic(), tp.partition())
                .map(|c| format!("{:?}", c.offset()))
                .unwrap_or_else(|| "none".to_string());
            format!(
                "{}[{}]: produced up to {high}, group {} committed {done}",
                tp.topic(),
                tp.partition(),
                cfg.clickhouse.kafka_group
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}
