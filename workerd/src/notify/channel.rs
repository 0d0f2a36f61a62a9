//! How each kind of channel is reached: log, webhook (HMAC-signed), Slack and
//! Discord incoming webhooks in their native payloads, and email over SMTP
//! (lettre). Errors never carry a channel's URL: such URLs are credentials.

use std::time::Duration;

use hmac::{Hmac, Mac};
use lettre::message::Mailbox;
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use serde_json::json;
use sha2::Sha256;
use shared::config::{ChannelConfig, EmailChannel, SmtpTls};

use super::Alert;

/// Header with the webhook body's signature: hex HMAC-SHA256(secret, "<ts>.<body>").
pub const SIGNATURE_HEADER: &str = "x-overwatch-signature";
pub const TIMESTAMP_HEADER: &str = "x-overwatch-timestamp";

/// Why a delivery failed.
#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    #[error("HTTP {0}")]
    Status(reqwest::StatusCode),
    /// The request failed: the error and its causes, without the URL.
    #[error("{0}")]
    Http(String),
    #[error("email address {address}: {source}")]
    Address {
        address: String,
        #[source]
        source: lettre::address::AddressError,
    },
    #[error("building the email: {0}")]
    Message(#[from] lettre::error::Error),
    #[error("CA file {path}: {reason}")]
    CaFile { path: String, reason: String },
    #[error("SMTP: {0}")]
    Smtp(#[from] lettre::transport::smtp::Error),
    #[error("{attempts} attempts failed; last: {last}")]
    GaveUp {
        attempts: u32,
        last: Box<DeliveryError>,
    },
}

impl From<reqwest::Error> for DeliveryError {
    fn from(e: reqwest::Error) -> Self {
        let e = e.without_url();
        let mut text = e.to_string();
        let mut cause = std::error::Error::source(&e);
        while let Some(c) = cause {
            text.push_str(": ");
            text.push_str(&c.to_string());
            cause = c.source();
        }
        DeliveryError::Http(text)
    }
}

/// `e` with every occurrence of `url` (and its path) blanked: a cause deep in
/// the chain may still quote it.
fn redacted(e: DeliveryError, url: &str) -> DeliveryError {
    match e {
        DeliveryError::Http(text) => {
            let path = url
                .find("://")
                .and_then(|i| url[i + 3..].find('/').map(|j| &url[i + 3 + j..]))
                .filter(|p| p.len() > 1);
            let mut t = text.replace(url, "<url>");
            if let Some(p) = path {
                t = t.replace(p, "/<redacted>");
            }
            DeliveryError::Http(t)
        }
        other => other,
    }
}

/// An HTTP client for a channel: TLS with the built-in web roots and, when
/// `ca_file` is set, that CA too.
pub fn http_client(ca_file: &str) -> Result<reqwest::Client, DeliveryError> {
    let mut b = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .https_only(false);
    if !ca_file.is_empty() {
        let ca_error = |reason: String| DeliveryError::CaFile {
            path: ca_file.to_string(),
            reason,
        };
        let pem = std::fs::read(ca_file).map_err(|e| ca_error(e.to_string()))?;
        for cert in
            reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| ca_error(e.to_string()))?
        {
            b = b.add_root_certificate(cert);
        }
    }
    Ok(b.build()?)
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

/// One attempt to deliver `alert` on `ch`.
pub async fn deliver(
    http: &reqwest::Client,
    ch: &ChannelConfig,
    alert: &Alert,
) -> Result<(), DeliveryError> {
    let url = match ch {
        ChannelConfig::Webhook(w) => w.url.expose(),
        ChannelConfig::Slack(h) | ChannelConfig::Discord(h) => h.url.expose(),
        ChannelConfig::Log(_) | ChannelConfig::Email(_) => "",
    };
    attempt(http, ch, alert).await.map_err(|e| redacted(e, url))
}

async fn attempt(
    http: &reqwest::Client,
    ch: &ChannelConfig,
    alert: &Alert,
) -> Result<(), DeliveryError> {
    let text = format!("[Overwatch] {}: {}", alert.title(), alert.message());
    match ch {
        ChannelConfig::Log(_) => {
            tracing::warn!(rule = alert.rule().as_str(), tenant = ?alert.tenant(), detail = %alert.detail(), "ALERT {text}");
            Ok(())
        }
        ChannelConfig::Webhook(w) => {
            let body = json!({
                "rule": alert.rule().as_str(), "tenant_id": alert.tenant().map(|t| t.to_string()),
                "title": alert.title(), "message": alert.message(), "detail": alert.detail(),
            })
            .to_string();
            let ts = time::OffsetDateTime::now_utc().unix_timestamp().to_string();
            let mut req = http
                .post(w.url.expose())
                .header("content-type", "application/json")
                .header(TIMESTAMP_HEADER, &ts);
            if !w.secret.is_empty() {
                req = req.header(
                    SIGNATURE_HEADER,
                    sign(w.secret.expose(), &ts, body.as_bytes()),
                );
            }
            check(req.body(body).send().await?)
        }
        ChannelConfig::Slack(h) => check(
            http.post(h.url.expose())
                .json(&json!({ "text": text }))
                .send()
                .await?,
        ),
        ChannelConfig::Discord(h) => check(
            http.post(h.url.expose())
                .json(&json!({ "content": text }))
                .send()
                .await?,
        ),
        ChannelConfig::Email(e) => email(e, alert, &text).await,
    }
}

fn check(resp: reqwest::Response) -> Result<(), DeliveryError> {
    if resp.status().is_success() {
        Ok(())
    } else {
        Err(DeliveryError::Status(resp.status()))
    }
}

fn mailbox(address: &str) -> Result<Mailbox, DeliveryError> {
    address.parse().map_err(|source| DeliveryError::Address {
        address: address.to_string(),
        source,
    })
}

async fn email(ch: &EmailChannel, alert: &Alert, subject: &str) -> Result<(), DeliveryError> {
    let mut msg = Message::builder().from(mailbox(&ch.from)?).subject(subject);
    for to in &ch.to {
        msg = msg.to(mailbox(to)?);
    }
    let body = format!(
        "{}\n\n{}\n\ndetail: {}\n",
        alert.title(),
        alert.message(),
        alert.detail()
    );
    let msg = msg.body(body)?;
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
            ch.smtp_password.expose().to_string(),
        ));
    }
    builder.build().send(msg).await?;
    Ok(())
}

/// TLS for `ch`'s SMTP server: its host name checked against the certificate,
/// trusting the system's roots and, when set, `smtp_ca_file`.
fn tls_parameters(ch: &EmailChannel) -> Result<TlsParameters, DeliveryError> {
    let mut b = TlsParameters::builder(ch.smtp_host.clone());
    if !ch.smtp_ca_file.is_empty() {
        let ca_error = |reason: String| DeliveryError::CaFile {
            path: ch.smtp_ca_file.clone(),
            reason,
        };
        let pem = std::fs::read(&ch.smtp_ca_file).map_err(|e| ca_error(e.to_string()))?;
        let ca = Certificate::from_pem(&pem).map_err(|e| ca_error(e.to_string()))?;
        b = b.add_root_certificate(ca);
    }
    Ok(b.build_rustls()?)
}
