//! Health checks that raise alerts: dead letters (messages ClickHouse could not
//! parse) in the last `dead_letter_window_minutes`, how far ClickHouse's
//! consumer group lags behind the brokers on the events topics, and the
//! share of failed ingest requests, from the gateways' metric snapshots in
//! `internal_metrics`.

use shared::store::sql::AT_MS;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};
use serde_json::json;
use time::OffsetDateTime;

use super::context::{JobContext, JobReport};
use super::error::JobError;
use crate::notify::Alert;
use shared::store::sql::ms;

/// Messages ClickHouse's consumer group has not consumed yet, over every
/// partition of `topics` (a partition with no committed offset counts from its
/// low watermark).
pub fn consumer_lag(
    brokers: &str,
    group: &str,
    topics: &[String],
) -> Result<u64, rdkafka::error::KafkaError> {
    let timeout = Duration::from_secs(10);
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()?;
    let md = consumer.fetch_metadata(None, timeout)?;
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
    let committed = consumer.committed_offsets(tpl, timeout)?;
    let mut lag = 0u64;
    for e in committed.elements() {
        let (low, high) = consumer.fetch_watermarks(e.topic(), e.partition(), timeout)?;
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
            "SELECT count() FROM {} WHERE received_at >= {AT_MS}",
            ctx.table("dead_letter")
        ))
        .bind(ms(since))
        .fetch_one()
        .await?;
    if n.dead_letter_threshold > 0 && dead >= n.dead_letter_threshold {
        alerts.push(Alert::DeadLetterGrowth {
            dead_letters: dead,
            threshold: n.dead_letter_threshold,
            window_minutes: n.dead_letter_window_minutes,
        });
    }
    let (brokers, group, topics) = (
        ctx.config.clickhouse.kafka_brokers.clone(),
        ctx.config.clickhouse.kafka_group.clone(),
        ctx.config.kafka.topics(),
    );
    let lag =
        tokio::task::spawn_blocking(move || consumer_lag(&brokers, &group, &topics)).await??;
    if n.consumer_lag_threshold > 0 && lag >= n.consumer_lag_threshold {
        alerts.push(Alert::ConsumerLag {
            lag,
            threshold: n.consumer_lag_threshold,
        });
    }
    crate::telemetry::PipelineMeasured {
        consumer_lag: lag,
        dead_letters: dead,
        window_minutes: n.dead_letter_window_minutes,
    }
    .emit();
    let (requests, errors) = ingest_outcomes(ctx, now).await?;
    let rate = if requests == 0 {
        0.0
    } else {
        errors as f64 / requests as f64
    };
    if n.ingest_error_rate_threshold > 0.0
        && requests >= n.ingest_error_min_requests
        && rate >= n.ingest_error_rate_threshold
    {
        alerts.push(Alert::IngestErrorRate {
            rate,
            threshold: n.ingest_error_rate_threshold,
            requests,
            errors,
            window_minutes: n.ingest_error_window_minutes,
        });
    }
    Ok(JobReport {
        rows_affected: alerts.len() as u64,
        detail: json!({
            "dead_letters": dead, "consumer_lag": lag,
            "ingest_requests": requests, "ingest_errors": errors, "ingest_error_rate": rate,
            "alerts": alerts.iter().map(|a| a.rule().as_str()).collect::<Vec<_>>(),
        }),
        busy: Vec::new(),
        alerts,
    })
}

#[derive(clickhouse::Row, serde::Deserialize)]
struct CounterSample {
    instance: String,
    status: String,
    at_ms: i64,
    value: f64,
}

#[derive(clickhouse::Row, serde::Deserialize)]
struct FirstSnapshot {
    instance: String,
    first_at: i64,
}

/// /ingest requests answered other than 429, and those answered 4xx/5xx, over
/// the `ingest_error_window_minutes` before `now`: the increase of each gateway's
/// `overwatch_http_requests_total` between its snapshots (a drop is a restart; a
/// series missing from an instance's earlier snapshot was 0 then).
async fn ingest_outcomes(ctx: &JobContext, now: OffsetDateTime) -> Result<(u64, u64), JobError> {
    let n = &ctx.config.notifications;
    let since = now - time::Duration::minutes(n.ingest_error_window_minutes as i64);
    let rows: Vec<CounterSample> = ctx
        .client
        .query(&format!(
            "SELECT labels['instance'] AS instance, labels['status'] AS status, \
             toUnixTimestamp64Milli(at) AS at_ms, value \
             FROM {} WHERE source = 'gateway' AND name = ? AND labels['route'] IN ('/ingest', 'segment', 'posthog') \
             AND at >= {AT_MS} \
             AND at <= {AT_MS} \
             ORDER BY instance, status, at",
            ctx.table("internal_metrics")
        ))
        .bind(shared::runtime::metrics::HTTP_REQUESTS)
        .bind(ms(since))
        .bind(ms(now))
        .fetch_all()
        .await?;
    // Every snapshot carries overwatch_build_info: it dates each instance's first one.
    let firsts: Vec<FirstSnapshot> = ctx
        .client
        .query(&format!(
            "SELECT labels['instance'] AS instance, toUnixTimestamp64Milli(min(at)) AS first_at \
             FROM {} WHERE source = 'gateway' AND name = ? \
             AND at >= {AT_MS} \
             AND at <= {AT_MS} GROUP BY instance",
            ctx.table("internal_metrics")
        ))
        .bind(shared::runtime::metrics::BUILD_INFO)
        .bind(ms(since))
        .bind(ms(now))
        .fetch_all()
        .await?;
    Ok(count_outcomes(&rows, &firsts))
}

fn count_outcomes(rows: &[CounterSample], firsts: &[FirstSnapshot]) -> (u64, u64) {
    let (mut requests, mut errors) = (0.0, 0.0);
    for series in rows.chunk_by(|a, b| a.instance == b.instance && a.status == b.status) {
        let born_in_window = firsts
            .iter()
            .any(|f| f.instance == series[0].instance && f.first_at < series[0].at_ms);
        let from_zero = if born_in_window { series[0].value } else { 0.0 };
        let increase: f64 = from_zero
            + series
                .windows(2)
                .map(|w| {
                    if w[1].value >= w[0].value {
                        w[1].value - w[0].value
                    } else {
                        w[1].value
                    }
                })
                .sum::<f64>();
        let status = series[0].status.as_str();
        // Rate-limit and quota refusals are deliberate: neither failures nor traffic here.
        if status == "429" {
            continue;
        }
        requests += increase;
        let failed = matches!(status.as_bytes().first(), Some(b'4' | b'5'));
        if failed {
            errors += increase;
        }
    }
    (requests as u64, errors as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(instance: &str, status: &str, value: f64) -> CounterSample {
        CounterSample {
            instance: instance.into(),
            status: status.into(),
            at_ms: 2,
            value,
        }
    }

    #[test]
    fn increases_per_series_with_restarts_and_429_excluded() {
        let rows = [
            s("a", "200", 10.0),
            s("a", "200", 70.0),
            s("a", "422", 1.0),
            s("a", "422", 11.0),
            s("a", "429", 0.0),
            s("a", "429", 50.0),
            // Restarted between snapshots: 30 → 5 means 5 new requests.
            s("b", "503", 30.0),
            s("b", "503", 5.0),
            // A single sample says nothing about the window.
            s("c", "500", 99.0),
        ];
        assert_eq!(count_outcomes(&rows, &[]), (60 + 10 + 5, 10 + 5));
    }

    #[test]
    fn a_series_absent_from_an_earlier_snapshot_counts_from_zero() {
        let rows = [CounterSample {
            instance: "a".into(),
            status: "500".into(),
            at_ms: 20,
            value: 7.0,
        }];
        let first = |first_at| FirstSnapshot {
            instance: "a".into(),
            first_at,
        };
        assert_eq!(count_outcomes(&rows, &[first(10)]), (7, 7));
        assert_eq!(count_outcomes(&rows, &[first(20)]), (0, 0));
    }
}
