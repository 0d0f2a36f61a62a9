//! The public port's routes, in one table: `POST`/`OPTIONS /ingest`, Segment's
//! `/v1/*` ([`crate::compat`]), and the
//! probes `/health/live` and `/health/ready` (the detailed `/health` and
//! `/metrics` are only on the operations port). Every answer carries the
//! request id and, for allowed origins, the CORS headers.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::HeaderValue;
use hyper::{Method, Request, Response};
use shared::runtime::ops;
use tracing::Instrument;

use crate::app::App;
use crate::compat::{Call, Dialect};
use crate::error::ApiError;
use crate::server::conn::InRequest;

const X_REQUEST_ID: &str = "x-request-id";

fn request_id(req: &Request<Incoming>) -> String {
    req.headers()
        .get(X_REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic()))
        .map(str::to_string)
        .unwrap_or_else(fresh_request_id)
}

/// A new request id, a UUID v4 made without a system call per request (uuid's
/// `new_v4` asks the kernel for randomness each time): each thread draws a
/// random seed once; 64 bits of the id are a bijection (the SplitMix64
/// finaliser) of the thread's counter offset by its seed, the other 58 the
/// thread's random prefix (the version and variant bits take the rest), so a
/// thread never repeats an id and two threads share one only if their random
/// prefixes collide.
fn fresh_request_id() -> String {
    use std::cell::Cell;
    thread_local! {
        static STATE: Cell<(u64, u64)> = Cell::new(uuid::Uuid::new_v4().as_u64_pair());
    }
    let (prefix, n) = STATE.with(|s| {
        let (prefix, n) = s.get();
        s.set((prefix, n.wrapping_add(0x9e37_79b9_7f4a_7c15)));
        (prefix, n)
    });
    let mut z = n;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    let (z, p) = (z.to_be_bytes(), prefix.to_be_bytes());
    let mut bytes = [0u8; 16];
    // Bytes 6 and 8 lose bits to the version and variant: they carry the prefix.
    bytes[..6].copy_from_slice(&z[..6]);
    bytes[6] = p[0];
    bytes[7] = z[6];
    bytes[8] = p[1];
    bytes[9] = z[7];
    bytes[10..].copy_from_slice(&p[2..]);
    uuid::Builder::from_random_bytes(bytes)
        .into_uuid()
        .hyphenated()
        .to_string()
}

/// What a path is on the public port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    Ingest(Dialect),
    /// PostHog's start-up endpoints (flags, remote config).
    PostHogSide,
    /// The settings document Segment's browser library loads first.
    SegmentSettings,
    Live,
    Ready,
}

impl Route {
    /// The route table: path → route and the methods it takes.
    fn find(path: &str) -> Option<(Route, &'static [Method])> {
        const PROBE: &[Method] = &[Method::GET, Method::HEAD];
        const POST: &[Method] = &[Method::POST, Method::OPTIONS];
        const ANY: &[Method] = &[Method::GET, Method::POST, Method::OPTIONS];
        let segment = |call| (Route::Ingest(Dialect::Segment(call)), POST);
        if crate::compat::posthog::side_path(path).is_some() {
            return Some((Route::PostHogSide, ANY));
        }
        if crate::compat::segment::settings_path(path) {
            return Some((Route::SegmentSettings, PROBE));
        }
        Some(match path.strip_suffix('/').unwrap_or(path) {
            "/ingest" => (Route::Ingest(Dialect::Native), POST),
            // Segment's HTTP Tracking API.
            // Segment's HTTP Tracking API, and the browser library's short paths.
            "/v1/batch" | "/v1/import" | "/v1/b" => segment(None),
            "/v1/track" | "/v1/t" => segment(Some(Call::Track)),
            "/v1/page" | "/v1/p" => segment(Some(Call::Page)),
            "/v1/screen" | "/v1/s" => segment(Some(Call::Screen)),
            "/v1/identify" | "/v1/i" => segment(Some(Call::Identify)),
            "/v1/group" | "/v1/g" => segment(Some(Call::Group)),
            "/v1/alias" | "/v1/a" => segment(Some(Call::Alias)),
            // PostHog's capture API.
            "/batch" | "/e" | "/i/v0/e" | "/capture" | "/track" => {
                (Route::Ingest(Dialect::PostHog), POST)
            }
            "/health/live" => (Route::Live, PROBE),
            "/health/ready" => (Route::Ready, PROBE),
            _ => return None,
        })
    }
}

/// `path` without the first of `prefixes` it starts with (`gateway.path_prefixes`).
fn unprefixed<'a>(prefixes: &[String], path: &'a str) -> &'a str {
    prefixes
        .iter()
        .find_map(|p| {
            path.strip_prefix(p.as_str())
                .filter(|rest| rest.starts_with('/'))
        })
        .unwrap_or(path)
}

async fn route(
    app: &Arc<App>,
    req: Request<Incoming>,
    found: Option<(Route, &'static [Method])>,
    rid: &str,
    peer: SocketAddr,
) -> Result<Response<Full<Bytes>>, ApiError> {
    let path = unprefixed(&app.config.gateway.path_prefixes, req.uri().path());
    let method = req.method();
    let Some((route, allowed)) = found else {
        return Err(ApiError::NotFound(path.to_string()));
    };
    if !allowed.contains(method) {
        return Err(ApiError::MethodNotAllowed(method.to_string()));
    }
    match route {
        Route::Ingest(_) if method == Method::OPTIONS => crate::cors::preflight(&app.keys, &req),
        Route::Ingest(dialect) => {
            if app.shutting_down() {
                return Err(ApiError::ShuttingDown);
            }
            crate::ingest::handle(app, req, rid, peer, dialect).await
        }
        Route::PostHogSide if method == Method::OPTIONS => crate::cors::preflight(&app.keys, &req),
        Route::PostHogSide => {
            let (content_type, body) = crate::compat::posthog::side_answer(path)
                .ok_or_else(|| ApiError::NotFound(path.to_string()))?;
            let mut resp = Response::new(Full::new(Bytes::from(body)));
            resp.headers_mut().insert(
                hyper::header::CONTENT_TYPE,
                HeaderValue::from_static(content_type),
            );
            Ok(resp)
        }
        Route::SegmentSettings => {
            let body = crate::compat::segment::settings(path, req.headers());
            let mut resp = Response::new(Full::new(Bytes::from(body)));
            resp.headers_mut().insert(
                hyper::header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            // The document is the same for every origin (it holds no secret).
            resp.headers_mut()
                .insert("access-control-allow-origin", HeaderValue::from_static("*"));
            Ok(resp)
        }
        Route::Live => Ok(ops::live()),
        Route::Ready => Ok(ops::ready(&app.not_ready(), app.retry_after())),
    }
}

/// Answers one request of the public port.
pub async fn handle(
    app: Arc<App>,
    req: Request<Incoming>,
    peer: SocketAddr,
    in_request: InRequest,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let rid = request_id(&req);
    // The route, once: for the label, CORS and the answer.
    let path = unprefixed(&app.config.gateway.path_prefixes, req.uri().path());
    let found = Route::find(path);
    // Foreign ingest routes count as their SDK family (a closed set).
    let label = match found {
        Some((Route::Ingest(Dialect::Segment(_)), _)) => "segment",
        Some((Route::Ingest(Dialect::PostHog), _)) => "posthog",
        _ => crate::telemetry::route_label(path),
    };
    let span =
        tracing::info_span!("request", request_id = %rid, method = %req.method(), route = label);
    shared::runtime::telemetry::set_remote_parent(&span, req.headers());
    async {
        let started = Instant::now();
        let origin = matches!(found, Some((Route::Ingest(_) | Route::PostHogSide, _)))
            .then(|| req.headers().get(hyper::header::ORIGIN).cloned())
            .flatten();
        let mut resp = match route(&app, req, found, &rid, peer).await {
            Ok(r) => r,
            Err(e) => {
                crate::telemetry::log_refusal(&e);
                e.into_response(&rid, &app.config.gateway)
            }
        };
        if let Ok(v) = HeaderValue::from_str(&rid) {
            resp.headers_mut().insert(X_REQUEST_ID, v);
        }
        crate::cors::allow(&app.keys, origin.as_ref(), &mut resp);
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

#[cfg(test)]
mod tests {
    use super::fresh_request_id;
    use std::collections::HashSet;

    #[test]
    fn fresh_request_ids_are_v4_uuids_that_never_repeat() {
        let ids = || (0..50_000).map(|_| fresh_request_id()).collect::<Vec<_>>();
        let other = std::thread::spawn(ids);
        let mine = ids();
        let mut seen = HashSet::new();
        for id in mine.iter().chain(&other.join().expect("thread")) {
            let u = uuid::Uuid::parse_str(id).expect("a UUID");
            assert_eq!(u.get_version_num(), 4, "{id}");
            assert_eq!(u.get_variant(), uuid::Variant::RFC4122, "{id}");
            assert!(seen.insert(u), "{id} repeated");
        }
        // Consecutive ids of a thread share no obvious pattern in the counter half.
        assert_ne!(mine[0][..8], mine[1][..8]);
    }
}
