//! workerd's internal events: each `emit()` logs and counts together. Metric
//! names live in [`shared::metrics`].

use std::time::Duration;

use metrics::{counter, gauge, histogram};
use shared::metrics as m;

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
        counter!(m::JOB_RUNS, "job_name" => job.clone(), "outcome" => self.outcome).increment(1);
        if let Some(d) = self.elapsed {
            histogram!(m::JOB_DURATION, "job_name" => job.clone()).record(d.as_secs_f64());
        }
        if self.rows > 0 {
            counter!(m::JOB_ROWS, "job_name" => job.clone()).increment(self.rows);
        }
        gauge!(m::JOB_CONSECUTIVE_FAILURES, "job_name" => job.clone())
            .set(self.consecutive_failures as f64);
        if self.outcome == "success" {
            let now = time::OffsetDateTime::now_utc().unix_timestamp_nanos() as f64 / 1e9;
            gauge!(m::JOB_LAST_SUCCESS, "job_name" => job).set(now);
        }
    }
}

/// Retention deleted `rows` of `table` for a tenant on `tier`.
pub fn retention_deleted(tier: &'static str, table: &'static str, rows: u64) {
    if rows > 0 {
        counter!(m::RETENTION_DELETED_ROWS, "tier" => tier, "table" => table).increment(rows);
    }
}

/// An alert went (or did not go) to a channel.
pub fn notification(rule: &str, channel: &str, outcome: &'static str) {
    counter!(m::NOTIFICATIONS, "rule" => rule.to_string(), "channel" => channel.to_string(), "outcome" => outcome)
        .increment(1);
}

/// The health check's view of ClickHouse.
pub fn clickhouse_up(up: bool, ready: bool) {
    gauge!(m::CLICKHOUSE_UP).set(if up { 1.0 } else { 0.0 });
    gauge!(m::READY).set(if ready { 1.0 } else { 0.0 });
}
