//! workerd's internal events: each `emit()` logs and counts together. Metric
//! names live in [`shared::metrics`].

use std::time::Duration;

use metrics::{counter, gauge, histogram};
use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
use shared::runtime::metrics as m;

/// Job duration buckets (seconds): 100 ms … 1 h.
const JOB_BUCKETS: [f64; 10] = [0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0];

/// Installs the metrics recorder with workerd's metrics.
pub fn install_metrics() {
    m::install(&m::Catalogue {
        describe: || {
            describe();
            shared::enrich::describe_metrics();
        },
        buckets: &[(JOB_DURATION, &JOB_BUCKETS)],
    });
}

/// A job run ended (or was skipped).
pub struct JobFinished<'a> {
    pub job: &'a str,
    /// `success`, `failure`, `skipped_overlap` or `skipped_backoff`.
    pub outcome: &'static str,
    pub elapsed: Option<Duration>,
    pub rows: u64,
    pub consecutive_failures: u32,
}

impl JobFinished<'_> {
    pub fn emit(&self) {
        let job = self.job.to_string();
        counter!(JOB_RUNS, "job_name" => job.clone(), "outcome" => self.outcome).increment(1);
        if let Some(d) = self.elapsed {
            histogram!(JOB_DURATION, "job_name" => job.clone()).record(d.as_secs_f64());
        }
        if self.rows > 0 {
            counter!(JOB_ROWS, "job_name" => job.clone()).increment(self.rows);
        }
        gauge!(JOB_CONSECUTIVE_FAILURES, "job_name" => job.clone())
            .set(self.consecutive_failures as f64);
        if self.outcome == "success" {
            let now = time::OffsetDateTime::now_utc().unix_timestamp_nanos() as f64 / 1e9;
            gauge!(JOB_LAST_SUCCESS, "job_name" => job).set(now);
        }
    }
}

/// Retention deleted `rows` of `table` for a tenant on `tier`.
pub fn retention_deleted(tier: &'static str, table: &'static str, rows: u64) {
    if rows > 0 {
        counter!(RETENTION_DELETED_ROWS, "tier" => tier, "table" => table).increment(rows);
    }
}

/// An alert went (or did not go) to a channel: `outcome` is `sent`,
/// `suppressed` (cooldown) or `failed` (with `error`).
pub struct Notified<'a> {
    pub rule: &'static str,
    pub channel: &'a str,
    pub outcome: &'static str,
    pub error: Option<&'a str>,
}

impl Notified<'_> {
    pub fn emit(&self) {
        let (rule, channel) = (self.rule, self.channel);
        match self.error {
            Some(error) => tracing::error!(rule, channel, error, "alert delivery failed"),
            None => tracing::info!(
                rule,
                channel,
                outcome = self.outcome,
                "alert {}",
                self.outcome
            ),
        }
        counter!(NOTIFICATIONS, "rule" => rule, "channel" => channel.to_string(), "outcome" => self.outcome)
            .increment(1);
    }
}

/// The health check's view of ClickHouse.
pub fn clickhouse_up(up: bool, ready: bool) {
    gauge!(CLICKHOUSE_UP).set(if up { 1.0 } else { 0.0 });
    gauge!(m::READY).set(if ready { 1.0 } else { 0.0 });
}

/// The alerts job measured the pipeline: ClickHouse's consumer lag and the
/// dead letters of the recent window, exported for Prometheus as well as
/// checked against the notification thresholds.
pub struct PipelineMeasured {
    pub consumer_lag: u64,
    pub dead_letters: u64,
    pub window_minutes: u64,
}

impl PipelineMeasured {
    pub fn emit(&self) {
        gauge!(CONSUMER_LAG).set(self.consumer_lag as f64);
        gauge!(DEAD_LETTERS_RECENT).set(self.dead_letters as f64);
        gauge!(PIPELINE_MEASURED).set(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                .as_secs_f64(),
        );
        tracing::debug!(
            consumer_lag = self.consumer_lag,
            dead_letters = self.dead_letters,
            window_minutes = self.window_minutes,
            "pipeline measured"
        );
    }
}

// The metrics emitted here, by name (their descriptions below).
pub const JOB_RUNS: &str = "overwatch_job_runs_total";
pub const JOB_DURATION: &str = "overwatch_job_duration_seconds";
pub const JOB_ROWS: &str = "overwatch_job_rows_affected_total";
pub const JOB_CONSECUTIVE_FAILURES: &str = "overwatch_job_consecutive_failures";
pub const JOB_LAST_SUCCESS: &str = "overwatch_job_last_success_timestamp_seconds";
pub const RETENTION_DELETED_ROWS: &str = "overwatch_retention_deleted_rows_total";
pub const NOTIFICATIONS: &str = "overwatch_notifications_total";
pub const CLICKHOUSE_UP: &str = "overwatch_clickhouse_up";
pub const CONSUMER_LAG: &str = "overwatch_clickhouse_consumer_lag_messages";
pub const DEAD_LETTERS_RECENT: &str = "overwatch_dead_letters_recent";
pub const PIPELINE_MEASURED: &str = "overwatch_pipeline_measured_timestamp_seconds";

/// Describes the metrics above to the recorder.
fn describe() {
    describe_counter!(
        JOB_RUNS,
        "Job runs, by job_name and outcome (success, failure, skipped_overlap, skipped_backoff, skipped_elsewhere)."
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
        CONSUMER_LAG,
        "Messages on the events topics ClickHouse's consumer group has not consumed, at the alerts job's last run."
    );
    describe_gauge!(
        DEAD_LETTERS_RECENT,
        "Messages ClickHouse routed to dead_letter in the last notifications.dead_letter_window_minutes, at the alerts job's last run."
    );
    describe_gauge!(
        PIPELINE_MEASURED,
        Unit::Seconds,
        "Unix time of the alerts job's last measurement of consumer lag and dead letters (only the replica that ran it exports fresh values)."
    );
    describe_gauge!(
        CLICKHOUSE_UP,
        "1 when ClickHouse answered the last health check, else 0."
    );
}
