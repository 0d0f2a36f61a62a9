//! `[workerd]`: workerd's operations listener, its startup migrations and how
//! long it waits for running jobs at shutdown.

use std::net::SocketAddr;

use serde::Deserialize;

use super::check::positive;
use super::ConfigError;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerdConfig {
    /// Address of `/health` and `/metrics`.
    pub listen: SocketAddr,
    pub migrate_on_start: bool,
    /// At shutdown, how long running jobs may take to finish.
    pub shutdown_timeout_ms: u64,
}

impl WorkerdConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        positive("workerd.shutdown_timeout_ms", self.shutdown_timeout_ms)
    }
}
