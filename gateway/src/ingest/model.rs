//! The request body as SDKs send it, parsed by simd-json without copying strings.
//!
//! Every field is optional here so that a missing one is reported by validation
//! (422, with the event's index and the field) rather than as a parse error.
//! Unknown fields are rejected (400) so that data is never silently dropped.

use std::borrow::Cow;

use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Batch<'a> {
    #[serde(borrow)]
    pub events: Vec<EventIn<'a>>,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Dimensions {
    pub width: u32,
    pub height: u32,
}

type Text<'a> = Option<Cow<'a, str>>;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventIn<'a> {
    #[serde(borrow)]
    pub id: Text<'a>,
    #[serde(borrow)]
    pub tenant_id: Text<'a>,
    #[serde(borrow)]
    pub session_id: Text<'a>,
    #[serde(borrow)]
    pub timestamp: Text<'a>,
    /// When the SDK sent the batch (its clock), for skew correction.
    #[serde(borrow)]
    pub sent_at: Text<'a>,
    #[serde(borrow, rename = "type")]
    pub kind: Text<'a>,

    // metadata
    #[serde(borrow)]
    pub user_agent: Text<'a>,
    #[serde(borrow)]
    pub ip: Text<'a>,
    pub screen: Option<Dimensions>,
    pub viewport: Option<Dimensions>,
    #[serde(borrow)]
    pub timezone: Text<'a>,
    #[serde(borrow)]
    pub language: Text<'a>,

    // pageview
    #[serde(borrow)]
    pub title: Text<'a>,
    #[serde(borrow)]
    pub path: Text<'a>,
    #[serde(borrow)]
    pub url: Text<'a>,
    #[serde(borrow)]
    pub referrer: Text<'a>,

    // click
    #[serde(borrow)]
    pub element: Text<'a>,
    #[serde(borrow)]
    pub selector: Text<'a>,
    #[serde(borrow)]
    pub text: Text<'a>,
    pub x: Option<f64>,
    pub y: Option<f64>,

    // scroll
    pub depth: Option<f64>,

    // performance
    pub lcp: Option<f64>,
    pub fcp: Option<f64>,
    pub fid: Option<f64>,
    pub inp: Option<f64>,
    pub cls: Option<f64>,
    pub ttfb: Option<f64>,
    pub dom_content_loaded: Option<f64>,
    pub load_time: Option<f64>,

    // custom
    #[serde(borrow)]
    pub name: Text<'a>,
    pub properties: Option<simd_json::OwnedValue>,
}

/// Parses a JSON body in place (simd-json rewrites `buf`).
pub fn parse(buf: &mut [u8]) -> Result<Batch<'_>, String> {
    simd_json::serde::from_slice::<Batch<'_>>(buf).map_err(|e| e.to_string())
}
