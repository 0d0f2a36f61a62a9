//! HTTP server: routing, request ids, health endpoints and ordered shutdown.
//!
//! Shutdown order: readiness turns 503 → the listener closes → in-flight requests
//! finish (bounded by `gateway.shutdown_timeout_ms`) → the producer is flushed.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
use serde_json::json;
use shared::config::Config;
use tokio::net::TcpListener;
use tracing::Instrument;

use crate::auth::KeyStore;
use crate::enrich::Enricher;
use crate::error::ApiError;
use crate::ratelimit::RateLimiter;
use crate::sink::Sink;

/// Everything a request needs.
pub struct App {
    pub config: Config,
    pub keys: Arc<KeyStore>,
    pub limiter: RateLimiter,
    pub enricher: Enricher,
    pub sink: Arc<Sink>,
    shutting_down: AtomicBool,
    started: Instant,
    /// `/ingest` requests being handled now (load shedding past the limit).
    in_progress: AtomicUsize,
}

/// Counts one `/ingest` request in progress while alive.
struct Admitted<'a>(&'a AtomicUsize);

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
        Ok(App {
            enricher: Enricher::new(&config)?,
            keys: Arc::new(KeyStore::new(&config)),
            limiter: RateLimiter::new(&config),
            sink,
            config,
            shutting_down: AtomicBool::new(false),
            started: Instant::now(),
            in_progress: AtomicUsize::new(0),
        })
    }

    /// Admits one more `/ingest` request, or sheds it with 503 `overloaded`
    /// when `gateway.max_in_flight_requests` are already in progress.
    fn admit(&self) -> Result<Admitted<'_>, ApiError> {
        let limit = self.config.gateway.max_in_flight_requests;
        let before = self.in_progress.fetch_add(1, Ordering::AcqRel);
        let admitted = Admitted(&self.in_progress);
        if before >= limit {
            return Err(ApiError::Overloaded { limit });
        }
        Ok(admitted)
    }

    pub fn ready(&self) -> bool {
        !self.shutting_down.load(Ordering::Relaxed) && self.sink.broker_up() && self.keys.ready()
    }
}

const X_REQUEST_ID: &str = "x-request-id";

fn request_id(req: &Request<Incoming>) -> String {
    req.headers()
        .get(X_REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic()))
        .map(str::to_string)
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string())
}

fn json_response(status: StatusCode, body: serde_json::Value) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body.to_string())));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

async fn route(
    app: &App,
    req: Request<Incoming>,
    rid: &str,
    peer: SocketAddr,
) -> Result<Response<Full<Bytes>>, ApiError> {
    let path = req.uri().path().to_string();
    let method = req.method().clone();
    let allowed: &[Method] = match path.as_str() {
        "/ingest" => &[Method::POST, Method::OPTIONS],
        "/health" | "/health/live" | "/health/ready" | "/metrics" => &[Method::GET, Method::HEAD],
        _ => return Err(ApiError::NotFound(path)),
    };
    if !allowed.contains(&method) {
        return Err(ApiError::MethodNotAllowed(method.to_string()));
    }
    match path.as_str() {
        "/ingest" if method == Method::OPTIONS => preflight(app, &req),
        "/ingest" => {
            if app.shutting_down.load(Ordering::Relaxed) {
                return Err(ApiError::ShuttingDown);
            }
            let _admitted = match app.admit() {
                Ok(a) => a,
                Err(e) => {
                    discard_body(req.into_body(), app.config.gateway.max_body_bytes).await;
                    return Err(e);
                }
            };
            crate::ingest::handle(app, req, rid, peer).await
        }
        "/health/live" => Ok(json_response(StatusCode::OK, json!({"status": "ok"}))),
        "/metrics" => Ok(metrics_response(app)),
        "/health/ready" => Ok(if app.ready() {
            json_response(StatusCode::OK, json!({"status": "ready"}))
        } else {
            json_response(
                StatusCode::SERVICE_UNAVAILABLE,
                json!({"status": "not_ready"}),
            )
        }),
        _ => {
            let broker = app.sink.broker_up();
            let status = if app.ready() {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            Ok(json_response(
                status,
                json!({
                    "status": if app.ready() { "ok" } else { "degraded" },
                    "uptime_seconds": app.started.elapsed().as_secs(),
                    "shutting_down": app.shutting_down.load(Ordering::Relaxed),
                    "ingest_in_progress": app.in_progress.load(Ordering::Relaxed),
                    "components": {
                        "broker": {
                            "status": if broker { "up" } else { "down" },
                            "brokers": app.config.kafka.brokers,
                            "in_flight": app.sink.in_flight(),
                        },
                        "keys": keys_report(&app.keys),
                    }
                }),
            ))
        }
    }
}

/// Reads and drops a shed request's body (at most `max` bytes, for at most a
/// second), so the client reads the 503 instead of a reset connection.
async fn discard_body(mut body: Incoming, max: u64) {
    use http_body_util::BodyExt;
    let drain = async {
        let mut seen = 0u64;
        while let Some(Ok(frame)) = body.frame().await {
            seen += frame.data_ref().map_or(0, |d| d.len() as u64);
            if seen > max {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), drain).await;
}

/// `GET /metrics`: refreshes the gauges read at scrape time, then renders.
fn metrics_response(app: &App) -> Response<Full<Bytes>> {
    let st = app.keys.status();
    crate::telemetry::ScrapeState {
        ready: app.ready(),
        broker_up: app.sink.broker_up(),
        in_flight: app.sink.in_flight(),
        keys: st.keys,
        snapshot_age: st.age,
    }
    .emit();
    let mut resp = Response::new(Full::new(Bytes::from(shared::metrics::render())));
    resp.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static(shared::metrics::CONTENT_TYPE),
    );
    resp
}

fn keys_report(keys: &KeyStore) -> serde_json::Value {
    let st = keys.status();
    json!({
        "status": if keys.ready() { "up" } else { "down" },
        "source": if st.from_clickhouse { "config+clickhouse" } else { "config" },
        "keys": st.keys,
        "snapshot_age_seconds": st.age.map(|a| a.as_secs_f64()),
        "last_error": st.last_error,
    })
}

const CORS_ALLOW_HEADERS: &str =
    "authorization, content-type, content-encoding, x-api-key, x-request-id";
const CORS_EXPOSE_HEADERS: &str =
    "x-request-id, retry-after, x-ratelimit-limit, x-ratelimit-remaining, x-ratelimit-reset";

/// Answers a CORS preflight for `/ingest`: allowed when some browser key allows
/// the origin (the key itself is checked on the actual request).
fn preflight(app: &App, req: &Request<Incoming>) -> Result<Response<Full<Bytes>>, ApiError> {
    let origin = req
        .headers()
        .get(hyper::header::ORIGIN)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| ApiError::OriginNotAllowed("(none)".into()))?;
    if !app.keys.origin_known(origin) {
        return Err(ApiError::OriginNotAllowed(origin.to_string()));
    }
    let mut resp = Response::new(Full::new(Bytes::new()));
    *resp.status_mut() = StatusCode::NO_CONTENT;
    let h = resp.headers_mut();
    h.insert(
        "access-control-allow-methods",
        HeaderValue::from_static("POST, OPTIONS"),
    );
    h.insert(
        "access-control-allow-headers",
        HeaderValue::from_static(CORS_ALLOW_HEADERS),
    );
    h.insert("access-control-max-age", HeaderValue::from_static("600"));
    Ok(resp)
}

/// Lets a page read the answer (success or error) when its origin is one some
/// browser key allows.
fn add_cors(app: &App, origin: Option<&HeaderValue>, resp: &mut Response<Full<Bytes>>) {
    let Some(origin) = origin else { return };
    let known = origin
        .to_str()
        .map(|o| app.keys.origin_known(o))
        .unwrap_or(false);
    if !known {
        return;
    }
    let h = resp.headers_mut();
    h.insert("access-control-allow-origin", origin.clone());
    h.insert(
        "access-control-expose-headers",
        HeaderValue::from_static(CORS_EXPOSE_HEADERS),
    );
    h.append(hyper::header::VARY, HeaderValue::from_static("origin"));
}

async fn handle(
    app: Arc<App>,
    req: Request<Incoming>,
    peer: SocketAddr,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let rid = request_id(&req);
    let label = crate::telemetry::route_label(req.uri().path());
    let span =
        tracing::info_span!("request", request_id = %rid, method = %req.method(), route = label);
    shared::telemetry::set_remote_parent(&span, req.headers());
    async {
        let started = Instant::now();
        let origin = (req.uri().path() == "/ingest")
            .then(|| req.headers().get(hyper::header::ORIGIN).cloned())
            .flatten();
        let mut resp = match route(&app, req, &rid, peer).await {
            Ok(r) => r,
            Err(e) => {
                crate::telemetry::log_refusal(&e);
                e.into_response(&rid, app.config.gateway.retry_after_secs)
            }
        };
        if let Ok(v) = HeaderValue::from_str(&rid) {
            resp.headers_mut().insert(X_REQUEST_ID, v);
        }
        add_cors(&app, origin.as_ref(), &mut resp);
        crate::telemetry::RequestDone {
            route: label,
            status: resp.status().as_u16(),
            elapsed: started.elapsed(),
        }
        .emit();
        Ok(resp)
    }
    .instrument(span)
    .await
}

/// Serves `listener` until `shutdown` resolves, then shuts down in order.
pub async fn serve(
    listener: TcpListener,
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
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(s) => s,
                    Err(e) => {
                        // Per-connection errors (e.g. EMFILE) must not stop the server.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let app = Arc::clone(&app);
                let conn = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service_fn(move |req| handle(Arc::clone(&app), req, peer)));
                let conn = graceful.watch(conn);
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        tracing::debug!(%peer, error = %e, "connection closed with error");
                    }
                });
            }
            () = &mut shutdown => break,
        }
    }
    app.shutting_down.store(true, Ordering::Relaxed);
    drop(listener);
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
