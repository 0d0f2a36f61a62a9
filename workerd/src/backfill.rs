//! Backfills: recompute sessions and hourly/daily rollups for one tenant over a
//! time range, chunk by chunk, with progress in `backfill_jobs`.
//!
//! Progress is written after every completed chunk, so a backfill that was
//! killed resumes (`workerd backfill resume <job_id>`) from the first chunk not
//! done. Each chunk's work replaces what it computes, so redoing a chunk that was
//! interrupted half-way neither loses nor double-counts anything.

use shared::store::sql::AT_MS;
use std::io::Write;

use serde::Deserialize;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::jobs::{self, ms, JobContext, JobError, Window};

/// A backfill that cannot start or go on.
#[derive(Debug, thiserror::Error)]
pub enum BackfillError {
    #[error(transparent)]
    Job(#[from] JobError),
    #[error("ClickHouse: {0}")]
    ClickHouse(#[from] clickhouse::error::Error),
    #[error("tenant {0}'s archives are in use by another job; resume the backfill later")]
    Busy(Uuid),
    #[error("--from must be before --to")]
    EmptyRange,
    #[error("--chunk-hours must be at least 1")]
    NoChunk,
    #[error("no backfill {0}")]
    Unknown(Uuid),
}

#[derive(Debug, Clone, PartialEq, Eq, clickhouse::Row, Deserialize)]
pub struct BackfillRow {
    pub job_id: String,
    pub kind: String,
    pub tenant_id: String,
    pub range_start_ms: i64,
    pub range_end_ms: i64,
    pub chunk_hours: u32,
    pub chunks_total: u32,
    pub chunks_done: u32,
    pub status: String,
    pub error: String,
}

fn at(ms: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp_nanos(ms as i128 * 1_000_000)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

/// A text progress bar: `[#####.....] 5/10 chunks`.
pub fn progress_bar(done: u32, total: u32) -> String {
    let width = 30usize;
    let filled = if total == 0 {
        width
    } else {
        (done as usize * width) / total as usize
    };
    format!(
        "[{}{}] {done}/{total} chunks",
        "#".repeat(filled),
        ".".repeat(width - filled)
    )
}

async fn save(ctx: &JobContext, row: &BackfillRow) -> Result<(), BackfillError> {
    ctx.client
        .query(&format!(
            "INSERT INTO {} (job_id, kind, tenant_id, range_start, range_end, chunk_hours, \
             chunks_total, chunks_done, status, error, created_at, updated_at) \
             SELECT toUUID(?), ?, toUUID(?), {AT_MS}, \
             {AT_MS}, ?, ?, ?, ?, ?, now64(3), now64(3)",
            ctx.table("backfill_jobs")
        ))
        .bind(&row.job_id)
        .bind(&row.kind)
        .bind(&row.tenant_id)
        .bind(row.range_start_ms)
        .bind(row.range_end_ms)
        .bind(row.chunk_hours)
        .bind(row.chunks_total)
        .bind(row.chunks_done)
        .bind(&row.status)
        .bind(&row.error)
        .execute()
        .await?;
    Ok(())
}

fn select(ctx: &JobContext, tail: &str) -> String {
    format!(
        "SELECT toString(job_id) AS job_id, kind, toString(tenant_id) AS tenant_id, \
         toUnixTimestamp64Milli(range_start) AS range_start_ms, \
         toUnixTimestamp64Milli(range_end) AS range_end_ms, chunk_hours, chunks_total, \
         chunks_done, status, error FROM {} FINAL {tail}",
        ctx.table("backfill_jobs")
    )
}

pub async fn load(ctx: &JobContext, job_id: Uuid) -> Result<Option<BackfillRow>, BackfillError> {
    Ok(ctx
        .client
        .query(&select(ctx, "WHERE job_id = ?"))
        .bind(job_id.to_string())
        .fetch_optional()
        .await?)
}

pub async fn list(ctx: &JobContext) -> Result<Vec<BackfillRow>, BackfillError> {
    Ok(ctx
        .client
        .query(&select(ctx, "ORDER BY created_at"))
        .fetch_all()
        .await?)
}

/// Records a new backfill (nothing computed yet).
pub async fn create(
    ctx: &JobContext,
    tenant: Uuid,
    from: OffsetDateTime,
    to: OffsetDateTime,
    chunk_hours: u32,
) -> Result<BackfillRow, BackfillError> {
    if from >= to {
        return Err(BackfillError::EmptyRange);
    }
    if chunk_hours == 0 {
        return Err(BackfillError::NoChunk);
    }
    let chunk_ms = chunk_hours as i64 * 3_600_000;
    let span = ms(to) - ms(from);
    let row = BackfillRow {
        job_id: Uuid::new_v4().to_string(),
        kind: "sessions+rollups".into(),
        tenant_id: tenant.to_string(),
        range_start_ms: ms(from),
        range_end_ms: ms(to),
        chunk_hours,
        chunks_total: ((span + chunk_ms - 1) / chunk_ms) as u32,
        chunks_done: 0,
        status: "running".into(),
        error: String::new(),
    };
    save(ctx, &row).await?;
    Ok(row)
}

/// Works through the chunks not done yet, at most `max_chunks` of them now;
/// `progress` receives a bar after each chunk.
pub async fn run(
    ctx: &JobContext,
    mut row: BackfillRow,
    max_chunks: Option<u32>,
    progress: &mut dyn Write,
) -> Result<BackfillRow, BackfillError> {
    let tenant = Uuid::try_parse(&row.tenant_id).map_err(|_| JobError::Stored {
        what: "backfill tenant id",
        value: row.tenant_id.clone(),
    })?;
    let chunk_ms = row.chunk_hours as i64 * 3_600_000;
    let mut budget = max_chunks.unwrap_or(u32::MAX);
    let _ = writeln!(
        progress,
        "{}",
        progress_bar(row.chunks_done, row.chunks_total)
    );
    while row.chunks_done < row.chunks_total && budget > 0 {
        let start = row.range_start_ms + row.chunks_done as i64 * chunk_ms;
        let end = (start + chunk_ms).min(row.range_end_ms);
        let window = Window {
            from: at(start),
            to: at(end),
        };
        let result = async {
            for report in [
                jobs::aggregates::sessions(ctx, window, Some(tenant)).await?,
                jobs::aggregates::rollups(ctx, window, Some(tenant)).await?,
            ] {
                // The tenant's archives were in use by another job: nothing was
                // changed for it; `backfill resume` redoes the chunk later.
                if !report.busy.is_empty() {
                    return Err(BackfillError::Busy(tenant));
                }
            }
            Ok(())
        }
        .await;
        if let Err(e) = result {
            row.status = "failed".into();
            row.error = e.to_string();
            save(ctx, &row).await?;
            return Err(e);
        }
        row.chunks_done += 1;
        budget -= 1;
        if row.chunks_done == row.chunks_total {
            row.status = "done".into();
        }
        save(ctx, &row).await?;
        let _ = writeln!(
            progress,
            "{}",
            progress_bar(row.chunks_done, row.chunks_total)
        );
    }
    Ok(row)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bars() {
        assert_eq!(
            progress_bar(0, 4),
            format!("[{}] 0/4 chunks", ".".repeat(30))
        );
        assert_eq!(
            progress_bar(2, 4),
            format!("[{}{}] 2/4 chunks", "#".repeat(15), ".".repeat(15))
        );
        assert_eq!(
            progress_bar(4, 4),
            format!("[{}] 4/4 chunks", "#".repeat(30))
        );
    }
}
