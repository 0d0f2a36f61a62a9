//! The gateway's HTTP error boundary: one enum, one status table, one JSON shape.
//!
//! Every non-2xx answer is
//! `{"error":{"code":"…","message":"…","request_id":"…","details":[…]}}`.

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{HeaderValue, CONTENT_TYPE, RETRY_AFTER};
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
    #[error("{} event(s) failed validation", .0.len())]
    Invalid(Vec<FieldError>),
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
}

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
        }
    }

    fn details(&self) -> &[FieldError] {
        match self {
            ApiError::Invalid(d) => d,
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
            | ApiError::Overloaded { .. } => &[],
        }
    }

    /// The JSON error response; `retry_after_secs` goes into `Retry-After` on 503.
    pub fn into_response(self, request_id: &str, retry_after_secs: u64) -> Response<Full<Bytes>> {
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
        }
        let status = self.status();
        let body = Body {
            error: Inner {
                code: self.code(),
                message: self.to_string(),
                request_id,
                details: self.details(),
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
        if status == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(
                hyper::header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"overwatch\""),
            );
        }
        resp
    }
}

/// `X-RateLimit-Limit` (events per second), `-Remaining` (events left in the
/// bucket) and `-Reset` (seconds until the bucket is full).
pub fn rate_limit_headers(h: &mut hyper::HeaderMap, q: &crate::ratelimit::Quota) {
    let limit = if q.limit.fract() == 0.0 {
        format!("{}", q.limit as u64)
    } else {
        format!("{:.3}", q.limit)
    };
    if let Ok(v) = HeaderValue::from_str(&limit) {
        h.insert("x-ratelimit-limit", v);
    }
    h.insert("x-ratelimit-remaining", HeaderValue::from(q.remaining));
    h.insert("x-ratelimit-reset", HeaderValue::from(q.reset_secs));
}
