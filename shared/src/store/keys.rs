//! Tenants and API keys as stored in ClickHouse (`tenants`, `api_keys`), shared by
//! the gateway (which loads a snapshot) and workerd (which administers them).
//!
//! A key is presented as `<tenant_id>:<secret>`; only the SHA-256 of the secret
//! is stored. Rows are versioned by `updated_at` (ReplacingMergeTree), so a
//! change is an insert of the new version.

use serde::Deserialize;
use time::OffsetDateTime;

use crate::store::ident;

/// One usable (not revoked) key with its tenant's settings, as the gateway needs it.
#[derive(Debug, Clone, PartialEq, Eq, clickhouse::Row, Deserialize)]
pub struct KeyRecord {
    pub key_id: String,
    pub tenant_id: String,
    pub secret_sha256: String,
    /// `server` or `browser`.
    pub kind: String,
    pub allowed_origins: Vec<String>,
    pub ip_allowlist: Vec<String>,
    pub require_signature: bool,
    /// Base64 of the raw 32-byte Ed25519 public key that signs this key's
    /// requests (empty: the key is presented as a bearer secret).
    pub signing_public_key: String,
    /// Unix milliseconds; absent when the key does not expire.
    pub expires_at_ms: Option<i64>,
    /// The tenant's tier name (empty when the tenant row is missing: see
    /// [`resolve_tier`]).
    pub tier: String,
    pub anonymize_ip: bool,
    /// The quota job marked the tenant over its monthly quota (this month).
    pub over_quota: bool,
}

/// Every key that is not revoked, joined with its tenant.
pub async fn load(
    client: &clickhouse::Client,
    database: &str,
) -> Result<Vec<KeyRecord>, clickhouse::error::Error> {
    let db = ident(database);
    client
        .query(&format!(
            "SELECT toString(k.key_id) AS key_id, toString(k.tenant_id) AS tenant_id, \
             k.secret_sha256, k.kind, k.allowed_origins, k.ip_allowlist, k.require_signature, k.signing_public_key, \
             if(k.expires_at IS NULL, NULL, toUnixTimestamp64Milli(assumeNotNull(k.expires_at))) AS expires_at_ms, \
             t.tier AS tier, t.anonymize_ip, u.over_quota \
             FROM {db}.api_keys AS k FINAL \
             LEFT JOIN (SELECT * FROM {db}.tenants FINAL) AS t ON k.tenant_id = t.tenant_id \
             LEFT JOIN (SELECT tenant_id, over_quota FROM {db}.tenant_usage FINAL \
                        WHERE month = toStartOfMonth(toDate(now('UTC')))) AS u ON k.tenant_id = u.tenant_id \
             WHERE k.revoked_at IS NULL"
        ))
        .fetch_all::<KeyRecord>()
        .await
}

/// A tenant's tier, the one rule both binaries follow: its row in `tenants`
/// (`stored`, as written by `workerd tenant`) wins; else the tier of its key in
/// `auth.keys`; else free.
pub fn resolve_tier(
    stored: Option<&str>,
    static_keys: &[crate::config::StaticKey],
    tenant: uuid::Uuid,
) -> crate::domain::Tier {
    stored
        .filter(|t| !t.is_empty())
        .and_then(crate::domain::Tier::parse)
        .or_else(|| {
            static_keys
                .iter()
                .find(|k| k.tenant_id == tenant)
                .map(|k| k.tier)
        })
        .unwrap_or_default()
}

/// Tenants the quota job marked over their monthly quota this month.
pub async fn over_quota(
    client: &clickhouse::Client,
    database: &str,
) -> Result<Vec<String>, clickhouse::error::Error> {
    client
        .query(&format!(
            "SELECT toString(tenant_id) FROM {}.tenant_usage FINAL \
             WHERE month = toStartOfMonth(toDate(now('UTC'))) AND over_quota",
            ident(database)
        ))
        .fetch_all::<String>()
        .await
}

/// Quotas are monthly (UTC): the start of the month of `t` and of the next one.
pub fn month_bounds(t: OffsetDateTime) -> (OffsetDateTime, OffsetDateTime) {
    let start = t
        .replace_day(1)
        .map(|d| d.replace_time(time::Time::MIDNIGHT))
        .unwrap_or(t);
    let (y, m) = if start.month() == time::Month::December {
        (start.year() + 1, time::Month::January)
    } else {
        (start.year(), start.month().next())
    };
    let next = start
        .replace_year(y)
        .and_then(|d| d.replace_month(m))
        .unwrap_or(start);
    (start, next)
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    #[test]
    fn months() {
        assert_eq!(
            month_bounds(datetime!(2024-02-29 13:14 UTC)),
            (
                datetime!(2024-02-01 0:00 UTC),
                datetime!(2024-03-01 0:00 UTC)
            )
        );
        assert_eq!(
            month_bounds(datetime!(2024-12-31 23:59 UTC)),
            (
                datetime!(2024-12-01 0:00 UTC),
                datetime!(2025-01-01 0:00 UTC)
            )
        );
    }

    #[test]
    fn one_tier_rule_for_both_binaries() {
        use crate::config::StaticKey;
        use crate::domain::Tier;
        let t = uuid::Uuid::new_v4();
        let keys = vec![StaticKey {
            tenant_id: t,
            secret_sha256: "ab".repeat(32),
            tier: Tier::Enterprise,
            anonymize_ip: false,
        }];
        // A tenants row wins; a missing or empty row falls back to the config.
        assert_eq!(resolve_tier(Some("paid"), &keys, t), Tier::Paid);
        assert_eq!(resolve_tier(Some(""), &keys, t), Tier::Enterprise);
        assert_eq!(resolve_tier(None, &keys, t), Tier::Enterprise);
        // Neither: free.
        assert_eq!(resolve_tier(None, &keys, uuid::Uuid::new_v4()), Tier::Free);
        assert_eq!(resolve_tier(Some("bogus"), &[], t), Tier::Free);
    }
}
