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
pub mod model;
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
use crate::auth::{sign, Principal};
use crate::compat::Dialect;
use crate::error::ApiError;
use crate::ratelimit::Quota;
use crate::sink::Rows;

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
        && raw.bytes.len() <= g.inline_max_body_bytes
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
        origin: headers
            .get(ORIGIN)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string),
        client_ip,
        header_ua: headers
            .get(USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string),
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
    let slot = inline.then(|| app.cpu.try_acquire().ok()).flatten();
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

/// Runs `work` on the blocking pool once a `gateway.cpu_workers` slot is free,
/// so decoding and parsing never hold a network thread.
async fn on_worker<T: Send + 'static>(
    app: &App,
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, ApiError> {
    let _slot = app
        .cpu
        .acquire()
        .await
        .map_err(|_| ApiError::ShuttingDown)?;
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| ApiError::Internal(format!("the decoding task failed: {e}")))
}

/// Everything the work on a body needs, owned (it may move to a worker).
struct Job {
    app: Arc<App>,
    dialect: Dialect,
    /// The body as read; a worker frees it (and its share of the body
    /// budget) once decoded, an inline attempt keeps it for a hand-off.
    raw: Option<decode::RawBody>,
    encoding: decode::Encoding,
    /// An `application/x-www-form-urlencoded` body (PostHog's unload beacons).
    form: bool,
    /// PostHog's `?compression=lz64` (lz-string in the form's `data`).
    lz64: bool,
    /// `None`: the key is in the body (judged once it is parsed).
    who: Option<Principal>,
    origin: Option<String>,
    client_ip: IpAddr,
    header_ua: Option<String>,
    /// The method and path a signature covers (empty when unsigned).
    method: String,
    path_and_query: String,
}

type Prepared = (Rows, Quota, Principal);

/// Where a body's work runs.
#[derive(Clone, Copy)]
enum Step {
    /// On the network thread that read it: stops before validation when a
    /// user agent would have to be parsed.
    Inline,
    /// On a worker; `Some` when an inline attempt already verified the
    /// signature, counted the body and took the tokens (this quota).
    Worker(Option<Quota>),
}

/// How far the work on a body got.
enum Attempt {
    Done(Box<Prepared>),
    Failed(ApiError),
    /// Charged and parsed inline, but a user agent needs parsing: the rest
    /// goes to a worker (which parses the body again, charging nothing).
    Handoff(Quota),
}

impl Attempt {
    fn into_result(self) -> Result<Prepared, ApiError> {
        match self {
            Attempt::Done(p) => Ok(*p),
            Attempt::Failed(e) => Err(e),
            Attempt::Handoff(_) => Err(ApiError::Internal(
                "a worker handed its request off again".into(),
            )),
        }
    }
}

impl Job {
    /// The outcome, how many events the body held (when it parsed), and the
    /// tier of the key (when it was judged).
    fn run(&mut self, step: Step) -> (Attempt, Option<usize>, Option<Tier>) {
        let mut events = None;
        let mut tier = self.who.as_ref().map(|w| w.tier);
        let attempt = match self.prepare(step, &mut events, &mut tier) {
            Ok(a) => a,
            Err(e) => Attempt::Failed(e),
        };
        (attempt, events, tier)
    }

    fn prepare(
        &mut self,
        step: Step,
        events: &mut Option<usize>,
        tier: &mut Option<Tier>,
    ) -> Result<Attempt, ApiError> {
        let app = &*Arc::clone(&self.app);
        let charged = match step {
            Step::Worker(q) => q,
            Step::Inline => None,
        };
        let raw = self
            .raw
            .as_ref()
            .ok_or_else(|| ApiError::Internal("the body was already freed".into()))?;
        if let Some(s) = self
            .who
            .as_ref()
            .and_then(|w| w.signed.as_ref())
            .filter(|_| charged.is_none())
        {
            let now_secs = time::OffsetDateTime::now_utc().unix_timestamp();
            let req = sign::Request {
                method: &self.method,
                path_and_query: &self.path_and_query,
                body: &raw.bytes,
                now_secs,
            };
            sign::verify(&s.presented, &s.public, &req, &app.keys.replay)?;
        }
        let limits = &app.config.limits;
        let wire = raw.bytes.len();
        let mut buf = decode::decode(&raw.bytes, self.encoding, limits.max_decompressed_bytes)?;
        if self.dialect == Dialect::PostHog {
            buf = crate::compat::posthog::unwrap_body(
                buf,
                self.form,
                self.lz64,
                limits.max_decompressed_bytes,
            )?;
        }
        if let Step::Worker(_) = step {
            // Decoded: the body's share of the budget goes back.
            self.raw = None;
        }
        if charged.is_none() {
            crate::telemetry::BodyReceived {
                wire,
                decoded: buf.len(),
            }
            .emit();
        }
        let max_events = app.config.gateway.max_events_per_batch;
        let shape_limits = shape::ShapeLimits::new(max_events, limits);
        let received = time::OffsetDateTime::now_utc();
        let received_at_ms = (received.unix_timestamp_nanos() / 1_000_000) as i64;
        let foreign;
        let (batch, quota, who) = match self.dialect {
            Dialect::Native => {
                let who = self
                    .who
                    .clone()
                    .ok_or_else(|| ApiError::Internal("a native request without a key".into()))?;
                let shape = model::scan(&buf, shape_limits)?;
                // The batch's tokens, all or none, before the costly parse and validation.
                let quota = match charged {
                    Some(q) => q,
                    None => app
                        .limiter
                        .check(who.tenant, who.tier, shape.events)
                        .map_err(ApiError::RateLimited)?,
                };
                *events = Some(shape.events);
                let batch = model::parse(&mut buf).map_err(ApiError::MalformedBody)?;
                (batch, quota, who)
            }
            dialect => {
                // Scanned, then parsed (bounded as a native batch is); judged
                // now if the key was in the body; charged before validation
                // and enrichment.
                foreign = crate::compat::parse(&mut buf, shape_limits)?;
                let who = match self.who.clone() {
                    Some(who) => who,
                    None => body_key(
                        app,
                        dialect,
                        &foreign,
                        self.client_ip,
                        self.origin.as_deref(),
                    )?,
                };
                *tier = Some(who.tier);
                let at = received
                    .format(&time::format_description::well_known::Rfc3339)
                    .map_err(|e| ApiError::Internal(e.to_string()))?;
                let events_in = crate::compat::events(dialect, &foreign, who.tenant, &at)?;
                let quota = match charged {
                    Some(q) => q,
                    None => app
                        .limiter
                        .check(who.tenant, who.tier, events_in.len().max(1))
                        .map_err(ApiError::RateLimited)?,
                };
                *events = Some(events_in.len());
                (model::Batch { events: events_in }, quota, who)
            }
        };
        *events = Some(batch.events.len());
        if matches!(step, Step::Inline)
            && !validate::user_agents_cached(&batch, self.header_ua.as_deref(), &app.enricher)
        {
            return Ok(Attempt::Handoff(quota));
        }
        let ctx = validate::Context {
            tenant: who.tenant,
            received_at_ms,
            window: shared::event::TimeWindow {
                past_hours: limits.max_event_age_hours,
                future_minutes: limits.max_future_minutes,
            },
            max_events,
            limits,
            enricher: &app.enricher,
            client_ip: self.client_ip,
            header_ua: self.header_ua.as_deref(),
            anonymize_ip: who.anonymize_ip,
            max_ua_parses: app.config.enrichment.max_ua_parses_per_request,
            max_details: app.config.gateway.max_error_details,
        };
        let out = validate::prepare(&batch, &ctx)?;
        Ok(Attempt::Done(Box::new((out, quota, who))))
    }
}

fn is_form(headers: &hyper::HeaderMap) -> bool {
    decode::media_type(headers).as_deref() == Some("application/x-www-form-urlencoded")
}

/// Judges the key a foreign body carries, as the head's would have been:
/// known and valid, within its quota, from an allowed origin.
fn body_key(
    app: &App,
    dialect: Dialect,
    body: &simd_json::OwnedValue,
    client_ip: IpAddr,
    origin: Option<&str>,
) -> Result<Principal, ApiError> {
    let token = crate::compat::token(dialect, body).ok_or(ApiError::Unauthorized(
        "missing API key: put the Overwatch key where the SDK puts its project token (`api_key`)",
    ))?;
    let who = app.keys.authenticate_token(&token, client_ip)?;
    if who.over_quota {
        return Err(ApiError::QuotaExceeded {
            retry_after_secs: secs_to_next_month(time::OffsetDateTime::now_utc()),
        });
    }
    who.check_origin(origin)?;
    Ok(who)
}

/// Seconds until the next calendar month (UTC), when monthly quotas reset.
fn secs_to_next_month(now: time::OffsetDateTime) -> u64 {
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
