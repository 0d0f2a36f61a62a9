//! The alert rules and the alerts they raise, as typed values.
//!
//! A job puts the alerts it raises into its [`JobReport`](crate::jobs::JobReport);
//! the scheduler adds [`Alert::JobFailed`] when a run fails; the
//! [`Notifier`](super::Notifier) asks [`Rule::enabled`] and delivers. Adding a
//! rule is a [`Rule`] variant (its name and switch), an [`Alert`] variant (its
//! values and words) and the setting in `[notifications]`.

use serde_json::{json, Value};
use shared::config::NotificationsConfig;
use uuid::Uuid;

/// A kind of alert: its name in logs, metrics and `notifications_log`, and
/// the setting that switches it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Rule {
    /// A scheduled job run failed (`notifications.job_failure`).
    JobFailure,
    /// A tenant used 80% of its monthly quota (`notifications.quota_warning`).
    QuotaWarning,
    /// A tenant reached its monthly quota (`notifications.quota_exceeded`).
    QuotaExceeded,
    /// Dead letters reached `notifications.dead_letter_threshold` (0 = off).
    DeadLetterGrowth,
    /// ClickHouse lags `notifications.consumer_lag_threshold` messages (0 = off).
    ConsumerLag,
    /// The share of failed ingest requests reached
    /// `notifications.ingest_error_rate_threshold` (0.0 = off).
    IngestErrorRate,
}

impl Rule {
    pub const ALL: [Rule; 6] = [
        Rule::JobFailure,
        Rule::QuotaWarning,
        Rule::QuotaExceeded,
        Rule::DeadLetterGrowth,
        Rule::ConsumerLag,
        Rule::IngestErrorRate,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Rule::JobFailure => "job_failure",
            Rule::QuotaWarning => "quota_warning",
            Rule::QuotaExceeded => "quota_exceeded",
            Rule::DeadLetterGrowth => "dead_letter_growth",
            Rule::ConsumerLag => "consumer_lag",
            Rule::IngestErrorRate => "ingest_error_rate",
        }
    }

    /// Whether `[notifications]` switches this rule on.
    pub fn enabled(self, cfg: &NotificationsConfig) -> bool {
        match self {
            Rule::JobFailure => cfg.job_failure,
            Rule::QuotaWarning => cfg.quota_warning,
            Rule::QuotaExceeded => cfg.quota_exceeded,
            Rule::DeadLetterGrowth => cfg.dead_letter_threshold > 0,
            Rule::ConsumerLag => cfg.consumer_lag_threshold > 0,
            Rule::IngestErrorRate => cfg.ingest_error_rate_threshold > 0.0,
        }
    }
}

/// One alert, with the values its rule measured.
#[derive(Debug, Clone, PartialEq)]
pub enum Alert {
    JobFailed {
        job: &'static str,
        error: String,
    },
    QuotaWarning {
        tenant: Uuid,
    },
    QuotaExceeded {
        tenant: Uuid,
    },
    DeadLetterGrowth {
        dead_letters: u64,
        threshold: u64,
        window_minutes: u64,
    },
    ConsumerLag {
        lag: u64,
        threshold: u64,
    },
    IngestErrorRate {
        rate: f64,
        threshold: f64,
        requests: u64,
        errors: u64,
        window_minutes: u64,
    },
}

impl Alert {
    pub fn rule(&self) -> Rule {
        match self {
            Alert::JobFailed { .. } => Rule::JobFailure,
            Alert::QuotaWarning { .. } => Rule::QuotaWarning,
            Alert::QuotaExceeded { .. } => Rule::QuotaExceeded,
            Alert::DeadLetterGrowth { .. } => Rule::DeadLetterGrowth,
            Alert::ConsumerLag { .. } => Rule::ConsumerLag,
            Alert::IngestErrorRate { .. } => Rule::IngestErrorRate,
        }
    }

    /// The tenant an alert is about (cooldowns are per rule, tenant and channel).
    pub fn tenant(&self) -> Option<Uuid> {
        match self {
            Alert::QuotaWarning { tenant } | Alert::QuotaExceeded { tenant } => Some(*tenant),
            _ => None,
        }
    }

    pub fn title(&self) -> String {
        match self {
            Alert::JobFailed { job, .. } => format!("job {job} failed"),
            Alert::QuotaWarning { tenant } => {
                format!("tenant {tenant} used 80% of its monthly quota")
            }
            Alert::QuotaExceeded { tenant } => {
                format!("tenant {tenant} exceeded its monthly quota")
            }
            Alert::DeadLetterGrowth { dead_letters, .. } => {
                format!("{dead_letters} messages went to dead_letter")
            }
            Alert::ConsumerLag { lag, .. } => {
                format!("ClickHouse lags {lag} messages behind the brokers")
            }
            Alert::IngestErrorRate {
                rate,
                requests,
                errors,
                ..
            } => format!(
                "{:.1}% of ingest requests failed ({errors} of {requests})",
                rate * 100.0
            ),
        }
    }

    pub fn message(&self) -> String {
        match self {
            Alert::JobFailed { error, .. } => error.clone(),
            Alert::QuotaWarning { .. } => {
                "at 100% the gateway refuses its events until the month ends".into()
            }
            Alert::QuotaExceeded { .. } => {
                "the gateway now answers 429 quota_exceeded for this tenant".into()
            }
            Alert::DeadLetterGrowth {
                threshold,
                window_minutes,
                ..
            } => format!("threshold {threshold} in {window_minutes} minutes"),
            Alert::ConsumerLag { threshold, .. } => format!("threshold {threshold}"),
            Alert::IngestErrorRate {
                threshold,
                window_minutes,
                ..
            } => format!("threshold {threshold} over {window_minutes} minutes"),
        }
    }

    /// The measured values, as webhook payloads and `notifications_log` carry them.
    pub fn detail(&self) -> Value {
        match self {
            Alert::JobFailed { job, .. } => json!({"job": job}),
            Alert::QuotaWarning { tenant } | Alert::QuotaExceeded { tenant } => {
                json!({"tenant_id": tenant.to_string()})
            }
            Alert::DeadLetterGrowth {
                dead_letters,
                threshold,
                window_minutes,
            } => {
                json!({"value": dead_letters, "threshold": threshold, "window_minutes": window_minutes})
            }
            Alert::ConsumerLag { lag, threshold } => {
                json!({"value": lag, "threshold": threshold})
            }
            Alert::IngestErrorRate {
                rate,
                threshold,
                requests,
                errors,
                window_minutes,
            } => json!({
                "value": rate, "threshold": threshold, "requests": requests,
                "errors": errors, "window_minutes": window_minutes,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_rule_has_its_own_name_and_a_switch() {
        let cfg = shared::Config::load_from(None, Vec::new())
            .expect("defaults")
            .notifications;
        let mut names: Vec<&str> = Rule::ALL.iter().map(|r| r.as_str()).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), Rule::ALL.len());
        let mut off = cfg.clone();
        off.job_failure = false;
        off.quota_warning = false;
        off.quota_exceeded = false;
        off.dead_letter_threshold = 0;
        off.consumer_lag_threshold = 0;
        off.ingest_error_rate_threshold = 0.0;
        for r in Rule::ALL {
            assert!(r.enabled(&cfg), "{r:?} is on by default");
            assert!(!r.enabled(&off), "{r:?} can be switched off");
        }
    }

    #[test]
    fn an_alert_names_its_rule_and_tenant() {
        let t = Uuid::new_v4();
        let a = Alert::QuotaExceeded { tenant: t };
        assert_eq!(a.rule(), Rule::QuotaExceeded);
        assert_eq!(a.tenant(), Some(t));
        assert!(a.title().contains(&t.to_string()));
        assert_eq!(a.detail()["tenant_id"], t.to_string());
        let lag = Alert::ConsumerLag {
            lag: 7,
            threshold: 5,
        };
        assert_eq!(lag.rule().as_str(), "consumer_lag");
        assert_eq!(lag.tenant(), None);
    }
}
