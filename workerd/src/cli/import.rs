//! `workerd import --tenant ID --file FILE`: history older than the gateway's window.

use std::path::PathBuf;

use shared::config::Config;
use shared::runtime::exit::Exit;
use uuid::Uuid;

use crate::jobs::JobContext;

#[derive(clap::Args)]
pub struct ImportArgs {
    #[arg(long)]
    tenant: Uuid,
    /// NDJSON file: one event object per line.
    #[arg(long)]
    file: PathBuf,
}

pub async fn run(config: Config, args: ImportArgs) -> Exit {
    let ctx = JobContext::new(config);
    let tenant = args.tenant;
    match crate::import::run(&ctx, tenant, &args.file).await {
        Ok(r) => {
            let oldest = r.oldest.as_deref().unwrap_or("?");
            println!(
                "imported {} events for tenant {tenant} ({oldest} to {}, months {})",
                r.events,
                r.newest.as_deref().unwrap_or("?"),
                r.months.join(", ")
            );
            println!(
                "next: workerd backfill start --tenant {tenant} --from {oldest} --to <now> (sessions, rollups)"
            );
            Exit::Ok
        }
        Err(e) => super::failed("import failed: ", e),
    }
}
