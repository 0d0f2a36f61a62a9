//! Scheduled jobs against ClickHouse. Each job takes an explicit `now`, so
//! `workerd job run <name> --now <RFC 3339>` runs it against a simulated clock
//! and no test waits for real time to pass.
//!
//! - `retention`: deletes raw events and sessions past each tenant's tier
//!   horizon, and rollups past theirs (the tier is read on every run).
//! - `sessions`: recomputes sessions, splitting on gaps longer than
//!   `jobs.session_gap_minutes`.
//! - `rollups`: recomputes hourly and daily counts per tenant and event type.
//! - `quota`: marks tenants over their tier's monthly event quota.
//! - `compression`: free-tier days to rollups + Parquet, verified, then deleted.
//! - `enrichment`: fills user-agent and geo fields of rows stored without them.
//! - `alerts`: raises dead-letter growth, consumer lag and ingest error alerts.
//!
//! Adding a job: a [`JobName`] variant (its name and `jobs.<name>_cron`), its
//! file here, and its arm in [`run`].

pub mod aggregates;
pub mod alerts;
pub mod archive;
pub mod cold;
pub mod compression;
pub mod context;
pub mod enrichment;
pub mod error;
pub mod quota;
pub mod retention;

pub use context::{JobContext, JobName, JobReport, UnknownJob, Window};
pub use error::JobError;
pub use shared::store::sql::ms;

use shared::store::sql::AT_MS;
use time::OffsetDateTime;
use uuid::Uuid;

/// The periodic sessions/rollups window: the last `jobs.recompute_window_hours`
/// up to `now`, widened back to cover every event *received* in that time,
/// however late its client timestamp (up to `limits.max_event_age_hours`), and a
/// day more for the sessions such an event can extend.
async fn default_window(ctx: &JobContext, now: OffsetDateTime) -> Result<Window, JobError> {
    let hours = time::Duration::hours(ctx.config.jobs.recompute_window_hours as i64);
    let since = now - hours;
    let oldest = now - time::Duration::hours(ctx.config.limits.max_event_age_hours as i64 + 24);
    let earliest: Option<i64> = ctx
        .client
        .query(&format!(
            "SELECT if(count() = 0, NULL, toUnixTimestamp64Milli(min(timestamp))) FROM {} \
             WHERE received_at >= {AT_MS} \
             AND timestamp >= {AT_MS} \
             AND timestamp < {AT_MS}",
            ctx.table("events")
        ))
        .bind(ms(since))
        .bind(ms(oldest))
        .bind(ms(since))
        .fetch_one()
        .await?;
    let from =
        match earliest {
            Some(t) => {
                let late = OffsetDateTime::from_unix_timestamp_nanos(t as i128 * 1_000_000)
                    .map_err(|_| JobError::Stored {
                        what: "event timestamp",
                        value: t.to_string(),
                    })?;
                (late - time::Duration::days(1)).min(since)
            }
            None => since,
        };
    Ok(Window { from, to: now })
}

/// Runs one job once. `window` overrides the default recompute window
/// (`jobs.recompute_window_hours` up to `now`) of `sessions` and `rollups`.
pub async fn run(
    ctx: &JobContext,
    job: JobName,
    now: OffsetDateTime,
    tenant: Option<Uuid>,
    window: Option<Window>,
) -> Result<JobReport, JobError> {
    let periodic = window.is_none();
    let window = match window {
        Some(w) => w,
        None if matches!(job, JobName::Sessions | JobName::Rollups) => {
            default_window(ctx, now).await?
        }
        None => Window {
            from: now - time::Duration::hours(ctx.config.jobs.recompute_window_hours as i64),
            to: now,
        },
    };
    if window.from >= window.to {
        return Err(JobError::EmptyWindow);
    }
    let started = std::time::Instant::now();
    let report = match job {
        JobName::Retention => retention::run(ctx, now, tenant).await?,
        JobName::Sessions if periodic => aggregates::recent(ctx, false, window, tenant).await?,
        JobName::Rollups if periodic => aggregates::recent(ctx, true, window, tenant).await?,
        JobName::Sessions => aggregates::sessions(ctx, window, tenant).await?,
        JobName::Rollups => aggregates::rollups(ctx, window, tenant).await?,
        JobName::Quota => quota::run(ctx, now, tenant).await?,
        JobName::Compression => compression::run(ctx, now, tenant).await?,
        JobName::Enrichment => enrichment::run(ctx, tenant).await?,
        JobName::Alerts => alerts::run(ctx, now).await?,
    };
    tracing::info!(
        job = job.as_str(),
        rows = report.rows_affected,
        elapsed_ms = started.elapsed().as_millis() as u64,
        detail = %report.detail,
        "job finished"
    );
    Ok(report)
}
