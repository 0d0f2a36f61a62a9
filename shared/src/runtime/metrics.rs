//! Metrics for both binaries: the Prometheus
//! recorder (`metrics` + `metrics-exporter-prometheus`) behind `GET /metrics`, and
//! snapshots of the same numbers into ClickHouse's `internal_metrics` table, so
//! workerd's alert rules (and anyone with SQL) can read them.
//!
//! Naming follows Prometheus conventions: `overwatch_` prefix, base units
//! (seconds, bytes), `_total` on counters. Label values come from closed sets
//! (routes, status codes, error codes, tiers, job names), never from user input.

use std::sync::OnceLock;
use std::time::Duration;

use metrics::{describe_counter, describe_gauge};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use serde::Serialize;

// Names more than one component uses: the request counter the gateway emits
// and workerd's ingest-error-rate alert reads back from `internal_metrics`,
// readiness (both binaries), and the recorder's own.
pub const HTTP_REQUESTS: &str = "overwatch_http_requests_total";
pub const READY: &str = "overwatch_ready";
pub const BUILD_INFO: &str = "overwatch_build_info";
pub const SNAPSHOT_ERRORS: &str = "overwatch_metrics_snapshot_errors_total";

/// Request latency buckets (seconds): 1 ms … 10 s, eleven of them.
pub const LATENCY_BUCKETS: [f64; 11] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 10.0,
];

/// What a binary adds to the recorder: the descriptions of the metrics it
/// emits (names live with the code that emits them) and histogram buckets
/// other than [`LATENCY_BUCKETS`].
pub struct Catalogue {
    pub describe: fn(),
    pub buckets: &'static [(&'static str, &'static [f64])],
}

impl Catalogue {
    /// Only the shared metrics (tests, tools).
    pub const SHARED: Catalogue = Catalogue {
        describe: || {},
        buckets: &[],
    };
}

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the process-wide recorder once (later calls return the same handle)
/// and describes the shared metrics and the `catalogue`'s. Also starts the
/// upkeep that keeps histogram memory bounded when nobody scrapes (needs a
/// Tokio runtime).
pub fn install(catalogue: &Catalogue) -> &'static PrometheusHandle {
    HANDLE.get_or_init(|| {
        let mut builder = PrometheusBuilder::new().set_buckets(&LATENCY_BUCKETS);
        for (name, buckets) in catalogue.buckets {
            builder = builder
                .and_then(|b| b.set_buckets_for_metric(Matcher::Full(name.to_string()), buckets));
        }
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
        (catalogue.describe)();
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
    install(&Catalogue::SHARED).render()
}

/// `Content-Type` of [`render`]'s output.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

fn describe() {
    describe_counter!(
        HTTP_REQUESTS,
        "HTTP requests answered, by route and status code."
    );
    describe_gauge!(
        READY,
        "1 when the process answers 200 on /health/ready, else 0."
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
