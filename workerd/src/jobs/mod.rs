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
//! - `alerts`: raises dead-letter growth and consumer lag alerts.

pub mod aggregates;
pub mod alerts;
pub mod cold;
pub mod compression;
pub mod enrichment;
pub mod quota;
pub mod retention;

use std::collections::BTreeMap;

use shared::ch::ident;
use shared::config::{Config, Tier};
use time::OffsetDateTime;
use uuid::Uuid;

#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error("ClickHouse: {0}")]
    ClickHouse(#[from] clickhouse::error::Error),
    #[error("{0}")]
    Invalid(String),
}

/// The jobs `workerd job run` knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobName {
    Retention,
    Sessions,
    Rollups,
    Quota,
    Compression,
    Enrichment,
    Alerts,
}

impl JobName {
    pub const ALL: [JobName; 7] = [
        JobName::Retention,
        JobName::Sessions,
        JobName::Rollups,
        JobName::Quota,
        JobName::Compression,
        JobName::Enrichment,
        JobName::Alerts,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            JobName::Retention => "retention",
            JobName::Sessions => "sessions",
            JobName::Rollups => "rollups",
            JobName::Quota => "quota",
            JobName::Compression => "compression",
            JobName::Enrichment => "enrichment",
            JobName::Alerts => "alerts",
        }
    }

    pub fn parse(s: &str) -> Result<JobName, String> {
        JobName::ALL
            .into_iter()
            .find(|j| j.as_str() == s)
            .ok_or_else(|| {
                let names: Vec<&str> = JobName::ALL.iter().map(|j| j.as_str()).collect();
                format!("no job `{s}`; jobs are {}", names.join(", "))
            })
    }
}

/// What a job needs: the database, the configuration and who is acting.
pub struct JobContext {
    pub client: clickhouse::Client,
    pub config: Config,
}

/// The time range a recompute covers, `[from, to)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub from: OffsetDateTime,
    pub to: OffsetDateTime,
}

/// What a run did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct JobReport {
    pub rows_affected: u64,
    pub detail: serde_json::Value,
}

pub fn ms(t: OffsetDateTime) -> i64 {
    (t.unix_timestamp_nanos() / 1_000_000) as i64
}

impl JobContext {
    pub fn table(&self, name: &str) -> String {
        format!(
            "{}.{}",
            ident(&self.config.clickhouse.database),
            ident(name)
        )
    }

    /// Every tenant with a row in `tenants` or with events, and its tier
    /// (`free` without a row).
    pub async fn tenants(&self) -> Result<Vec<(Uuid, Tier)>, JobError> {
        let known: Vec<(String, String)> = self
            .client
            .query(&format!(
                "SELECT toString(tenant_id), tier FROM {} FINAL",
                self.table("tenants")
            ))
            .fetch_all()
            .await?;
        let seen: Vec<String> = self
            .client
            .query(&format!(
                "SELECT DISTINCT toString(tenant_id) FROM {}",
                self.table("events")
            ))
            .fetch_all()
            .await?;
        let mut out: BTreeMap<Uuid, Tier> = BTreeMap::new();
        for id in seen {
            if let Ok(id) = Uuid::try_parse(&id) {
                out.insert(id, Tier::Free);
            }
        }
        for (id, tier) in known {
            if let Ok(id) = Uuid::try_parse(&id) {
                out.insert(id, Tier::parse(&tier).unwrap_or_default());
            }
        }
        Ok(out.into_iter().collect())
    }

    /// Writes an audit entry for a job's action.
    pub async fn audit(
        &self,
        action: &str,
        tenant: Option<Uuid>,
        detail: serde_json::Value,
    ) -> Result<(), JobError> {
        let target = tenant.map_or_else(|| "*".to_string(), |t| t.to_string());
        shared::ch::audit(
            &self.client,
            &self.config.clickhouse.database,
            "workerd",
            action,
            tenant,
            &target,
            &detail,
        )
        .await?;
        Ok(())
    }
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
    let window = window.unwrap_or(Window {
        from: now - time::Duration::hours(ctx.config.jobs.recompute_window_hours as i64),
        to: now,
    });
    if window.from >= window.to {
        return Err(JobError::Invalid(
            "the window's start must be before its end".into(),
        ));
    }
    let started = std::time::Instant::now();
    let report = match job {
        JobName::Retention => retention::run(ctx, now, tenant).await?,
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
