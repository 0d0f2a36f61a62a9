//! `POST /ingest`: authenticate → check content type and size → parse (simd-json)
//! → validate → produce → answer once the broker acknowledged every event.

pub mod model;
pub mod validate;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_TYPE};
use hyper::{Request, Response, StatusCode};
use serde::Serialize;

use crate::error::ApiError;
use crate::server::App;

#[derive(Serialize)]
struct Accepted<'a> {
    accepted: usize,
    request_id: &'a str,
}

pub async fn handle(
    app: &App,
    req: Request<Incoming>,
    request_id: &str,
) -> Result<Response<Full<Bytes>>, ApiError> {
    let tenant = app.keys.authenticate(req.headers())?;
    check_content_type(&req)?;
    let limit = app.config.gateway.max_body_bytes;
    if let Some(len) = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
    {
        if len > limit {
            return Err(ApiError::PayloadTooLarge { limit });
        }
    }
    let body = Limited::new(
        req.into_body(),
        usize::try_from(limit).unwrap_or(usize::MAX),
    )
    .collect()
    .await
    .map_err(|e| {
        if e.is::<http_body_util::LengthLimitError>() {
            ApiError::PayloadTooLarge { limit }
        } else {
            ApiError::BodyRead(e.to_string())
        }
    })?
    .to_bytes();
    let mut buf = Vec::from(body);
    let batch = model::parse(&mut buf).map_err(ApiError::MalformedBody)?;
    let received_at_ms =
        (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64;
    let events = validate::prepare(
        &batch,
        tenant,
        received_at_ms,
        app.config.gateway.max_events_per_batch,
    )?;
    app.sink.send(&events).await.map_err(|e| {
        tracing::warn!(%tenant, events = events.len(), error = %e, "events not acknowledged by the broker");
        ApiError::BrokerUnavailable(e.to_string())
    })?;
    tracing::debug!(%tenant, events = events.len(), "events accepted");
    let body = serde_json::to_vec(&Accepted {
        accepted: events.len(),
        request_id,
    })
    .map_err(|e| ApiError::BodyRead(e.to_string()))?;
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = StatusCode::OK;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    Ok(resp)
}

fn check_content_type(req: &Request<Incoming>) -> Result<(), ApiError> {
    if let Some(ct) = req.headers().get(CONTENT_TYPE) {
        let ct = ct.to_str().unwrap_or("");
        let mime = ct
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        if mime != "application/json" && !mime.ends_with("+json") {
            return Err(ApiError::UnsupportedMediaType(format!(
                "content type `{ct}` is not supported; send application/json"
            )));
        }
    }
    if let Some(enc) = req.headers().get(CONTENT_ENCODING) {
        let enc = enc.to_str().unwrap_or("").trim().to_ascii_lowercase();
        if !enc.is_empty() && enc != "identity" {
            return Err(ApiError::UnsupportedMediaType(format!(
                "content encoding `{enc}` is not supported"
            )));
        }
    }
    Ok(())
}
