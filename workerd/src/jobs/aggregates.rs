//! Sessions and rollups, recomputed from raw events for a window.
//!
//! Sessions: a tenant's events of one `session_id`, ordered by the client's
//! timestamp, split wherever two consecutive events are more than
//! `jobs.session_gap_minutes` apart. Events from one day before to one day after
//! the window are read, so a session belongs whole to the window it starts in
//! (sessions up to a day long are exact across window boundaries); sessions
//! starting in the window are replaced (deleted, then inserted). Rollups: hourly and daily
//! counts of events, distinct sessions and bot events per tenant and type, for
//! the hours and days the window touches (ReplacingMergeTree: a recompute
//! replaces the previous numbers).
//!
//! Both read the tenant's events wherever they are (see [`super::archive`]):
//! tenants with archived days near the window are computed one at a time from
//! their raw events merged with those archives, under the tenant's lease; a
//! tenant whose lease another job holds is reported `busy` and left as it was.

use serde_json::json;
use shared::store::sql::{Tenants, AT_MS};
use time::OffsetDateTime;
use uuid::Uuid;

use super::archive::{self, Source};
use super::cold::ColdStore;
use super::context::{JobContext, JobReport, Window};
use super::error::JobError;
use crate::lease::Lease;
use shared::store::sql::ms;

/// One tenant, or every tenant but those computed separately.
fn scope(only: Option<Uuid>, excluded: &[Uuid]) -> Tenants<'_> {
    match only {
        Some(t) => Tenants::Only(t),
        None => Tenants::Except(excluded),
    }
}

#[derive(Debug, Clone, Copy)]
enum Kind {
    Sessions,
    Rollups,
}

/// How far around a window the events that shape it can lie (sessions look a
/// day back and ahead).
const MARGIN: time::Duration = time::Duration::days(2);

/// Computes `kind` over `w`: one pass over raw events for tenants without
/// archives nearby, then each tenant with archives from its merged events.
///
/// With `rebuild_archived` false (the periodic runs), a tenant with archives
/// nearby but no raw event near the window is left as it is: nothing of it
/// changed since compression computed it, so its archives are not read again.
async fn over_sources(
    ctx: &JobContext,
    kind: Kind,
    w: Window,
    only: Option<Uuid>,
    rebuild_archived: bool,
) -> Result<JobReport, JobError> {
    let mut archived =
        archive::days(ctx, only, (w.from - MARGIN).date(), (w.to + MARGIN).date()).await?;
    let excluded: Vec<Uuid> = archived.keys().copied().collect();
    let mut rows = 0;
    if only.is_none_or(|t| !archived.contains_key(&t)) {
        rows += compute(ctx, kind, w, only, &excluded, &Source::Raw).await?;
    }
    if !rebuild_archived && !archived.is_empty() {
        let active: Vec<String> = ctx
            .client
            .query(&format!(
                "SELECT DISTINCT toString(tenant_id) FROM {} \
                 WHERE timestamp >= {AT_MS} \
                 AND timestamp < {AT_MS}",
                ctx.table("events")
            ))
            .bind(ms(w.from - MARGIN))
            .bind(ms(w.to + MARGIN))
            .fetch_all()
            .await?;
        archived.retain(|t, _| active.contains(&t.to_string()));
    }
    let mut busy = Vec::new();
    if !archived.is_empty() {
        let cold = ColdStore::new(&ctx.config.cold_storage)?;
        for (tenant, days) in archived {
            let Some(lease) = Lease::try_acquire(ctx, &archive::lease_name(tenant)).await? else {
                busy.push(tenant);
                continue;
            };
            let merged = Source::Merged {
                tenant,
                from_ms: ms(w.from - MARGIN),
                to_ms: ms(w.to + MARGIN),
            };
            let result = async {
                archive::clear_stage(ctx, tenant).await?;
                archive::stage(ctx, &cold, tenant, days).await?;
                let n = compute(ctx, kind, w, Some(tenant), &[], &merged).await?;
                archive::clear_stage(ctx, tenant).await?;
                Ok::<u64, JobError>(n)
            }
            .await;
            lease.release().await?;
            rows += result?;
        }
    }
    Ok(JobReport {
        rows_affected: rows,
        detail: json!({"from_ms": ms(w.from), "to_ms": ms(w.to), "rows": rows, "busy": busy}),
        busy,
        alerts: Vec::new(),
    })
}

async fn compute(
    ctx: &JobContext,
    kind: Kind,
    w: Window,
    only: Option<Uuid>,
    excluded: &[Uuid],
    source: &Source,
) -> Result<u64, JobError> {
    match kind {
        Kind::Sessions => sessions_from(ctx, w, only, excluded, source).await,
        Kind::Rollups => rollups_from(ctx, w, only, excluded, source).await,
    }
}

/// Sessions starting in `w`, every tenant rebuilt (archives read back).
pub async fn sessions(
    ctx: &JobContext,
    w: Window,
    only: Option<Uuid>,
) -> Result<JobReport, JobError> {
    over_sources(ctx, Kind::Sessions, w, only, true).await
}

/// Rollups of the buckets `w` touches, every tenant rebuilt.
pub async fn rollups(
    ctx: &JobContext,
    w: Window,
    only: Option<Uuid>,
) -> Result<JobReport, JobError> {
    over_sources(ctx, Kind::Rollups, w, only, true).await
}

/// The periodic form of [`sessions`] (or of [`rollups`] when `rollups`):
/// tenants whose raw events lie nowhere near `w` are left as they are.
pub async fn recent(
    ctx: &JobContext,
    rollups: bool,
    w: Window,
    only: Option<Uuid>,
) -> Result<JobReport, JobError> {
    let kind = if rollups {
        Kind::Rollups
    } else {
        Kind::Sessions
    };
    over_sources(ctx, kind, w, only, false).await
}

fn floor_hour(t: OffsetDateTime) -> OffsetDateTime {
    t.replace_minute(0)
        .and_then(|t| t.replace_second(0))
        .and_then(|t| t.replace_nanosecond(0))
        .unwrap_or(t)
}

fn floor_day(t: OffsetDateTime) -> OffsetDateTime {
    t.replace_time(time::Time::MIDNIGHT)
}

/// Sessions starting in `w`, from `source` (the stage already holds whatever
/// archives `source` needs).
pub(super) async fn sessions_from(
    ctx: &JobContext,
    w: Window,
    only: Option<Uuid>,
    excluded: &[Uuid],
    source: &Source,
) -> Result<u64, JobError> {
    let filter = scope(only, excluded).clause();
    let src = source.sql(ctx);
    let gap_secs = (ctx.config.jobs.session_gap_minutes * 60) as i64;
    let sessions = ctx.table("sessions");
    let (from, to) = (ms(w.from), ms(w.to));
    let lookback = ms(w.from - time::Duration::days(1));
    let lookahead = ms(w.to + time::Duration::days(1));
    ctx.client
        .query(&format!(
            "DELETE FROM {} WHERE session_start >= {AT_MS} \
             AND session_start < {AT_MS} {filter}",
            ctx.mutable("sessions")
        ))
        .bind(from)
        .bind(to)
        .execute()
        .await?;
    ctx.client
        .query(&format!(
            "INSERT INTO {sessions} (tenant_id, session_id, session_start, session_end, duration_ms, \
             events, pageviews, entry_path, exit_path, is_bounce, computed_at) \
             SELECT tenant_id, session_id, min(ts), max(ts), \
             toInt64(dateDiff('millisecond', min(ts), max(ts))), count(), countIf(type = 'pageview'), \
             argMinIf(path, ts, type = 'pageview'), argMaxIf(path, ts, type = 'pageview'), \
             countIf(type = 'pageview') <= 1, now64(3) \
             FROM ( \
               SELECT tenant_id, session_id, ts, type, path, \
               sum(starts) OVER (PARTITION BY tenant_id, session_id ORDER BY ts, id \
                 ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS segment \
               FROM ( \
                 SELECT tenant_id, session_id, id, timestamp AS ts, type, path, \
                 if(row_number() OVER w = 1 OR dateDiff('second', lagInFrame(timestamp, 1, timestamp) OVER w, timestamp) > ?, 1, 0) AS starts \
                 FROM {src} \
                 WHERE timestamp >= {AT_MS} \
                 AND timestamp < {AT_MS} {filter} \
                 WINDOW w AS (PARTITION BY tenant_id, session_id ORDER BY timestamp, id \
                   ROWS BETWEEN 1 PRECEDING AND CURRENT ROW) \
               ) \
             ) \
             GROUP BY tenant_id, session_id, segment \
             HAVING min(ts) >= {AT_MS} \
             AND min(ts) < {AT_MS}"
        ))
        .bind(gap_secs)
        .bind(lookback)
        .bind(lookahead)
        .bind(from)
        .bind(to)
        .execute()
        .await?;
    let written: u64 = ctx
        .client
        .query(&format!(
            "SELECT count() FROM {sessions} FINAL WHERE session_start >= {AT_MS} \
             AND session_start < {AT_MS} {filter}"
        ))
        .bind(from)
        .bind(to)
        .fetch_one()
        .await?;
    Ok(written)
}

/// Hourly and daily rollups of the buckets `w` touches, from `source`.
pub(super) async fn rollups_from(
    ctx: &JobContext,
    w: Window,
    only: Option<Uuid>,
    excluded: &[Uuid],
    source: &Source,
) -> Result<u64, JobError> {
    let filter = scope(only, excluded).clause();
    let src = source.sql(ctx);
    let mut total = 0u64;
    for (table, bucket, from, to) in [
        (
            "rollups_hourly",
            "toStartOfHour(timestamp)",
            floor_hour(w.from),
            w.to,
        ),
        (
            "rollups_daily",
            "toDate(timestamp)",
            floor_day(w.from),
            w.to,
        ),
    ] {
        // Extend to whole buckets so a recompute never writes a partial count.
        let to = if table == "rollups_hourly" {
            let f = floor_hour(to);
            if f == to {
                to
            } else {
                f + time::Duration::hours(1)
            }
        } else {
            let f = floor_day(to);
            if f == to {
                to
            } else {
                f + time::Duration::days(1)
            }
        };
        let t = ctx.table(table);
        let column = if table == "rollups_hourly" {
            "hour"
        } else {
            "day"
        };
        ctx.client
            .query(&format!(
                "INSERT INTO {t} (tenant_id, type, {column}, events, sessions, bots, computed_at) \
                 SELECT tenant_id, type, {bucket} AS b, count(), uniqExact(session_id), countIf(is_bot), now64(3) \
                 FROM {src} \
                 WHERE timestamp >= {AT_MS} \
                 AND timestamp < {AT_MS} {filter} \
                 GROUP BY tenant_id, type, b"
            ))
            .bind(ms(from))
            .bind(ms(to))
            .execute()
            .await?;
        let n: u64 = ctx
            .client
            .query(&format!(
                "SELECT count() FROM {t} FINAL WHERE {column} >= {AT_MS} \
                 AND {column} < {AT_MS} {filter}"
            ))
            .bind(ms(from))
            .bind(ms(to))
            .fetch_one()
            .await?;
        total += n;
    }
    Ok(total)
}
