//! Monthly quotas: each tenant's events received this calendar month (UTC),
//! summed from `usage_daily`, against its tier's `monthly_event_quota`. The result is
//! written to `tenant_usage`; the gateway loads the `over_quota` mark with its
//! key snapshot and answers 429 `quota_exceeded` until the month ends (or the
//! tenant moves to a tier with room).

use shared::store::sql::AT_MS;
use std::collections::HashMap;

use serde_json::json;
use time::OffsetDateTime;
use uuid::Uuid;

use super::context::{JobContext, JobReport};
use super::error::JobError;
use crate::notify::Alert;
use shared::store::sql::ms;

pub use shared::store::keys::month_bounds;

pub async fn run(
    ctx: &JobContext,
    now: OffsetDateTime,
    only: Option<Uuid>,
) -> Result<JobReport, JobError> {
    let (start, next) = month_bounds(now);
    // Counted by the day the gateway received each event (`usage_daily`, fed by
    // the Kafka engine): a back- or forward-dated event counts in the month it
    // arrived, and `workerd import` of old history counts in none.
    let usage: Vec<(String, u64)> = ctx
        .client
        .query(&format!(
            "SELECT toString(tenant_id), sum(events) FROM {} \
             WHERE day >= toDate({AT_MS}) \
             AND day < toDate({AT_MS}) GROUP BY tenant_id",
            ctx.table("usage_daily")
        ))
        .bind(ms(start))
        .bind(ms(next))
        .fetch_all()
        .await?;
    let usage: HashMap<Uuid, u64> = usage
        .into_iter()
        .filter_map(|(id, n)| Uuid::try_parse(&id).ok().map(|id| (id, n)))
        .collect();
    let (mut over, mut warned) = (Vec::new(), Vec::new());
    for (tenant, tier) in ctx.tenants().await? {
        if only.is_some_and(|o| o != tenant) {
            continue;
        }
        let used = usage.get(&tenant).copied().unwrap_or(0);
        let quota = ctx.config.tiers.get(tier).monthly_event_quota;
        let is_over = quota > 0 && used >= quota;
        if is_over {
            over.push(tenant);
        } else if quota > 0 && used * 5 >= quota * 4 {
            warned.push(tenant);
        }
        ctx.client
            .query(&format!(
                "INSERT INTO {} (tenant_id, month, events, quota, over_quota, computed_at) \
                 VALUES (toUUID(?), toDate({AT_MS}), ?, ?, ?, now64(3))",
                ctx.table("tenant_usage")
            ))
            .bind(tenant.to_string())
            .bind(ms(start))
            .bind(used)
            .bind(quota)
            .bind(is_over)
            .execute()
            .await?;
    }
    let alerts = over
        .iter()
        .map(|&tenant| Alert::QuotaExceeded { tenant })
        .chain(warned.iter().map(|&tenant| Alert::QuotaWarning { tenant }))
        .collect();
    Ok(JobReport {
        rows_affected: over.len() as u64,
        detail: json!({"month_start_ms": ms(start), "over_quota": over, "over_80_percent": warned}),
        busy: Vec::new(),
        alerts,
    })
}
