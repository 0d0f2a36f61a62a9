//! Health checks that raise alerts: dead letters (messages ClickHouse could not
//! parse) in the last `dead_letter_window_minutes`, and how far ClickHouse's
//! consumer group lags behind the brokers on the `events_*` topics.

use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};
use serde_json::json;
use time::OffsetDateTime;

use super::{ms, JobContext, JobError, JobReport};

/// Messages ClickHouse's consumer group has not consumed yet, over every
/// partition of `topics` (a partition with no committed offset counts from its
/// low watermark).
pub fn consumer_lag(brokers: &str, group: &str, topics: &[String]) -> Result<u64, String> {
    let timeout = Duration::from_secs(10);
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()
        .map_err(|e| e.to_string())?;
    let md = consumer
        .fetch_metadata(None, timeout)
        .map_err(|e| e.to_string())?;
    let mut tpl = TopicPartitionList::new();
    for t in md
        .topics()
        .iter()
        .filter(|t| topics.iter().any(|n| n == t.name()))
    {
        for p in t.partitions() {
            tpl.add_partition(t.name(), p.id());
        }
    }
    let committed = consumer
        .committed_offsets(tpl, timeout)
        .map_err(|e| e.to_string())?;
    let mut lag = 0u64;
    for e in committed.elements() {
        let (low, high) = consumer
            .fetch_watermarks(e.topic(), e.partition(), timeout)
            .map_err(|err| err.to_string())?;
        let at = match e.offset() {
            Offset::Offset(n) => n,
            _ => low,
        };
        lag += (high - at).max(0) as u64;
    }
    Ok(lag)
}

pub async fn run(ctx: &JobContext, now: OffsetDateTime) -> Result<JobReport, JobError> {
    let n = &ctx.config.notifications;
    let mut alerts = Vec::new();
    let since = now - time::Duration::minutes(n.dead_letter_window_minutes as i64);
    let dead: u64 = ctx
        .client
        .query(&format!(
            "SELECT count() FROM {} WHERE received_at >= fromUnixTimestamp64Milli(toInt64(?), 'UTC')",
            ctx.table("dead_letter")
        ))
        .bind(ms(since))
        .fetch_one()
        .await?;
    if n.dead_letter_threshold > 0 && dead >= n.dead_letter_threshold {
        alerts.push(json!({"rule": "dead_letter_growth", "value": dead, "threshold": n.dead_letter_threshold}));
    }
    let (brokers, group, topics) = (
        ctx.config.clickhouse.kafka_brokers.clone(),
        ctx.config.clickhouse.kafka_group.clone(),
        ctx.config.topics(),
    );
    let lag = tokio::task::spawn_blocking(move || consumer_lag(&brokers, &group, &topics))
        .await
        .map_err(|e| JobError::Invalid(e.to_string()))?
        .map_err(|e| JobError::Invalid(format!("measuring consumer lag: {e}")))?;
    if n.consumer_lag_threshold > 0 && lag >= n.consumer_lag_threshold {
        alerts.push(
            json!({"rule": "consumer_lag", "value": lag, "threshold": n.consumer_lag_threshold}),
        );
    }
    Ok(JobReport {
        rows_affected: alerts.len() as u64,
        detail: json!({"dead_letters": dead, "consumer_lag": lag, "alerts": alerts}),
    })
}
