//! Metrics for both binaries: every metric name in one place, the Prometheus
//! recorder (`metrics` + `metrics-exporter-prometheus`) behind `GET /metrics`, and
//! snapshots of the same numbers into ClickHouse's `internal_metrics` table, so
//! workerd's alert rules (and anyone with SQL) can read them.
//!
//! Naming follows Prometheus conventions: `overwatch_` prefix, base units
//! (seconds, bytes), `_total` on counters. Label values come from closed sets
//! (routes, status codes, error codes, tiers, job names), never from user input.

use std::sync::OnceLock;
use std::time::Duration;

use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use serde::Serialize;

// --- gateway -----------------------------------------------------------------
pub const HTTP_REQUESTS: &str = "overwatch_http_requests_total";
pub const HTTP_REQUEST_DURATION: &str = "overwatch_http_request_duration_seconds";
pub const INGEST_RECEIVED_BYTES: &str = "overwatch_ingest_received_bytes_total";
pub const INGEST_DECODED_BYTES: &str = "overwatch_ingest_decoded_bytes_total";
pub const EVENTS_ACCEPTED: &str = "overwatch_events_accepted_total";
pub const EVENTS_REJECTED: &str = "overwatch_events_rejected_total";
pub const INGEST_REJECTIONS: &str = "overwatch_ingest_rejections_total";
pub const RATE_LIMIT_REJECTIONS: &str = "overwatch_rate_limit_rejections_total";
pub const QUOTA_REJECTIONS: &str = "overwatch_quota_rejections_total";
pub const PRODUCER_QUEUE_MESSAGES: &str = "overwatch_producer_queue_messages";
pub const PRODUCER_QUEUE_BYTES: &str = "overwatch_producer_queue_bytes";
pub const PRODUCER_IN_FLIGHT: &str = "overwatch_producer_in_flight_messages";
pub const PRODUCER_DELIVERY_DURATION: &str = "overwatch_producer_delivery_duration_seconds";
pub const PRODUCER_ERRORS: &str = "overwatch_producer_errors_total";
pub const PRODUCER_REPLACEMENTS: &str = "overwatch_producer_replacements_total";
pub const PRODUCER_BROKER_RTT: &str = "overwatch_producer_broker_rtt_seconds";
pub const PRODUCER_BROKER_TX_ERRORS: &str = "overwatch_producer_broker_tx_errors_total";
pub const BROKER_UP: &str = "overwatch_broker_up";
pub const KEY_SNAPSHOT_AGE: &str = "overwatch_key_snapshot_age_seconds";
pub const KEY_SNAPSHOT_KEYS: &str = "overwatch_key_snapshot_keys";
pub const ENRICH_CACHE_LOOKUPS: &str = "overwatch_enrich_cache_lookups_total";
pub const READY: &str = "overwatch_ready";
pub const CONNECTIONS_REFUSED: &str = "overwatch_connections_refused_total";
pub const CONNECTIONS_CLOSED: &str = "overwatch_connections_closed_total";
pub const UA_DEFERRED: &str = "overwatch_enrich_ua_deferred_total";

// --- workerd -------------------------------------------------------------------
pub const JOB_RUNS: &str = "overwatch_job_runs_total";
pub const JOB_DURATION: &str = "overwatch_job_duration_seconds";
pub const JOB_ROWS: &str = "overwatch_job_rows_affected_total";
pub const JOB_CONSECUTIVE_FAILURES: &str = "overwatch_job_consecutive_failures";
pub const JOB_LAST_SUCCESS: &str = "overwatch_job_last_success_timestamp_seconds";
pub const RETENTION_DELETED_ROWS: &str = "overwatch_retention_deleted_rows_total";
pub const NOTIFICATIONS: &str = "overwatch_notifications_total";
pub const CLICKHOUSE_UP: &str = "overwatch_clickhouse_up";

// --- both ----------------------------------------------------------------------
pub const BUILD_INFO: &str = "overwatch_build_info";
pub const SNAPSHOT_ERRORS: &str = "overwatch_metrics_snapshot_errors_total";

/// Request latency buckets (seconds): 1 ms … 10 s, eleven of them.
pub const LATENCY_BUCKETS: [f64; 11] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 10.0,
];
/// Job duration buckets (seconds): 100 ms … 1 h.
pub const JOB_BUCKETS: [f64; 10] = [0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the process-wide recorder once (later calls return the same handle)
/// and describes every metric. Also starts the upkeep that keeps histogram
/// memory bounded when nobody scrapes (needs a Tokio runtime).
pub fn install() -> &'static PrometheusHandle {
    HANDLE.get_or_init(|| {
        let builder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Full(JOB_DURATION.into()), &JOB_BUCKETS)
            .and_then(|b| b.set_buckets(&LATENCY_BUCKETS));
        let recorder = match builder {
            Ok(b) => b.build_recorder(),
            // The bucket lists are non-empty constants; this cannot fail.
            Err(_) => PrometheusBuilder::new().build_recorder(),
        };
        let handle = recorder.handle();
        if metrics::set_global_recorder(recorder).is_err() {
            tracing::warn!("a metrics recorder was already installed; /metrics stays empty");
        }
        describe();
        metrics::gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let h = handle.clone();
            rt.spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_secs(5));
                loop {
                    tick.tick().await;
                    h.run_upkeep();
                }
            });
        }
        handle
    })
}

/// The Prometheus text exposition of every metric recorded so far.
pub fn render() -> String {
    install().render()
}

/// `Content-Type` of [`render`]'s output.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

fn describe() {
    describe_counter!(
        CONNECTIONS_REFUSED,
        Unit::Count,
        "Connections answered 503 and closed at accept: the listener was at its connection limit"
    );
    describe_counter!(
        CONNECTIONS_CLOSED,
        Unit::Count,
        "Connections the gateway closed, by reason (header_timeout, idle)"
    );
    describe_counter!(
        UA_DEFERRED,
        Unit::Count,
        "Events whose user agent was left for workerd's enrichment job (per-request parse budget spent)"
    );
    describe_counter!(
        HTTP_REQUESTS,
        "HTTP requests answered, by route and status code."
    );
    describe_histogram!(
        HTTP_REQUEST_DURATION,
        Unit::Seconds,
        "Time from request head to response, by route."
    );
    describe_counter!(
        INGEST_RECEIVED_BYTES,
        Unit::Bytes,
        "Request body bytes received on /ingest, as sent (compressed or not)."
    );
    describe_counter!(
        INGEST_DECODED_BYTES,
        Unit::Bytes,
        "Request body bytes on /ingest after decompression."
    );
    describe_counter!(
        EVENTS_ACCEPTED,
        "Events the broker acknowledged (answered 200), by tier."
    );
    describe_counter!(
        EVENTS_REJECTED,
        "Events in refused batches whose size was known, by reason (error code) and tier."
    );
    describe_counter!(
        INGEST_REJECTIONS,
        "Refused /ingest requests, by reason (error code) and tier (unknown before authentication)."
    );
    describe_counter!(
        RATE_LIMIT_REJECTIONS,
        "Requests refused by a rate limit, by tier and scope (tenant or global)."
    );
    describe_counter!(
        QUOTA_REJECTIONS,
        "Requests refused because the tenant used up its monthly quota, by tier."
    );
    describe_gauge!(
        PRODUCER_QUEUE_MESSAGES,
        "Messages in the producer's queue, waiting or in flight (librdkafka statistics msg_cnt)."
    );
    describe_gauge!(
        PRODUCER_QUEUE_BYTES,
        Unit::Bytes,
        "Bytes in the producer's queue (librdkafka statistics msg_size)."
    );
    describe_gauge!(
        PRODUCER_IN_FLIGHT,
        "Messages produced but not yet acknowledged, read at scrape time."
    );
    describe_histogram!(
        PRODUCER_DELIVERY_DURATION,
        Unit::Seconds,
        "Time from producing a request's events to the last delivery report."
    );
    describe_counter!(
        PRODUCER_ERRORS,
        "Failed produce calls, by kind (enqueue, delivery, timeout, canceled)."
    );
    describe_counter!(
        PRODUCER_REPLACEMENTS,
        "Producers replaced after a failed delivery."
    );
    describe_gauge!(
        PRODUCER_BROKER_RTT,
        Unit::Seconds,
        "Broker round-trip time seen by the producer (librdkafka statistics), by broker and percentile (50, 99)."
    );
    describe_counter!(
        PRODUCER_BROKER_TX_ERRORS,
        "Transmission errors towards a broker (librdkafka statistics txerrs), by broker."
    );
    describe_gauge!(
        BROKER_UP,
        "1 when the last metadata probe reached a broker, else 0."
    );
    describe_gauge!(
        KEY_SNAPSHOT_AGE,
        Unit::Seconds,
        "Age of the API-key snapshot loaded from ClickHouse (absent when keys come from config only)."
    );
    describe_gauge!(KEY_SNAPSHOT_KEYS, "API keys in the current snapshot.");
    describe_counter!(
        ENRICH_CACHE_LOOKUPS,
        "Enrichment lookups, by cache (ua: the shared user-agent cache; ua_request, geo_request: the per-request memo) and result (hit, miss)."
    );
    describe_gauge!(
        READY,
        "1 when the process answers 200 on /health/ready, else 0."
    );
    describe_counter!(
        JOB_RUNS,
        "Job runs, by job_name and outcome (success, failure, skipped_overlap, skipped_backoff)."
    );
    describe_histogram!(JOB_DURATION, Unit::Seconds, "Job run time, by job_name.");
    describe_counter!(
        JOB_ROWS,
        "Rows a job inserted, deleted or rewrote, by job_name."
    );
    describe_gauge!(
        JOB_CONSECUTIVE_FAILURES,
        "Failed runs of a job since its last success."
    );
    describe_gauge!(
        JOB_LAST_SUCCESS,
        Unit::Seconds,
        "Unix time of a job's last successful run."
    );
    describe_counter!(
        RETENTION_DELETED_ROWS,
        "Rows the retention job deleted, by tier and table."
    );
    describe_counter!(
        NOTIFICATIONS,
        "Alert deliveries, by rule, channel and outcome (sent, suppressed, failed)."
    );
    describe_gauge!(
        CLICKHOUSE_UP,
        "1 when ClickHouse answered the last health check, else 0."
    );
    describe_gauge!(BUILD_INFO, "Always 1; the version label names the build.");
    describe_counter!(
        SNAPSHOT_ERRORS,
        "Failed writes of metric snapshots into internal_metrics."
    );
}

/// One sample of the text exposition.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

/// Parses the text exposition [`render`] writes: `name{k="v",…} value` lines;
/// comments and malformed lines are skipped.
pub fn parse_exposition(text: &str) -> Vec<Sample> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(parse_line)
        .collect()
}

fn parse_line(line: &str) -> Option<Sample> {
    let (series, value) = line.rsplit_once(' ')?;
    let value: f64 = value.parse().ok()?;
    let Some((name, rest)) = series.split_once('{') else {
        return Some(Sample {
            name: series.to_string(),
            labels: Vec::new(),
            value,
        });
    };
    let body = rest.strip_suffix('}')?;
    let mut labels = Vec::new();
    let mut chars = body.chars().peekable();
    loop {
        let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
        if key.is_empty() {
            break;
        }
        if chars.next() != Some('"') {
            return None;
        }
        let mut val = String::new();
        loop {
            match chars.next()? {
                '\\' => match chars.next()? {
                    'n' => val.push('\n'),
                    other => val.push(other),
                },
                '"' => break,
                c => val.push(c),
            }
        }
        labels.push((key.trim_start_matches(',').to_string(), val));
        if chars.peek() == Some(&',') {
            chars.next();
        }
    }
    Some(Sample {
        name: name.to_string(),
        labels,
        value,
    })
}

#[derive(clickhouse::Row, Serialize)]
struct MetricRow<'a> {
    #[serde(with = "clickhouse::serde::time::datetime64::millis")]
    at: time::OffsetDateTime,
    source: &'a str,
    name: &'a str,
    labels: Vec<(&'a str, &'a str)>,
    value: f64,
}

/// Writes every counter and gauge sample (histograms as `_sum` and `_count`
/// only) into `database.internal_metrics`, labelled with `instance`. Returns the
/// rows written.
pub async fn snapshot(
    client: &clickhouse::Client,
    database: &str,
    source: &str,
    instance: &str,
) -> Result<usize, clickhouse::error::Error> {
    let samples = parse_exposition(&render());
    let at = time::OffsetDateTime::now_utc();
    let mut insert = client
        .clone()
        .with_database(database)
        .insert::<MetricRow<'_>>("internal_metrics")
        .await?;
    let mut n = 0;
    for s in samples.iter().filter(|s| !s.name.ends_with("_bucket")) {
        let mut labels: Vec<(&str, &str)> = s
            .labels
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        labels.push(("instance", instance));
        insert
            .write(&MetricRow {
                at,
                source,
                name: &s.name,
                labels,
                value: s.value,
            })
            .await?;
        n += 1;
    }
    insert.end().await?;
    Ok(n)
}

/// This process's `instance` label: host name and process id (a restarted
/// process is a new series, so counter resets are never mistaken for drops).
pub fn instance() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|h| h.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into());
    format!("{host}:{}", std::process::id())
}

/// Snapshots into `internal_metrics` every `interval` until the task is aborted.
/// Failures are logged and counted, never fatal.
pub fn spawn_snapshots(
    client: clickhouse::Client,
    database: &str,
    source: &'static str,
    interval: Duration,
) -> tokio::task::JoinHandle<()> {
    let database = database.to_string();
    let instance = instance();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if let Err(e) = snapshot(&client, &database, source, &instance).await {
                metrics::counter!(SNAPSHOT_ERRORS).increment(1);
                tracing::warn!(error = %e, %database, "metrics snapshot not written into internal_metrics");
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_labels_with_escapes_and_plain_samples() {
        let text = "# HELP x y\n# TYPE x counter\n\
                    overwatch_http_requests_total{route=\"/ingest\",status=\"200\"} 12\n\
                    overwatch_ready 1\n\
                    weird{a=\"q\\\"uote,b\",b=\"\"} 2.5\n\
                    garbage line\n";
        let s = parse_exposition(text);
        assert_eq!(s.len(), 3, "{s:?}");
        assert_eq!(s[0].name, "overwatch_http_requests_total");
        assert_eq!(
            s[0].labels,
            vec![
                ("route".to_string(), "/ingest".to_string()),
                ("status".to_string(), "200".to_string())
            ]
        );
        assert_eq!(s[0].value, 12.0);
        assert_eq!(s[1].labels, vec![]);
        assert_eq!(
            s[2].labels,
            vec![
                ("a".to_string(), "q\"uote,b".to_string()),
                ("b".to_string(), String::new())
            ]
        );
    }
}
