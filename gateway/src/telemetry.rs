//! The gateway's internal events: each `emit()` logs and counts together, so a
//! log line and its metric never disagree. Metric names live in
//! [`shared::metrics`].

use std::sync::OnceLock;
use std::time::Duration;

use metrics::{counter, gauge, histogram, Counter, Histogram};
use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
use shared::domain::Tier;
use shared::runtime::metrics as m;
use uuid::Uuid;

use crate::error::ApiError;

/// Installs the metrics recorder with the gateway's metrics.
pub fn install_metrics() {
    m::install(&m::Catalogue {
        describe: || {
            describe();
            shared::enrich::describe_metrics();
        },
        buckets: &[],
    });
    HOT.get_or_init(Hot::register);
}

/// The `route` label's values: a closed set, whatever path was asked for.
const ROUTES: [&str; 6] = [
    "/ingest",
    "/health",
    "/health/live",
    "/health/ready",
    "/metrics",
    "other",
];

/// The `route` label: a closed set, whatever path was asked for.
pub fn route_label(path: &str) -> &'static str {
    ROUTES[route_index(path)]
}

fn route_index(path: &str) -> usize {
    ROUTES[..ROUTES.len() - 1]
        .iter()
        .position(|r| *r == path)
        .unwrap_or(ROUTES.len() - 1)
}

/// Handles of the metrics every request emits, registered once with the
/// installed recorder: looking a metric up by name and labels costs a hash and
/// a lock on each call, a handle only its atomic update. Before
/// [`install_metrics`] (never in the gateway, whose `App` calls it) they are
/// looked up on each call instead ([`with_hot`]).
struct Hot {
    requests_ok: [Counter; ROUTES.len()],
    duration: [Histogram; ROUTES.len()],
    received_bytes: Counter,
    decoded_bytes: Counter,
    accepted: [Counter; Tier::ALL.len()],
    delivery: Histogram,
    /// One per [`MEMO_LABELS`].
    memo: [Counter; MEMO_LABELS.len()],
}

/// The enrichment memo's `cache` and `result` labels, in [`enrich_memo`]'s order.
const MEMO_LABELS: [(&str, &str); 6] = [
    ("ua_request", "hit"),
    ("ua_request", "miss"),
    ("ua", "hit"),
    ("ua", "miss"),
    ("geo_request", "hit"),
    ("geo_request", "miss"),
];

static HOT: OnceLock<Hot> = OnceLock::new();

/// Runs `f` with the registered handles, or with handles looked up now when
/// [`install_metrics`] has not run.
fn with_hot(f: impl FnOnce(&Hot)) {
    match HOT.get() {
        Some(hot) => f(hot),
        None => f(&Hot::register()),
    }
}

impl Hot {
    fn register() -> Hot {
        Hot {
            requests_ok: ROUTES
                .map(|r| counter!(m::HTTP_REQUESTS, "route" => r, "status" => "200")),
            duration: ROUTES.map(|r| histogram!(HTTP_REQUEST_DURATION, "route" => r)),
            received_bytes: counter!(INGEST_RECEIVED_BYTES),
            decoded_bytes: counter!(INGEST_DECODED_BYTES),
            accepted: Tier::ALL.map(|t| counter!(EVENTS_ACCEPTED, "tier" => t.as_str())),
            delivery: histogram!(PRODUCER_DELIVERY_DURATION),
            memo: MEMO_LABELS.map(|(cache, result)| {
                counter!(shared::enrich::ENRICH_CACHE_LOOKUPS, "cache" => cache, "result" => result)
            }),
        }
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
        with_hot(|hot| {
            let r = route_index(self.route);
            if self.status == 200 {
                hot.requests_ok[r].increment(1);
            } else {
                counter!(m::HTTP_REQUESTS, "route" => self.route, "status" => status_label(self.status))
                    .increment(1);
            }
            hot.duration[r].record(self.elapsed.as_secs_f64());
        });
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
        with_hot(|hot| {
            hot.received_bytes.increment(self.wire as u64);
            hot.decoded_bytes.increment(self.decoded as u64);
        });
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
        with_hot(|hot| hot.accepted[self.tier as usize].increment(self.events as u64));
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
        counter!(INGEST_REJECTIONS, "reason" => reason, "tier" => tier).increment(1);
        if let Some(n) = self.events {
            counter!(EVENTS_REJECTED, "reason" => reason, "tier" => tier).increment(n as u64);
        }
        match self.error {
            ApiError::RateLimited(r) => {
                let scope = if r.global { "global" } else { "tenant" };
                counter!(RATE_LIMIT_REJECTIONS, "tier" => tier, "scope" => scope).increment(1);
            }
            ApiError::QuotaExceeded { .. } => {
                counter!(QUOTA_REJECTIONS, "tier" => tier).increment(1);
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
        counter!(PRODUCER_ERRORS, "kind" => self.kind).increment(1);
        tracing::warn!(tenant = %self.tenant, events = self.events, kind = self.kind, error = %self.error, "events not acknowledged by the broker");
    }
}

/// The broker acknowledged a request's events after `elapsed`.
pub fn delivered(elapsed: Duration) {
    with_hot(|hot| hot.delivery.record(elapsed.as_secs_f64()));
}

/// The producer was replaced after a failed delivery.
pub fn producer_replaced(generation: u64) {
    counter!(PRODUCER_REPLACEMENTS).increment(1);
    tracing::warn!(generation, "producer replaced after a failed delivery");
}

/// A request's enrichment lookups: (hits, misses) of each cache.
#[derive(Debug, Default, Clone, Copy)]
pub struct EnrichStats {
    /// The request's own memo of user agents.
    pub ua_request: (u64, u64),
    /// The shared user-agent cache, asked on the memo's misses.
    pub ua_cache: (u64, u64),
    /// The request's memo of the last address's geo answer.
    pub geo_request: (u64, u64),
}

/// A request's enrichment lookups, counted once per request through
/// handles registered once (not per event).
pub fn enrich_memo(s: &EnrichStats) {
    let counts = [
        s.ua_request.0,
        s.ua_request.1,
        s.ua_cache.0,
        s.ua_cache.1,
        s.geo_request.0,
        s.geo_request.1,
    ];
    if counts.iter().all(|n| *n == 0) {
        return;
    }
    with_hot(|hot| {
        for (c, n) in hot.memo.iter().zip(counts).filter(|(_, n)| *n > 0) {
            c.increment(n);
        }
    });
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
        gauge!(BROKER_UP).set(if self.broker_up { 1.0 } else { 0.0 });
        gauge!(PRODUCER_IN_FLIGHT).set(self.in_flight as f64);
        gauge!(KEY_SNAPSHOT_KEYS).set(self.keys as f64);
        if let Some(age) = self.snapshot_age {
            gauge!(KEY_SNAPSHOT_AGE).set(age.as_secs_f64());
        }
    }
}

/// librdkafka statistics: queue depth, broker round trips and errors.
pub fn producer_statistics(s: &rdkafka::Statistics) {
    gauge!(PRODUCER_QUEUE_MESSAGES).set(s.msg_cnt as f64);
    gauge!(PRODUCER_QUEUE_BYTES).set(s.msg_size as f64);
    for (name, b) in &s.brokers {
        // Bootstrap pseudo-brokers carry no traffic.
        if b.nodeid < 0 {
            continue;
        }
        if let Some(rtt) = &b.rtt {
            for (q, v) in [("50", rtt.p50), ("99", rtt.p99)] {
                gauge!(PRODUCER_BROKER_RTT, "broker" => name.clone(), "percentile" => q)
                    .set(v as f64 / 1e6);
            }
        }
        counter!(PRODUCER_BROKER_TX_ERRORS, "broker" => name.clone()).absolute(b.txerrs);
    }
}

/// A connection to the public port was refused at accept: the listener was
/// at `gateway.max_connections`.
pub struct ConnectionRefused;

impl ConnectionRefused {
    pub fn emit(&self) {
        counter!(CONNECTIONS_REFUSED, "listener" => "ingest").increment(1);
        tracing::debug!("connection refused: at the connection limit");
    }
}

/// The gateway closed a connection (`header_timeout`: its request head was too
/// slow; `idle`: no request for `gateway.idle_timeout_ms`).
pub struct ConnectionClosed {
    pub reason: &'static str,
}

impl ConnectionClosed {
    pub fn emit(&self) {
        counter!(CONNECTIONS_CLOSED, "reason" => self.reason).increment(1);
        tracing::debug!(reason = self.reason, "connection closed by the gateway");
    }
}

/// Events whose user agent was left for workerd's enrichment job.
pub fn ua_deferred(n: u64) {
    if n > 0 {
        counter!(UA_DEFERRED).increment(n);
        tracing::debug!(
            events = n,
            "user-agent parse budget spent; left for the enrichment job"
        );
    }
}

// The metrics emitted here, by name (their descriptions below).
pub const HTTP_REQUEST_DURATION: &str = "overwatch_http_request_duration_seconds";
pub const INGEST_RECEIVED_BYTES: &str = "overwatch_ingest_received_bytes_total";
pub const INGEST_DECODED_BYTES: &str = "overwatch_ingest_decoded_bytes_total";
pub const EVENTS_ACCEPTED: &str = "overwatch_events_accepted_total";
pub const EVENTS_REJECTED: &str = "overwatch_events_rejected_total";
pub const INGEST_REJECTIONS: &str = "overwatch_ingest_rejections_total";
pub const RATE_LIMIT_REJECTIONS: &str = "overwatch_rate_limit_rejections_total";
pub const QUOTA_REJECTIONS: &str = "overwatch_quota_rejections_total";
pub const PRODUCER_QUEUE_MESSAGES: &str = "overwatch_producer_queue_messages";
pub const PRODUCER_QUEUE_BYTES: &str = "overwatch_producer_queue_bytes";
pub const PRODUCER_IN_FLIGHT: &str = "overwatch_producer_in_flight_messages";
pub const PRODUCER_DELIVERY_DURATION: &str = "overwatch_producer_delivery_duration_seconds";
pub const PRODUCER_ERRORS: &str = "overwatch_producer_errors_total";
pub const PRODUCER_REPLACEMENTS: &str = "overwatch_producer_replacements_total";
pub const PRODUCER_BROKER_RTT: &str = "overwatch_producer_broker_rtt_seconds";
pub const PRODUCER_BROKER_TX_ERRORS: &str = "overwatch_producer_broker_tx_errors_total";
pub const BROKER_UP: &str = "overwatch_broker_up";
pub const KEY_SNAPSHOT_AGE: &str = "overwatch_key_snapshot_age_seconds";
pub const KEY_SNAPSHOT_KEYS: &str = "overwatch_key_snapshot_keys";
pub const CONNECTIONS_REFUSED: &str = "overwatch_connections_refused_total";
pub const CONNECTIONS_CLOSED: &str = "overwatch_connections_closed_total";
pub const UA_DEFERRED: &str = "overwatch_enrich_ua_deferred_total";

/// Describes the metrics above to the recorder.
fn describe() {
    describe_histogram!(
        HTTP_REQUEST_DURATION,
        Unit::Seconds,
        "Time from request head to response, by route."
    );
    describe_counter!(
        INGEST_RECEIVED_BYTES,
        Unit::Bytes,
        "Request body bytes received on /ingest, as sent (compressed or not)."
    );
    describe_counter!(
        INGEST_DECODED_BYTES,
        Unit::Bytes,
        "Request body bytes on /ingest after decompression."
    );
    describe_counter!(
        EVENTS_ACCEPTED,
        "Events the broker acknowledged (answered 200), by tier."
    );
    describe_counter!(
        EVENTS_REJECTED,
        "Events in refused batches whose size was known, by reason (error code) and tier."
    );
    describe_counter!(
        INGEST_REJECTIONS,
        "Refused /ingest requests, by reason (error code) and tier (unknown before authentication)."
    );
    describe_counter!(
        RATE_LIMIT_REJECTIONS,
        "Requests refused by a rate limit, by tier and scope (tenant or global)."
    );
    describe_counter!(
        QUOTA_REJECTIONS,
        "Requests refused because the tenant used up its monthly quota, by tier."
    );
    describe_gauge!(
        PRODUCER_QUEUE_MESSAGES,
        "Messages in the producer's queue, waiting or in flight (librdkafka statistics msg_cnt)."
    );
    describe_gauge!(
        PRODUCER_QUEUE_BYTES,
        Unit::Bytes,
        "Bytes in the producer's queue (librdkafka statistics msg_size)."
    );
    describe_gauge!(
        PRODUCER_IN_FLIGHT,
        "Messages produced but not yet acknowledged, read at scrape time."
    );
    describe_histogram!(
        PRODUCER_DELIVERY_DURATION,
        Unit::Seconds,
        "Time from producing a request's events to the last delivery report."
    );
    describe_counter!(
        PRODUCER_ERRORS,
        "Failed produce calls, by kind (enqueue, delivery, timeout, canceled)."
    );
    describe_counter!(
        PRODUCER_REPLACEMENTS,
        "Producers replaced after a failed delivery."
    );
    describe_gauge!(
        PRODUCER_BROKER_RTT,
        Unit::Seconds,
        "Broker round-trip time seen by the producer (librdkafka statistics), by broker and percentile (50, 99)."
    );
    describe_counter!(
        PRODUCER_BROKER_TX_ERRORS,
        "Transmission errors towards a broker (librdkafka statistics txerrs), by broker."
    );
    describe_gauge!(
        BROKER_UP,
        "1 when the last metadata probe reached a broker, else 0."
    );
    describe_gauge!(
        KEY_SNAPSHOT_AGE,
        Unit::Seconds,
        "Age of the API-key snapshot loaded from ClickHouse (absent when keys come from config only)."
    );
    describe_gauge!(KEY_SNAPSHOT_KEYS, "API keys in the current snapshot.");
    describe_counter!(
        CONNECTIONS_REFUSED,
        Unit::Count,
        "Connections answered 503 and closed at accept: the listener was at its connection limit"
    );
    describe_counter!(
        CONNECTIONS_CLOSED,
        Unit::Count,
        "Connections the gateway closed, by reason (header_timeout, idle)"
    );
    describe_counter!(
        UA_DEFERRED,
        Unit::Count,
        "Events whose user agent was left for workerd's enrichment job (per-request parse budget spent)"
    );
    crate::ratelimit::cluster::describe_metrics();
    crate::alloc::describe_metrics();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiers_index_their_handles() {
        for (i, t) in Tier::ALL.into_iter().enumerate() {
            assert_eq!(t as usize, i, "{t:?}");
        }
    }

    fn value(text: &str, series: &str) -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(series))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0.0)
    }

    /// What goes through a registered handle reaches /metrics under the same
    /// series as through the macros (other tests in this process may add more,
    /// never less).
    #[tokio::test]
    async fn registered_handles_count_under_the_same_labels() {
        install_metrics();
        let render = || m::install(&m::Catalogue::SHARED).render();
        let series = [
            r#"overwatch_http_requests_total{route="/ingest",status="200"}"#,
            r#"overwatch_http_requests_total{route="/ingest",status="429"}"#,
            r#"overwatch_http_requests_total{route="/health/live",status="200"}"#,
            r#"overwatch_http_request_duration_seconds_count{route="/ingest"}"#,
            r#"overwatch_events_accepted_total{tier="paid"}"#,
            r#"overwatch_enrich_cache_lookups_total{cache="ua_request",result="miss"}"#,
            r#"overwatch_enrich_cache_lookups_total{cache="ua",result="hit"}"#,
            r#"overwatch_enrich_cache_lookups_total{cache="geo_request",result="hit"}"#,
            r#"overwatch_producer_delivery_duration_seconds_count"#,
        ];
        let before = render();
        for (route, status) in [("/ingest", 200), ("/ingest", 429), ("/health/live", 200)] {
            RequestDone {
                route: route_label(route),
                status,
                elapsed: Duration::from_millis(3),
            }
            .emit();
        }
        EventsAccepted {
            tenant: Uuid::nil(),
            tier: Tier::Paid,
            events: 7,
        }
        .emit();
        enrich_memo(&EnrichStats {
            ua_request: (0, 2),
            ua_cache: (3, 0),
            geo_request: (1, 0),
        });
        delivered(Duration::from_millis(4));
        let after = render();
        let added = [1.0, 1.0, 1.0, 2.0, 7.0, 2.0, 3.0, 1.0, 1.0];
        for (s, want) in series.into_iter().zip(added) {
            let got = value(&after, s) - value(&before, s);
            assert!(got >= want, "{s}: +{got}, want at least +{want}\n{after}");
        }
        assert_eq!(route_label("/nowhere"), "other");
        assert_eq!(route_label("/health/ready"), "/health/ready");
    }
}
