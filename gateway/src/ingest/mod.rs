//! `POST /ingest`: authenticate → check content type and size → parse (simd-json)
//! → validate → produce → answer once the broker acknowledged every event.

pub mod decode;
pub mod model;
pub mod validate;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use std::net::SocketAddr;

use hyper::header::{HeaderValue, CONTENT_TYPE, ORIGIN, USER_AGENT};
use hyper::{Request, Response, StatusCode};
use serde::Serialize;

use shared::config::Tier;

use crate::error::ApiError;
use crate::server::App;

#[derive(Serialize)]
struct Accepted<'a> {
    accepted: usize,
    request_id: &'a str,
}

/// What is known about a request when it fails, for its rejection metrics.
#[derive(Default)]
struct Seen {
    tier: Option<Tier>,
    events: Option<usize>,
}

pub async fn handle(
    app: &App,
    req: Request<Incoming>,
    request_id: &str,
    peer: SocketAddr,
) -> Result<Response<Full<Bytes>>, ApiError> {
    let mut seen = Seen::default();
    let result = accept(app, req, request_id, peer, &mut seen).await;
    if let Err(error) = &result {
        crate::telemetry::IngestRejected {
            error,
            tier: seen.tier,
            events: seen.events,
        }
        .emit();
    }
    result
}

async fn accept(
    app: &App,
    req: Request<Incoming>,
    request_id: &str,
    peer: SocketAddr,
    seen: &mut Seen,
) -> Result<Response<Full<Bytes>>, ApiError> {
    let (parts, body) = req.into_parts();
    let headers = &parts.headers;
    let client_ip = app.enricher.client_ip(peer, headers);
    let (who, beacon) = app
        .keys
        .authenticate(headers, parts.uri.query(), client_ip)?;
    let tenant = who.tenant;
    seen.tier = Some(who.tier);
    if who.over_quota {
        return Err(ApiError::QuotaExceeded {
            retry_after_secs: secs_to_next_month(time::OffsetDateTime::now_utc()),
        });
    }
    who.check_origin(headers.get(ORIGIN).and_then(|v| v.to_str().ok()))?;
    let encoding = decode::check_headers(headers, beacon)?;
    let raw = decode::read_raw(body, headers, app.config.gateway.max_body_bytes).await?;
    if who.require_signature {
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        crate::auth::sign::verify(headers, &raw, &who.signing_key, now)?;
    }
    let wire = raw.len();
    let mut buf = decode::decode(raw, encoding, app.config.limits.max_decompressed_bytes)?;
    crate::telemetry::BodyReceived {
        wire,
        decoded: buf.len(),
    }
    .emit();
    let batch = model::parse(&mut buf).map_err(ApiError::MalformedBody)?;
    seen.events = Some(batch.events.len());
    let received_at_ms =
        (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64;
    let ctx = validate::Context {
        tenant,
        received_at_ms,
        window: shared::event::TimeWindow {
            past_hours: app.config.limits.max_event_age_hours,
            future_minutes: app.config.limits.max_future_minutes,
        },
        max_events: app.config.gateway.max_events_per_batch,
        limits: &app.config.limits,
        enricher: &app.enricher,
        client_ip,
        header_ua: headers.get(USER_AGENT).and_then(|v| v.to_str().ok()),
        anonymize_ip: who.anonymize_ip,
    };
    let events = validate::prepare(&batch, &ctx)?;
    let quota = app
        .limiter
        .check(tenant, who.tier, events.len())
        .map_err(ApiError::RateLimited)?;
    app.sink.send(tenant, &events).await.map_err(|e| {
        crate::telemetry::ProduceFailed {
            kind: e.kind(),
            tenant,
            events: events.len(),
            error: &e,
        }
        .emit();
        ApiError::BrokerUnavailable(e.to_string())
    })?;
    crate::telemetry::EventsAccepted {
        tenant,
        tier: who.tier,
        events: events.len(),
    }
    .emit();
    let body = serde_json::to_vec(&Accepted {
        accepted: events.len(),
        request_id,
    })
    .map_err(|e| ApiError::BodyRead(e.to_string()))?;
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = StatusCode::OK;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    crate::error::rate_limit_headers(resp.headers_mut(), &quota);
    Ok(resp)
}

/// Seconds until the next calendar month (UTC), when monthly quotas reset.
fn secs_to_next_month(now: time::OffsetDateTime) -> u64 {
    let (_, next) = shared::keys::month_bounds(now);
    (next - now).whole_seconds().max(1) as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    #[test]
    fn quota_resets_at_the_month_boundary() {
        assert_eq!(secs_to_next_month(datetime!(2024-12-31 23:59:00 UTC)), 60);
        assert_eq!(
            secs_to_next_month(datetime!(2024-02-29 00:00:00 UTC)),
            86_400
        );
    }
}
