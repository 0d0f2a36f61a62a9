//! workerd as a library: migrations now; admin commands and scheduled jobs later.
//! `main.rs` parses the command line and calls into here.

pub mod admin;
pub mod backfill;
pub mod health;
pub mod jobs;
pub mod migrate;
pub mod notify;
pub mod scheduler;
