//! Why a job, a backfill or an import failed: one variant per cause, each with
//! what an operator needs to act on it.

use time::Date;
use uuid::Uuid;

#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error("ClickHouse: {0}")]
    ClickHouse(#[from] clickhouse::error::Error),
    #[error("lost the lease {name} ({left_ms} ms were left, less than half the TTL): stopped before changing anything more")]
    LeaseLost { name: String, left_ms: i64 },
    #[error("another workerd holds the lease {name}: it runs this job now")]
    HeldElsewhere { name: String },
    #[error("the {job} job does not run on a ClickHouse cluster yet: {why}")]
    NotOnCluster {
        job: &'static str,
        why: &'static str,
    },
    #[error("the window's start must be before its end")]
    EmptyWindow,
    #[error("ClickHouse returned a {what} that does not parse: `{value}`")]
    Stored { what: &'static str, value: String },
    #[error("cold storage: cannot prepare the directory {dir}: {source}")]
    ColdDirectory {
        dir: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cold storage: cannot set up {root}: {source}")]
    ColdSetup {
        root: String,
        #[source]
        source: object_store::Error,
    },
    #[error("cold storage: {action} {location}: {source}")]
    Cold {
        action: &'static str,
        location: String,
        #[source]
        source: object_store::Error,
    },
    #[error(
        "the archive {location} cannot be read back ({source}); nothing of tenant {tenant} was changed: \
         repair or move the file aside, then run the job again"
    )]
    UnreadableArchive {
        location: String,
        tenant: Uuid,
        #[source]
        source: Box<JobError>,
    },
    #[error(
        "verification failed for tenant {tenant} day {day}: {staged} events staged, the file read back \
         holds {rows_in_file} rows ({distinct_in_file} distinct), {missing} staged rows missing; no raw event deleted"
    )]
    Unverified {
        tenant: Uuid,
        day: Date,
        staged: u64,
        rows_in_file: u64,
        distinct_in_file: u64,
        missing: u64,
    },
    #[error("enrichment: {0}")]
    Enrichment(#[from] shared::enrich::EnrichError),
    #[error("measuring consumer lag: {0}")]
    ConsumerLag(#[from] rdkafka::error::KafkaError),
    #[error("a blocking task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}
