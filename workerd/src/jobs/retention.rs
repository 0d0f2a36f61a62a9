//! Tiered retention: for each tenant, raw events and sessions older than its
//! tier's `retention_hours`, and rollups older than `rollup_retention_days`, are
//! deleted. Free-tier raw events are the exception: they are removed only by
//! compression once their archive is verified. The tier is read on every run, so an upgrade or downgrade applies on
//! the next run. Deleted rows are counted per tier and audited per tenant.

use shared::store::sql::AT_MS;
use std::collections::BTreeMap;

use serde_json::json;
use time::OffsetDateTime;
use uuid::Uuid;

use super::context::{JobContext, JobReport};
use super::error::JobError;
use shared::store::sql::ms;

/// Counts then deletes the rows of `table` for `tenant` older than `cutoff_ms`
/// in `column`.
async fn purge(
    ctx: &JobContext,
    table: &str,
    column: &str,
    tenant: Uuid,
    cutoff_ms: i64,
) -> Result<u64, JobError> {
    let t = ctx.table(table);
    let condition = format!("tenant_id = toUUID(?) AND {column} < {AT_MS}");
    let n: u64 = ctx
        .client
        .query(&format!("SELECT count() FROM {t} WHERE {condition}"))
        .bind(tenant.to_string())
        .bind(cutoff_ms)
        .fetch_one()
        .await?;
    if n > 0 {
        ctx.client
            .query(&format!(
                "DELETE FROM {} WHERE {condition}",
                ctx.mutable(table)
            ))
            .bind(tenant.to_string())
            .bind(cutoff_ms)
            .execute()
            .await?;
    }
    Ok(n)
}

pub async fn run(
    ctx: &JobContext,
    now: OffsetDateTime,
    only: Option<Uuid>,
) -> Result<JobReport, JobError> {
    let mut total = 0u64;
    let mut per_tier: BTreeMap<&'static str, u64> = BTreeMap::new();
    for (tenant, tier) in ctx.tenants().await? {
        if only.is_some_and(|o| o != tenant) {
            continue;
        }
        let t = ctx.config.tiers.get(tier);
        let raw_cutoff = ms(now - time::Duration::hours(t.retention_hours as i64));
        let rollup_cutoff = ms(now - time::Duration::days(t.rollup_retention_days as i64));
        // Free-tier raw events leave only through compression, after their
        // archive was verified: retention never deletes one that has none.
        let events = if tier == shared::domain::Tier::Free {
            0
        } else {
            purge(ctx, "events", "timestamp", tenant, raw_cutoff).await?
        };
        let sessions = purge(ctx, "sessions", "session_start", tenant, raw_cutoff).await?;
        let hourly = purge(ctx, "rollups_hourly", "hour", tenant, rollup_cutoff).await?;
        let daily = purge(ctx, "rollups_daily", "day", tenant, rollup_cutoff).await?;
        for (table, rows) in [
            ("events", events),
            ("sessions", sessions),
            ("rollups_hourly", hourly),
            ("rollups_daily", daily),
        ] {
            crate::telemetry::retention_deleted(tier.as_str(), table, rows);
        }
        let n = events + sessions + hourly + daily;
        if n > 0 {
            ctx.audit(
                "retention.delete",
                Some(tenant),
                json!({
                    "tier": tier.as_str(), "events": events, "sessions": sessions,
                    "rollups_hourly": hourly, "rollups_daily": daily,
                    "raw_cutoff_ms": raw_cutoff, "rollup_cutoff_ms": rollup_cutoff,
                }),
            )
            .await?;
            tracing::info!(%tenant, tier = tier.as_str(), events, sessions, hourly, daily, "retention deleted rows");
        }
        *per_tier.entry(tier.as_str()).or_default() += n;
        total += n;
    }
    Ok(JobReport {
        rows_affected: total,
        detail: json!({ "deleted_by_tier": per_tier }),
        ..JobReport::default()
    })
}
