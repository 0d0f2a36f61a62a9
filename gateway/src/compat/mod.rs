//! Other SDKs' wire formats, mapped onto Overwatch's events: what the route
//! table sends here goes through the same key checks, limits, rate limits,
//! validation, enrichment and acknowledged-means-durable produce as
//! `/ingest`; only the body's shape and the answer differ.
//!
//! - [`segment`]: Segment's HTTP Tracking API (`/v1/*`).
//! - [`posthog`]: PostHog's capture API (`/batch`, `/e`, `/capture`, …).
//!
//! Both may carry their key in the body (Segment's `writeKey`, PostHog's
//! `api_key`); such a request is judged once its body is parsed ([`token`]).
//!
//! A foreign body is scanned before it is parsed ([`scan`]: the same bound on
//! what the parser builds as a native batch), parsed into a tree, and each
//! message becomes an [`EventIn`] as if the SDK had sent it natively.

pub mod lzstring;
pub mod posthog;
pub mod segment;

use std::borrow::Cow;

use sha2::{Digest, Sha256};
use simd_json::OwnedValue;
use uuid::Uuid;

use crate::error::{ApiError, Problems};
use crate::ingest::model::EventIn;
use crate::ingest::shape::ShapeLimits;

/// The body format a route speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// `{"events": [...]}` (`/ingest`).
    Native,
    /// Segment's batch (`call: None`) or a single call.
    Segment(Option<Call>),
    /// PostHog's capture endpoints.
    PostHog,
}

impl Dialect {
    /// Whether its SDKs may put the key in the body rather than the head.
    pub fn key_in_body(self) -> bool {
        !matches!(self, Dialect::Native)
    }
}

/// One Segment call type, as its endpoint names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Call {
    Track,
    Page,
    Screen,
    Identify,
    Group,
    Alias,
}

impl Call {
    pub fn as_str(self) -> &'static str {
        match self {
            Call::Track => "track",
            Call::Page => "page",
            Call::Screen => "screen",
            Call::Identify => "identify",
            Call::Group => "group",
            Call::Alias => "alias",
        }
    }
}

/// A UUID for a foreign id that is not one: the same (tenant, scope, id)
/// always gives the same UUID (a retry keeps its id); a UUID stays itself.
pub fn stable_uuid(tenant: Uuid, scope: &str, id: &str) -> Uuid {
    if scope != "segment-session" {
        if let Ok(u) = Uuid::try_parse(id) {
            return u;
        }
    }
    let mut h = Sha256::new();
    h.update(tenant.as_bytes());
    h.update(scope.as_bytes());
    h.update([0]);
    h.update(id.as_bytes());
    let d = h.finalize();
    let mut b = [0u8; 16];
    b.copy_from_slice(&d[..16]);
    // RFC 9562 version 8 (custom), variant 10.
    b[6] = (b[6] & 0x0f) | 0x80;
    b[8] = (b[8] & 0x3f) | 0x80;
    Uuid::from_bytes(b)
}

fn text(v: Option<&str>) -> Option<Cow<'static, str>> {
    v.map(|s| Cow::Owned(s.to_string()))
}

fn object(o: simd_json::owned::Object) -> Option<OwnedValue> {
    (!o.is_empty()).then(|| OwnedValue::from(o))
}

/// Scans a foreign body against the limits, then parses it: the tree is
/// bounded as a native batch's tape is (events × per-event items, depth).
pub fn parse(buf: &mut [u8], limits: ShapeLimits) -> Result<OwnedValue, ApiError> {
    crate::ingest::shape::scan_foreign(buf, limits).map_err(|e| match e {
        crate::ingest::shape::ShapeError::TooDeep { limit, .. } => ApiError::Invalid(
            Problems::batch("properties", format!("nests more than {limit} levels deep")),
        ),
        _ => ApiError::Invalid(Problems::batch(
            "events",
            format!(
                "the body holds more than {} events' worth of values",
                limits.max_events
            ),
        )),
    })?;
    simd_json::to_owned_value(buf).map_err(|e| ApiError::MalformedBody(e.to_string()))
}

/// The key a foreign body carries, if any.
pub fn token(dialect: Dialect, body: &OwnedValue) -> Option<String> {
    use simd_json::prelude::*;
    match dialect {
        Dialect::Native => None,
        Dialect::Segment(_) => body
            .get("writeKey")
            .and_then(|v| v.as_str())
            .map(str::to_string),
        Dialect::PostHog => posthog::token(body),
    }
}

/// The events of a foreign body.
pub fn events(
    dialect: Dialect,
    body: &OwnedValue,
    tenant: Uuid,
    received_at: &str,
) -> Result<Vec<EventIn<'static>>, ApiError> {
    match dialect {
        Dialect::Native => Err(ApiError::Internal("a native body reached compat".into())),
        Dialect::Segment(call) => {
            segment::events(body, call, tenant, received_at).map_err(ApiError::MalformedBody)
        }
        Dialect::PostHog => {
            posthog::events(body, tenant, received_at).map_err(ApiError::MalformedBody)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn foreign_ids_map_to_stable_uuids() {
        let t = Uuid::new_v4();
        let a = stable_uuid(t, "segment", "node-next-1-abc");
        assert_eq!(a, stable_uuid(t, "segment", "node-next-1-abc"));
        assert_ne!(a, stable_uuid(t, "segment", "node-next-1-abd"));
        assert_ne!(a, stable_uuid(Uuid::new_v4(), "segment", "node-next-1-abc"));
        assert_eq!(a.get_version_num(), 8);
        let u = Uuid::new_v4();
        assert_eq!(stable_uuid(t, "segment", &u.to_string()), u);
    }
}
