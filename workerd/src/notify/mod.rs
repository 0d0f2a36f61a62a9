//! Alerts and where they go. The notifier only gates, cools down, delivers and
//! records: which alerts exist is [`alert`], how each channel kind is reached
//! is [`channel`].
//!
//! Every alert is deduplicated per (rule, tenant, channel): a second one inside
//! `notifications.cooldown_secs` of the last one sent is suppressed. Every
//! outcome (`sent`, `failed`, `suppressed`) is a row in `notifications_log`,
//! which is also where the cooldown is read from, so it holds across restarts
//! and workerd replicas. Deliveries are retried `max_attempts` times with
//! exponential backoff.

pub mod alert;
pub mod channel;

use std::time::Duration;

use serde_json::json;
use shared::config::{ChannelConfig, NotificationsConfig};
use shared::store::Db;

pub use alert::{Alert, Rule};
pub use channel::{sign, DeliveryError, SIGNATURE_HEADER, TIMESTAMP_HEADER};

/// What happened to an alert on one channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Sent,
    Suppressed,
    Failed(String),
}

impl Outcome {
    pub fn as_str(&self) -> &'static str {
        match self {
            Outcome::Sent => "sent",
            Outcome::Suppressed => "suppressed",
            Outcome::Failed(_) => "failed",
        }
    }
}

pub struct Notifier {
    client: clickhouse::Client,
    db: Db,
    config: NotificationsConfig,
    /// One HTTP client per channel (each may trust its own CA), or why it
    /// could not be built (reported as that channel's delivery failure).
    http: Vec<Result<reqwest::Client, String>>,
}

impl Notifier {
    /// Records into `db`'s `notifications_log` through `client`.
    pub fn new(client: clickhouse::Client, db: Db, config: &NotificationsConfig) -> Notifier {
        Notifier {
            client,
            db,
            http: config
                .channels
                .iter()
                .map(|c| channel::http_client(c.ca_file()).map_err(|e| e.to_string()))
                .collect(),
            config: config.clone(),
        }
    }

    /// Sends `alert` to every channel, unless its rule is off or it is in its
    /// cooldown there; returns each channel's outcome.
    pub async fn notify(&self, alert: &Alert) -> Vec<(String, Outcome)> {
        let mut out = Vec::new();
        let rule = alert.rule();
        if !rule.enabled(&self.config) {
            return out;
        }
        for (ch, http) in self.config.channels.iter().zip(&self.http) {
            let name = ch.name();
            let outcome = match (self.in_cooldown(alert, name).await, http) {
                (Ok(true), _) => Outcome::Suppressed,
                (_, Err(e)) => Outcome::Failed(e.clone()),
                (Ok(false) | Err(_), Ok(http)) => match self.deliver(http, ch, alert).await {
                    Ok(()) => Outcome::Sent,
                    Err(e) => Outcome::Failed(e.to_string()),
                },
            };
            crate::telemetry::Notified {
                rule: rule.as_str(),
                channel: name,
                outcome: outcome.as_str(),
                error: match &outcome {
                    Outcome::Failed(e) => Some(e),
                    Outcome::Sent | Outcome::Suppressed => None,
                },
            }
            .emit();
            if let Err(e) = self.record(alert, name, &outcome).await {
                tracing::error!(error = %e, "cannot write notifications_log");
            }
            out.push((name.to_string(), outcome));
        }
        out
    }

    async fn in_cooldown(
        &self,
        alert: &Alert,
        channel: &str,
    ) -> Result<bool, clickhouse::error::Error> {
        let n: u64 = self
            .client
            .query(&format!(
                "SELECT count() FROM {} WHERE rule = ? AND channel = ? AND status = 'sent' \
                 AND ifNull(toString(tenant_id), '') = ? \
                 AND at > now64(3) - toIntervalSecond(?)",
                self.db.table("notifications_log")
            ))
            .bind(alert.rule().as_str())
            .bind(channel)
            .bind(alert.tenant().map(|t| t.to_string()).unwrap_or_default())
            .bind(self.config.cooldown_secs)
            .fetch_one()
            .await?;
        Ok(n > 0)
    }

    async fn record(
        &self,
        alert: &Alert,
        channel: &str,
        outcome: &Outcome,
    ) -> Result<(), clickhouse::error::Error> {
        let detail = match outcome {
            Outcome::Failed(e) => json!({"title": alert.title(), "error": e}),
            Outcome::Sent | Outcome::Suppressed => json!({"title": alert.title()}),
        };
        self.client
            .query(&format!(
                "INSERT INTO {} (at, rule, tenant_id, channel, status, detail) VALUES (now64(3), ?, ?, ?, ?, ?)",
                self.db.table("notifications_log")
            ))
            .bind(alert.rule().as_str())
            .bind(alert.tenant().map(|t| t.to_string()))
            .bind(channel)
            .bind(outcome.as_str())
            .bind(detail.to_string())
            .execute()
            .await
    }

    async fn deliver(
        &self,
        http: &reqwest::Client,
        ch: &ChannelConfig,
        alert: &Alert,
    ) -> Result<(), DeliveryError> {
        let mut attempt = 0;
        loop {
            match channel::deliver(http, ch, alert).await {
                Ok(()) => return Ok(()),
                Err(e) => {
                    attempt += 1;
                    tracing::warn!(channel = %ch.name(), attempt, error = %e, "delivery attempt failed");
                    if attempt >= self.config.max_attempts {
                        return Err(DeliveryError::GaveUp {
                            attempts: attempt,
                            last: Box::new(e),
                        });
                    }
                }
            }
            let pause = self
                .config
                .retry_base_ms
                .saturating_mul(1 << (attempt - 1).min(10));
            tokio::time::sleep(Duration::from_millis(pause)).await;
        }
    }
}
