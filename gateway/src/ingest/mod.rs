//! `POST /ingest`, in order of cost:
//!
//! 1. on the network threads, from the head alone: authenticate, quota, origin,
//!    content type, and a drained tenant's refusal (429, before any body work);
//! 2. read the body under its size cap, its timeout and the shared body budget;
//! 3. admission (`gateway.max_in_flight_requests`), then on a bounded worker
//!    pool (`gateway.cpu_workers`), off the network threads: signature, gzip,
//!    the structure scan that counts the events, the rate-limit charge for all
//!    of them (before the costly parse, validation and enrichment, so invalid
//!    batches cost the tenant too; a failure before counting costs one token);
//! 4. produce, and answer once the broker acknowledged every event.

pub mod decode;
mod job;
pub mod model;
pub(crate) mod pool;
pub mod shape;
pub mod validate;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE, ORIGIN, USER_AGENT};
use hyper::{Request, Response, StatusCode};
use serde::Serialize;
use shared::domain::Tier;
use uuid::Uuid;

use crate::app::App;
use crate::compat::Dialect;
use crate::error::ApiError;
use job::{Attempt, Job, Step};

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
    app: &Arc<App>,
    req: Request<Incoming>,
    request_id: &str,
    peer: SocketAddr,
    dialect: Dialect,
) -> Result<Response<Full<Bytes>>, ApiError> {
    let mut seen = Seen::default();
    let result = accept(app, req, request_id, peer, dialect, &mut seen).await;
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
    app: &Arc<App>,
    req: Request<Incoming>,
    request_id: &str,
    peer: SocketAddr,
    dialect: Dialect,
    seen: &mut Seen,
) -> Result<Response<Full<Bytes>>, ApiError> {
    let (parts, mut body) = req.into_parts();
    let headers = &parts.headers;
    let client_ip = app.enricher.client_ip(peer, headers);
    // PostHog's SDKs put their key in the body: those requests are judged once
    // it is parsed, on the worker (their body costs work before the key is known).
    let deferred =
        dialect.key_in_body() && !crate::auth::KeyStore::presents_key(headers, parts.uri.query());
    let form = dialect == Dialect::PostHog && is_form(headers);
    let lz64 = dialect == Dialect::PostHog
        && parts
            .uri
            .query()
            .and_then(|q| crate::auth::presented::query_param(q, "compression"))
            .is_some_and(|c| c == "lz64");
    // PostHog's `beacon=1`: the page is gone, nobody reads the answer.
    let beacon_ack = dialect == Dialect::PostHog
        && parts
            .uri
            .query()
            .and_then(|q| crate::auth::presented::query_param(q, "beacon"))
            .is_some_and(|b| b == "1");
    let judged = if deferred {
        decode::check_headers(headers, true, dialect == Dialect::PostHog)
            .map(|encoding| (None, encoding))
    } else {
        judge_head(app, &parts, client_ip, dialect, seen)
            .map(|(who, encoding)| (Some(who), encoding))
    };
    let (who, encoding) = match judged {
        Ok(judged) => judged,
        Err(e) => {
            decode::discard(&mut body, app.config.gateway.max_body_bytes).await;
            return Err(e);
        }
    };
    let charged = who.as_ref().map(|w| (w.tenant, w.tier));
    let g = &app.config.gateway;
    let raw = match decode::read_raw(
        body,
        headers,
        decode::ReadLimits {
            max_body: g.max_body_bytes,
            timeout: Duration::from_millis(g.body_read_timeout_ms),
            budget: &app.body_budget,
            frame_buffer: g.read_buffer_bytes(),
        },
    )
    .await
    {
        Ok(raw) => raw,
        Err(e) => return Err(debit_unless_refused(app, charged, e)),
    };
    let _admitted = app.admit()?;
    // A small plain body is parsed where it was read (microseconds); the rest,
    // and any body whose user agents are not cached, on a worker.
    let inline = g.inline_max_body_bytes > 0
        && raw.len() <= g.inline_max_body_bytes
        && encoding == decode::Encoding::Identity
        && !form
        && !lz64;
    // Only a signature covers the method and path: others need no copy of them.
    let signed = who.as_ref().is_some_and(|w| w.signed.is_some());
    let mut job = Job {
        app: Arc::clone(app),
        dialect,
        raw: Some(raw),
        encoding,
        form,
        lz64,
        who,
        origin: headers.get(ORIGIN).cloned(),
        client_ip,
        header_ua: headers.get(USER_AGENT).cloned(),
        method: if signed {
            parts.method.to_string()
        } else {
            String::new()
        },
        path_and_query: if signed {
            parts
                .uri
                .path_and_query()
                .map_or_else(|| parts.uri.path().to_string(), |p| p.as_str().to_string())
        } else {
            String::new()
        },
    };
    // Inline work takes a free worker slot without waiting (so the memory
    // bound's worker term covers it); with none free the body goes to a worker.
    let slot = inline.then(|| app.workers.try_slot()).flatten();
    let (outcome, events, tier) = match slot.map(|_slot| job.run(Step::Inline)) {
        Some((Attempt::Done(outcome), events, tier)) => (Ok(*outcome), events, tier),
        Some((Attempt::Failed(e), events, tier)) => (Err(e), events, tier),
        Some((Attempt::Handoff(quota), ..)) => {
            let (a, events, tier) =
                on_worker(app, move || job.run(Step::Worker(Some(quota)))).await?;
            (a.into_result(), events, tier)
        }
        None => {
            let (a, events, tier) = on_worker(app, move || job.run(Step::Worker(None))).await?;
            (a.into_result(), events, tier)
        }
    };
    seen.events = events;
    seen.tier = seen.tier.or(tier);
    let (events, quota, who) = match outcome {
        Ok(ok) => ok,
        // Counted events were charged before parsing; an uncounted failure pays one.
        Err(e) if events.is_none() => return Err(debit_unless_refused(app, charged, e)),
        Err(e) => return Err(e),
    };
    let tenant = who.tenant;
    let n = events.len();
    app.sink.send(tenant, events).await.map_err(|e| {
        crate::telemetry::ProduceFailed {
            kind: e.kind(),
            tenant,
            events: n,
            error: &e,
        }
        .emit();
        ApiError::BrokerUnavailable(e.to_string())
    })?;
    crate::telemetry::EventsAccepted {
        tenant,
        tier: who.tier,
        events: n,
    }
    .emit();
    // Each dialect's SDKs read their own success answer.
    let body = match dialect {
        Dialect::Native => serde_json::to_vec(&Accepted {
            accepted: n,
            request_id,
        })
        .map_err(|e| ApiError::Internal(e.to_string()))?,
        Dialect::Segment(_) => br#"{"success":true}"#.to_vec(),
        Dialect::PostHog => br#"{"status":1}"#.to_vec(),
    };
    let mut resp = Response::new(Full::new(Bytes::from(if beacon_ack {
        Vec::new()
    } else {
        body
    })));
    *resp.status_mut() = if beacon_ack {
        StatusCode::NO_CONTENT
    } else {
        StatusCode::OK
    };
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    crate::error::rate_limit_headers(resp.headers_mut(), &quota);
    Ok(resp)
}

/// Everything decided from the request head alone: who, whether they may send
/// now, and how the body is encoded. A drained tenant is refused here, before
/// any work on its body.
fn judge_head(
    app: &App,
    parts: &hyper::http::request::Parts,
    client_ip: IpAddr,
    dialect: Dialect,
    seen: &mut Seen,
) -> Result<(crate::auth::Principal, decode::Encoding), ApiError> {
    let headers = &parts.headers;
    let (who, beacon) = app
        .keys
        .authenticate(headers, parts.uri.query(), client_ip)?;
    seen.tier = Some(who.tier);
    if who.over_quota {
        return Err(ApiError::QuotaExceeded {
            retry_after_secs: secs_to_next_month(time::OffsetDateTime::now_utc()),
        });
    }
    who.check_origin(headers.get(ORIGIN).and_then(|v| v.to_str().ok()))?;
    // Foreign SDKs post text/plain (no CORS preflight); PostHog's also forms.
    let encoding = decode::check_headers(
        headers,
        beacon || dialect != Dialect::Native,
        dialect == Dialect::PostHog,
    )?;
    app.limiter
        .peek(who.tenant, who.tier)
        .map_err(ApiError::RateLimited)?;
    Ok((who, encoding))
}

/// A request that failed after costing work, before its events were counted,
/// pays one token; one refused for load or limits pays nothing, nor does a
/// signature that does not verify (its sender is not the tenant).
fn debit_unless_refused(app: &App, charged: Option<(Uuid, Tier)>, e: ApiError) -> ApiError {
    let Some((tenant, tier)) = charged else {
        return e; // the key was to be read from the body: no tenant to charge
    };
    let refused = matches!(
        e,
        ApiError::Unauthorized(_)
            | ApiError::RateLimited(_)
            | ApiError::Overloaded { .. }
            | ApiError::BodyBudget { .. }
            | ApiError::KeysUnavailable(_)
            | ApiError::ShuttingDown
            | ApiError::Internal(_)
    );
    if !refused {
        app.limiter.debit(tenant, tier, 1);
    }
    e
}

/// Runs `work` on a CPU worker ([`pool`]) once a `gateway.cpu_workers` slot
/// is free, so decoding and parsing never hold a network thread.
async fn on_worker<T: Send + 'static>(
    app: &App,
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, ApiError> {
    app.workers
        .run(work)
        .await
        .map_err(|e| ApiError::Internal(format!("the decoding task failed: {e}")))
}

fn is_form(headers: &hyper::HeaderMap) -> bool {
    decode::media_type(headers).as_deref() == Some("application/x-www-form-urlencoded")
}

/// Seconds until the next calendar month (UTC), when monthly quotas reset.
pub(super) fn secs_to_next_month(now: time::OffsetDateTime) -> u64 {
    let (_, next) = shared::store::keys::month_bounds(now);
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
