//! `workerd [--config FILE] <migrate|run>`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use std::time::Duration;

use clap::{Parser, Subcommand};
use shared::config::{Config, Tier};
use uuid::Uuid;
use workerd::admin::{self, Admin, KeySpec};
use workerd::jobs::{self, JobContext, JobName, Window};
use workerd::notify::Notifier;
use workerd::scheduler::{self, Runner};

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
        cmd: JobCmd,
    },
    /// Recompute sessions and rollups for a tenant and time range, resumably.
    Backfill {
        #[command(subcommand)]
        cmd: BackfillCmd,
    },
    /// Load history older than the gateway's window (NDJSON of /ingest events)
    /// straight into ClickHouse, one month per insert; checks every line first.
    Import {
        #[arg(long)]
        tenant: Uuid,
        /// NDJSON file: one event object per line.
        #[arg(long)]
        file: PathBuf,
    },
    /// Manage tenants.
    Tenant {
        #[command(subcommand)]
        cmd: TenantCmd,
    },
    /// Manage API keys (the secret is printed once, at issue or rotation).
    Key {
        #[command(subcommand)]
        cmd: KeyCmd,
    },
}

fn parse_tier(s: &str) -> Result<Tier, String> {
    Tier::parse(s).ok_or_else(|| format!("`{s}` is not a tier: free, paid or enterprise"))
}

fn parse_time(s: &str) -> Result<time::OffsetDateTime, String> {
    time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .map_err(|e| format!("`{s}` is not an RFC 3339 time: {e}"))
}

#[derive(Subcommand)]
enum JobCmd {
    /// Run one job once: retention, sessions, rollups or quota.
    Run {
        #[arg(value_parser = JobName::parse)]
        name: JobName,
        /// The job's clock (RFC 3339); defaults to the real time.
        #[arg(long, value_parser = parse_time)]
        now: Option<time::OffsetDateTime>,
        /// Only this tenant.
        #[arg(long)]
        tenant: Option<Uuid>,
        /// Start of the window sessions/rollups recompute (with --to).
        #[arg(long, value_parser = parse_time, requires = "to")]
        from: Option<time::OffsetDateTime>,
        #[arg(long, value_parser = parse_time, requires = "from")]
        to: Option<time::OffsetDateTime>,
    },
}

#[derive(Subcommand)]
enum BackfillCmd {
    /// Start a backfill; prints its job id and a progress bar.
    Start {
        #[arg(long)]
        tenant: Uuid,
        #[arg(long, value_parser = parse_time)]
        from: time::OffsetDateTime,
        #[arg(long, value_parser = parse_time)]
        to: time::OffsetDateTime,
        #[arg(long, default_value_t = 24)]
        chunk_hours: u32,
        /// Process at most this many chunks now (resume later).
        #[arg(long)]
        stop_after: Option<u32>,
    },
    /// Continue a backfill from its first chunk not done.
    Resume {
        job_id: Uuid,
        #[arg(long)]
        stop_after: Option<u32>,
    },
    /// List backfills and their progress.
    List,
}

#[derive(Subcommand)]
enum TenantCmd {
    /// Create a tenant and print its id.
    Create {
        #[arg(long)]
        name: String,
        #[arg(long, default_value = "free", value_parser = parse_tier)]
        tier: Tier,
        /// Use this id instead of a random one.
        #[arg(long)]
        id: Option<Uuid>,
        /// Truncate this tenant's IP addresses at the gateway.
        #[arg(long)]
        anonymize_ip: bool,
    },
    /// List tenants.
    List,
    /// Change a tenant's tier (rate limits follow within one key refresh).
    SetTier {
        tenant: Uuid,
        #[arg(value_parser = parse_tier)]
        tier: Tier,
    },
}

#[derive(Subcommand)]
enum KeyCmd {
    /// Issue a key and print it once.
    Issue {
        #[arg(long)]
        tenant: Uuid,
        /// `server` or `browser` (browser keys may use CORS and sendBeacon).
        #[arg(long, default_value = "server")]
        kind: String,
        #[arg(long, default_value = "")]
        description: String,
        /// Allowed browser origin, e.g. https://shop.example (repeatable; `*` for any).
        #[arg(long = "origin")]
        origins: Vec<String>,
        /// Client IP or CIDR allowed to use the key (repeatable; none = any).
        #[arg(long = "allow-ip")]
        allow_ip: Vec<String>,
        /// An Ed25519 public key file (PEM, as `openssl pkey -pubout` writes, or
        /// base64): requests are then signed with its private key and present
        /// the key id, never a secret (docs/api.md, "Signed requests").
        #[arg(long, value_name = "FILE")]
        signing_public_key: Option<PathBuf>,
        /// Expire after this long, e.g. 90d.
        #[arg(long, value_parser = admin::parse_duration)]
        expires_in: Option<Duration>,
    },
    /// List keys (never their secrets).
    List {
        #[arg(long)]
        tenant: Option<Uuid>,
    },
    /// Revoke a key; gateways refuse it within one refresh interval.
    Revoke { key_id: Uuid },
    /// Issue a successor; the old key keeps working for the overlap, then expires.
    Rotate {
        key_id: Uuid,
        #[arg(long, default_value = "24h", value_parser = admin::parse_duration)]
        overlap: Duration,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let config = match Config::load_or_exit_code("workerd", args.config.as_deref()) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let telemetry = shared::telemetry::init(&config.log, &config.telemetry, "workerd");
    let code = match args.command {
        Command::CheckConfig => match scheduler::validate(&config.jobs) {
            Ok(()) => {
                println!("workerd: configuration OK");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("workerd: configuration error at {e}");
                ExitCode::from(shared::config::EXIT_CONFIG as u8)
            }
        },
        Command::Migrate => migrate(&config).await,
        Command::Run => run(config).await,
        Command::Job { cmd } => job(&config, cmd).await,
        Command::Backfill { cmd } => backfill(&config, cmd).await,
        Command::Import { tenant, file } => import(&config, tenant, &file).await,
        Command::Tenant { cmd } => report(tenant(&admin_for(&config), cmd).await),
        Command::Key { cmd } => report(key(&admin_for(&config), cmd).await),
    };
    telemetry.shutdown();
    code
}

/// `workerd run`: serve /health at once; run the startup migrations, retrying
/// with exponential backoff while ClickHouse or the broker is unreachable (not
/// ready meanwhile); then schedule the jobs until SIGTERM.
async fn run(config: Config) -> ExitCode {
    if let Err(e) = scheduler::validate(&config.jobs) {
        eprintln!("workerd: configuration error at {e}");
        return ExitCode::from(shared::config::EXIT_CONFIG as u8);
    }
    let listener = match tokio::net::TcpListener::bind(config.workerd.listen).await {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(listen = %config.workerd.listen, error = %e, "cannot bind workerd.listen");
            return ExitCode::from(1);
        }
    };
    shared::metrics::install();
    let mut runner = Runner::new(Arc::new(JobContext {
        client: shared::ch::client(&config.clickhouse),
        config: config.clone(),
    }));
    runner.notifier = Some(Arc::new(Notifier::new(&config)));
    let runner = Arc::new(runner);
    let health = Arc::new(workerd::health::Health {
        client: shared::ch::client(&config.clickhouse),
        runner: Some(Arc::clone(&runner)),
        migrations: config
            .workerd
            .migrate_on_start
            .then(|| std::sync::Mutex::new(workerd::health::MigrationState::default())),
    });
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shared::shutdown_signal().await;
        let _ = stop_tx.send(true);
    });
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let server = tokio::spawn(workerd::health::serve(
        listener,
        Arc::clone(&health),
        stopped(stop_rx.clone()),
    ));
    tracing::info!(listen = %config.workerd.listen, "workerd serving /health");

    if let Some(state) = &health.migrations {
        let mut pause = std::time::Duration::from_secs(1);
        loop {
            match workerd::migrate::run(&config).await {
                Ok(report) => {
                    tracing::info!(applied = ?report.applied, "startup migrations complete");
                    let mut s = state.lock().unwrap_or_else(|e| e.into_inner());
                    s.done = true;
                    s.attempts += 1;
                    s.last_error = None;
                    break;
                }
                Err(e) => {
                    {
                        let mut s = state.lock().unwrap_or_else(|e| e.into_inner());
                        s.attempts += 1;
                        s.last_error = Some(e.to_string());
                    }
                    tracing::error!(error = %e, retry_in_ms = pause.as_millis() as u64, "startup migrations failed; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(pause) => {}
                        _ = stopped(stop_rx.clone()) => {
                            let _ = server.await;
                            return ExitCode::SUCCESS;
                        }
                    }
                    pause = (pause * 2).min(std::time::Duration::from_secs(60));
                }
            }
        }
    }
    let mut sched = match scheduler::start(Arc::clone(&runner)).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("workerd: configuration error at {e}");
            return ExitCode::from(shared::config::EXIT_CONFIG as u8);
        }
    };
    tracing::info!("workerd running");
    let snapshots = (config.telemetry.snapshot_interval_secs > 0).then(|| {
        shared::metrics::spawn_snapshots(
            shared::ch::client(&config.clickhouse),
            &config.clickhouse.database,
            "workerd",
            std::time::Duration::from_secs(config.telemetry.snapshot_interval_secs),
        )
    });
    let _ = server.await;
    if let Some(s) = snapshots {
        s.abort();
    }
    if let Err(e) = sched.shutdown().await {
        tracing::warn!(error = %e, "stopping the scheduler");
    }
    tracing::info!("workerd stopped");
    ExitCode::SUCCESS
}

async fn job(config: &Config, cmd: JobCmd) -> ExitCode {
    let JobCmd::Run {
        name,
        now,
        tenant,
        from,
        to,
    } = cmd;
    let ctx = JobContext {
        client: shared::ch::client(&config.clickhouse),
        config: config.clone(),
    };
    let window = from.zip(to).map(|(from, to)| Window { from, to });
    let now = now.unwrap_or_else(time::OffsetDateTime::now_utc);
    match jobs::run(&ctx, name, now, tenant, window).await {
        Ok(r) => {
            println!(
                "job {} rows_affected {} detail {}",
                name.as_str(),
                r.rows_affected,
                r.detail
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("workerd: job {} failed: {e}", name.as_str());
            ExitCode::from(1)
        }
    }
}

async fn import(config: &Config, tenant: Uuid, file: &std::path::Path) -> ExitCode {
    let ctx = JobContext {
        client: shared::ch::client(&config.clickhouse),
        config: config.clone(),
    };
    match workerd::import::run(&ctx, tenant, file).await {
        Ok(r) => {
            println!(
                "imported {} events for tenant {tenant} ({} to {}, months {})",
                r.events,
                r.oldest.as_deref().unwrap_or("?"),
                r.newest.as_deref().unwrap_or("?"),
                r.months.join(", ")
            );
            println!(
                "next: workerd backfill start --tenant {tenant} --from {} --to <now> (sessions, rollups)",
                r.oldest.as_deref().unwrap_or("?")
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("workerd: import failed: {e}");
            ExitCode::from(1)
        }
    }
}

async fn backfill(config: &Config, cmd: BackfillCmd) -> ExitCode {
    let ctx = JobContext {
        client: shared::ch::client(&config.clickhouse),
        config: config.clone(),
    };
    let result = async {
        let (row, stop_after) = match cmd {
            BackfillCmd::Start {
                tenant,
                from,
                to,
                chunk_hours,
                stop_after,
            } => {
                let row = workerd::backfill::create(&ctx, tenant, from, to, chunk_hours).await?;
                println!("backfill {} created", row.job_id);
                (row, stop_after)
            }
            BackfillCmd::Resume { job_id, stop_after } => {
                let row = workerd::backfill::load(&ctx, job_id)
                    .await?
                    .ok_or_else(|| {
                        workerd::jobs::JobError::Invalid(format!("no backfill {job_id}"))
                    })?;
                (row, stop_after)
            }
            BackfillCmd::List => {
                for r in workerd::backfill::list(&ctx).await? {
                    println!(
                        "{}  {}  {:<8}  {}  {}",
                        r.job_id,
                        r.tenant_id,
                        r.status,
                        workerd::backfill::progress_bar(r.chunks_done, r.chunks_total),
                        r.error
                    );
                }
                return Ok(());
            }
        };
        let row = workerd::backfill::run(&ctx, row, stop_after, &mut std::io::stderr()).await?;
        println!(
            "backfill {} status {} chunks {}/{}",
            row.job_id, row.status, row.chunks_done, row.chunks_total
        );
        Ok::<(), workerd::jobs::JobError>(())
    }
    .await;
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("workerd: backfill failed: {e}");
            ExitCode::from(1)
        }
    }
}

fn admin_for(config: &Config) -> Admin {
    Admin::new(
        shared::ch::client(&config.clickhouse),
        &config.clickhouse.database,
        &std::env::var("USER").unwrap_or_else(|_| "workerd-cli".into()),
    )
}

fn report(result: Result<(), admin::AdminError>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("workerd: {e}");
            ExitCode::from(1)
        }
    }
}

fn ms_to_rfc3339(ms: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(ms as i128 * 1_000_000)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| ms.to_string())
}

async fn tenant(admin: &Admin, cmd: TenantCmd) -> Result<(), admin::AdminError> {
    match cmd {
        TenantCmd::Create {
            name,
            tier,
            id,
            anonymize_ip,
        } => {
            let id = admin.tenant_create(id, &name, tier, anonymize_ip).await?;
            println!("tenant_id {id}");
        }
        TenantCmd::List => {
            println!(
                "{:<36}  {:<10}  {:<9}  {:<24}  name",
                "tenant_id", "tier", "anon_ip", "created_at"
            );
            for t in admin.tenant_list().await? {
                println!(
                    "{:<36}  {:<10}  {:<9}  {:<24}  {}",
                    t.tenant_id,
                    t.tier,
                    t.anonymize_ip,
                    ms_to_rfc3339(t.created_at_ms),
                    t.name
                );
            }
        }
        TenantCmd::SetTier { tenant, tier } => {
            admin.tenant_set_tier(tenant, tier).await?;
            println!("tenant {tenant} is now {}", tier.as_str());
        }
    }
    Ok(())
}

async fn key(admin: &Admin, cmd: KeyCmd) -> Result<(), admin::AdminError> {
    let print_issued = |i: &admin::Issued| {
        println!("key_id {}", i.key_id);
        println!("api_key {}", i.api_key());
        eprintln!("Store the api_key now: its secret is not kept and cannot be shown again.");
    };
    match cmd {
        KeyCmd::Issue {
            tenant,
            kind,
            description,
            origins,
            allow_ip,
            signing_public_key,
            expires_in,
        } => {
            let public = match &signing_public_key {
                None => None,
                Some(path) => Some(std::fs::read_to_string(path).map_err(|e| {
                    admin::AdminError::Invalid(format!(
                        "--signing-public-key {}: {e}",
                        path.display()
                    ))
                })?),
            };
            let spec = KeySpec {
                kind,
                description,
                allowed_origins: origins,
                ip_allowlist: allow_ip,
                require_signature: public.is_some(),
                signing_public_key: public,
                expires_in,
            };
            let issued = admin.key_issue(tenant, &spec).await?;
            if spec.signing_public_key.is_some() {
                println!("key_id {}", issued.key_id);
                eprintln!(
                    "Sign requests with the private key; send X-Overwatch-Key-Id: {}",
                    issued.key_id
                );
            } else {
                print_issued(&issued);
            }
        }
        KeyCmd::List { tenant } => {
            println!(
                "{:<36}  {:<36}  {:<7}  {:<24}  {:<24}  {:<24}  description",
                "key_id", "tenant_id", "kind", "created_at", "expires_at", "revoked_at"
            );
            for k in admin.key_list(tenant).await? {
                println!(
                    "{:<36}  {:<36}  {:<7}  {:<24}  {:<24}  {:<24}  {}",
                    k.key_id,
                    k.tenant_id,
                    k.kind,
                    ms_to_rfc3339(k.created_at_ms),
                    k.expires_at_ms
                        .map(ms_to_rfc3339)
                        .unwrap_or_else(|| "-".into()),
                    k.revoked_at_ms
                        .map(ms_to_rfc3339)
                        .unwrap_or_else(|| "-".into()),
                    k.description
                );
            }
        }
        KeyCmd::Revoke { key_id } => {
            admin.key_revoke(key_id).await?;
            println!("key {key_id} revoked");
        }
        KeyCmd::Rotate { key_id, overlap } => {
            let issued = admin.key_rotate(key_id, overlap).await?;
            print_issued(&issued);
            println!("old_key {key_id} expires in {}s", overlap.as_secs());
        }
    }
    Ok(())
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
