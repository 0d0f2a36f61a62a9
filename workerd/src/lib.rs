//! workerd as a library: migrations, admin commands, scheduled jobs, notifications.
//! `main.rs` parses the command line and calls into here.

pub mod admin;
pub mod backfill;
pub mod health;
pub mod import;
pub mod jobs;
pub mod lease;
pub mod migrate;
pub mod notify;
pub mod scheduler;
pub mod telemetry;
