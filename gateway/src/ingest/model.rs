//! The request body as SDKs send it, parsed by simd-json without copying strings.
//!
//! Every field is optional here so that a missing one is reported by validation
//! (422, with the event's index and the field) rather than as a parse error.
//! Unknown fields are rejected (400) so that data is never silently dropped.
//! Lengths (in characters), numeric ranges and the shape of `properties` are
//! declared here with garde; the limits are documented in `docs/api.md`.

use std::borrow::Cow;

use garde::Validate;
use serde::Deserialize;
use shared::config::LimitsConfig;

use super::shape::{self, ShapeError, ShapeLimits};
use crate::error::{ApiError, FieldError, Problems};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Batch<'a> {
    #[serde(borrow)]
    pub events: Vec<EventIn<'a>>,
}

#[derive(Debug, Clone, Copy, Deserialize, Validate)]
#[serde(deny_unknown_fields)]
#[garde(context(LimitsConfig))]
pub struct Dimensions {
    #[garde(range(max = 100_000))]
    pub width: u32,
    #[garde(range(max = 100_000))]
    pub height: u32,
}

/// Longest URL, path or referrer accepted, in characters.
pub const MAX_URL_CHARS: usize = 2048;
/// Longest free text (title, user agent, click text, selector), in characters.
pub const MAX_TEXT_CHARS: usize = 1024;
/// Longest short identifier (element, event name), in characters.
pub const MAX_NAME_CHARS: usize = 256;
/// Longest distinct, user or anonymous id, in characters.
pub const MAX_ID_CHARS: usize = 256;
/// Largest timing value accepted, in milliseconds (one hour).
pub const MAX_TIMING_MS: f64 = 3_600_000.0;

type Text<'a> = Option<Cow<'a, str>>;

/// A [`Text`] field, borrowed from the body whenever simd-json hands out the
/// string in place (no escapes to undo), with `null` as absent. serde's own
/// `Cow` impl always copies: its borrowing applies to a bare `Cow<str>`
/// field, not to one inside an `Option`, so every string was allocated.
fn text<'de: 'a, 'a, D: serde::Deserializer<'de>>(d: D) -> Result<Text<'a>, D::Error> {
    use serde::de::{Error, Visitor};
    use std::fmt;

    struct Str;
    impl<'de> Visitor<'de> for Str {
        type Value = Cow<'de, str>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a string")
        }
        fn visit_borrowed_str<E: Error>(self, v: &'de str) -> Result<Self::Value, E> {
            Ok(Cow::Borrowed(v))
        }
        fn visit_str<E: Error>(self, v: &str) -> Result<Self::Value, E> {
            Ok(Cow::Owned(v.to_owned()))
        }
        fn visit_string<E: Error>(self, v: String) -> Result<Self::Value, E> {
            Ok(Cow::Owned(v))
        }
    }
    struct Opt;
    impl<'de> Visitor<'de> for Opt {
        type Value = Option<Cow<'de, str>>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a string")
        }
        fn visit_none<E: Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_unit<E: Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_some<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_str(Str).map(Some)
        }
    }
    d.deserialize_option(Opt)
}

#[derive(Debug, Default, Deserialize, Validate)]
#[serde(deny_unknown_fields)]
#[garde(allow_unvalidated)]
#[garde(context(LimitsConfig))]
pub struct EventIn<'a> {
    #[serde(borrow, default, deserialize_with = "text")]
    pub id: Text<'a>,
    #[serde(borrow, default, deserialize_with = "text")]
    pub tenant_id: Text<'a>,
    #[serde(borrow, default, deserialize_with = "text")]
    pub session_id: Text<'a>,
    #[serde(borrow, default, deserialize_with = "text")]
    pub timestamp: Text<'a>,
    /// When the SDK sent the batch (its clock), for skew correction.
    #[serde(borrow, default, deserialize_with = "text")]
    pub sent_at: Text<'a>,
    #[serde(borrow, default, deserialize_with = "text", rename = "type")]
    pub kind: Text<'a>,

    // identity
    /// Who the event is about as the SDK names them (PostHog's `distinct_id`);
    /// when absent, the user id, else the anonymous id.
    #[serde(borrow, default, deserialize_with = "text")]
    #[garde(length(chars, max = MAX_ID_CHARS))]
    pub distinct_id: Text<'a>,
    /// The logged-in user (Segment's `userId`).
    #[serde(borrow, default, deserialize_with = "text")]
    #[garde(length(chars, max = MAX_ID_CHARS))]
    pub user_id: Text<'a>,
    /// The device or browser before login (Segment's `anonymousId`).
    #[serde(borrow, default, deserialize_with = "text")]
    #[garde(length(chars, max = MAX_ID_CHARS))]
    pub anonymous_id: Text<'a>,

    // metadata
    #[serde(borrow, default, deserialize_with = "text")]
    #[garde(length(chars, max = MAX_TEXT_CHARS))]
    pub user_agent: Text<'a>,
    #[serde(borrow, default, deserialize_with = "text")]
    #[garde(length(chars, max = 45))]
    pub ip: Text<'a>,
    #[garde(dive)]
    pub screen: Option<Dimensions>,
    #[garde(dive)]
    pub viewport: Option<Dimensions>,
    #[serde(borrow, default, deserialize_with = "text")]
    #[garde(length(chars, max = 64))]
    pub timezone: Text<'a>,
    #[serde(borrow, default, deserialize_with = "text")]
    #[garde(length(chars, max = 35))]
    pub language: Text<'a>,

    // pageview
    #[serde(borrow, default, deserialize_with = "text")]
    #[garde(length(chars, max = MAX_TEXT_CHARS))]
    pub title: Text<'a>,
    #[serde(borrow, default, deserialize_with = "text")]
    #[garde(length(chars, max = MAX_URL_CHARS))]
    pub path: Text<'a>,
    #[serde(borrow, default, deserialize_with = "text")]
    #[garde(length(chars, max = MAX_URL_CHARS))]
    pub url: Text<'a>,
    #[serde(borrow, default, deserialize_with = "text")]
    #[garde(length(chars, max = MAX_URL_CHARS))]
    pub referrer: Text<'a>,

    // click
    #[serde(borrow, default, deserialize_with = "text")]
    #[garde(length(chars, max = MAX_NAME_CHARS))]
    pub element: Text<'a>,
    #[serde(borrow, default, deserialize_with = "text")]
    #[garde(length(chars, max = MAX_TEXT_CHARS))]
    pub selector: Text<'a>,
    #[serde(borrow, default, deserialize_with = "text")]
    #[garde(length(chars, max = MAX_TEXT_CHARS))]
    pub text: Text<'a>,
    #[garde(range(min = 0.0, max = 1_000_000.0))]
    pub x: Option<f64>,
    #[garde(range(min = 0.0, max = 1_000_000.0))]
    pub y: Option<f64>,

    // scroll
    #[garde(range(min = 0.0, max = 100.0))]
    pub depth: Option<f64>,

    // performance
    #[garde(range(min = 0.0, max = MAX_TIMING_MS))]
    pub lcp: Option<f64>,
    #[garde(range(min = 0.0, max = MAX_TIMING_MS))]
    pub fcp: Option<f64>,
    #[garde(range(min = 0.0, max = MAX_TIMING_MS))]
    pub fid: Option<f64>,
    #[garde(range(min = 0.0, max = MAX_TIMING_MS))]
    pub inp: Option<f64>,
    #[garde(range(min = 0.0, max = 100.0))]
    pub cls: Option<f64>,
    #[garde(range(min = 0.0, max = MAX_TIMING_MS))]
    pub ttfb: Option<f64>,
    #[garde(range(min = 0.0, max = MAX_TIMING_MS))]
    pub dom_content_loaded: Option<f64>,
    #[garde(range(min = 0.0, max = MAX_TIMING_MS))]
    pub load_time: Option<f64>,

    // custom
    #[serde(borrow, default, deserialize_with = "text")]
    #[garde(length(chars, min = 1, max = MAX_NAME_CHARS))]
    pub name: Text<'a>,
    #[garde(custom(properties_shape))]
    pub properties: Option<simd_json::OwnedValue>,
}

/// Checks that `properties` is an object within the configured count of keys
/// and array items (at every level) and depth.
fn properties_shape(v: &Option<simd_json::OwnedValue>, limits: &LimitsConfig) -> garde::Result {
    use simd_json::OwnedValue;
    fn walk(v: &OwnedValue, depth: usize, keys: &mut usize, deepest: &mut usize) {
        match v {
            OwnedValue::Object(map) => {
                *deepest = (*deepest).max(depth);
                for (_, child) in map.iter() {
                    *keys += 1;
                    walk(child, depth + 1, keys, deepest);
                }
            }
            OwnedValue::Array(items) => {
                *deepest = (*deepest).max(depth);
                for child in items.iter() {
                    *keys += 1;
                    walk(child, depth + 1, keys, deepest);
                }
            }
            OwnedValue::Static(_) | OwnedValue::String(_) => {}
        }
    }
    let Some(v) = v else { return Ok(()) };
    if !matches!(v, OwnedValue::Object(_)) {
        return Err(garde::Error::new("must be a JSON object"));
    }
    let (mut keys, mut deepest) = (0, 0);
    walk(v, 1, &mut keys, &mut deepest);
    if keys > limits.max_properties {
        return Err(garde::Error::new(format!(
            "has {keys} keys and array items, more than {}",
            limits.max_properties
        )));
    }
    if deepest > limits.max_properties_depth {
        return Err(garde::Error::new(format!(
            "nests {deepest} levels deep, more than {}",
            limits.max_properties_depth
        )));
    }
    Ok(())
}

/// Parses a JSON body in place (simd-json rewrites `buf`), with no bound on
/// what it builds: requests go through [`parse_bounded`].
pub fn parse(buf: &mut [u8]) -> Result<Batch<'_>, String> {
    if buf.len() > REUSED_BUFFERS_MAX_INPUT {
        return simd_json::serde::from_slice::<Batch<'_>>(buf).map_err(|e| e.to_string());
    }
    // A small body (most requests hold a few events) reuses this thread's
    // parser buffers instead of allocating and freeing its own.
    PARSER_BUFFERS
        .with(|b| match b.try_borrow_mut() {
            Ok(mut buffers) => {
                simd_json::serde::from_slice_with_buffers::<Batch<'_>>(buf, &mut buffers)
            }
            Err(_) => simd_json::serde::from_slice::<Batch<'_>>(buf),
        })
        .map_err(|e| e.to_string())
}

/// Largest body parsed with a thread's reused buffers. They grow only to the
/// bodies parsed with them, so what a thread keeps is bounded by this: at most
/// about six times as many bytes (input copy, strings, structural indexes),
/// under 400 KiB, on a thread that already holds a worker slot's body budget
/// (`budget::MemoryBound`'s worker term) while it parses.
const REUSED_BUFFERS_MAX_INPUT: usize = 64 * 1024;

thread_local! {
    static PARSER_BUFFERS: std::cell::RefCell<simd_json::Buffers> =
        std::cell::RefCell::new(simd_json::Buffers::default());
}

/// Scans the body's structure against `limits` ([`super::shape`]), then parses
/// it: what the parser builds is bounded by the limits, not by the body.
pub fn parse_bounded(buf: &mut [u8], limits: ShapeLimits) -> Result<Batch<'_>, ApiError> {
    scan(buf, limits)?;
    parse(buf).map_err(ApiError::MalformedBody)
}

/// The structure scan alone ([`super::shape::scan`]), its refusal as an answer.
pub fn scan(buf: &[u8], limits: ShapeLimits) -> Result<shape::Shape, ApiError> {
    shape::scan(buf, limits).map_err(|e| shape_error(e, limits))
}

fn shape_error(e: ShapeError, limits: ShapeLimits) -> ApiError {
    let at = |index: usize, reason: String| {
        ApiError::Invalid(Problems::of(vec![FieldError {
            index: Some(index),
            field: "properties".into(),
            code: None,
            reason,
        }]))
    };
    match e {
        ShapeError::TooManyEvents { limit } => ApiError::Invalid(Problems::batch(
            "events",
            format!("must contain between 1 and {limit} events, got more"),
        )),
        ShapeError::TooDeep {
            index: Some(index),
            limit,
        } => at(index, format!("nests more than {limit} levels deep")),
        ShapeError::TooDeep { index: None, limit } => ApiError::MalformedBody(format!(
            "the document nests deeper than an event with properties {limit} levels deep can"
        )),
        ShapeError::EventTooLarge { index } => at(
            index,
            format!(
                "has more than {} keys and array items",
                limits.max_properties
            ),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(ids: &[String]) -> Vec<u8> {
        let events: Vec<String> = ids
            .iter()
            .map(|id| format!(r#"{{"id":"{id}","type":"custom","name":"n\u00e9"}}"#))
            .collect();
        format!(r#"{{"events":[{}]}}"#, events.join(",")).into_bytes()
    }

    /// Small bodies share this thread's parser buffers: each parse still sees
    /// only its own body, after a failed one and after a large one.
    #[test]
    fn each_body_parses_alone_whatever_was_parsed_before() {
        let small =
            |n: usize, tag: &str| -> Vec<String> { (0..n).map(|i| format!("{tag}-{i}")).collect() };
        let large = small(REUSED_BUFFERS_MAX_INPUT / 40, "large");
        let cases = [small(3, "a"), small(1, "b"), large.clone(), small(2, "c")];
        for ids in &cases {
            let mut buf = body(ids);
            let batch = parse(&mut buf).expect("parses");
            let got: Vec<&str> = batch
                .events
                .iter()
                .map(|e| e.id.as_deref().expect("id"))
                .collect();
            assert_eq!(got, ids.iter().map(String::as_str).collect::<Vec<_>>());
            assert_eq!(batch.events[0].name.as_deref(), Some("né"));
            let mut broken = br#"{"events":[{"id":"x","#.to_vec();
            assert!(parse(&mut broken).is_err());
        }
        assert!(body(&large).len() > REUSED_BUFFERS_MAX_INPUT);
    }

    /// Text fields point into the body instead of each being allocated (the
    /// parse made about ten allocations per event before); escapes are
    /// undone, `null` and a missing field are absent, a number is refused as
    /// before.
    #[test]
    fn text_fields_borrow_from_the_body() {
        let padding = "p".repeat(REUSED_BUFFERS_MAX_INPUT);
        for pad in ["", padding.as_str()] {
            let mut buf = format!(
                r#"{{"events":[{{"id":"a-1","title":"caf\u00e9 \"x\"","url":null,"type":"pageview","text":"{pad}"}}]}}"#
            )
            .into_bytes();
            let batch = parse(&mut buf).expect("parses");
            let e = &batch.events[0];
            assert!(matches!(e.id, Some(Cow::Borrowed("a-1"))), "{:?}", e.id);
            assert!(matches!(e.kind, Some(Cow::Borrowed("pageview"))));
            assert!(matches!(e.text, Some(Cow::Borrowed(_))));
            assert_eq!(e.title.as_deref(), Some("café \"x\""));
            assert!(e.url.is_none() && e.referrer.is_none());
        }
        let mut bad = br#"{"events":[{"id":5}]}"#.to_vec();
        let err = parse(&mut bad).expect_err("a number is not text");
        assert!(err.contains("ExpectedString"), "{err}");
    }
}
