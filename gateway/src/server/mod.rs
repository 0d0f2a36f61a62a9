//! The public ingest listener: its connection limit, per-connection timeouts
//! (see [`conn`]) and the gateway's ordered shutdown (see
//! [`shared::runtime::shutdown`]). The operations listener is served by
//! [`shared::runtime::ops`].
//!
//! Shutdown order: readiness turns 503 and the public listener closes →
//! in-flight requests finish (bounded by `gateway.shutdown_timeout_ms`) →
//! background tasks stop → the producer is flushed → the operations listener
//! drains and closes.

pub mod conn;

use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
use shared::runtime::ops::{self, Settings};
use shared::runtime::shutdown::{Background, Shutdown};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::app::App;
use conn::{Activity, Tracked, Verdict};

/// Most connections to the operations listener (scrapers and probes).
const OPERATIONS_CONNECTIONS: usize = 64;
/// Most connections being refused at once (past it they are just closed).
/// Each holds a 4 KiB buffer for at most [`REFUSAL_BUDGET`].
const REFUSALS: usize = 1024;
/// The longest a refused connection is served (head, answer, lingering close).
const REFUSAL_BUDGET: Duration = Duration::from_secs(2);

/// Binds with a deep accept backlog, so a connection storm waits in the kernel
/// (and is answered, or shed with 503) instead of being refused.
pub fn bind(addr: std::net::SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(4096)
}

/// Serves `ingest` (the public port) and `operations` (metrics, detailed health)
/// until `shutdown` resolves, then shuts down in order.
pub async fn serve(
    ingest: TcpListener,
    operations: TcpListener,
    app: Arc<App>,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let g = &app.config.gateway;
    let mut background = Background::default();
    background.push(
        "broker probe",
        app.sink
            .spawn_broker_probe(Duration::from_millis(g.broker_check_interval_ms)),
    );
    background.push(
        "key refresh",
        app.keys
            .spawn_refresh(Duration::from_millis(app.config.auth.refresh_interval_ms)),
    );
    if let Some(shares) = app.limiter.shares() {
        let counts = Arc::clone(&app);
        background.push(
            "rate-limit shares",
            shares.spawn_sync(
                shared::store::client(&app.config.clickhouse)
                    .with_database(&app.config.clickhouse.database),
                "rate_usage".to_string(),
                move || counts.limiter.take_offered(),
            ),
        );
    }
    if g.allocator.release_interval_ms > 0 {
        background.push(
            "memory release",
            crate::alloc::spawn_release(
                Duration::from_millis(g.allocator.release_interval_ms),
                crate::budget::MemoryBound::of(&app.config).kept_limit(&g.allocator),
            ),
        );
    }
    if app.config.telemetry.snapshot_interval_secs > 0 {
        background.push(
            "metric snapshots",
            shared::runtime::metrics::spawn_snapshots(
                shared::store::client(&app.config.clickhouse),
                &app.config.clickhouse.database,
                "gateway",
                Duration::from_secs(app.config.telemetry.snapshot_interval_secs),
            ),
        );
    }
    let ops_done = Shutdown::new();
    let ops_server = tokio::spawn(ops::serve(
        operations,
        Arc::clone(&app),
        Settings {
            max_connections: OPERATIONS_CONNECTIONS,
            header_timeout: Duration::from_millis(g.header_read_timeout_ms),
            retry_after_secs: g.retry_after_secs,
            drain_timeout: app.shutdown_timeout(),
        },
        ops_done.wait(),
    ));
    let graceful = GracefulShutdown::new();
    let limit = Arc::new(Semaphore::new(g.max_connections));
    let refusals = Arc::new(Semaphore::new(REFUSALS));
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            a = ingest.accept() => a,
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
        let Ok(slot) = Arc::clone(&limit).try_acquire_owned() else {
            crate::telemetry::ConnectionRefused.emit();
            if let Ok(r) = Arc::clone(&refusals).try_acquire_owned() {
                let retry = g.retry_after_secs;
                tokio::spawn(async move {
                    conn::refuse(stream, retry, REFUSAL_BUDGET).await;
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
            crate::router::handle(Arc::clone(&app2), req, peer, in_request)
        });
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder
            .header_read_timeout(None)
            .max_buf_size(g.read_buffer_bytes())
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
        tokio::spawn(async move {
            counter.connections.fetch_add(1, Ordering::Relaxed);
            watch(conn, &activity, timeouts, peer).await;
            counter.connections.fetch_sub(1, Ordering::Relaxed);
            drop(slot);
        });
    }
    app.begin_shutdown();
    drop(ingest);
    let timeout = app.shutdown_timeout();
    tracing::info!(?timeout, "shutting down: draining in-flight requests");
    if tokio::time::timeout(timeout, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("in-flight requests did not finish within the shutdown timeout");
    }
    background.stop();
    let sink = Arc::clone(&app.sink);
    let flushed = tokio::task::spawn_blocking(move || sink.flush(timeout)).await;
    match flushed {
        Ok(Ok(())) => tracing::info!("producer flushed"),
        Ok(Err(e)) => tracing::warn!(error = %e, "producer flush incomplete"),
        Err(e) => tracing::warn!(error = %e, "producer flush task failed"),
    }
    ops_done.trigger();
    let _ = ops_server.await;
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
