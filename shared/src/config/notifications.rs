//! `[notifications]`: which alert rules are on and their thresholds, the
//! cooldown and retries of deliveries, and the channels alerts go to — one
//! variant per channel kind, each with only the settings that kind uses.

use serde::Deserialize;

use super::check::{fraction, http_url, not_blank, positive, readable_file};
use super::{ConfigError, Secret};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotificationsConfig {
    pub cooldown_secs: u64,
    pub max_attempts: u32,
    pub retry_base_ms: u64,
    pub quota_warning: bool,
    pub quota_exceeded: bool,
    pub job_failure: bool,
    pub dead_letter_threshold: u64,
    pub dead_letter_window_minutes: u64,
    pub consumer_lag_threshold: u64,
    pub ingest_error_rate_threshold: f64,
    pub ingest_error_window_minutes: u64,
    pub ingest_error_min_requests: u64,
    pub channels: Vec<ChannelConfig>,
}

/// One place alerts go, by `kind`.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum ChannelConfig {
    /// A `WARN` line in workerd's log.
    Log(LogChannel),
    /// A JSON POST, signed with `secret` when set.
    Webhook(WebhookChannel),
    /// A Slack incoming webhook (`{"text": …}`).
    Slack(HookChannel),
    /// A Discord webhook (`{"content": …}`).
    Discord(HookChannel),
    /// Mail over SMTP.
    Email(EmailChannel),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogChannel {
    pub name: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookChannel {
    pub name: String,
    /// Kept secret: such URLs often carry a token.
    pub url: Secret,
    /// Signs each body: `X-Overwatch-Signature` = hex HMAC-SHA256(secret, "<ts>.<body>").
    #[serde(default)]
    pub secret: Secret,
    /// PEM file of a CA to trust for an `https://` URL (a private endpoint),
    /// in addition to the built-in web roots.
    #[serde(default)]
    pub ca_file: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HookChannel {
    pub name: String,
    /// The incoming-webhook URL; its path is the credential.
    pub url: Secret,
    /// As for webhooks: an extra CA (PEM) to trust.
    #[serde(default)]
    pub ca_file: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmailChannel {
    pub name: String,
    pub smtp_host: String,
    pub smtp_port: u16,
    #[serde(default)]
    pub smtp_tls: SmtpTls,
    #[serde(default)]
    pub smtp_user: String,
    #[serde(default)]
    pub smtp_password: Secret,
    /// PEM file of a CA to trust for the SMTP server's certificate (a private
    /// relay), in addition to the system's roots.
    #[serde(default)]
    pub smtp_ca_file: String,
    pub from: String,
    pub to: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SmtpTls {
    None,
    #[default]
    Starttls,
    Tls,
}

impl ChannelConfig {
    /// The extra CA of an HTTP channel (empty: the built-in roots only).
    pub fn ca_file(&self) -> &str {
        match self {
            ChannelConfig::Webhook(c) => &c.ca_file,
            ChannelConfig::Slack(c) | ChannelConfig::Discord(c) => &c.ca_file,
            ChannelConfig::Log(_) | ChannelConfig::Email(_) => "",
        }
    }

    pub fn name(&self) -> &str {
        match self {
            ChannelConfig::Log(c) => &c.name,
            ChannelConfig::Webhook(c) => &c.name,
            ChannelConfig::Slack(c) | ChannelConfig::Discord(c) => &c.name,
            ChannelConfig::Email(c) => &c.name,
        }
    }

    /// `key(field)` names a field of this channel in errors.
    fn validate(&self, key: impl Fn(&str) -> String) -> Result<(), ConfigError> {
        not_blank(&key("name"), self.name())?;
        match self {
            ChannelConfig::Log(_) => Ok(()),
            ChannelConfig::Webhook(WebhookChannel { url, ca_file, .. })
            | ChannelConfig::Slack(HookChannel { url, ca_file, .. })
            | ChannelConfig::Discord(HookChannel { url, ca_file, .. }) => {
                http_url(&key("url"), url.expose())?;
                if !ca_file.is_empty() {
                    readable_file(&key("ca_file"), ca_file)?;
                }
                Ok(())
            }
            ChannelConfig::Email(c) => {
                not_blank(&key("smtp_host"), &c.smtp_host)?;
                positive(&key("smtp_port"), c.smtp_port as u64)?;
                if !c.from.contains('@') {
                    return Err(ConfigError::new(key("from"), "must be an email address"));
                }
                if c.to.is_empty() || c.to.iter().any(|t| !t.contains('@')) {
                    return Err(ConfigError::new(key("to"), "must list email addresses"));
                }
                if !c.smtp_ca_file.is_empty() {
                    readable_file(&key("smtp_ca_file"), &c.smtp_ca_file)?;
                }
                Ok(())
            }
        }
    }
}

impl NotificationsConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        fraction(
            "notifications.ingest_error_rate_threshold",
            self.ingest_error_rate_threshold,
            "0.0 (off) and 1.0",
        )?;
        positive(
            "notifications.ingest_error_window_minutes",
            self.ingest_error_window_minutes,
        )?;
        positive("notifications.max_attempts", self.max_attempts as u64)?;
        for (i, c) in self.channels.iter().enumerate() {
            c.validate(|f| format!("notifications.channels[{i}].{f}"))?;
            if let Some(j) = self.channels[..i].iter().position(|o| o.name() == c.name()) {
                return Err(ConfigError::new(
                    format!("notifications.channels[{i}].name"),
                    format!("`{}` is already the name of channels[{j}]", c.name()),
                ));
            }
        }
        Ok(())
    }
}
