//! What workerd's operations endpoints report (served by
//! [`shared::runtime::ops`]): ready when ClickHouse answers and the startup
//! migrations are done; `/health` adds both components and the job counters.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use shared::runtime::ops::Operations;
use shared::runtime::shutdown::Shutdown;

use crate::scheduler::Runner;

/// Startup migrations as readiness sees them.
#[derive(Debug, Clone, Default)]
pub struct MigrationState {
    pub done: bool,
    pub attempts: u32,
    pub last_error: Option<String>,
}

pub struct WorkerdOps {
    pub client: clickhouse::Client,
    pub runner: Arc<Runner>,
    /// `None` when migrations do not run at start.
    pub migrations: Option<Mutex<MigrationState>>,
    pub shutdown: Shutdown,
}

impl WorkerdOps {
    async fn clickhouse(&self) -> Result<(), String> {
        let q = self.client.query("SELECT 1").fetch_one::<u8>();
        match tokio::time::timeout(Duration::from_secs(2), q).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("timed out after 2s".into()),
        }
    }

    fn migration_state(&self) -> Option<MigrationState> {
        self.migrations
            .as_ref()
            .map(|m| m.lock().unwrap_or_else(|e| e.into_inner()).clone())
    }

    /// One look at ClickHouse and the migrations: the reasons not to be
    /// ready, and the ClickHouse probe itself. Sets the gauges it measures.
    async fn look(&self) -> (Vec<String>, Result<(), String>) {
        let ch = self.clickhouse().await;
        let mut why = Vec::new();
        if self.shutdown.is_triggered() {
            why.push("shutting down".to_string());
        }
        if let Err(e) = &ch {
            why.push(format!("ClickHouse does not answer: {e}"));
        }
        if self.migration_state().is_some_and(|m| !m.done) {
            why.push("startup migrations are not done".to_string());
        }
        crate::telemetry::clickhouse_up(ch.is_ok(), why.is_empty());
        (why, ch)
    }

    /// Records one attempt of the startup migrations.
    pub fn migrated(&self, result: Result<(), String>) {
        if let Some(m) = &self.migrations {
            let mut s = m.lock().unwrap_or_else(|e| e.into_inner());
            s.attempts += 1;
            s.done = result.is_ok();
            s.last_error = result.err();
        }
    }
}

impl Operations for WorkerdOps {
    async fn not_ready(&self) -> Vec<String> {
        self.look().await.0
    }

    async fn health(&self) -> (Vec<String>, Value) {
        let (why, ch) = self.look().await;
        let report = json!({
            "components": {
                "clickhouse": match &ch {
                    Ok(()) => json!({"status": "up"}),
                    Err(e) => json!({"status": "down", "detail": e}),
                },
                "migrations": self.migration_state().map(|m| json!({
                    "status": if m.done { "done" } else { "pending" },
                    "attempts": m.attempts,
                    "last_error": m.last_error,
                })),
            },
            "jobs": self.runner.report(),
        });
        (why, report)
    }

    async fn scrape(&self) {
        // The look sets the clickhouse_up and ready gauges the scrape reads.
        let _ = self.look().await;
    }
}
