//! workerd as a library: the command line ([`cli`]), the daemon ([`daemon`],
//! started in-process by tests), its operations report ([`ops`]), the jobs and
//! their scheduler, alerts and their delivery ([`notify`]), tenant and key
//! administration, backfills, imports, leases and migrations.

pub mod admin;
pub mod backfill;
pub mod cli;
pub mod daemon;
pub mod import;
pub mod jobs;
pub mod lease;
pub mod migrate;
pub mod notify;
pub mod ops;
pub mod scheduler;
pub mod telemetry;
