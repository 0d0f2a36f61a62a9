//! `[jobs]`: when each of workerd's jobs runs, how far back they recompute,
//! their backoff after failures and the archive leases.

use serde::Deserialize;

use super::check::positive;
use super::ConfigError;

/// When a job runs: a cron expression with seconds (`sec min hour day month
/// weekday`, UTC), or empty for never. Checked when the configuration loads,
/// with the parser the scheduler uses.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct Schedule(Option<String>);

/// A schedule the scheduler could not run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{expression}` is not a cron expression with seconds (sec min hour day month weekday): {reason}")]
pub struct BadSchedule {
    pub expression: String,
    pub reason: String,
}

impl Schedule {
    /// The cron expression, or `None` when the job is not scheduled.
    pub fn cron(&self) -> Option<&str> {
        self.0.as_deref()
    }

    pub fn parse(s: &str) -> Result<Schedule, BadSchedule> {
        let s = s.trim();
        if s.is_empty() {
            return Ok(Schedule(None));
        }
        croner::parser::CronParser::builder()
            .seconds(croner::parser::Seconds::Required)
            .dom_and_dow(true)
            .build()
            .parse(s)
            .map_err(|e| BadSchedule {
                expression: s.to_string(),
                reason: e.to_string(),
            })?;
        Ok(Schedule(Some(s.to_string())))
    }
}

impl TryFrom<String> for Schedule {
    type Error = BadSchedule;
    fn try_from(s: String) -> Result<Schedule, BadSchedule> {
        Schedule::parse(&s)
    }
}

impl std::fmt::Debug for Schedule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            Some(c) => write!(f, "{c:?}"),
            None => f.write_str("off"),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobsConfig {
    pub session_gap_minutes: u64,
    pub recompute_window_hours: u64,
    pub retention_cron: Schedule,
    pub sessions_cron: Schedule,
    pub rollups_cron: Schedule,
    pub quota_cron: Schedule,
    pub compression_cron: Schedule,
    pub enrichment_cron: Schedule,
    pub alerts_cron: Schedule,
    pub compression_after_hours: u64,
    pub backoff_base_ms: u64,
    pub backoff_max_ms: u64,
    /// How long a job's lease on a tenant's archives lasts unless renewed.
    pub lease_ttl_secs: u64,
}

impl JobsConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        positive("jobs.session_gap_minutes", self.session_gap_minutes)?;
        positive("jobs.lease_ttl_secs", self.lease_ttl_secs)?;
        positive("jobs.recompute_window_hours", self.recompute_window_hours)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedules_are_judged_by_the_scheduler_s_grammar() {
        assert_eq!(Schedule::parse("").expect("off").cron(), None);
        assert_eq!(
            Schedule::parse("0 */5 * * * *").expect("valid").cron(),
            Some("0 */5 * * * *")
        );
        // Five fields: the seconds are missing.
        assert!(Schedule::parse("*/5 * * * *").is_err());
        assert!(Schedule::parse("every day").is_err());
    }
}
