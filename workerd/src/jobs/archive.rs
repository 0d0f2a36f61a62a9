//! The archive side of a tenant's events: which days are in cold storage
//! (`archives`, one row per verified file), reading them back into
//! `archive_stage`, and the event source that jobs compute aggregates from.
//!
//! Raw events and archived ones together are the tenant's events: a free-tier
//! day is archived by compression, and late events for that day can arrive
//! afterwards (they stay raw until the next compression merges them). Every
//! aggregate is therefore computed from [`Source`]: the raw rows, plus, for a
//! tenant with archived days in range, those days read back into the stage,
//! deduplicated on the same key as `events` (tenant, type, client timestamp, id).
//!
//! The stage of a tenant is only touched by a job holding that tenant's lease
//! ([`lease_name`]), so two jobs never overwrite each other's rows.

use std::collections::{BTreeMap, BTreeSet};

use time::Date;
use uuid::Uuid;

use super::cold::{self, ColdStore};
use super::context::JobContext;
use super::error::JobError;
use shared::store::sql::ms;

/// The lease every job takes before it reads or rewrites a tenant's archives.
pub fn lease_name(tenant: Uuid) -> String {
    format!("archives:{tenant}")
}

/// The columns aggregates read.
const COLUMNS: &str = "tenant_id, session_id, id, type, timestamp, path, is_bot, received_at";

/// Where a computation reads events from.
#[derive(Debug, Clone)]
pub enum Source {
    /// Raw events only (`events FINAL`), for tenants with no archived day in range.
    Raw,
    /// One tenant's raw events and its staged archives over `[from_ms, to_ms)`.
    Merged {
        tenant: Uuid,
        from_ms: i64,
        to_ms: i64,
    },
}

impl Source {
    /// A table expression standing in for `events FINAL`.
    pub fn sql(&self, ctx: &JobContext) -> String {
        match self {
            Source::Raw => format!("{} FINAL", ctx.table("events")),
            Source::Merged {
                tenant,
                from_ms,
                to_ms,
            } => {
                let filter = format!(
                    "tenant_id = toUUID('{tenant}') \
                     AND timestamp >= fromUnixTimestamp64Milli(toInt64({from_ms}), 'UTC') \
                     AND timestamp < fromUnixTimestamp64Milli(toInt64({to_ms}), 'UTC')"
                );
                format!(
                    "(SELECT {COLUMNS} FROM (\
                     SELECT {COLUMNS} FROM {events} FINAL WHERE {filter} \
                     UNION ALL SELECT {COLUMNS} FROM {stage} WHERE {filter}) \
                     ORDER BY received_at DESC LIMIT 1 BY tenant_id, type, timestamp, id)",
                    events = ctx.table("events"),
                    stage = ctx.table("archive_stage"),
                )
            }
        }
    }
}

/// Archived days per tenant within `[from, to]` (`only` restricts to one tenant).
pub async fn days(
    ctx: &JobContext,
    only: Option<Uuid>,
    from: Date,
    to: Date,
) -> Result<BTreeMap<Uuid, BTreeSet<Date>>, JobError> {
    let rows: Vec<(String, String)> = ctx
        .client
        .query(&format!(
            "SELECT toString(tenant_id), toString(day) FROM {} FINAL \
             WHERE day >= toDate(?) AND day <= toDate(?) AND (? = '' OR toString(tenant_id) = ?)",
            ctx.table("archives")
        ))
        .bind(from.to_string())
        .bind(to.to_string())
        .bind(only.map(|t| t.to_string()).unwrap_or_default())
        .bind(only.map(|t| t.to_string()).unwrap_or_default())
        .fetch_all()
        .await?;
    let mut out: BTreeMap<Uuid, BTreeSet<Date>> = BTreeMap::new();
    for (t, d) in rows {
        let tenant = Uuid::try_parse(&t).map_err(|_| JobError::Stored {
            what: "archive tenant id",
            value: t.clone(),
        })?;
        out.entry(tenant).or_default().insert(cold::parse_day(&d)?);
    }
    Ok(out)
}

/// Records a verified archive of `tenant`'s `day` holding `events` events.
pub async fn register(
    ctx: &JobContext,
    tenant: Uuid,
    day: Date,
    location: &str,
    events: u64,
) -> Result<(), JobError> {
    ctx.client
        .query(&format!(
            "INSERT INTO {} (tenant_id, day, location, events, updated_at) \
             VALUES (toUUID(?), toDate(?), ?, ?, now64(3))",
            ctx.table("archives")
        ))
        .bind(tenant.to_string())
        .bind(day.to_string())
        .bind(location)
        .bind(events)
        .execute()
        .await?;
    Ok(())
}

/// ClickHouse's `Date` range: every archived day lies inside it.
pub const ALL_DAYS: (Date, Date) = (
    time::macros::date!(1970 - 01 - 01),
    time::macros::date!(2149 - 06 - 06),
);

/// Registers archives found in cold storage but missing from `known` (the
/// tenant's catalogued days: files written before the catalogue existed);
/// returns every archived day of the tenant.
pub async fn reconcile(
    ctx: &JobContext,
    cold: &ColdStore,
    tenant: Uuid,
    known: &BTreeSet<Date>,
) -> Result<BTreeSet<Date>, JobError> {
    let mut all = known.clone();
    for day in cold.days(tenant).await? {
        if !known.contains(&day) {
            let key = cold.key(tenant, day);
            tracing::info!(%tenant, %day, "registering an archive missing from the catalogue");
            register(ctx, tenant, day, &cold.location(&key), 0).await?;
            all.insert(day);
        }
    }
    Ok(all)
}

/// Empties the tenant's stage (and the compression read-back table).
pub async fn clear_stage(ctx: &JobContext, tenant: Uuid) -> Result<(), JobError> {
    for t in ["archive_stage", "compression_verify"] {
        ctx.client
            .query(&format!(
                "DELETE FROM {} WHERE tenant_id = toUUID(?)",
                ctx.table(t)
            ))
            .bind(tenant.to_string())
            .execute()
            .await?;
    }
    Ok(())
}

/// Reads the archive of each of `days` back into the stage. A file that cannot
/// be read is an error (nothing may overwrite it); one that is missing is
/// logged and skipped.
pub async fn stage(
    ctx: &JobContext,
    cold: &ColdStore,
    tenant: Uuid,
    days: impl IntoIterator<Item = Date>,
) -> Result<(), JobError> {
    for day in days {
        let key = cold.key(tenant, day);
        let Some(bytes) = cold.get_optional(&key).await? else {
            // Catalogued, yet gone from cold storage (removed by hand): what it
            // held is lost already; go on with what exists, loudly.
            tracing::warn!(%tenant, %day, file = %cold.location(&key), "a catalogued archive is missing from cold storage");
            continue;
        };
        insert_parquet(ctx, "archive_stage", bytes)
            .await
            .map_err(|source| JobError::UnreadableArchive {
                location: cold.location(&key),
                tenant,
                source: Box::new(source),
            })?;
    }
    Ok(())
}

/// Inserts a Parquet file into `table`.
pub async fn insert_parquet(
    ctx: &JobContext,
    table: &str,
    bytes: bytes::Bytes,
) -> Result<(), JobError> {
    let mut insert = ctx
        .client
        .insert_formatted_with(format!("INSERT INTO {} FORMAT Parquet", ctx.table(table)));
    insert.send(bytes).await?;
    insert.end().await?;
    Ok(())
}

/// The whole UTC day `[day, day + 1)` in Unix milliseconds.
pub fn day_ms(day: Date) -> (i64, i64) {
    let start = day.midnight().assume_utc();
    (ms(start), ms(start + time::Duration::days(1)))
}
