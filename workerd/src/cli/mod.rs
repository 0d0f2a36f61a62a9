//! The command line: one file per subcommand, owning its arguments and its
//! output. `main.rs` only calls [`main`].

mod backfill;
mod check_config;
mod import;
mod job;
mod key;
mod migrate;
mod run;
mod tenant;
mod text;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use shared::config::Config;
use shared::runtime::exit::Exit;

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
    /// Load and validate the configuration (and the job schedules), then exit:
    /// 0 when valid, 64 naming the offending key otherwise.
    CheckConfig,
    /// Run scheduled jobs by hand.
    Job {
        #[command(subcommand)]
        cmd: job::JobCmd,
    },
    /// Recompute sessions and rollups for a tenant and time range, resumably.
    Backfill {
        #[command(subcommand)]
        cmd: backfill::BackfillCmd,
    },
    /// Load history older than the gateway's window (NDJSON of /ingest events)
    /// straight into ClickHouse, one month per insert; checks every line first.
    Import(import::ImportArgs),
    /// Manage tenants.
    Tenant {
        #[command(subcommand)]
        cmd: tenant::TenantCmd,
    },
    /// Manage API keys (the secret is printed once, at issue or rotation).
    Key {
        #[command(subcommand)]
        cmd: key::KeyCmd,
    },
}

/// Parses the command line, loads the configuration, sets up telemetry and
/// runs the subcommand.
pub async fn main() -> ExitCode {
    let args = Args::parse();
    let config = match Config::load_or_exit("workerd", args.config.as_deref()) {
        Ok(c) => c,
        Err(exit) => return exit.code(),
    };
    let telemetry = shared::runtime::telemetry::init(&config.log, &config.telemetry, "workerd");
    let exit = match args.command {
        Command::CheckConfig => check_config::run(&config),
        Command::Migrate => migrate::run(&config).await,
        Command::Run => run::run(config).await,
        Command::Job { cmd } => job::run(config, cmd).await,
        Command::Backfill { cmd } => backfill::run(config, cmd).await,
        Command::Import(a) => import::run(config, a).await,
        Command::Tenant { cmd } => tenant::run(&config, cmd).await,
        Command::Key { cmd } => key::run(&config, cmd).await,
    };
    telemetry.shutdown();
    exit.code()
}

/// Prints `workerd: <context>: <error>` and gives the failure status.
fn failed(context: &str, error: impl std::fmt::Display) -> Exit {
    eprintln!("workerd: {context}{error}");
    Exit::Failure
}
