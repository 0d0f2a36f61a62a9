//! Overwatch's shared library: configuration, the event contract, the ClickHouse
//! schema and migrations, broker helpers and telemetry set-up used by both the
//! gateway and workerd.

pub mod ch;
pub mod config;
pub mod event;
pub mod kafka;
pub mod schema;
pub mod telemetry;
#[cfg(feature = "testkit")]
pub mod testkit;

pub use config::{Config, ConfigError};
