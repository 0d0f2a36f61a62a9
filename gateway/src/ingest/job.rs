//! The work on one request's body, owned so that it can move to a worker:
//! signature, decoding, the structure scan and the rate-limit charge, the
//! parse, and validation with enrichment into rows. It runs on the network
//! thread that read a small plain body, or on the blocking pool; an inline
//! attempt that would have to parse a user agent hands off to a worker.

use std::net::IpAddr;
use std::sync::Arc;

use hyper::header::HeaderValue;
use shared::domain::Tier;

use super::{decode, model, secs_to_next_month, shape, validate};
use crate::app::App;
use crate::auth::{sign, Principal};
use crate::compat::Dialect;
use crate::error::ApiError;
use crate::ratelimit::Quota;
use crate::sink::Rows;

/// Everything the work on a body needs, owned (it may move to a worker).
pub(super) struct Job {
    pub(super) app: Arc<App>,
    pub(super) dialect: Dialect,
    /// The body as read; a worker frees it (and its share of the body
    /// budget) once decoded, an inline attempt keeps it for a hand-off.
    pub(super) raw: Option<decode::RawBody>,
    pub(super) encoding: decode::Encoding,
    /// An `application/x-www-form-urlencoded` body (PostHog's unload beacons).
    pub(super) form: bool,
    /// PostHog's `?compression=lz64` (lz-string in the form's `data`).
    pub(super) lz64: bool,
    /// `None`: the key is in the body (judged once it is parsed).
    pub(super) who: Option<Principal>,
    /// Header values share the request head's buffer: held, not copied.
    pub(super) origin: Option<HeaderValue>,
    pub(super) client_ip: IpAddr,
    pub(super) header_ua: Option<HeaderValue>,
    /// The method and path a signature covers (empty when unsigned).
    pub(super) method: String,
    pub(super) path_and_query: String,
}

pub(super) type Prepared = (Rows, Quota, Principal);

/// Where a body's work runs.
#[derive(Clone, Copy)]
pub(super) enum Step {
    /// On the network thread that read it: stops before validation when a
    /// user agent would have to be parsed.
    Inline,
    /// On a worker; `Some` when an inline attempt already verified the
    /// signature, counted the body and took the tokens (this quota).
    Worker(Option<Quota>),
}

/// How far the work on a body got.
pub(super) enum Attempt {
    Done(Box<Prepared>),
    Failed(ApiError),
    /// Charged and parsed inline, but a user agent needs parsing: the rest
    /// goes to a worker (which parses the body again, charging nothing).
    Handoff(Quota),
}

impl Attempt {
    pub(super) fn into_result(self) -> Result<Prepared, ApiError> {
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
    pub(super) fn run(&mut self, step: Step) -> (Attempt, Option<usize>, Option<Tier>) {
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
                body_sha256: raw.sha256(),
                now_secs,
            };
            sign::verify(&s.presented, &s.public, &req, &app.keys.replay)?;
        }
        let limits = &app.config.limits;
        let wire = raw.len();
        let mut buf = decode::decode(raw, self.encoding, limits.max_decompressed_bytes)?;
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
                        text(self.origin.as_ref()),
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
            && !validate::user_agents_cached(&batch, text(self.header_ua.as_ref()), &app.enricher)
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
            header_ua: text(self.header_ua.as_ref()),
            anonymize_ip: who.anonymize_ip,
            max_ua_parses: app.config.enrichment.max_ua_parses_per_request,
            max_details: app.config.gateway.max_error_details,
        };
        let out = validate::prepare(&batch, &ctx)?;
        Ok(Attempt::Done(Box::new((out, quota, who))))
    }
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

/// A header's value as text; one that is not visible ASCII counts as absent.
fn text(v: Option<&HeaderValue>) -> Option<&str> {
    v.and_then(|v| v.to_str().ok())
}
