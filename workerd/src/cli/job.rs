//! `workerd job run <name>`: one job once, optionally on a simulated clock.

use clap::Subcommand;
use shared::config::Config;
use shared::runtime::exit::Exit;
use uuid::Uuid;

use super::text;
use crate::jobs::{self, JobContext, JobName, Window};

#[derive(Subcommand)]
pub enum JobCmd {
    /// Run one job once: retention, sessions, rollups, quota, compression,
    /// enrichment or alerts.
    Run {
        #[arg(value_parser = JobName::parse)]
        name: JobName,
        /// The job's clock (RFC 3339); defaults to the real time.
        #[arg(long, value_parser = text::time)]
        now: Option<time::OffsetDateTime>,
        /// Only this tenant.
        #[arg(long)]
        tenant: Option<Uuid>,
        /// Start of the window sessions/rollups recompute (with --to).
        #[arg(long, value_parser = text::time, requires = "to")]
        from: Option<time::OffsetDateTime>,
        #[arg(long, value_parser = text::time, requires = "from")]
        to: Option<time::OffsetDateTime>,
    },
}

pub async fn run(config: Config, cmd: JobCmd) -> Exit {
    let JobCmd::Run {
        name,
        now,
        tenant,
        from,
        to,
    } = cmd;
    let ctx = JobContext::new(config);
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
            for alert in &r.alerts {
                println!("alert {}: {}", alert.rule().as_str(), alert.title());
            }
            Exit::Ok
        }
        Err(e) => super::failed(&format!("job {} failed: ", name.as_str()), e),
    }
}
