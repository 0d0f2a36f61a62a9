//! CORS for browser keys on `/ingest`: preflights, and the headers that let a
//! page read an answer when some browser key allows its origin.

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::HeaderValue;
use hyper::{Request, Response, StatusCode};

use crate::auth::KeyStore;
use crate::error::ApiError;

const ALLOW_HEADERS: &str =
    "authorization, content-type, content-encoding, x-api-key, x-request-id";
const EXPOSE_HEADERS: &str =
    "x-request-id, retry-after, x-ratelimit-limit, x-ratelimit-remaining, x-ratelimit-reset";

/// Answers a CORS preflight for `/ingest`: allowed when some browser key allows
/// the origin (the key itself is checked on the actual request).
pub fn preflight(
    keys: &KeyStore,
    req: &Request<Incoming>,
) -> Result<Response<Full<Bytes>>, ApiError> {
    let origin = req
        .headers()
        .get(hyper::header::ORIGIN)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| ApiError::OriginNotAllowed("(none)".into()))?;
    if !keys.origin_known(origin) {
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
        HeaderValue::from_static(ALLOW_HEADERS),
    );
    h.insert("access-control-max-age", HeaderValue::from_static("600"));
    Ok(resp)
}

/// Lets a page read the answer (success or error) when its origin is one some
/// browser key allows.
pub fn allow(keys: &KeyStore, origin: Option<&HeaderValue>, resp: &mut Response<Full<Bytes>>) {
    let Some(origin) = origin else { return };
    let known = origin
        .to_str()
        .map(|o| keys.origin_known(o))
        .unwrap_or(false);
    if !known {
        return;
    }
    let h = resp.headers_mut();
    h.insert("access-control-allow-origin", origin.clone());
    h.insert(
        "access-control-expose-headers",
        HeaderValue::from_static(EXPOSE_HEADERS),
    );
    h.append(hyper::header::VARY, HeaderValue::from_static("origin"));
}
