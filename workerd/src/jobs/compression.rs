//! Free-tier compression: whole UTC days of raw events that ended more than
//! `jobs.compression_after_hours` ago are (1) rolled up, (2) exported to
//! `tenant=<tenant_id>/date=<YYYY-MM-DD>/events.parquet` in cold storage
//! (`jobs.cold_dir`, or an S3-compatible bucket: see [`super::cold`]; written
//! whole or not at all), (3) verified: the file is read back into
//! ClickHouse and its event counts per type must equal the raw table's and the
//! daily rollup's, and only then (4) deleted from `events`.
//!
//! Every step can be repeated: a run killed half-way leaves either raw events
//! (the next run redoes the day from step 1; rollups and file are replaced, not
//! added to) or none (the day is finished). Rollups are never recomputed for a
//! day whose raw events are gone.

use std::collections::BTreeMap;
use std::path::PathBuf;

use super::cold::ColdStore;

use bytes::Bytes;
use serde_json::json;
use time::OffsetDateTime;
use uuid::Uuid;

use super::{aggregates, ms, JobContext, JobError, JobReport, Window};
use shared::config::Tier;

/// Where a tenant's day is stored when cold storage is the local `cold_dir`.
pub fn parquet_path(cold_dir: &str, tenant: Uuid, day: time::Date) -> PathBuf {
    PathBuf::from(cold_dir)
        .join(format!("tenant={tenant}"))
        .join(format!("date={day}"))
        .join("events.parquet")
}

async fn counts_by_type(
    ctx: &JobContext,
    sql: &str,
    tenant: Uuid,
    day: time::Date,
) -> Result<BTreeMap<String, u64>, JobError> {
    let rows: Vec<(String, u64)> = ctx
        .client
        .query(sql)
        .bind(tenant.to_string())
        .bind(day.to_string())
        .fetch_all()
        .await?;
    Ok(rows.into_iter().collect())
}

pub async fn run(
    ctx: &JobContext,
    now: OffsetDateTime,
    only: Option<Uuid>,
) -> Result<JobReport, JobError> {
    let horizon = now - time::Duration::hours(ctx.config.jobs.compression_after_hours as i64);
    // Days that ended before the horizon.
    let last_day = (horizon - time::Duration::days(1)).date();
    let events = ctx.table("events");
    let mut done = Vec::new();
    let mut deleted = 0u64;
    let cold = ColdStore::from_config(&ctx.config)?;
    for (tenant, tier) in ctx.tenants().await? {
        if tier != Tier::Free || only.is_some_and(|o| o != tenant) {
            continue;
        }
        let days: Vec<String> = ctx
            .client
            .query(&format!(
                "SELECT DISTINCT toString(toDate(timestamp)) AS d FROM {events} \
                 WHERE tenant_id = toUUID(?) AND toDate(timestamp) <= toDate(?) ORDER BY d"
            ))
            .bind(tenant.to_string())
            .bind(last_day.to_string())
            .fetch_all()
            .await?;
        for d in days {
            let day = time::Date::parse(&d, &time::format_description::well_known::Iso8601::DATE)
                .map_err(|e| JobError::Invalid(format!("day {d}: {e}")))?;
            deleted += compress_day(ctx, &cold, tenant, day).await?;
            done.push(json!({"tenant_id": tenant.to_string(), "day": d}));
        }
    }
    Ok(JobReport {
        rows_affected: deleted,
        detail: json!({"days": done, "events_deleted": deleted}),
    })
}

async fn compress_day(
    ctx: &JobContext,
    cold: &ColdStore,
    tenant: Uuid,
    day: time::Date,
) -> Result<u64, JobError> {
    let start = day.midnight().assume_utc();
    let window = Window {
        from: start,
        to: start + time::Duration::days(1),
    };
    let (events, verify) = (ctx.table("events"), ctx.table("compression_verify"));
    let day_filter = "tenant_id = toUUID(?) AND toDate(timestamp) = toDate(?)";

    // 1. Rollups for the day, from the raw events still there.
    aggregates::rollups(ctx, window, Some(tenant)).await?;

    // 2. Export: the day's events (deduplicated) as Parquet, atomically in place.
    let mut cursor = ctx
        .client
        .query(&format!(
            "SELECT * FROM {events} FINAL WHERE {day_filter} ORDER BY timestamp, id"
        ))
        .bind(tenant.to_string())
        .bind(day.to_string())
        .fetch_bytes("Parquet")?;
    let mut parquet = Vec::new();
    while let Some(chunk) = cursor.next().await? {
        parquet.extend_from_slice(&chunk);
    }
    let key = cold.key(tenant, day);
    let location = cold.location(&key);
    cold.put(&key, Bytes::from(parquet)).await?;

    // 3. Verify: read the file back and compare counts per type.
    let written = cold.get(&key).await?;
    let clear = || {
        ctx.client
            .query(&format!("DELETE FROM {verify} WHERE {day_filter}"))
            .bind(tenant.to_string())
            .bind(day.to_string())
            .execute()
    };
    clear().await?;
    let mut insert = ctx
        .client
        .insert_formatted_with(format!("INSERT INTO {verify} FORMAT Parquet"));
    insert.send(written).await?;
    insert.end().await?;
    let by_type = |table: &str, final_: &str| {
        format!(
            "SELECT toString(type), count() FROM {table} {final_} WHERE {day_filter} GROUP BY type"
        )
    };
    let raw = counts_by_type(ctx, &by_type(&events, "FINAL"), tenant, day).await?;
    let file = counts_by_type(ctx, &by_type(&verify, ""), tenant, day).await?;
    let rollup = counts_by_type(
        ctx,
        &format!(
            "SELECT toString(type), sum(events) FROM {} FINAL WHERE tenant_id = toUUID(?) AND day = toDate(?) GROUP BY type",
            ctx.table("rollups_daily")
        ),
        tenant,
        day,
    )
    .await?;
    clear().await?;
    if raw != file || raw != rollup {
        return Err(JobError::Invalid(format!(
            "verification failed for tenant {tenant} day {day}: raw {raw:?}, parquet {file:?}, rollup {rollup:?}; nothing deleted"
        )));
    }

    // 4. Only now: delete the raw events.
    let n: u64 = raw.values().sum();
    ctx.client
        .query(&format!(
            "DELETE FROM {events} WHERE tenant_id = toUUID(?) \
             AND timestamp >= fromUnixTimestamp64Milli(toInt64(?), 'UTC') \
             AND timestamp < fromUnixTimestamp64Milli(toInt64(?), 'UTC')"
        ))
        .bind(tenant.to_string())
        .bind(ms(window.from))
        .bind(ms(window.to))
        .execute()
        .await?;
    ctx.audit(
        "compression.day",
        Some(tenant),
        json!({"day": day.to_string(), "events": n, "by_type": raw, "file": location}),
    )
    .await?;
    tracing::info!(%tenant, %day, events = n, file = %location, "day compressed");
    Ok(n)
}
