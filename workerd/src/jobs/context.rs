//! What every job shares: its name and schedule, its context (ClickHouse and
//! the configuration), the window it recomputes and the report it returns.

use std::collections::BTreeMap;

use shared::config::{Config, JobsConfig, Schedule};
use shared::domain::Tier;
use shared::store::{audit, Db};
use time::OffsetDateTime;
use uuid::Uuid;

use super::error::JobError;
use crate::notify::Alert;

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

    /// When `workerd run` runs the job (`jobs.<name>_cron`).
    pub fn schedule(self, cfg: &JobsConfig) -> &Schedule {
        match self {
            JobName::Retention => &cfg.retention_cron,
            JobName::Sessions => &cfg.sessions_cron,
            JobName::Rollups => &cfg.rollups_cron,
            JobName::Quota => &cfg.quota_cron,
            JobName::Compression => &cfg.compression_cron,
            JobName::Enrichment => &cfg.enrichment_cron,
            JobName::Alerts => &cfg.alerts_cron,
        }
    }

    pub fn parse(s: &str) -> Result<JobName, UnknownJob> {
        JobName::ALL
            .into_iter()
            .find(|j| j.as_str() == s)
            .ok_or_else(|| UnknownJob(s.to_string()))
    }
}

/// A job name `workerd job run` does not know.
#[derive(Debug, Clone, thiserror::Error)]
#[error(
    "no job `{0}`; jobs are retention, sessions, rollups, quota, compression, enrichment, alerts"
)]
pub struct UnknownJob(pub String);

/// What a job needs: the database and the configuration. Jobs read many
/// sections (tiers, limits, jobs, notifications, cold storage, keys), so the
/// context carries the whole configuration the binary loaded.
pub struct JobContext {
    pub client: clickhouse::Client,
    pub db: Db,
    pub config: Config,
}

impl JobContext {
    /// A context on the configured ClickHouse database.
    pub fn new(config: Config) -> JobContext {
        JobContext {
            client: shared::store::client(&config.clickhouse),
            db: Db::for_config(&config.clickhouse),
            config,
        }
    }
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
    /// What the run saw and did, for the log, `/health` and `workerd job run`.
    pub detail: serde_json::Value,
    /// Tenants left as they were because another job held their lease.
    pub busy: Vec<Uuid>,
    /// The alerts the run raises (the notifier gates and delivers them).
    pub alerts: Vec<Alert>,
}

impl JobContext {
    pub fn table(&self, name: &str) -> String {
        self.db.table(name)
    }

    /// Where mutations of `name` go ([`Db::mutable`]): on a cluster, a
    /// sharded table's `<name>_local ON CLUSTER`.
    pub fn mutable(&self, name: &str) -> String {
        self.db.mutable(name)
    }

    /// Every tenant with a row in `tenants`, a key in `auth.keys` or events,
    /// and its tier, decided as the gateway decides it
    /// ([`shared::store::keys::resolve_tier`]).
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
        let rows: BTreeMap<Uuid, String> = known
            .into_iter()
            .filter_map(|(id, tier)| Uuid::try_parse(&id).ok().map(|id| (id, tier)))
            .collect();
        let mut ids: std::collections::BTreeSet<Uuid> = seen
            .iter()
            .filter_map(|id| Uuid::try_parse(id).ok())
            .collect();
        ids.extend(rows.keys().copied());
        ids.extend(self.config.auth.keys.iter().map(|k| k.tenant_id));
        Ok(ids
            .into_iter()
            .map(|id| {
                let tier = shared::store::keys::resolve_tier(
                    rows.get(&id).map(String::as_str),
                    &self.config.auth.keys,
                    id,
                );
                (id, tier)
            })
            .collect())
    }

    /// Writes an audit entry for a job's action.
    pub async fn audit(
        &self,
        action: &str,
        tenant: Option<Uuid>,
        detail: serde_json::Value,
    ) -> Result<(), JobError> {
        let target = tenant.map_or_else(|| "*".to_string(), |t| t.to_string());
        let entry = audit::Entry {
            actor: "workerd",
            action,
            tenant,
            target: &target,
            detail,
        };
        audit::record(&self.client, &self.db, entry).await?;
        Ok(())
    }
}
