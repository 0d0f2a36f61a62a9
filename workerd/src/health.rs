//! workerd's HTTP endpoint: `/health/live`, `/health/ready` (ClickHouse answers
//! and startup migrations are done), `/health` (component report) and `/metrics`
//! (Prometheus text).

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::json;
use tokio::net::TcpListener;

pub struct Health {
    pub client: clickhouse::Client,
    /// The job runner, when the scheduler runs (its counters go into `/health`).
    pub runner: Option<std::sync::Arc<crate::scheduler::Runner>>,
    /// Startup migrations: `None` when not run at start, else whether they are
    /// done (readiness waits for them) and the last error.
    pub migrations: Option<std::sync::Mutex<MigrationState>>,
}

#[derive(Debug, Clone, Default)]
pub struct MigrationState {
    pub done: bool,
    pub attempts: u32,
    pub last_error: Option<String>,
}

impl Health {
    async fn clickhouse_up(&self) -> Result<(), String> {
        let q = self.client.query("SELECT 1").fetch_one::<u8>();
        match tokio::time::timeout(Duration::from_secs(2), q).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("timed out after 2s".into()),
        }
    }
}

fn reply(status: StatusCode, body: serde_json::Value) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

async fn handle(
    h: Arc<Health>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    Ok(match req.uri().path() {
        "/health/live" => reply(StatusCode::OK, json!({"status": "ok"})),
        "/metrics" => {
            let ch = h.clickhouse_up().await.is_ok();
            let migrated = h
                .migrations
                .as_ref()
                .is_none_or(|m| m.lock().unwrap_or_else(|e| e.into_inner()).done);
            crate::telemetry::clickhouse_up(ch, ch && migrated);
            let mut r = Response::new(Full::new(Bytes::from(shared::metrics::render())));
            r.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static(shared::metrics::CONTENT_TYPE),
            );
            r
        }
        "/health/ready" | "/health" => {
            let ch = h.clickhouse_up().await;
            let migrations = h
                .migrations
                .as_ref()
                .map(|m| m.lock().unwrap_or_else(|e| e.into_inner()).clone());
            let migrated = migrations.as_ref().is_none_or(|m| m.done);
            let ok = ch.is_ok() && migrated;
            crate::telemetry::clickhouse_up(ch.is_ok(), ok);
            let status = if ok {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            reply(
                status,
                json!({
                    "status": if ok { "ok" } else { "degraded" },
                    "components": {
                        "clickhouse": match &ch {
                            Ok(()) => json!({"status": "up"}),
                            Err(e) => json!({"status": "down", "detail": e}),
                        },
                        "migrations": migrations.map(|m| json!({
                            "status": if m.done { "done" } else { "pending" },
                            "attempts": m.attempts,
                            "last_error": m.last_error,
                        })),
                    },
                    "jobs": h.runner.as_ref().map(|r| r.report()),
                }),
            )
        }
        other => reply(
            StatusCode::NOT_FOUND,
            json!({"error": {"code": "not_found", "message": format!("no route for {other}")}}),
        ),
    })
}

/// Serves the health endpoints until `shutdown` resolves.
pub async fn serve(listener: TcpListener, health: Arc<Health>, shutdown: impl Future<Output = ()>) {
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let h = Arc::clone(&health);
                tokio::spawn(async move {
                    let svc = service_fn(move |req| handle(Arc::clone(&h), req));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
            () = &mut shutdown => break,
        }
    }
}
