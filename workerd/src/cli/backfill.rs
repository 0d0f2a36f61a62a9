//! `workerd backfill start|resume|list`: sessions and rollups over a range,
//! chunk by chunk, resumable.

use clap::Subcommand;
use shared::config::Config;
use shared::runtime::exit::Exit;
use uuid::Uuid;

use super::text;
use crate::backfill::{self, BackfillError};
use crate::jobs::JobContext;

#[derive(Subcommand)]
pub enum BackfillCmd {
    /// Start a backfill; prints its job id and a progress bar.
    Start {
        #[arg(long)]
        tenant: Uuid,
        #[arg(long, value_parser = text::time)]
        from: time::OffsetDateTime,
        #[arg(long, value_parser = text::time)]
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

pub async fn run(config: Config, cmd: BackfillCmd) -> Exit {
    let ctx = JobContext::new(config);
    match drive(&ctx, cmd).await {
        Ok(()) => Exit::Ok,
        Err(e) => super::failed("backfill failed: ", e),
    }
}

async fn drive(ctx: &JobContext, cmd: BackfillCmd) -> Result<(), BackfillError> {
    let (row, stop_after) = match cmd {
        BackfillCmd::Start {
            tenant,
            from,
            to,
            chunk_hours,
            stop_after,
        } => {
            let row = backfill::create(ctx, tenant, from, to, chunk_hours).await?;
            println!("backfill {} created", row.job_id);
            (row, stop_after)
        }
        BackfillCmd::Resume { job_id, stop_after } => {
            let row = backfill::load(ctx, job_id)
                .await?
                .ok_or(BackfillError::Unknown(job_id))?;
            (row, stop_after)
        }
        BackfillCmd::List => {
            for r in backfill::list(ctx).await? {
                println!(
                    "{}  {}  {:<8}  {}  {}",
                    r.job_id,
                    r.tenant_id,
                    r.status,
                    backfill::progress_bar(r.chunks_done, r.chunks_total),
                    r.error
                );
            }
            return Ok(());
        }
    };
    let row = backfill::run(ctx, row, stop_after, &mut std::io::stderr()).await?;
    println!(
        "backfill {} status {} chunks {}/{}",
        row.job_id, row.status, row.chunks_done, row.chunks_total
    );
    Ok(())
}
