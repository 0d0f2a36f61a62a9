//! The Overwatch gateway as a library: `main.rs` only loads configuration, sets up
//! telemetry, binds and calls [`serve`], so tests can run the same server on port 0.

pub mod auth;
pub mod budget;
pub mod enrich;
pub mod error;
pub mod ingest;
pub mod ratelimit;
pub mod server;
pub mod sink;
pub mod telemetry;

pub use server::{serve, App};

pub use shared::shutdown_signal;
