//! `workerd run` as a library, so tests start it in-process on port 0:
//! [`run`] serves the operations endpoints at once, applies the startup
//! migrations (retrying with backoff while ClickHouse or the broker is
//! unreachable, not ready meanwhile), then schedules the jobs until the
//! shutdown is triggered.
//!
//! Shutdown, in order (see [`shared::runtime::shutdown`]): readiness turns 503
//! and the scheduler starts nothing more; jobs still running get
//! `workerd.shutdown_timeout_ms` to finish; background tasks stop; the
//! operations listener drains and closes.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use shared::config::Config;
use shared::runtime::ops::{self, Settings};
use shared::runtime::shutdown::{Background, Shutdown};
use tokio::net::TcpListener;

use crate::jobs::JobContext;
use crate::notify::Notifier;
use crate::ops::{MigrationState, WorkerdOps};
use crate::scheduler::{self, Runner, ScheduleError};

/// Why the daemon stopped other than by its shutdown.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Schedule(#[from] ScheduleError),
}

/// Runs the daemon on `listener` until `shutdown` is triggered.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: Shutdown,
) -> Result<(), DaemonError> {
    crate::telemetry::install_metrics();
    let ctx = Arc::new(JobContext::new(config.clone()));
    let notifier = Notifier::new(ctx.client.clone(), ctx.db.clone(), &config.notifications);
    let runner = Arc::new(Runner::new(Arc::clone(&ctx), Some(notifier)));
    let ops = Arc::new(WorkerdOps {
        client: ctx.client.clone(),
        runner: Arc::clone(&runner),
        migrations: config
            .workerd
            .migrate_on_start
            .then(|| Mutex::new(MigrationState::default())),
        shutdown: shutdown.clone(),
    });
    let drain = Duration::from_millis(config.workerd.shutdown_timeout_ms);
    let settings = Settings {
        drain_timeout: drain,
        retry_after_secs: 5,
        ..Settings::default()
    };
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "workerd serving /health and /metrics");
    }
    let ops_done = Shutdown::new();
    let server = tokio::spawn(ops::serve(
        listener,
        Arc::clone(&ops),
        settings,
        ops_done.wait(),
    ));
    let stop_serving = || async {
        ops_done.trigger();
        let _ = server.await;
    };

    if ops.migrations.is_some() && !migrate_at_start(&config, &ops, &shutdown).await {
        stop_serving().await;
        return Ok(());
    }
    let mut sched = match scheduler::start(Arc::clone(&runner)).await {
        Ok(s) => s,
        Err(e) => {
            stop_serving().await;
            return Err(e.into());
        }
    };
    let mut background = Background::default();
    if config.telemetry.snapshot_interval_secs > 0 {
        background.push(
            "metric snapshots",
            shared::runtime::metrics::spawn_snapshots(
                ctx.client.clone(),
                &config.clickhouse.database,
                "workerd",
                Duration::from_secs(config.telemetry.snapshot_interval_secs),
            ),
        );
    }
    tracing::info!("workerd running");
    shutdown.wait().await;

    tracing::info!(timeout = ?drain, "shutting down: no new job runs; waiting for running jobs");
    if let Err(e) = sched.shutdown().await {
        tracing::warn!(error = %e, "stopping the scheduler");
    }
    let deadline = Instant::now() + drain;
    while runner.busy() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    if runner.busy() {
        tracing::warn!(
            "jobs still running at the shutdown timeout; their leases expire by themselves"
        );
    }
    background.stop();
    stop_serving().await;
    tracing::info!("workerd stopped");
    Ok(())
}

/// The startup migrations, retried with exponential backoff (1 s doubling to
/// 60 s); false when the shutdown came first.
async fn migrate_at_start(config: &Config, ops: &WorkerdOps, shutdown: &Shutdown) -> bool {
    let mut pause = Duration::from_secs(1);
    loop {
        match crate::migrate::run(&config.kafka, &config.clickhouse).await {
            Ok(report) => {
                tracing::info!(applied = ?report.applied, "startup migrations complete");
                ops.migrated(Ok(()));
                return true;
            }
            Err(e) => {
                ops.migrated(Err(e.to_string()));
                tracing::error!(error = %e, retry_in_ms = pause.as_millis() as u64, "startup migrations failed; retrying");
            }
        }
        tokio::select! {
            () = tokio::time::sleep(pause) => {}
            () = shutdown.wait() => return false,
        }
        pause = (pause * 2).min(Duration::from_secs(60));
    }
}
