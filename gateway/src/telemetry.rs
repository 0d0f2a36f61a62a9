//! The gateway's internal events: each `emit()` logs and counts together, so a
//! log line and its metric never disagree. Metric names live in
//! [`shared::metrics`].

use std::time::Duration;

use metrics::{counter, gauge, histogram};
use shared::config::Tier;
use shared::metrics as m;
use uuid::Uuid;

use crate::error::ApiError;

/// The `route` label: a closed set, whatever path was asked for.
pub fn route_label(path: &str) -> &'static str {
    match path {
        "/ingest" => "/ingest",
        "/health" => "/health",
        "/health/live" => "/health/live",
        "/health/ready" => "/health/ready",
        "/metrics" => "/metrics",
        _ => "other",
    }
}

/// A request was answered.
pub struct RequestDone {
    pub route: &'static str,
    pub status: u16,
    pub elapsed: Duration,
}

impl RequestDone {
    pub fn emit(&self) {
        counter!(m::HTTP_REQUESTS, "route" => self.route, "status" => status_label(self.status))
            .increment(1);
        histogram!(m::HTTP_REQUEST_DURATION, "route" => self.route)
            .record(self.elapsed.as_secs_f64());
        tracing::debug!(
            status = self.status,
            elapsed_ms = self.elapsed.as_millis() as u64,
            "done"
        );
    }
}

/// Status codes as static strings (no allocation per request).
fn status_label(status: u16) -> &'static str {
    match status {
        200 => "200",
        204 => "204",
        400 => "400",
        401 => "401",
        403 => "403",
        404 => "404",
        405 => "405",
        413 => "413",
        415 => "415",
        422 => "422",
        429 => "429",
        500 => "500",
        503 => "503",
        s if s < 300 => "2xx",
        s if s < 500 => "4xx",
        _ => "5xx",
    }
}

/// An ingest request body arrived (`wire` bytes as sent, `decoded` after gzip).
pub struct BodyReceived {
    pub wire: usize,
    pub decoded: usize,
}

impl BodyReceived {
    pub fn emit(&self) {
        counter!(m::INGEST_RECEIVED_BYTES).increment(self.wire as u64);
        counter!(m::INGEST_DECODED_BYTES).increment(self.decoded as u64);
    }
}

/// The broker acknowledged a request's events.
pub struct EventsAccepted {
    pub tenant: Uuid,
    pub tier: Tier,
    pub events: usize,
}

impl EventsAccepted {
    pub fn emit(&self) {
        counter!(m::EVENTS_ACCEPTED, "tier" => self.tier.as_str()).increment(self.events as u64);
        tracing::debug!(tenant = %self.tenant, tier = self.tier.as_str(), events = self.events, "events accepted");
    }
}

/// An ingest request was refused. `tier` is known once the key was authenticated,
/// `events` once the body was parsed.
pub struct IngestRejected<'a> {
    pub error: &'a ApiError,
    pub tier: Option<Tier>,
    pub events: Option<usize>,
}

impl IngestRejected<'_> {
    pub fn emit(&self) {
        let reason = self.error.code();
        let tier = self.tier.map(Tier::as_str).unwrap_or("unknown");
        counter!(m::INGEST_REJECTIONS, "reason" => reason, "tier" => tier).increment(1);
        if let Some(n) = self.events {
            counter!(m::EVENTS_REJECTED, "reason" => reason, "tier" => tier).increment(n as u64);
        }
        match self.error {
            ApiError::RateLimited(r) => {
                let scope = if r.global { "global" } else { "tenant" };
                counter!(m::RATE_LIMIT_REJECTIONS, "tier" => tier, "scope" => scope).increment(1);
            }
            ApiError::QuotaExceeded { .. } => {
                counter!(m::QUOTA_REJECTIONS, "tier" => tier).increment(1);
            }
            _ => {}
        }
    }
}

/// A non-ingest route (or the router) refused a request; logged like ingest ones.
pub fn log_refusal(e: &ApiError) {
    if e.status().is_server_error() {
        tracing::warn!(code = e.code(), error = %e, "request failed");
    } else {
        tracing::debug!(code = e.code(), error = %e, "request rejected");
    }
}

/// Producing a request's events failed (the request answers 503).
pub struct ProduceFailed<'a> {
    pub kind: &'static str,
    pub tenant: Uuid,
    pub events: usize,
    pub error: &'a dyn std::fmt::Display,
}

impl ProduceFailed<'_> {
    pub fn emit(&self) {
        counter!(m::PRODUCER_ERRORS, "kind" => self.kind).increment(1);
        tracing::warn!(tenant = %self.tenant, events = self.events, kind = self.kind, error = %self.error, "events not acknowledged by the broker");
    }
}

/// The broker acknowledged a request's events after `elapsed`.
pub fn delivered(elapsed: Duration) {
    histogram!(m::PRODUCER_DELIVERY_DURATION).record(elapsed.as_secs_f64());
}

/// The producer was replaced after a failed delivery.
pub fn producer_replaced(generation: u64) {
    counter!(m::PRODUCER_REPLACEMENTS).increment(1);
    tracing::warn!(generation, "producer replaced after a failed delivery");
}

/// The per-request enrichment memo's hits and misses.
pub fn enrich_memo(ua_hits: u64, ua_misses: u64, geo_hits: u64, geo_misses: u64) {
    let c = |cache: &'static str, result: &'static str, n: u64| {
        if n > 0 {
            counter!(m::ENRICH_CACHE_LOOKUPS, "cache" => cache, "result" => result).increment(n);
        }
    };
    c("ua_request", "hit", ua_hits);
    c("ua_request", "miss", ua_misses);
    c("geo_request", "hit", geo_hits);
    c("geo_request", "miss", geo_misses);
}

/// Gauges read at scrape time.
pub struct ScrapeState {
    pub ready: bool,
    pub broker_up: bool,
    pub in_flight: i32,
    pub keys: usize,
    pub snapshot_age: Option<Duration>,
}

impl ScrapeState {
    pub fn emit(&self) {
        gauge!(m::READY).set(if self.ready { 1.0 } else { 0.0 });
        gauge!(m::BROKER_UP).set(if self.broker_up { 1.0 } else { 0.0 });
        gauge!(m::PRODUCER_IN_FLIGHT).set(self.in_flight as f64);
        gauge!(m::KEY_SNAPSHOT_KEYS).set(self.keys as f64);
        if let Some(age) = self.snapshot_age {
            gauge!(m::KEY_SNAPSHOT_AGE).set(age.as_secs_f64());
        }
    }
}

/// librdkafka statistics: queue depth, broker round trips and errors.
pub fn producer_statistics(s: &rdkafka::Statistics) {
    gauge!(m::PRODUCER_QUEUE_MESSAGES).set(s.msg_cnt as f64);
    gauge!(m::PRODUCER_QUEUE_BYTES).set(s.msg_size as f64);
    for (name, b) in &s.brokers {
        // Bootstrap pseudo-brokers carry no traffic.
        if b.nodeid < 0 {
            continue;
        }
        if let Some(rtt) = &b.rtt {
            for (q, v) in [("50", rtt.p50), ("99", rtt.p99)] {
                gauge!(m::PRODUCER_BROKER_RTT, "broker" => name.clone(), "percentile" => q)
                    .set(v as f64 / 1e6);
            }
        }
        counter!(m::PRODUCER_BROKER_TX_ERRORS, "broker" => name.clone()).absolute(b.txerrs);
    }
}

/// A connection was refused at accept: its listener was at its limit.
pub struct ConnectionRefused {
    pub listener: crate::server::Listener,
}

impl ConnectionRefused {
    pub fn emit(&self) {
        let listener = match self.listener {
            crate::server::Listener::Ingest => "ingest",
            crate::server::Listener::Operations => "operations",
        };
        counter!(m::CONNECTIONS_REFUSED, "listener" => listener).increment(1);
        tracing::debug!(listener, "connection refused: at the connection limit");
    }
}

/// The gateway closed a connection (`header_timeout`: its request head was too
/// slow; `idle`: no request for `gateway.idle_timeout_ms`).
pub struct ConnectionClosed {
    pub reason: &'static str,
}

impl ConnectionClosed {
    pub fn emit(&self) {
        counter!(m::CONNECTIONS_CLOSED, "reason" => self.reason).increment(1);
        tracing::debug!(reason = self.reason, "connection closed by the gateway");
    }
}

/// Events whose user agent was left for workerd's enrichment job.
pub fn ua_deferred(n: u64) {
    if n > 0 {
        counter!(m::UA_DEFERRED).increment(n);
        tracing::debug!(
            events = n,
            "user-agent parse budget spent; left for the enrichment job"
        );
    }
}
