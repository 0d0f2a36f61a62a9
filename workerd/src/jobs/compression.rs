//! Free-tier compression: raw events of whole UTC days that ended more than
//! `jobs.compression_after_hours` ago move to cold storage, as
//! `tenant=<tenant_id>/date=<YYYY-MM-DD>/events.parquet` (a local directory
//! or an S3-compatible bucket: see [`super::cold`]; written whole or not at all).
//!
//! Per tenant, under its archive lease (one job per tenant at a time, across
//! processes and machines: [`crate::lease`]), and per day with raw events:
//!
//! 1. the day's existing archive, if any, and a snapshot of its raw events are
//!    read into `archive_stage`: late events are *merged* into the archive,
//!    never replace it;
//! 2. the deduplicated union is written as the day's file (lease confirmed
//!    first), read back into `compression_verify`, and must hold exactly the
//!    staged events (same count, no staged key missing);
//! 3. the day is registered in `archives`; rollups of the day and sessions
//!    around it are recomputed from the merged events;
//! 4. only the raw rows whose key (type, client timestamp, id) is in the file
//!    are deleted (lease confirmed first). Rows that arrived after the snapshot
//!    stay raw until the next run merges them.
//!
//! Tenants on another tier are only visited for days archived while they were
//! on the free tier, so late events for those days join their archive too.
//!
//! A run killed anywhere leaves every event in raw storage, the archive, or
//! both; the next run merges again and converges to the same file.

use std::collections::BTreeSet;

use bytes::Bytes;
use serde_json::json;
use time::{Date, OffsetDateTime};
use uuid::Uuid;

use super::aggregates;
use super::archive::{self, Source};
use super::cold::{self, ColdStore};
use super::context::{JobContext, JobReport, Window};
use super::error::JobError;
use crate::lease::Lease;
use shared::domain::Tier;
use shared::store::sql::ms;

/// Where a tenant's day is stored when cold storage is a local directory.
pub fn parquet_path(cold_dir: &std::path::Path, tenant: Uuid, day: Date) -> std::path::PathBuf {
    std::path::PathBuf::from(cold_dir)
        .join(format!("tenant={tenant}"))
        .join(format!("date={day}"))
        .join("events.parquet")
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
    let (mut done, mut busy) = (Vec::new(), Vec::new());
    let mut deleted = 0u64;
    let cold = ColdStore::new(&ctx.config.cold_storage)?;
    let (first, last) = archive::ALL_DAYS;
    let catalogue = archive::days(ctx, only, first, last).await?;
    for (tenant, tier) in ctx.tenants().await? {
        if only.is_some_and(|o| o != tenant) {
            continue;
        }
        // Other tiers keep raw events, except for days archived while the tenant
        // was on the free tier: late events for those are merged there too, so
        // an event is in one place only.
        let no_days = BTreeSet::new();
        let catalogued = catalogue.get(&tenant).unwrap_or(&no_days);
        if tier != Tier::Free && catalogued.is_empty() {
            continue;
        }
        let mut days: Vec<String> = ctx
            .client
            .query(&format!(
                "SELECT DISTINCT toString(toDate(timestamp)) AS d FROM {events} \
                 WHERE tenant_id = toUUID(?) AND toDate(timestamp) <= toDate(?) ORDER BY d"
            ))
            .bind(tenant.to_string())
            .bind(last_day.to_string())
            .fetch_all()
            .await?;
        if tier != Tier::Free {
            days.retain(|d| cold::parse_day(d).is_ok_and(|d| catalogued.contains(&d)));
        }
        if days.is_empty() {
            continue;
        }
        let Some(lease) = Lease::try_acquire(ctx, &archive::lease_name(tenant)).await? else {
            busy.push(tenant);
            continue;
        };
        let result = async {
            let mut archived = archive::reconcile(ctx, &cold, tenant, catalogued).await?;
            let mut n = 0;
            for d in &days {
                let day = cold::parse_day(d)?;
                let moved = compress_day(ctx, &cold, &lease, tenant, day, &archived).await?;
                archived.insert(day);
                done.push(json!({"tenant_id": tenant.to_string(), "day": d, "events": moved}));
                n += moved;
            }
            Ok::<u64, JobError>(n)
        }
        .await;
        // Clear the stage whatever happened, then give the lease back.
        let cleared = archive::clear_stage(ctx, tenant).await;
        lease.release().await?;
        deleted += result?;
        cleared?;
    }
    Ok(JobReport {
        rows_affected: deleted,
        detail: json!({"days": done, "events_deleted": deleted, "busy": busy}),
        busy,
        alerts: Vec::new(),
    })
}

/// Rows of the tenant's day in `table` (`FINAL`: deduplicated, for `events`).
/// The condition selecting one tenant's day; [`day_query`] binds it.
const DAY: &str = "tenant_id = toUUID(?) AND toDate(timestamp) = toDate(?)";

/// `sql` with the tenant and day bound to each [`DAY`] it contains.
fn day_query(ctx: &JobContext, sql: &str, tenant: Uuid, day: Date) -> clickhouse::query::Query {
    let mut q = ctx.client.query(sql);
    for _ in 0..sql.matches(DAY).count() {
        q = q.bind(tenant.to_string()).bind(day.to_string());
    }
    q
}

/// Rows of the tenant's day in `table` (`fin` = `FINAL`: deduplicated).
async fn count(
    ctx: &JobContext,
    table: &str,
    fin: &str,
    tenant: Uuid,
    day: Date,
) -> Result<u64, JobError> {
    let sql = format!("SELECT count() FROM {} {fin} WHERE {DAY}", ctx.table(table));
    Ok(day_query(ctx, &sql, tenant, day).fetch_one().await?)
}

async fn raw_count(ctx: &JobContext, tenant: Uuid, day: Date) -> Result<u64, JobError> {
    count(ctx, "events", "FINAL", tenant, day).await
}

/// Counts the distinct event keys of the tenant's day in `table`.
async fn distinct_keys(
    ctx: &JobContext,
    table: &str,
    tenant: Uuid,
    day: Date,
) -> Result<u64, JobError> {
    let sql = format!(
        "SELECT count() FROM (SELECT DISTINCT type, timestamp, id FROM {} WHERE {DAY})",
        ctx.table(table)
    );
    Ok(day_query(ctx, &sql, tenant, day).fetch_one().await?)
}

async fn compress_day(
    ctx: &JobContext,
    cold: &ColdStore,
    lease: &Lease,
    tenant: Uuid,
    day: Date,
    archived: &BTreeSet<Date>,
) -> Result<u64, JobError> {
    let (events, stage, verify) = (
        ctx.table("events"),
        ctx.table("archive_stage"),
        ctx.table("compression_verify"),
    );
    let key = cold.key(tenant, day);
    let location = cold.location(&key);

    // 1. The archive so far (if any) and a snapshot of the raw events.
    lease.confirm().await?;
    archive::clear_stage(ctx, tenant).await?;
    if archived.contains(&day) {
        archive::stage(ctx, cold, tenant, [day]).await?;
    }
    let before = distinct_keys(ctx, "archive_stage", tenant, day).await?;
    let snapshot = format!("INSERT INTO {stage} SELECT * FROM {events} FINAL WHERE {DAY}");
    day_query(ctx, &snapshot, tenant, day).execute().await?;
    let expected = distinct_keys(ctx, "archive_stage", tenant, day).await?;

    // 2. Write the merged day, read it back, compare key sets.
    let export = format!(
        "SELECT * FROM {stage} WHERE {DAY} \
         ORDER BY timestamp, id, type, received_at DESC LIMIT 1 BY type, timestamp, id"
    );
    let mut cursor = day_query(ctx, &export, tenant, day).fetch_bytes("Parquet")?;
    let mut parquet = Vec::new();
    while let Some(chunk) = cursor.next().await? {
        parquet.extend_from_slice(&chunk);
    }
    lease.confirm().await?;
    cold.put(&key, Bytes::from(parquet)).await?;
    let written = cold.get(&key).await?;
    archive::insert_parquet(ctx, "compression_verify", written).await?;
    let in_file = distinct_keys(ctx, "compression_verify", tenant, day).await?;
    let rows_in_file = count(ctx, "compression_verify", "", tenant, day).await?;
    let missing_sql = format!(
        "SELECT count() FROM {stage} WHERE {DAY} AND (type, timestamp, id) NOT IN \
         (SELECT type, timestamp, id FROM {verify} WHERE {DAY})"
    );
    let missing: u64 = day_query(ctx, &missing_sql, tenant, day)
        .fetch_one()
        .await?;
    if in_file != expected || rows_in_file != expected || missing != 0 {
        return Err(JobError::Unverified {
            tenant,
            day,
            staged: expected,
            rows_in_file,
            distinct_in_file: in_file,
            missing,
        });
    }

    // 3. Catalogue, then the day's aggregates from the merged events (the
    //    archives of the neighbouring days too, for sessions across midnight).
    archive::register(ctx, tenant, day, &location, expected).await?;
    let neighbours = archived
        .iter()
        .copied()
        .filter(|d| *d != day && (*d - day).whole_days().abs() <= 2);
    archive::stage(ctx, cold, tenant, neighbours).await?;
    let start = day.midnight().assume_utc();
    let merged = Source::Merged {
        tenant,
        from_ms: ms(start - time::Duration::days(2)),
        to_ms: ms(start + time::Duration::days(3)),
    };
    let whole_day = Window {
        from: start,
        to: start + time::Duration::days(1),
    };
    aggregates::rollups_from(ctx, whole_day, Some(tenant), &[], &merged).await?;
    let sessions_window = Window {
        from: start - time::Duration::days(1),
        to: start + time::Duration::days(1),
    };
    aggregates::sessions_from(ctx, sessions_window, Some(tenant), &[], &merged).await?;

    // 4. Delete exactly the raw rows now in the file.
    lease.confirm().await?;
    let raw_before = raw_count(ctx, tenant, day).await?;
    let delete = format!(
        "DELETE FROM {} WHERE {DAY} AND (type, timestamp, id) IN \
         (SELECT type, timestamp, id FROM {verify} WHERE {DAY})",
        ctx.mutable("events")
    );
    day_query(ctx, &delete, tenant, day).execute().await?;
    let raw_after = raw_count(ctx, tenant, day).await?;
    let moved = raw_before.saturating_sub(raw_after);
    ctx.audit(
        "compression.day",
        Some(tenant),
        json!({
            "day": day.to_string(), "events_in_archive": expected, "merged_into": before,
            "raw_rows_deleted": moved, "raw_rows_left": raw_after, "file": location,
        }),
    )
    .await?;
    tracing::info!(%tenant, %day, archived = expected, merged_into = before, deleted = moved, left = raw_after, file = %location, "day compressed");
    Ok(moved)
}
