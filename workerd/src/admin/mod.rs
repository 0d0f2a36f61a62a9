//! Tenant and API-key administration (`workerd tenant …`, `workerd key …`).
//!
//! Every change is a new row version in ClickHouse and an `audit_log` entry.
//! Secrets are 256-bit random values printed once at issue; only their SHA-256
//! is stored, and no secret is ever logged or audited.

mod keys;

use std::time::Duration;

use serde::Deserialize;
use shared::credential::PublicKeyError;
use shared::domain::Tier;
use shared::store::sql::AT_MS;
use shared::store::{audit, Db};
use uuid::Uuid;

pub use keys::{Issued, KeyRow, KeySpec};

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("ClickHouse: {0}")]
    ClickHouse(#[from] clickhouse::error::Error),
    #[error("no tenant {0}")]
    NoTenant(Uuid),
    #[error("tenant {0} already exists")]
    TenantExists(Uuid),
    #[error("no API key {0}")]
    NoKey(Uuid),
    #[error("API key {0} is already revoked")]
    AlreadyRevoked(Uuid),
    #[error("cannot draw random bytes for a secret: {0}")]
    Random(#[from] getrandom::Error),
    #[error("key kind must be `server` or `browser`, not `{0}`")]
    KeyKind(String),
    #[error("allowed origins apply to browser keys only")]
    OriginsOnServerKey,
    #[error("origin `{0}` must be `*` or start with http:// or https://")]
    Origin(String),
    #[error("`{0}` is not an IP address or CIDR")]
    IpOrCidr(String),
    #[error("--signing-public-key: {0}")]
    SigningKey(#[from] PublicKeyError),
    #[error("--signing-public-key {path}: {source}")]
    SigningKeyFile {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("ClickHouse returned a {what} that does not parse: `{value}`")]
    Stored { what: &'static str, value: String },
}

/// The ClickHouse connection and database the commands work on, and who acts.
pub struct Admin {
    pub client: clickhouse::Client,
    pub db: Db,
    pub actor: String,
}

#[derive(Debug, Clone, PartialEq, Eq, clickhouse::Row, Deserialize)]
pub struct TenantRow {
    pub tenant_id: String,
    pub name: String,
    pub tier: String,
    pub anonymize_ip: bool,
    pub created_at_ms: i64,
}

impl Admin {
    /// Commands on `db` through `client`, recorded in the audit log as `actor`.
    pub fn new(client: clickhouse::Client, db: Db, actor: &str) -> Admin {
        Admin {
            client,
            db,
            actor: actor.to_string(),
        }
    }

    fn table(&self, name: &str) -> String {
        self.db.table(name)
    }

    async fn audit(
        &self,
        action: &str,
        tenant: Option<Uuid>,
        target: &str,
        detail: serde_json::Value,
    ) -> Result<(), AdminError> {
        let entry = audit::Entry {
            actor: &self.actor,
            action,
            tenant,
            target,
            detail,
        };
        audit::record(&self.client, &self.db, entry).await?;
        Ok(())
    }

    pub async fn tenant(&self, id: Uuid) -> Result<Option<TenantRow>, AdminError> {
        Ok(self
            .client
            .query(&format!(
                "SELECT toString(tenant_id) AS tenant_id, name, tier, anonymize_ip, \
                 toUnixTimestamp64Milli(created_at) AS created_at_ms \
                 FROM {} FINAL WHERE tenant_id = ?",
                self.table("tenants")
            ))
            .bind(id.to_string())
            .fetch_optional::<TenantRow>()
            .await?)
    }

    async fn write_tenant(
        &self,
        id: Uuid,
        name: &str,
        tier: Tier,
        anonymize_ip: bool,
        created_at_ms: Option<i64>,
    ) -> Result<(), AdminError> {
        self.client
            .query(&format!(
                "INSERT INTO {} (tenant_id, name, tier, anonymize_ip, created_at, updated_at) \
                 SELECT toUUID(?), ?, ?, ?, \
                 if(? = 0, now64(3), {AT_MS}), now64(3)",
                self.table("tenants")
            ))
            .bind(id.to_string())
            .bind(name)
            .bind(tier.as_str())
            .bind(anonymize_ip)
            .bind(created_at_ms.unwrap_or(0))
            .bind(created_at_ms.unwrap_or(0))
            .execute()
            .await?;
        Ok(())
    }

    pub async fn tenant_create(
        &self,
        id: Option<Uuid>,
        name: &str,
        tier: Tier,
        anonymize_ip: bool,
    ) -> Result<Uuid, AdminError> {
        let id = id.unwrap_or_else(Uuid::new_v4);
        if self.tenant(id).await?.is_some() {
            return Err(AdminError::TenantExists(id));
        }
        self.write_tenant(id, name, tier, anonymize_ip, None)
            .await?;
        self.audit(
            "tenant.create",
            Some(id),
            &id.to_string(),
            serde_json::json!({"name": name, "tier": tier.as_str(), "anonymize_ip": anonymize_ip}),
        )
        .await?;
        Ok(id)
    }

    pub async fn tenant_list(&self) -> Result<Vec<TenantRow>, AdminError> {
        self.audit("tenant.list", None, "*", serde_json::json!({}))
            .await?;
        Ok(self
            .client
            .query(&format!(
                "SELECT toString(tenant_id) AS tenant_id, name, tier, anonymize_ip, \
                 toUnixTimestamp64Milli(created_at) AS created_at_ms \
                 FROM {} FINAL ORDER BY created_at, tenant_id",
                self.table("tenants")
            ))
            .fetch_all::<TenantRow>()
            .await?)
    }

    pub async fn tenant_set_tier(&self, id: Uuid, tier: Tier) -> Result<(), AdminError> {
        let t = self.tenant(id).await?.ok_or(AdminError::NoTenant(id))?;
        self.write_tenant(id, &t.name, tier, t.anonymize_ip, Some(t.created_at_ms))
            .await?;
        self.audit(
            "tenant.set_tier",
            Some(id),
            &id.to_string(),
            serde_json::json!({"from": t.tier, "to": tier.as_str()}),
        )
        .await
    }
}

/// A duration `--expires-in` or `--overlap` cannot read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not a duration like 90s, 15m, 24h or 30d")]
pub struct BadDuration(pub String);

/// Parses durations such as `90s`, `15m`, `24h`, `30d`.
pub fn parse_duration(s: &str) -> Result<Duration, BadDuration> {
    let s = s.trim();
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num.parse().map_err(|_| BadDuration(s.to_string()))?;
    let secs = match unit {
        "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86_400,
        _ => return Err(BadDuration(s.to_string())),
    };
    Ok(Duration::from_secs(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("24h"), Ok(Duration::from_secs(86_400)));
        assert_eq!(parse_duration("2d"), Ok(Duration::from_secs(172_800)));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("5w").is_err());
    }
}
