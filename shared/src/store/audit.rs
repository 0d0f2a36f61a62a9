//! `audit_log`: who did what to which tenant, appended by admin commands and jobs.

use uuid::Uuid;

use super::Db;

/// One entry of `audit_log`.
#[derive(Debug, Clone)]
pub struct Entry<'a> {
    pub actor: &'a str,
    pub action: &'a str,
    pub tenant: Option<Uuid>,
    pub target: &'a str,
    pub detail: serde_json::Value,
}

/// Appends `entry` to `<db>.audit_log`.
pub async fn record(
    client: &clickhouse::Client,
    db: &Db,
    entry: Entry<'_>,
) -> Result<(), clickhouse::error::Error> {
    client
        .query(&format!(
            "INSERT INTO {} (at, actor, action, tenant_id, target, detail) \
             VALUES (now64(3), ?, ?, ?, ?, ?)",
            db.table("audit_log")
        ))
        .bind(entry.actor)
        .bind(entry.action)
        .bind(entry.tenant.map(|t| t.to_string()))
        .bind(entry.target)
        .bind(entry.detail.to_string())
        .execute()
        .await?;
    tracing::info!(
        action = entry.action,
        target = entry.target,
        actor = entry.actor,
        "audited"
    );
    Ok(())
}
