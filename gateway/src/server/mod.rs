//! The gateway's servers: the public ingest listener and the private
//! operations listener, their connection limits and timeouts, and ordered
//! shutdown.
//!
//! Shutdown order: readiness turns 503 → the listeners close → in-flight
//! requests finish (bounded by `gateway.shutdown_timeout_ms`) → the producer is
//! flushed.

pub mod conn;
mod routes;

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
use shared::config::Config;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::auth::KeyStore;
use crate::enrich::Enricher;
use crate::error::ApiError;
use crate::ratelimit::RateLimiter;
use crate::sink::Sink;
use conn::{Activity, Tracked, Verdict};

/// Most connections to the operations listener (scrapers and probes).
const OPERATIONS_CONNECTIONS: usize = 64;
/// Most connections being refused at once (past the limit they are just closed).
const REFUSALS: usize = 256;

/// Everything a request needs.
pub struct App {
    pub config: Config,
    pub keys: Arc<KeyStore>,
    pub limiter: RateLimiter,
    pub enricher: Enricher,
    pub sink: Arc<Sink>,
    /// Bytes of request bodies read and not yet decoded (`gateway.max_buffered_body_bytes`).
    pub body_budget: Arc<Semaphore>,
    /// Decode/parse/validate slots (`gateway.cpu_workers`).
    pub cpu: Arc<Semaphore>,
    shutting_down: AtomicBool,
    started: Instant,
    /// `/ingest` requests past their body (load shedding past the limit).
    in_progress: AtomicUsize,
    /// Open connections on the ingest (public) listener.
    connections: AtomicUsize,
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
}

impl App {
    pub fn new(config: Config) -> Result<App, StartError> {
        shared::metrics::install();
        let sink = Arc::new(Sink::new(&config)?);
        let budget = usize::try_from(config.gateway.max_buffered_body_bytes)
            .unwrap_or(usize::MAX)
            .min(Semaphore::MAX_PERMITS);
        Ok(App {
            enricher: Enricher::new(&config)?,
            keys: Arc::new(KeyStore::new(&config)),
            limiter: RateLimiter::new(&config),
            body_budget: Arc::new(Semaphore::new(budget)),
            cpu: Arc::new(Semaphore::new(config.gateway.cpu_workers())),
            sink,
            config,
            shutting_down: AtomicBool::new(false),
            started: Instant::now(),
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
        if self.shutting_down.load(Ordering::Relaxed) {
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

    fn shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::Relaxed)
    }
}

/// Which routes a listener serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listener {
    /// `/ingest`, `/health/live`, `/health/ready`.
    Ingest,
    /// `/metrics`, `/health` and the probes.
    Operations,
}

/// Serves `ingest` (the public port) and `operations` (metrics, detailed health)
/// until `shutdown` resolves, then shuts down in order.
pub async fn serve(
    ingest: TcpListener,
    operations: TcpListener,
    app: Arc<App>,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let probe = app.sink.spawn_broker_probe(Duration::from_millis(
        app.config.gateway.broker_check_interval_ms,
    ));
    let key_refresh = app
        .keys
        .spawn_refresh(Duration::from_millis(app.config.auth.refresh_interval_ms));
    let snapshots = (app.config.telemetry.snapshot_interval_secs > 0).then(|| {
        shared::metrics::spawn_snapshots(
            shared::ch::client(&app.config.clickhouse),
            &app.config.clickhouse.database,
            "gateway",
            Duration::from_secs(app.config.telemetry.snapshot_interval_secs),
        )
    });
    let graceful = GracefulShutdown::new();
    let limit = Arc::new(Semaphore::new(app.config.gateway.max_connections));
    let ops_limit = Arc::new(Semaphore::new(OPERATIONS_CONNECTIONS));
    let refusals = Arc::new(Semaphore::new(REFUSALS));
    tokio::pin!(shutdown);
    loop {
        let (accepted, which, slots) = tokio::select! {
            a = ingest.accept() => (a, Listener::Ingest, &limit),
            a = operations.accept() => (a, Listener::Operations, &ops_limit),
            () = &mut shutdown => break,
        };
        let (stream, peer) = match accepted {
            Ok(s) => s,
            Err(e) => {
                // Per-connection errors (e.g. EMFILE) must not stop the server;
                // a short pause keeps a persistent one from spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let Ok(slot) = Arc::clone(slots).try_acquire_owned() else {
            crate::telemetry::ConnectionRefused { listener: which }.emit();
            if let Ok(r) = Arc::clone(&refusals).try_acquire_owned() {
                let retry = app.config.gateway.retry_after_secs;
                tokio::spawn(async move {
                    conn::refuse(stream, retry).await;
                    drop(r);
                });
            }
            continue;
        };
        let activity = Activity::new();
        let app2 = Arc::clone(&app);
        let act2 = Arc::clone(&activity);
        let service = service_fn(move |req| {
            let in_request = act2.begin();
            routes::handle(Arc::clone(&app2), which, req, peer, in_request)
        });
        let g = &app.config.gateway;
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder
            .header_read_timeout(None)
            .max_buf_size(g.max_header_bytes.max(8192))
            .max_headers(g.max_headers);
        let conn = builder.serve_connection(
            TokioIo::new(Tracked::new(stream, Arc::clone(&activity))),
            service,
        );
        let conn = graceful.watch(conn);
        let timeouts = (
            Duration::from_millis(g.header_read_timeout_ms),
            Duration::from_millis(g.idle_timeout_ms),
        );
        let counter = Arc::clone(&app);
        let public = which == Listener::Ingest;
        tokio::spawn(async move {
            if public {
                counter.connections.fetch_add(1, Ordering::Relaxed);
            }
            watch(conn, &activity, timeouts, peer).await;
            if public {
                counter.connections.fetch_sub(1, Ordering::Relaxed);
            }
            drop(slot);
        });
    }
    app.shutting_down.store(true, Ordering::Relaxed);
    drop(ingest);
    drop(operations);
    let timeout = Duration::from_millis(app.config.gateway.shutdown_timeout_ms);
    tracing::info!(?timeout, "shutting down: draining in-flight requests");
    if tokio::time::timeout(timeout, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("in-flight requests did not finish within the shutdown timeout");
    }
    probe.abort();
    key_refresh.abort();
    if let Some(s) = snapshots {
        s.abort();
    }
    let sink = Arc::clone(&app.sink);
    let flushed = tokio::task::spawn_blocking(move || sink.flush(timeout)).await;
    match flushed {
        Ok(Ok(())) => tracing::info!("producer flushed"),
        Ok(Err(e)) => tracing::warn!(error = %e, "producer flush incomplete"),
        Err(e) => tracing::warn!(error = %e, "producer flush task failed"),
    }
    Ok(())
}

/// Drives one connection; closes it when its request head is too slow or it
/// stays idle too long.
async fn watch<C>(
    conn: C,
    activity: &Activity,
    (header_timeout, idle_timeout): (Duration, Duration),
    peer: std::net::SocketAddr,
) where
    C: Future<Output = Result<(), hyper::Error>>,
{
    tokio::pin!(conn);
    loop {
        let wake = match activity.judge(header_timeout, idle_timeout) {
            Verdict::Wait(at) => at,
            Verdict::HeadTimeout => {
                crate::telemetry::ConnectionClosed {
                    reason: "header_timeout",
                }
                .emit();
                return;
            }
            Verdict::Idle => {
                crate::telemetry::ConnectionClosed { reason: "idle" }.emit();
                return;
            }
        };
        tokio::select! {
            done = &mut conn => {
                if let Err(e) = done {
                    tracing::debug!(%peer, error = %e, "connection closed with error");
                }
                return;
            }
            () = tokio::time::sleep_until(wake.into()) => {}
            () = activity.head_started() => {}
        }
    }
}
