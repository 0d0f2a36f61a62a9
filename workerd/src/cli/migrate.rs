//! `workerd migrate`: topics, then the ClickHouse schema; idempotent.

use shared::config::Config;
use shared::runtime::exit::Exit;

pub async fn run(config: &Config) -> Exit {
    match crate::migrate::run(&config.kafka, &config.clickhouse).await {
        Ok(report) => {
            tracing::info!(applied = ?report.applied, already = ?report.already, database = %config.clickhouse.database, "migrations complete");
            Exit::Ok
        }
        Err(e) => {
            tracing::error!(error = %e, "migration failed");
            super::failed("", e)
        }
    }
}
