//! `workerd [--config FILE] <migrate|run>`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use shared::config::{Config, EXIT_CONFIG};

#[derive(Parser)]
#[command(version, about = "Overwatch worker daemon")]
struct Args {
    /// Configuration file layered over the built-in defaults.
    #[arg(long, env = "OVERWATCH_CONFIG", global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create the broker topics and apply ClickHouse schema migrations, then exit.
    Migrate,
    /// Run the daemon (migrations first when `workerd.migrate_on_start`), serving /health.
    Run,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let config = match Config::load(args.config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("workerd: {e}");
            return ExitCode::from(EXIT_CONFIG as u8);
        }
    };
    shared::telemetry::init(&config.log);
    match args.command {
        Command::Migrate => migrate(&config).await,
        Command::Run => {
            if config.workerd.migrate_on_start {
                let code = migrate(&config).await;
                if code != ExitCode::SUCCESS {
                    return code;
                }
            }
            let listener = match tokio::net::TcpListener::bind(config.workerd.listen).await {
                Ok(l) => l,
                Err(e) => {
                    tracing::error!(listen = %config.workerd.listen, error = %e, "cannot bind workerd.listen");
                    return ExitCode::from(1);
                }
            };
            tracing::info!(listen = %config.workerd.listen, "workerd running");
            let health = Arc::new(workerd::health::Health {
                client: shared::ch::client(&config.clickhouse),
            });
            workerd::health::serve(listener, health, shared::shutdown_signal()).await;
            tracing::info!("workerd stopped");
            ExitCode::SUCCESS
        }
    }
}

async fn migrate(config: &Config) -> ExitCode {
    match workerd::migrate::run(config).await {
        Ok(report) => {
            tracing::info!(applied = ?report.applied, already = ?report.already, database = %config.clickhouse.database, "migrations complete");
            ExitCode::SUCCESS
        }
        Err(e) => {
            tracing::error!(error = %e, "migration failed");
            eprintln!("workerd: {e}");
            ExitCode::from(1)
        }
    }
}
