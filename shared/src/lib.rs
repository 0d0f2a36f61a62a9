//! Overwatch's shared library: configuration, the event contract, the ClickHouse
//! schema and migrations, broker helpers and telemetry set-up used by both the
//! gateway and workerd.

pub mod ch;
pub mod config;
pub mod enrich;
pub mod event;
pub mod kafka;
pub mod keys;
pub mod metrics;
pub mod schema;
pub mod telemetry;
#[cfg(feature = "testkit")]
pub mod testkit;

pub use config::{Config, ConfigError};

/// Resolves on SIGINT (Ctrl-C) or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
    tracing::info!("shutdown signal received");
}
