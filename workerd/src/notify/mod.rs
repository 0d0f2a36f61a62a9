//! Alerts and where they go: log, webhook (HMAC-signed), Slack and Discord
//! incoming webhooks in their native payloads, and email over SMTP (lettre).
//!
//! Every alert is deduplicated per (rule, tenant, channel): a second one inside
//! `notifications.cooldown_secs` of the last one sent is suppressed. Every
//! outcome (`sent`, `failed`, `suppressed`) is a row in `notifications_log`,
//! which is also where the cooldown is read from, so it holds across restarts
//! and workerd replicas. Deliveries are retried `max_attempts` times with
//! exponential backoff.

use std::time::Duration;

use hmac::{Hmac, Mac};
use lettre::message::Mailbox;
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use serde_json::json;
use sha2::Sha256;
use shared::ch::ident;
use shared::config::{ChannelConfig, ChannelKind, Config, SmtpTls};
use uuid::Uuid;

/// Header with the webhook body's signature: hex HMAC-SHA256(secret, "<ts>.<body>").
pub const SIGNATURE_HEADER: &str = "x-overwatch-signature";
pub const TIMESTAMP_HEADER: &str = "x-overwatch-timestamp";

#[derive(Debug, Clone, PartialEq)]
pub struct Alert {
    /// `quota_warning`, `quota_exceeded`, `job_failure`, …
    pub rule: String,
    pub tenant: Option<Uuid>,
    pub title: String,
    pub message: String,
    pub detail: serde_json::Value,
}

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
    database: String,
    config: shared::config::NotificationsConfig,
    http: reqwest::Client,
}

/// The webhook signature for `body` sent at `timestamp`.
pub fn sign(secret: &str, timestamp: &str, body: &[u8]) -> String {
    // HMAC takes keys of any length.
    let mut m =
        <Hmac<Sha256> as Mac>::new_from_slice(secret.as_bytes()).unwrap_or_else(|_| unreachable!());
    m.update(timestamp.as_bytes());
    m.update(b".");
    m.update(body);
    hex::encode(m.finalize().into_bytes())
}

impl Notifier {
    pub fn new(cfg: &Config) -> Notifier {
        Notifier {
            client: shared::ch::client(&cfg.clickhouse),
            database: cfg.clickhouse.database.clone(),
            config: cfg.notifications.clone(),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap_or_default(),
        }
    }

    fn table(&self) -> String {
        format!("{}.{}", ident(&self.database), ident("notifications_log"))
    }

    /// Whether `rule` is switched on in `notifications`.
    pub fn enabled(&self, rule: &str) -> bool {
        match rule {
            "quota_warning" => self.config.quota_warning,
            "quota_exceeded" => self.config.quota_exceeded,
            "job_failure" => self.config.job_failure,
            "dead_letter_growth" => self.config.dead_letter_threshold > 0,
            "consumer_lag" => self.config.consumer_lag_threshold > 0,
            "ingest_error_rate" => self.config.ingest_error_rate_threshold > 0.0,
            _ => true,
        }
    }

    /// Sends `alert` to every channel, honouring the cooldown; returns each
    /// channel's outcome.
    pub async fn notify(&self, alert: &Alert) -> Vec<(String, Outcome)> {
        let mut out = Vec::new();
        if !self.enabled(&alert.rule) {
            return out;
        }
        for ch in &self.config.channels {
            let outcome = match self.in_cooldown(alert, &ch.name).await {
                Ok(true) => Outcome::Suppressed,
                Ok(false) | Err(_) => match self.deliver(ch, alert).await {
                    Ok(()) => Outcome::Sent,
                    Err(e) => Outcome::Failed(e),
                },
            };
            match &outcome {
                Outcome::Sent => {
                    tracing::info!(rule = %alert.rule, channel = %ch.name, "alert sent")
                }
                Outcome::Suppressed => {
                    tracing::info!(rule = %alert.rule, channel = %ch.name, "alert suppressed (cooldown)")
                }
                Outcome::Failed(e) => {
                    tracing::error!(rule = %alert.rule, channel = %ch.name, error = %e, "alert delivery failed")
                }
            }
            crate::telemetry::notification(&alert.rule, &ch.name, outcome.as_str());
            if let Err(e) = self.record(alert, &ch.name, &outcome).await {
                tracing::error!(error = %e, "cannot write notifications_log");
            }
            out.push((ch.name.clone(), outcome));
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
                self.table()
            ))
            .bind(&alert.rule)
            .bind(channel)
            .bind(alert.tenant.map(|t| t.to_string()).unwrap_or_default())
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
            Outcome::Failed(e) => json!({"title": alert.title, "error": e}),
            Outcome::Sent | Outcome::Suppressed => json!({"title": alert.title}),
        };
        self.client
            .query(&format!(
                "INSERT INTO {} (at, rule, tenant_id, channel, status, detail) VALUES (now64(3), ?, ?, ?, ?, ?)",
                self.table()
            ))
            .bind(&alert.rule)
            .bind(alert.tenant.map(|t| t.to_string()))
            .bind(channel)
            .bind(outcome.as_str())
            .bind(detail.to_string())
            .execute()
            .await
    }

    async fn deliver(&self, ch: &ChannelConfig, alert: &Alert) -> Result<(), String> {
        let mut last = String::new();
        for attempt in 0..self.config.max_attempts {
            if attempt > 0 {
                let pause = self
                    .config
                    .retry_base_ms
                    .saturating_mul(1 << (attempt - 1).min(10));
                tokio::time::sleep(Duration::from_millis(pause)).await;
            }
            match self.deliver_once(ch, alert).await {
                Ok(()) => return Ok(()),
                Err(e) => {
                    tracing::warn!(channel = %ch.name, attempt = attempt + 1, error = %e, "delivery attempt failed");
                    last = e;
                }
            }
        }
        Err(format!(
            "{} attempts failed; last: {last}",
            self.config.max_attempts
        ))
    }

    async fn deliver_once(&self, ch: &ChannelConfig, alert: &Alert) -> Result<(), String> {
        let text = format!("[Overwatch] {}: {}", alert.title, alert.message);
        match ch.kind {
            ChannelKind::Log => {
                tracing::warn!(rule = %alert.rule, tenant = ?alert.tenant, detail = %alert.detail, "ALERT {text}");
                Ok(())
            }
            ChannelKind::Webhook => {
                let body = json!({
                    "rule": alert.rule, "tenant_id": alert.tenant.map(|t| t.to_string()),
                    "title": alert.title, "message": alert.message, "detail": alert.detail,
                })
                .to_string();
                let ts = time::OffsetDateTime::now_utc().unix_timestamp().to_string();
                let mut req = self
                    .http
                    .post(&ch.url)
                    .header("content-type", "application/json")
                    .header(TIMESTAMP_HEADER, &ts);
                if !ch.secret.is_empty() {
                    req = req.header(SIGNATURE_HEADER, sign(&ch.secret, &ts, body.as_bytes()));
                }
                Self::check(req.body(body).send().await)
            }
            ChannelKind::Slack => Self::check(
                self.http
                    .post(&ch.url)
                    .json(&json!({ "text": text }))
                    .send()
                    .await,
            ),
            ChannelKind::Discord => Self::check(
                self.http
                    .post(&ch.url)
                    .json(&json!({ "content": text }))
                    .send()
                    .await,
            ),
            ChannelKind::Email => self.email(ch, alert, &text).await,
        }
    }

    fn check(r: Result<reqwest::Response, reqwest::Error>) -> Result<(), String> {
        match r {
            Ok(resp) if resp.status().is_success() => Ok(()),
            Ok(resp) => Err(format!("HTTP {}", resp.status())),
            Err(e) => Err(e.to_string()),
        }
    }

    async fn email(&self, ch: &ChannelConfig, alert: &Alert, subject: &str) -> Result<(), String> {
        let from: Mailbox = ch.from.parse().map_err(|e| format!("from: {e}"))?;
        let mut msg = Message::builder().from(from).subject(subject);
        for to in &ch.to {
            msg = msg.to(to.parse::<Mailbox>().map_err(|e| format!("to {to}: {e}"))?);
        }
        let body = format!(
            "{}\n\n{}\n\ndetail: {}\n",
            alert.title, alert.message, alert.detail
        );
        let msg = msg.body(body).map_err(|e| e.to_string())?;
        let plain = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&ch.smtp_host);
        let builder = match ch.smtp_tls {
            SmtpTls::None => plain,
            SmtpTls::Starttls => plain.tls(Tls::Required(tls_parameters(ch)?)),
            SmtpTls::Tls => plain.tls(Tls::Wrapper(tls_parameters(ch)?)),
        };
        let mut builder = builder
            .port(ch.smtp_port)
            .timeout(Some(Duration::from_secs(15)));
        if !ch.smtp_user.is_empty() {
            builder = builder.credentials(Credentials::new(
                ch.smtp_user.clone(),
                ch.smtp_password.clone(),
            ));
        }
        builder
            .build()
            .send(msg)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    }
}

/// TLS for `ch`'s SMTP server: its host name checked against the certificate,
/// trusting the system's roots and, when set, `smtp_ca_file`.
fn tls_parameters(ch: &ChannelConfig) -> Result<TlsParameters, String> {
    let mut b = TlsParameters::builder(ch.smtp_host.clone());
    if !ch.smtp_ca_file.is_empty() {
        let pem = std::fs::read(&ch.smtp_ca_file)
            .map_err(|e| format!("reading smtp_ca_file {}: {e}", ch.smtp_ca_file))?;
        let ca = Certificate::from_pem(&pem)
            .map_err(|e| format!("smtp_ca_file {}: {e}", ch.smtp_ca_file))?;
        b = b.add_root_certificate(ca);
    }
    b.build_rustls()
        .map_err(|e| format!("TLS set-up for {}: {e}", ch.smtp_host))
}

/// Alerts a job run raises: `job_failure` on an error; after `quota`, one
/// `quota_exceeded` or `quota_warning` per tenant it lists; after `alerts`,
/// `dead_letter_growth`, `consumer_lag` and `ingest_error_rate`.
pub fn alerts_for(job: &str, result: &Result<serde_json::Value, String>) -> Vec<Alert> {
    match result {
        Err(e) => vec![Alert {
            rule: "job_failure".into(),
            tenant: None,
            title: format!("job {job} failed"),
            message: e.clone(),
            detail: json!({"job": job}),
        }],
        Ok(detail) if job == "quota" => {
            let tenants = |key: &str| -> Vec<Uuid> {
                detail[key]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .filter_map(|v| v.as_str().and_then(|s| Uuid::try_parse(s).ok()))
                            .collect()
                    })
                    .unwrap_or_default()
            };
            let mut out = Vec::new();
            for t in tenants("over_quota") {
                out.push(Alert {
                    rule: "quota_exceeded".into(),
                    tenant: Some(t),
                    title: format!("tenant {t} exceeded its monthly quota"),
                    message: "the gateway now answers 429 quota_exceeded for this tenant".into(),
                    detail: json!({"tenant_id": t.to_string()}),
                });
            }
            for t in tenants("over_80_percent") {
                out.push(Alert {
                    rule: "quota_warning".into(),
                    tenant: Some(t),
                    title: format!("tenant {t} used 80% of its monthly quota"),
                    message: "at 100% the gateway refuses its events until the month ends".into(),
                    detail: json!({"tenant_id": t.to_string()}),
                });
            }
            out
        }
        Ok(detail) if job == "alerts" => detail["alerts"]
            .as_array()
            .map(|list| {
                list.iter()
                    .map(|a| {
                        let rule = a["rule"].as_str().unwrap_or("alert").to_string();
                        let title = match rule.as_str() {
                            "dead_letter_growth" => {
                                format!("{} messages went to dead_letter", a["value"])
                            }
                            "consumer_lag" => format!(
                                "ClickHouse lags {} messages behind the brokers",
                                a["value"]
                            ),
                            "ingest_error_rate" => format!(
                                "{:.1}% of ingest requests failed ({} of {})",
                                a["value"].as_f64().unwrap_or(0.0) * 100.0,
                                a["errors"],
                                a["requests"]
                            ),
                            other => other.to_string(),
                        };
                        Alert {
                            rule,
                            tenant: None,
                            title,
                            message: format!("threshold {}", a["threshold"]),
                            detail: a.clone(),
                        }
                    })
                    .collect()
            })
            .unwrap_or_default(),
        Ok(_) => Vec::new(),
    }
}
