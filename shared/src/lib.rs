//! Overwatch's shared library, by concern:
//!
//! - [`event`] and [`domain`]: the event contract between gateway, broker and
//!   ClickHouse, and the domain types both binaries use;
//! - [`config`]: the layered configuration, one module per section;
//! - [`store`]: ClickHouse — client, SQL fragments, schema and migrations,
//!   tenants and keys, audit log;
//! - [`credential`]: API-key secrets and signing keys;
//! - [`kafka`]: the producer's settings and topic administration;
//! - [`enrich`]: user agent, GeoIP and IP anonymisation;
//! - [`runtime`]: telemetry, the metrics recorder, operations endpoints,
//!   ordered shutdown and exit statuses.
//!
//! The test kit (`testkit`, behind the feature of that name) is enabled only by
//! the crates' dev-dependencies: production builds never link it.

pub mod config;
pub mod credential;
pub mod domain;
pub mod enrich;
pub mod event;
pub mod kafka;
pub mod runtime;
pub mod store;
#[cfg(feature = "testkit")]
pub mod testkit;

pub use config::{Config, ConfigError};
