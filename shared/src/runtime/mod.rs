//! What both binaries run on: logging and tracing ([`telemetry`]), the metrics
//! recorder and its snapshots ([`metrics`]), the private operations endpoints
//! ([`ops`]), ordered shutdown ([`shutdown`]) and exit statuses ([`exit`]).

pub mod exit;
pub mod metrics;
pub mod ops;
pub mod shutdown;
pub mod telemetry;
