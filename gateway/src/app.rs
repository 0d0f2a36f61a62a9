//! The gateway's state, assembled from its configuration: keys, rate limiter,
//! enricher, sink, the request and body budgets, and what readiness reads.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use shared::config::Config;
use tokio::sync::Semaphore;

use crate::auth::KeyStore;
use crate::enrich::Enricher;
use crate::error::ApiError;
use crate::ratelimit::cluster::Shares;
use crate::ratelimit::RateLimiter;
use crate::sink::Sink;

/// Everything a request needs.
pub struct App {
    pub config: Config,
    pub keys: Arc<KeyStore>,
    pub limiter: RateLimiter,
    pub enricher: Enricher,
    pub sink: Arc<Sink>,
    /// Bytes of request bodies read and not yet decoded (`gateway.max_buffered_body_bytes`).
    pub body_budget: Arc<Semaphore>,
    /// Decode/parse/validate slots (`gateway.cpu_workers`) and the threads a
    /// slot's work runs on when not on a network thread.
    pub workers: crate::ingest::pool::CpuPool,
    shutting_down: AtomicBool,
    /// `/ingest` requests past their body (load shedding past the limit).
    in_progress: AtomicUsize,
    /// Open connections on the ingest (public) listener.
    pub(crate) connections: AtomicUsize,
}

/// Counts one `/ingest` request in progress while alive.
pub struct Admitted<'a>(&'a AtomicUsize);

impl Drop for Admitted<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Why the gateway could not be assembled from its configuration.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot create the Kafka producer: {0}")]
    Producer(#[from] rdkafka::error::KafkaError),
    #[error(transparent)]
    Enrichment(#[from] crate::enrich::EnrichError),
    #[error("cannot start the CPU worker threads: {0}")]
    Workers(std::io::Error),
}

impl App {
    /// The one place the gateway's configuration is sliced into its components.
    pub fn new(config: Config) -> Result<App, StartError> {
        crate::telemetry::install_metrics();
        let g = &config.gateway;
        let sink = Sink::new(
            &config.kafka,
            g.delivery_timeout_ms,
            config.telemetry.kafka_statistics_interval_ms,
        )?;
        let budget = usize::try_from(g.max_buffered_body_bytes)
            .unwrap_or(usize::MAX)
            .min(Semaphore::MAX_PERMITS);
        Ok(App {
            enricher: Enricher::new(g, &config.enrichment)?,
            keys: Arc::new(KeyStore::new(&config.auth, &config.clickhouse)),
            limiter: RateLimiter::new(
                &config.tiers,
                &config.rate_limits,
                (config.rate_limits.cluster_sync_interval_ms > 0).then(|| {
                    Arc::new(Shares::new(
                        shared::runtime::metrics::instance(),
                        Duration::from_millis(config.rate_limits.cluster_sync_interval_ms),
                        config.rate_limits.max_tenants,
                    ))
                }),
                g.max_events_per_batch,
            ),
            body_budget: Arc::new(Semaphore::new(budget)),
            workers: crate::ingest::pool::CpuPool::new(g.cpu_workers())
                .map_err(StartError::Workers)?,
            sink: Arc::new(sink),
            config,
            shutting_down: AtomicBool::new(false),
            in_progress: AtomicUsize::new(0),
            connections: AtomicUsize::new(0),
        })
    }

    /// Admits one more `/ingest` request past its body, or sheds it with 503
    /// `overloaded` when `gateway.max_in_flight_requests` are already in progress.
    pub fn admit(&self) -> Result<Admitted<'_>, ApiError> {
        let limit = self.config.gateway.max_in_flight_requests;
        let before = self.in_progress.fetch_add(1, Ordering::AcqRel);
        let admitted = Admitted(&self.in_progress);
        if before >= limit {
            return Err(ApiError::Overloaded { limit });
        }
        Ok(admitted)
    }

    /// Why the gateway should not get traffic now (empty: ready).
    pub fn not_ready(&self) -> Vec<String> {
        let mut why = Vec::new();
        if self.shutting_down() {
            why.push("shutting down".to_string());
        }
        if !self.sink.broker_up() {
            why.push("no broker answers".to_string());
        }
        if let Err(e) = self.keys.usable() {
            why.push(e.to_string());
        }
        why
    }

    pub fn ready(&self) -> bool {
        self.not_ready().is_empty()
    }

    pub fn shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::Relaxed)
    }

    /// Step 2 of the shutdown: readiness turns 503, `/ingest` refuses new requests.
    pub(crate) fn begin_shutdown(&self) {
        self.shutting_down.store(true, Ordering::Relaxed);
    }

    pub fn in_progress(&self) -> usize {
        self.in_progress.load(Ordering::Relaxed)
    }

    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::Relaxed)
    }

    /// `gateway.retry_after_secs`.
    pub fn retry_after(&self) -> u64 {
        self.config.gateway.retry_after_secs
    }

    /// `gateway.shutdown_timeout_ms`.
    pub fn shutdown_timeout(&self) -> Duration {
        Duration::from_millis(self.config.gateway.shutdown_timeout_ms)
    }
}
