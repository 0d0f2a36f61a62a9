//! Routes of both listeners: request ids, CORS, the probes, `/health` and
//! `/metrics`, and the hand-off of `/ingest` to [`crate::ingest`].

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::json;
use tracing::Instrument;

use super::conn::InRequest;
use super::{App, Listener};
use crate::auth::KeyStore;
use crate::error::ApiError;

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

/// What a path is, on a listener that serves it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    Ingest,
    Live,
    Ready,
    Health,
    Metrics,
}

impl Route {
    /// The one route table: which listener serves which path, with which methods.
    fn find(which: Listener, path: &str) -> Option<(Route, &'static [Method])> {
        const PROBE: &[Method] = &[Method::GET, Method::HEAD];
        let route = match path {
            "/ingest" => (Route::Ingest, &[Method::POST, Method::OPTIONS][..]),
            "/health/live" => (Route::Live, PROBE),
            "/health/ready" => (Route::Ready, PROBE),
            "/health" => (Route::Health, PROBE),
            "/metrics" => (Route::Metrics, PROBE),
            _ => return None,
        };
        let served = match which {
            Listener::Ingest => matches!(route.0, Route::Ingest | Route::Live | Route::Ready),
            Listener::Operations => route.0 != Route::Ingest,
        };
        served.then_some(route)
    }
}

async fn route(
    app: &Arc<App>,
    which: Listener,
    req: Request<Incoming>,
    rid: &str,
    peer: SocketAddr,
) -> Result<Response<Full<Bytes>>, ApiError> {
    let path = req.uri().path();
    let method = req.method();
    let Some((route, allowed)) = Route::find(which, path) else {
        return Err(ApiError::NotFound(path.to_string()));
    };
    if !allowed.contains(method) {
        return Err(ApiError::MethodNotAllowed(method.to_string()));
    }
    match route {
        Route::Ingest if method == Method::OPTIONS => preflight(app, &req),
        Route::Ingest => {
            if app.shutting_down() {
                return Err(ApiError::ShuttingDown);
            }
            crate::ingest::handle(app, req, rid, peer).await
        }
        Route::Live => Ok(json_response(StatusCode::OK, json!({"status": "ok"}))),
        Route::Metrics => Ok(metrics_response(app)),
        Route::Ready => {
            let why = app.not_ready();
            Ok(if why.is_empty() {
                json_response(StatusCode::OK, json!({"status": "ready"}))
            } else {
                let mut r = json_response(
                    StatusCode::SERVICE_UNAVAILABLE,
                    json!({"status": "not_ready", "reasons": why}),
                );
                r.headers_mut().insert(
                    hyper::header::RETRY_AFTER,
                    HeaderValue::from(app.config.gateway.retry_after_secs),
                );
                r
            })
        }
        Route::Health => Ok(health_response(app)),
    }
}

/// This process's resident memory (Linux; absent elsewhere).
fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

fn health_response(app: &App) -> Response<Full<Bytes>> {
    let broker = app.sink.broker_up();
    let why = app.not_ready();
    let status = if why.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    json_response(
        status,
        json!({
            "status": if why.is_empty() { "ok" } else { "degraded" },
            "reasons": why,
            "uptime_seconds": app.started.elapsed().as_secs(),
            "shutting_down": app.shutting_down(),
            "ingest_in_progress": app.in_progress.load(Ordering::Relaxed),
            "connections": app.connections.load(Ordering::Relaxed),
            "body_budget_free_bytes": app.body_budget.available_permits(),
            "memory": {
                "rss_bytes": resident_bytes(),
                "bound_bytes": crate::budget::MemoryBound::of(&app.config).total(),
            },
            "components": {
                "broker": {
                    "status": if broker { "up" } else { "down" },
                    "brokers": app.config.kafka.brokers,
                    "in_flight": app.sink.in_flight(),
                },
                "keys": keys_report(&app.keys),
            }
        }),
    )
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
        "status": if keys.usable().is_ok() { "up" } else { "down" },
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

pub(super) async fn handle(
    app: Arc<App>,
    which: Listener,
    req: Request<Incoming>,
    peer: SocketAddr,
    in_request: InRequest,
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
        let mut resp = match route(&app, which, req, &rid, peer).await {
            Ok(r) => r,
            Err(e) => {
                crate::telemetry::log_refusal(&e);
                e.into_response(&rid, &app.config.gateway)
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
        drop(in_request);
        Ok(resp)
    }
    .instrument(span)
    .await
}
