//! Checks a parsed batch and turns each event into the [`EventRow`] the broker gets.
//!
//! Every problem of every event is collected, so a 422 lists them all at once.
//! An event naming another tenant makes the whole request 403.

use std::borrow::Cow;
use std::net::IpAddr;
use std::sync::Arc;

use garde::Validate;
use shared::config::LimitsConfig;
use shared::event::{EventRow, EventType, TimeWindow};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use uuid::Uuid;

use super::model::{Batch, EventIn};
use crate::enrich::{anonymize, Enricher, GeoInfo, UaInfo, UaLookup};
use crate::error::{ApiError, FieldError, Problems};
use crate::sink::Rows;

/// Collects a batch's problems, keeping at most `cap` in full.
struct Collector {
    found: Problems,
    cap: usize,
    /// Problems seen, kept or not.
    total: usize,
    last_event: Option<usize>,
}

impl Collector {
    fn new(cap: usize) -> Collector {
        Collector {
            found: Problems::default(),
            cap,
            total: 0,
            last_event: None,
        }
    }

    fn push(&mut self, problem: FieldError) {
        self.total += 1;
        if problem.index != self.last_event {
            self.found.events += 1;
            self.last_event = problem.index;
        }
        if self.found.details.len() < self.cap {
            self.found.details.push(problem);
        } else {
            self.found.omitted += 1;
        }
    }

    fn add(&mut self, index: usize, field: &str, reason: impl Into<String>) {
        self.push(FieldError {
            index: Some(index),
            field: field.to_string(),
            code: None,
            reason: reason.into(),
        });
    }

    fn add_coded(&mut self, index: usize, field: &str, code: &'static str, reason: String) {
        self.push(FieldError {
            index: Some(index),
            field: field.to_string(),
            code: Some(code),
            reason,
        });
    }
}

fn required_uuid(p: &mut Collector, i: usize, field: &str, v: Option<&str>) -> Option<Uuid> {
    match v {
        None => {
            p.add(i, field, "is required");
            None
        }
        Some(s) => optional_uuid(p, i, field, Some(s)),
    }
}

fn optional_uuid(p: &mut Collector, i: usize, field: &str, v: Option<&str>) -> Option<Uuid> {
    let s = v?;
    match Uuid::try_parse(s) {
        Ok(u) => Some(u),
        Err(_) => {
            p.add(i, field, "must be a UUID");
            None
        }
    }
}

fn time_ms(p: &mut Collector, i: usize, field: &str, v: Option<&str>) -> Option<i64> {
    let s = v?;
    match OffsetDateTime::parse(s, &Rfc3339) {
        Ok(t) => Some((t.unix_timestamp_nanos() / 1_000_000) as i64),
        Err(_) => {
            p.add(
                i,
                field,
                "must be an RFC 3339 timestamp, e.g. 2024-01-01T00:00:00Z",
            );
            None
        }
    }
}

/// Why a client time is refused, in words a developer can act on.
fn out_of_range(t_ms: i64, received_ms: i64, w: TimeWindow) -> String {
    if t_ms < received_ms {
        format!(
            "is {} h before the gateway received it; at most {} h (limits.max_event_age_hours) \
             are accepted: load older history with `workerd import`",
            (received_ms - t_ms) / 3_600_000,
            w.past_hours
        )
    } else {
        format!(
            "is {} min ahead of the gateway's clock; at most {} min (limits.max_future_minutes) \
             are accepted: check the client's clock",
            (t_ms - received_ms) / 60_000,
            w.future_minutes
        )
    }
}

/// Everything about the request that shapes its events.
pub struct Context<'r> {
    pub tenant: Uuid,
    pub received_at_ms: i64,
    /// Accepted client times around `received_at_ms` (`limits.max_event_age_hours`,
    /// `limits.max_future_minutes`).
    pub window: TimeWindow,
    pub max_events: usize,
    pub limits: &'r LimitsConfig,
    pub enricher: &'r Enricher,
    pub client_ip: IpAddr,
    /// The request's `User-Agent`, for events that carry none.
    pub header_ua: Option<&'r str>,
    pub anonymize_ip: bool,
    /// User agents this request may parse (`enrichment.max_ua_parses_per_request`).
    pub max_ua_parses: usize,
    /// Problems kept in full for the 422 (`gateway.max_error_details`).
    pub max_details: usize,
}

/// User agents a request remembers: a browser's batch repeats one, a server
/// SDK's batch interleaves its users' few.
const MEMO_UAS: usize = 16;

/// Per-request memo: a batch usually repeats a few user agents and one IP.
/// Its keys borrow from the batch, so a hit costs a comparison, not the shared
/// cache's lock and hash.
struct Memo<'b> {
    uas: Vec<(&'b str, Arc<UaInfo>)>,
    /// The slot the next new user agent takes once `uas` is full.
    next_ua: usize,
    geo: Option<(IpAddr, Arc<GeoInfo>)>,
    /// The request's client address as rows carry it (anonymized if the key says so).
    client_ip: String,
    /// Hits and misses (per-request ua, shared ua cache, geo), reported once per request.
    stats: crate::telemetry::EnrichStats,
    /// User agents parsed, and left for workerd's enrichment job past the budget.
    ua_parsed: usize,
    ua_deferred: u64,
}

impl<'b> Memo<'b> {
    fn new(ctx: &Context<'_>) -> Memo<'b> {
        Memo {
            uas: Vec::new(),
            next_ua: 0,
            geo: None,
            client_ip: shown(ctx.client_ip, ctx.anonymize_ip),
            stats: Default::default(),
            ua_parsed: 0,
            ua_deferred: 0,
        }
    }

    fn ua(&mut self, e: &Enricher, ua: &'b str, budget: usize) -> Arc<UaInfo> {
        if let Some((_, v)) = self.uas.iter().find(|(k, _)| *k == ua) {
            self.stats.ua_request.0 += 1;
            return Arc::clone(v);
        }
        self.stats.ua_request.1 += 1;
        let v = match e.user_agent_if(ua, self.ua_parsed < budget) {
            UaLookup::Cached(v) => {
                // The empty agent is answered without asking the cache.
                if !ua.is_empty() {
                    self.stats.ua_cache.0 += 1;
                }
                v
            }
            UaLookup::Parsed(v) => {
                self.stats.ua_cache.1 += 1;
                self.ua_parsed += 1;
                v
            }
            UaLookup::Skipped => {
                self.stats.ua_cache.1 += 1;
                self.ua_deferred += 1;
                return Arc::new(UaInfo::default());
            }
        };
        if self.uas.len() < MEMO_UAS {
            self.uas.push((ua, Arc::clone(&v)));
        } else {
            self.uas[self.next_ua] = (ua, Arc::clone(&v));
            self.next_ua = (self.next_ua + 1) % MEMO_UAS;
        }
        v
    }

    fn geo(&mut self, e: &Enricher, ip: IpAddr) -> Arc<GeoInfo> {
        match &self.geo {
            Some((k, v)) if *k == ip => {
                self.stats.geo_request.0 += 1;
                Arc::clone(v)
            }
            _ => {
                self.stats.geo_request.1 += 1;
                let v = Arc::new(e.geo(ip));
                self.geo = Some((ip, Arc::clone(&v)));
                v
            }
        }
    }
}

/// An address as rows carry it.
fn shown(ip: IpAddr, anonymize_ip: bool) -> String {
    if anonymize_ip {
        anonymize(ip).to_string()
    } else {
        ip.to_string()
    }
}

/// Whether every event of `batch` can be enriched without parsing a user
/// agent (each is cached, or empty): then validation costs microseconds and
/// may run on a network thread.
pub fn user_agents_cached(batch: &Batch<'_>, header_ua: Option<&str>, enricher: &Enricher) -> bool {
    let mut last: Option<&str> = None;
    batch.events.iter().all(|e| {
        let ua = e.user_agent.as_deref().or(header_ua).unwrap_or("");
        if last == Some(ua) {
            return true;
        }
        last = Some(ua);
        enricher.ua_cached(ua)
    })
}

/// Validates `batch` for the request's tenant, enriches and serializes each event.
pub fn prepare(batch: &Batch<'_>, ctx: &Context<'_>) -> Result<Rows, ApiError> {
    let (tenant, max_events) = (ctx.tenant, ctx.max_events);
    let n = batch.events.len();
    if n == 0 || n > max_events {
        return Err(ApiError::Invalid(Problems::batch(
            "events",
            format!("must contain between 1 and {max_events} events, got {n}"),
        )));
    }
    // Tenant isolation first: a foreign tenant is a 403 whatever else is wrong.
    for (index, e) in batch.events.iter().enumerate() {
        if let Some(named) = e.tenant_id.as_deref() {
            if let Ok(u) = Uuid::try_parse(named) {
                if u != tenant {
                    return Err(ApiError::ForeignTenant {
                        index,
                        named: named.to_string(),
                    });
                }
            }
        }
    }
    let mut p = Collector::new(ctx.max_details);
    let mut out = Rows::with_capacity(n);
    let mut memo = Memo::new(ctx);
    for (i, e) in batch.events.iter().enumerate() {
        prepare_one(&mut p, i, e, ctx, &mut memo, &mut out);
    }
    crate::telemetry::enrich_memo(&memo.stats);
    crate::telemetry::ua_deferred(memo.ua_deferred);
    if p.total == 0 {
        Ok(out)
    } else {
        Err(ApiError::Invalid(p.found))
    }
}

fn prepare_one<'b>(
    p: &mut Collector,
    i: usize,
    e: &'b EventIn<'_>,
    ctx: &Context<'b>,
    memo: &mut Memo<'b>,
    out: &mut Rows,
) -> Option<()> {
    let (tenant, received_at_ms, limits) = (ctx.tenant, ctx.received_at_ms, ctx.limits);
    let before = p.total;
    if let Err(report) = e.validate_with(limits) {
        for (path, err) in report.iter() {
            p.add(i, &path.to_string(), err.message());
        }
    }
    let id = required_uuid(p, i, "id", e.id.as_deref());
    optional_uuid(p, i, "tenant_id", e.tenant_id.as_deref());
    let session = required_uuid(p, i, "session_id", e.session_id.as_deref());
    if e.timestamp.is_none() {
        p.add(i, "timestamp", "is required");
    }
    let ts = time_ms(p, i, "timestamp", e.timestamp.as_deref());
    let sent_at = time_ms(p, i, "sent_at", e.sent_at.as_deref());
    for (field, t) in [("timestamp", ts), ("sent_at", sent_at)] {
        if let Some(t) = t.filter(|&t| !ctx.window.contains(t, received_at_ms)) {
            p.add_coded(
                i,
                field,
                "timestamp_out_of_range",
                out_of_range(t, received_at_ms, ctx.window),
            );
        }
    }
    let kind = match e.kind.as_deref() {
        None => {
            p.add(i, "type", "is required");
            None
        }
        Some(k) => EventType::parse(k).or_else(|| {
            p.add(
                i,
                "type",
                "must be one of pageview, click, scroll, performance, custom",
            );
            None
        }),
    };
    if kind == Some(EventType::Custom) && e.name.is_none() {
        p.add(i, "name", "is required for custom events");
    }
    let properties = match &e.properties {
        None => Cow::Borrowed("{}"),
        Some(v) => match simd_json::to_string(v) {
            Ok(s) if s.len() <= limits.max_properties_bytes => Cow::Owned(s),
            Ok(s) => {
                p.add(
                    i,
                    "properties",
                    format!(
                        "is {} bytes as JSON, more than {}",
                        s.len(),
                        limits.max_properties_bytes
                    ),
                );
                Cow::Borrowed("")
            }
            Err(err) => {
                p.add(i, "properties", format!("cannot be encoded: {err}"));
                Cow::Borrowed("")
            }
        },
    };
    let event_ip = match e.ip.as_deref().map(str::parse::<IpAddr>) {
        None => None,
        Some(Ok(ip)) => Some(ip.to_canonical()),
        Some(Err(_)) => {
            p.add(i, "ip", "must be an IPv4 or IPv6 address");
            None
        }
    };
    if p.total != before {
        return None;
    }
    let (id, session, ts, kind) = (id?, session?, ts?, kind?);
    // Enrichment: the SDK's own IP and user agent win (server SDKs forward their
    // users'); otherwise the request's. Geo is looked up before anonymisation.
    let ua = memo.ua(
        ctx.enricher,
        e.user_agent.as_deref().or(ctx.header_ua).unwrap_or(""),
        ctx.max_ua_parses,
    );
    let geo = memo.geo(ctx.enricher, event_ip.unwrap_or(ctx.client_ip));
    let ip = event_ip.map(|ip| shown(ip, ctx.anonymize_ip));
    let corrected = match sent_at {
        Some(sent) => ts + (received_at_ms - sent),
        None => ts,
    };
    let row = EventRow {
        id,
        tenant_id: tenant,
        session_id: session,
        kind: kind.as_str(),
        timestamp_ms: ts,
        received_at_ms,
        sent_at_ms: sent_at,
        corrected_timestamp_ms: corrected,
        user_agent: e.user_agent.as_deref(),
        ip: ip.as_deref(),
        screen_width: e.screen.map(|d| d.width),
        screen_height: e.screen.map(|d| d.height),
        viewport_width: e.viewport.map(|d| d.width),
        viewport_height: e.viewport.map(|d| d.height),
        timezone: e.timezone.as_deref(),
        language: e.language.as_deref(),
        title: e.title.as_deref(),
        path: e.path.as_deref(),
        url: e.url.as_deref(),
        referrer: e.referrer.as_deref(),
        element: e.element.as_deref(),
        selector: e.selector.as_deref(),
        text: e.text.as_deref(),
        x: e.x,
        y: e.y,
        depth: e.depth,
        lcp: e.lcp,
        fcp: e.fcp,
        fid: e.fid,
        inp: e.inp,
        cls: e.cls,
        ttfb: e.ttfb,
        dom_content_loaded: e.dom_content_loaded,
        load_time: e.load_time,
        name: e.name.as_deref(),
        properties,
        client_ip: &memo.client_ip,
        browser: &ua.browser,
        browser_version: &ua.browser_version,
        os: &ua.os,
        os_version: &ua.os_version,
        device: &ua.device,
        country: &geo.country,
        region: &geo.region,
        city: &geo.city,
        is_bot: ua.is_bot,
        distinct_id: e
            .distinct_id
            .as_deref()
            .or(e.user_id.as_deref())
            .or(e.anonymous_id.as_deref())
            .unwrap_or(""),
        user_id: e.user_id.as_deref().unwrap_or(""),
        anonymous_id: e.anonymous_id.as_deref().unwrap_or(""),
    };
    // Written straight into the request's buffer (compact JSON: no newline).
    if let Err(e) = out.push(kind, session, |buf| serde_json::to_writer(buf, &row)) {
        // Never drop an event silently: report it like any other invalid field.
        p.add(i, "event", format!("cannot be encoded: {e}"));
    }
    Some(())
}

#[cfg(test)]
mod tests;
