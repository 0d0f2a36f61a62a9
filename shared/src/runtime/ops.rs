//! The operations endpoints, served the same way by both binaries on their
//! private port: `GET /health/live` (the process answers), `GET /health/ready`
//! (503 with `reasons` and `Retry-After` while it should get no traffic),
//! `GET /health` (status, reasons, uptime and the binary's component report)
//! and `GET /metrics` (Prometheus text).
//!
//! A binary describes itself with [`Operations`]; [`serve`] runs the listener
//! with a connection limit and a header timeout, survives accept errors, and at
//! shutdown stops accepting and drains its connections within a bound.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{HeaderValue, CONTENT_TYPE, RETRY_AFTER};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

pub type Body = Full<Bytes>;

/// What a binary tells its operations endpoints.
pub trait Operations: Send + Sync + 'static {
    /// Why the process should get no traffic now; empty when ready.
    fn not_ready(&self) -> impl Future<Output = Vec<String>> + Send;

    /// For `GET /health`, from one look at the components: the reasons not
    /// to be ready (as [`Operations::not_ready`] gives them) and the fields
    /// shown beside `status`, `reasons` and `uptime_seconds` (a JSON object:
    /// components, counters).
    fn health(&self) -> impl Future<Output = (Vec<String>, Value)> + Send;

    /// Sets the gauges read at scrape time, before `/metrics` renders.
    fn scrape(&self) -> impl Future<Output = ()> + Send {
        async {}
    }
}

/// Limits of the operations listener.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// Most open connections (scrapers, probes); more are closed at once.
    pub max_connections: usize,
    /// A request's head must arrive within this.
    pub header_timeout: Duration,
    /// `Retry-After` of a not-ready answer.
    pub retry_after_secs: u64,
    /// How long open connections may take to finish at shutdown.
    pub drain_timeout: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            max_connections: 64,
            header_timeout: Duration::from_secs(5),
            retry_after_secs: 1,
            drain_timeout: Duration::from_secs(5),
        }
    }
}

/// A JSON answer.
pub fn json_response(status: StatusCode, body: &Value) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

/// `GET /health/live`: a constant answer, built without serializing anything
/// (the probe is the yardstick small requests are measured against).
pub fn live() -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from_static(br#"{"status":"ok"}"#)));
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

/// `GET /health/ready` for these reasons not to be ready.
pub fn ready(reasons: &[String], retry_after_secs: u64) -> Response<Body> {
    if reasons.is_empty() {
        return json_response(StatusCode::OK, &json!({"status": "ready"}));
    }
    let mut r = json_response(
        StatusCode::SERVICE_UNAVAILABLE,
        &json!({"status": "not_ready", "reasons": reasons}),
    );
    r.headers_mut()
        .insert(RETRY_AFTER, HeaderValue::from(retry_after_secs));
    r
}

/// `GET /metrics`: the recorder's text.
pub fn metrics() -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(super::metrics::render())));
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static(super::metrics::CONTENT_TYPE),
    );
    r
}

fn error(status: StatusCode, code: &str, message: String) -> Response<Body> {
    json_response(
        status,
        &json!({"error": {"code": code, "message": message}}),
    )
}

async fn health<O: Operations>(ops: &O, started: Instant) -> Response<Body> {
    let (reasons, report) = ops.health().await;
    let mut body = json!({
        "status": if reasons.is_empty() { "ok" } else { "degraded" },
        "reasons": reasons,
        "uptime_seconds": started.elapsed().as_secs(),
    });
    if let (Value::Object(into), Value::Object(from)) = (&mut body, report) {
        into.extend(from);
    }
    let status = if reasons.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    json_response(status, &body)
}

async fn handle<O: Operations>(
    ops: &O,
    settings: &Settings,
    started: Instant,
    req: &Request<hyper::body::Incoming>,
) -> Response<Body> {
    let path = req.uri().path();
    if !matches!(
        path,
        "/health/live" | "/health/ready" | "/health" | "/metrics"
    ) {
        return error(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no route for {path}"),
        );
    }
    if !matches!(*req.method(), Method::GET | Method::HEAD) {
        let mut r = error(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            format!("{} is not allowed here (GET or HEAD)", req.method()),
        );
        r.headers_mut()
            .insert(hyper::header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    match path {
        "/health/live" => live(),
        "/health/ready" => ready(&ops.not_ready().await, settings.retry_after_secs),
        "/health" => health(ops, started).await,
        _ => {
            ops.scrape().await;
            metrics()
        }
    }
}

/// Serves the operations endpoints on `listener` until `shutdown` resolves,
/// then drains open connections (at most `settings.drain_timeout`).
pub async fn serve<O: Operations>(
    listener: TcpListener,
    ops: Arc<O>,
    settings: Settings,
    shutdown: impl Future<Output = ()>,
) {
    let started = Instant::now();
    let graceful = GracefulShutdown::new();
    let slots = Arc::new(Semaphore::new(settings.max_connections.max(1)));
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            () = &mut shutdown => break,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                // EMFILE and the like must not stop the server, nor spin it.
                tracing::warn!(error = %e, "operations listener: accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            tracing::debug!("operations listener: connection limit reached");
            continue;
        };
        let ops = Arc::clone(&ops);
        let service = service_fn(move |req| {
            let ops = Arc::clone(&ops);
            async move { Ok::<_, Infallible>(handle(&*ops, &settings, started, &req).await) }
        });
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(settings.header_timeout)
            .max_buf_size(16 * 1024);
        let conn = graceful.watch(builder.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            let _ = conn.await;
            drop(slot);
        });
    }
    drop(listener);
    if tokio::time::timeout(settings.drain_timeout, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("operations connections did not finish within the drain timeout");
    }
}
