//! The gateway's HTTP error boundary: one enum, one status table, one JSON shape.
//!
//! Every non-2xx answer is
//! `{"error":{"code":"…","message":"…","request_id":"…","details":[…]}}`.

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{HeaderName, HeaderValue, CONTENT_TYPE, RETRY_AFTER};
use hyper::{Response, StatusCode};
use serde::Serialize;

/// One failing field of one event (422 details).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FieldError {
    /// Index of the event in the batch; absent for batch-level problems.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub index: Option<usize>,
    pub field: String,
    /// A stable machine-readable code for problems a client may act on
    /// (`timestamp_out_of_range`); absent for plain field rule failures.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<&'static str>,
    pub reason: String,
}

/// A batch's validation problems: the first ones in full (collection stops at
/// `gateway.max_error_details`, so a hostile batch cannot grow this), how many
/// more there were, and how many events failed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Problems {
    pub details: Vec<FieldError>,
    pub omitted: usize,
    pub events: usize,
}

impl Problems {
    /// One problem of the batch as a whole (no event index).
    pub fn batch(field: &str, reason: String) -> Problems {
        Problems::of(vec![FieldError {
            index: None,
            field: field.to_string(),
            code: None,
            reason,
        }])
    }

    /// These problems, nothing omitted; events counted by distinct index.
    pub fn of(details: Vec<FieldError>) -> Problems {
        let mut seen: Vec<Option<usize>> = details.iter().map(|d| d.index).collect();
        seen.sort_unstable();
        seen.dedup();
        Problems {
            events: seen.len(),
            details,
            omitted: 0,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("no route for {0}")]
    NotFound(String),
    #[error("method {0} is not allowed here")]
    MethodNotAllowed(String),
    #[error("{0}")]
    Unauthorized(&'static str),
    #[error("this API key may not be used from {0}")]
    IpNotAllowed(String),
    #[error("this API key may not be used from origin {0}")]
    OriginNotAllowed(String),
    #[error("event {index} names tenant {named}, but the API key belongs to another tenant")]
    ForeignTenant { index: usize, named: String },
    #[error("request body exceeds {limit} bytes")]
    PayloadTooLarge { limit: u64 },
    #[error("decompressed request body exceeds {limit} bytes")]
    DecompressedTooLarge { limit: u64 },
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error("malformed request body: {0}")]
    MalformedBody(String),
    #[error("{} event(s) failed validation", .0.events)]
    Invalid(Problems),
    #[error("rate limit exceeded{}: retry in {} s", if .0.global { " (gateway-wide)" } else { "" }, .0.retry_after_secs)]
    RateLimited(crate::ratelimit::Refusal),
    #[error("the tenant used up its monthly event quota; it resets in {retry_after_secs} s")]
    QuotaExceeded { retry_after_secs: u64 },
    #[error("the event broker did not acknowledge the events: {0}")]
    BrokerUnavailable(String),
    #[error("the gateway is shutting down")]
    ShuttingDown,
    #[error("the gateway is at its limit of {limit} requests in progress; retry shortly")]
    Overloaded { limit: usize },
    #[error("reading the request failed: {0}")]
    BodyRead(String),
    #[error("the request body did not arrive within {limit_ms} ms")]
    BodyTimeout { limit_ms: u64 },
    #[error("the API key cannot be checked right now ({0}); retry shortly")]
    KeysUnavailable(String),
    #[error(
        "the gateway is at its limit of {limit} bytes of request bodies being read; retry shortly"
    )]
    BodyBudget { limit: u64 },
    #[error("internal error: {0}")]
    Internal(String),
}

/// Largest `details` list in an answer, as JSON bytes.
pub const MAX_DETAIL_BYTES: usize = 32 * 1024;

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::ForeignTenant { .. } => StatusCode::FORBIDDEN,
            ApiError::IpNotAllowed(_) => StatusCode::FORBIDDEN,
            ApiError::OriginNotAllowed(_) => StatusCode::FORBIDDEN,
            ApiError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::DecompressedTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::MalformedBody(_) => StatusCode::BAD_REQUEST,
            ApiError::BodyRead(_) => StatusCode::BAD_REQUEST,
            ApiError::Invalid(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::RateLimited(_) => StatusCode::TOO_MANY_REQUESTS,
            ApiError::QuotaExceeded { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::BrokerUnavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::ShuttingDown => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Overloaded { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::BodyTimeout { .. } => StatusCode::REQUEST_TIMEOUT,
            ApiError::KeysUnavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::BodyBudget { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// Stable machine-readable code (documented in the README).
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::NotFound(_) => "not_found",
            ApiError::MethodNotAllowed(_) => "method_not_allowed",
            ApiError::Unauthorized(_) => "unauthorized",
            ApiError::ForeignTenant { .. } => "tenant_mismatch",
            ApiError::IpNotAllowed(_) => "ip_not_allowed",
            ApiError::OriginNotAllowed(_) => "origin_not_allowed",
            ApiError::PayloadTooLarge { .. } => "payload_too_large",
            ApiError::DecompressedTooLarge { .. } => "decompressed_too_large",
            ApiError::UnsupportedMediaType(_) => "unsupported_media_type",
            ApiError::MalformedBody(_) => "malformed_body",
            ApiError::BodyRead(_) => "body_read_failed",
            ApiError::Invalid(_) => "validation_failed",
            ApiError::RateLimited(_) => "rate_limited",
            ApiError::QuotaExceeded { .. } => "quota_exceeded",
            ApiError::BrokerUnavailable(_) => "broker_unavailable",
            ApiError::ShuttingDown => "shutting_down",
            ApiError::Overloaded { .. } => "overloaded",
            ApiError::BodyTimeout { .. } => "request_timeout",
            ApiError::KeysUnavailable(_) => "keys_unavailable",
            ApiError::BodyBudget { .. } => "overloaded",
            ApiError::Internal(_) => "internal",
        }
    }

    /// Problems counted but not collected.
    fn omitted(&self) -> usize {
        match self {
            ApiError::Invalid(p) => p.omitted,
            _ => 0,
        }
    }

    fn details(&self) -> &[FieldError] {
        match self {
            ApiError::Invalid(p) => &p.details,
            ApiError::NotFound(_)
            | ApiError::MethodNotAllowed(_)
            | ApiError::Unauthorized(_)
            | ApiError::ForeignTenant { .. }
            | ApiError::IpNotAllowed(_)
            | ApiError::OriginNotAllowed(_)
            | ApiError::PayloadTooLarge { .. }
            | ApiError::DecompressedTooLarge { .. }
            | ApiError::UnsupportedMediaType(_)
            | ApiError::MalformedBody(_)
            | ApiError::BodyRead(_)
            | ApiError::RateLimited(_)
            | ApiError::QuotaExceeded { .. }
            | ApiError::BrokerUnavailable(_)
            | ApiError::ShuttingDown
            | ApiError::Overloaded { .. }
            | ApiError::BodyTimeout { .. }
            | ApiError::KeysUnavailable(_)
            | ApiError::BodyBudget { .. }
            | ApiError::Internal(_) => &[],
        }
    }

    /// The JSON error response: `gateway.retry_after_secs` goes into
    /// `Retry-After` on 503, and `details` are capped at
    /// `gateway.max_error_details` entries and [`MAX_DETAIL_BYTES`].
    pub fn into_response(
        self,
        request_id: &str,
        gateway: &shared::config::GatewayConfig,
    ) -> Response<Full<Bytes>> {
        let retry_after_secs = gateway.retry_after_secs;
        #[derive(Serialize)]
        struct Body<'a> {
            error: Inner<'a>,
        }
        #[derive(Serialize)]
        struct Inner<'a> {
            code: &'a str,
            message: String,
            request_id: &'a str,
            details: &'a [FieldError],
            #[serde(skip_serializing_if = "is_zero")]
            omitted: usize,
        }
        fn is_zero(n: &usize) -> bool {
            *n == 0
        }
        let status = self.status();
        let all = self.details();
        let shown = capped(all, gateway.max_error_details, MAX_DETAIL_BYTES);
        let body = Body {
            error: Inner {
                code: self.code(),
                message: self.to_string(),
                request_id,
                details: &all[..shown],
                omitted: all.len() - shown + self.omitted(),
            },
        };
        let bytes = serde_json::to_vec(&body).unwrap_or_else(|_| b"{}".to_vec());
        let mut resp = Response::new(Full::new(Bytes::from(bytes)));
        *resp.status_mut() = status;
        resp.headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        if status == StatusCode::SERVICE_UNAVAILABLE {
            resp.headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from(retry_after_secs));
        }
        if let ApiError::QuotaExceeded { retry_after_secs } = &self {
            resp.headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from(*retry_after_secs));
        }
        if let ApiError::RateLimited(r) = &self {
            resp.headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from(r.retry_after_secs));
            rate_limit_headers(resp.headers_mut(), &r.quota);
        }
        if status == StatusCode::REQUEST_TIMEOUT {
            resp.headers_mut()
                .insert(hyper::header::CONNECTION, HeaderValue::from_static("close"));
        }
        if status == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(
                hyper::header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"overwatch\""),
            );
        }
        resp
    }
}

/// How many of `details` fit in `max` entries and `max_bytes` of JSON.
fn capped(details: &[FieldError], max: usize, max_bytes: usize) -> usize {
    let mut bytes = 0;
    for (i, d) in details.iter().take(max).enumerate() {
        // Field and reason dominate; 48 covers the index, code and punctuation.
        bytes += d.field.len() + d.reason.len() + d.code.map_or(0, str::len) + 48;
        if bytes > max_bytes {
            return i;
        }
    }
    details.len().min(max)
}

/// `X-RateLimit-Limit` (events per second), `-Remaining` (events left in the
/// bucket) and `-Reset` (seconds until the bucket is full).
pub fn rate_limit_headers(h: &mut hyper::HeaderMap, q: &crate::ratelimit::Quota) {
    const LIMIT: HeaderName = HeaderName::from_static("x-ratelimit-limit");
    const REMAINING: HeaderName = HeaderName::from_static("x-ratelimit-remaining");
    const RESET: HeaderName = HeaderName::from_static("x-ratelimit-reset");
    let limit = if q.limit.fract() == 0.0 && q.limit >= 0.0 && q.limit < u64::MAX as f64 {
        Some(HeaderValue::from(q.limit as u64))
    } else {
        HeaderValue::from_str(&format!("{:.3}", q.limit)).ok()
    };
    if let Some(v) = limit {
        h.insert(LIMIT, v);
    }
    h.insert(REMAINING, HeaderValue::from(q.remaining));
    h.insert(RESET, HeaderValue::from(q.reset_secs));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limit_headers_print_whole_and_fractional_limits() {
        let mut h = hyper::HeaderMap::new();
        for (limit, shown) in [(5.0, "5"), (0.5, "0.500"), (1e6, "1000000")] {
            let q = crate::ratelimit::Quota {
                limit,
                remaining: 3,
                reset_secs: 9,
            };
            rate_limit_headers(&mut h, &q);
            assert_eq!(h["x-ratelimit-limit"], shown);
            assert_eq!(h["x-ratelimit-remaining"], "3");
            assert_eq!(h["x-ratelimit-reset"], "9");
        }
    }

    fn detail(index: usize) -> FieldError {
        FieldError {
            index: Some(index),
            field: "url".into(),
            code: None,
            reason: "x".repeat(100),
        }
    }

    #[test]
    fn details_are_capped_in_count_and_bytes_and_events_are_counted_once() {
        let mut gw = shared::Config::load_from(None, Vec::new())
            .expect("defaults")
            .gateway;
        gw.max_error_details = 50;
        // 1,000 events with 9 problems each.
        let list: Vec<FieldError> = (0..1000)
            .flat_map(|i| (0..9).map(move |_| detail(i)))
            .collect();
        let resp = ApiError::Invalid(Problems::of(list)).into_response("rid", &gw);
        let body = resp.into_body();
        let bytes = futures_body(body);
        let v: serde_json::Value = serde_json::from_slice(&bytes).expect("json");
        assert_eq!(v["error"]["details"].as_array().map(Vec::len), Some(50));
        assert_eq!(v["error"]["omitted"], 9000 - 50);
        assert_eq!(v["error"]["message"], "1000 event(s) failed validation");
        assert!(bytes.len() < 16 * 1024, "{} bytes", bytes.len());
        // The byte cap holds whatever the count cap.
        gw.max_error_details = 100_000;
        let long: Vec<FieldError> = (0..2000).map(detail).collect();
        let bytes = futures_body(
            ApiError::Invalid(Problems::of(long))
                .into_response("rid", &gw)
                .into_body(),
        );
        assert!(
            bytes.len() <= MAX_DETAIL_BYTES + 1024,
            "{} bytes",
            bytes.len()
        );
    }

    fn futures_body(body: Full<Bytes>) -> Bytes {
        use http_body_util::BodyExt;
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        rt.block_on(body.collect()).expect("body").to_bytes()
    }
}
