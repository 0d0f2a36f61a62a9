//! ClickHouse client construction from configuration.

use crate::config::ClickHouseConfig;

/// A client for the configured server. Statements name their database explicitly
/// (`db.table`), so the client sets none: `CREATE DATABASE` must work before the
/// database exists.
pub fn client(cfg: &ClickHouseConfig) -> clickhouse::Client {
    clickhouse::Client::default()
        .with_url(cfg.url.clone())
        .with_user(cfg.user.clone())
        .with_password(cfg.password.clone())
}

/// Appends an entry to `<database>.audit_log`.
pub async fn audit(
    client: &clickhouse::Client,
    database: &str,
    actor: &str,
    action: &str,
    tenant: Option<uuid::Uuid>,
    target: &str,
    detail: &serde_json::Value,
) -> Result<(), clickhouse::error::Error> {
    client
        .query(&format!(
            "INSERT INTO {}.{} (at, actor, action, tenant_id, target, detail) \
             VALUES (now64(3), ?, ?, ?, ?, ?)",
            ident(database),
            ident("audit_log")
        ))
        .bind(actor)
        .bind(action)
        .bind(tenant.map(|t| t.to_string()))
        .bind(target)
        .bind(detail.to_string())
        .execute()
        .await?;
    tracing::info!(action, target, actor, "audited");
    Ok(())
}

/// Quotes an identifier for ClickHouse SQL (backticks, escaped).
pub fn ident(name: &str) -> String {
    format!("`{}`", name.replace('\\', "\\\\").replace('`', "\\`"))
}

/// Quotes a string literal for ClickHouse SQL.
pub fn literal(value: &str) -> String {
    format!("'{}'", value.replace('\\', "\\\\").replace('\'', "\\'"))
}
