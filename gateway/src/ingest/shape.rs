//! A one-pass scan of the decoded body's JSON structure, before any value is
//! built: it bounds what the parser may allocate, whatever the body holds.
//!
//! simd-json builds a tape with one node per value of the whole document before
//! deserialization starts, so a few kilobytes of gzip inflating to millions of
//! `{}` would be materialized in full. This scan walks the bytes once (strings
//! and escapes skipped, no allocation) and refuses a body with more events than
//! `gateway.max_events_per_batch`, nesting deeper than an event can hold
//! (`limits.max_properties_depth`), or an event with more values than its fields
//! and `limits.max_properties` allow. What passes has a tape of at most
//! [`Shape::node_bound`] nodes. The exact per-event rules are then enforced by the
//! parser itself ([`super::model`]) while it builds each event.

/// Fields of an event, counting the two members of `screen` and `viewport`.
pub const EVENT_FIELDS: usize = 43;

/// The limits the scan enforces.
#[derive(Debug, Clone, Copy)]
pub struct ShapeLimits {
    pub max_events: usize,
    pub max_properties: usize,
    pub max_properties_depth: usize,
}

impl ShapeLimits {
    pub fn new(max_events: usize, limits: &shared::config::LimitsConfig) -> ShapeLimits {
        ShapeLimits {
            max_events,
            max_properties: limits.max_properties,
            max_properties_depth: limits.max_properties_depth,
        }
    }

    /// Deepest container: root object (1), `events` (2), an event (3), then the
    /// `properties` object and what it nests.
    fn max_depth(&self) -> usize {
        3 + self.max_properties_depth
    }

    /// Most separators and containers one event may hold: its own fields, and
    /// per property key or array item at most a comma, a colon and an opening
    /// bracket.
    fn max_event_items(&self) -> usize {
        2 * EVENT_FIELDS + 3 * self.max_properties + 8
    }
}

/// Why the scan refused a body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ShapeError {
    TooManyEvents { limit: usize },
    TooDeep { index: Option<usize>, limit: usize },
    EventTooLarge { index: usize },
}

/// What the scan saw of a body it let through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    /// Elements of the events array (one, for an empty array).
    pub events: usize,
    /// Separators and containers in the whole document.
    pub items: usize,
}

impl Shape {
    /// An upper bound on the values in the document (each value is preceded by
    /// a separator or opens a container, except the first).
    pub fn node_bound(&self) -> usize {
        self.items + 1
    }
}

/// Calls `f` with every structural byte of `body` (`{ [ } ] , :`) that is not
/// inside a string, in order; stops at the first error. The one walk both
/// scans share: strings, most of a body, are skipped with `memchr`.
fn structural(
    body: &[u8],
    mut f: impl FnMut(u8) -> Result<(), ShapeError>,
) -> Result<(), ShapeError> {
    let mut in_string = false;
    let mut i = 0;
    while i < body.len() {
        if in_string {
            // Jump to the next quote or backslash.
            match memchr::memchr2(b'"', b'\\', &body[i..]) {
                None => break,
                Some(at) => i += at,
            }
            if body[i] == b'\\' {
                i += 2; // the escaped byte cannot end the string
            } else {
                in_string = false;
                i += 1;
            }
            continue;
        }
        let b = body[i];
        i += 1;
        match b {
            b'"' => in_string = true,
            b'{' | b'[' | b'}' | b']' | b',' | b':' => f(b)?,
            _ => {}
        }
    }
    Ok(())
}

/// Scans `body` (the decoded bytes). Malformed JSON is not reported here: what
/// the scan cannot judge it lets through to the parser, which gives the error.
pub fn scan(body: &[u8], limits: ShapeLimits) -> Result<Shape, ShapeError> {
    let (max_depth, max_items) = (limits.max_depth(), limits.max_event_items());
    let too_many = ShapeError::TooManyEvents {
        limit: limits.max_events,
    };
    let mut depth = 0usize;
    // Commas in the events array (depth 2): after k of them there are k + 1
    // elements, and the open event (if any) has index k.
    let mut separators = 0usize;
    // The brackets that opened depths 1 to 3: `{`, `[`, `{` means an event.
    let mut outer = [0u8; 3];
    let mut event_items = 0usize;
    let mut items = 0usize;
    structural(body, |b| {
        match b {
            b'{' | b'[' => {
                depth += 1;
                items += 1;
                if depth <= 3 {
                    outer[depth - 1] = b;
                }
                if depth > max_depth {
                    return Err(ShapeError::TooDeep {
                        index: (outer == *b"{[{").then_some(separators),
                        limit: limits.max_properties_depth,
                    });
                }
                if depth == 3 {
                    if separators >= limits.max_events {
                        return Err(too_many.clone());
                    }
                    event_items = 0;
                } else if depth > 3 {
                    event_items += 1;
                }
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {
                items += 1;
                if depth == 2 && b == b',' {
                    separators += 1;
                    if separators >= limits.max_events {
                        return Err(too_many.clone());
                    }
                } else if depth >= 3 {
                    event_items += 1;
                }
            }
        }
        if depth >= 3 && event_items > max_items {
            return Err(ShapeError::EventTooLarge { index: separators });
        }
        Ok(())
    })?;
    Ok(Shape {
        events: separators + 1,
        items,
    })
}

/// Scans a foreign body (another SDK's format, [`crate::compat`]): it may
/// nest two levels more than a native batch (a message's `context` and the
/// objects in it), and holds at most as many values in all as
/// `max_events` native events may, so what the parser builds has the same
/// bound. Malformed JSON is left to the parser.
pub fn scan_foreign(body: &[u8], limits: ShapeLimits) -> Result<usize, ShapeError> {
    let max_depth = limits.max_depth() + 2;
    let max_items = limits.max_events.saturating_mul(limits.max_event_items());
    let (mut depth, mut items) = (0usize, 0usize);
    structural(body, |b| {
        match b {
            b'{' | b'[' => {
                depth += 1;
                items += 1;
                if depth > max_depth {
                    return Err(ShapeError::TooDeep {
                        index: None,
                        limit: max_depth,
                    });
                }
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => items += 1,
        }
        if items > max_items {
            return Err(ShapeError::TooManyEvents {
                limit: limits.max_events,
            });
        }
        Ok(())
    })?;
    Ok(items)
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: ShapeLimits = ShapeLimits {
        max_events: 3,
        max_properties: 4,
        max_properties_depth: 2,
    };

    #[test]
    fn counts_events_and_ignores_brackets_in_strings() {
        let body = br#"{"events":[{"a":"{[,:]}\"{"},{"b":1},{}]}"#;
        let shape = scan(body, LIMITS).expect("fits");
        assert_eq!(shape.events, 3);
        // An escaped backslash ends before the quote; an escaped quote does not end.
        let body = br#"{"events":[{"a":"x\\"},{"b":"}\"]"},{"c":"\\\""}]}"#;
        assert_eq!(scan(body, LIMITS).expect("fits").events, 3);
        let parsed: serde_json::Value = serde_json::from_slice(body).expect("valid JSON");
        assert_eq!(parsed["events"].as_array().map(Vec::len), Some(3));
    }

    #[test]
    fn refuses_more_events_than_allowed_before_parsing() {
        let body = br#"{"events":[{},{},{},{}]}"#;
        assert_eq!(
            scan(body, LIMITS),
            Err(ShapeError::TooManyEvents { limit: 3 })
        );
        // Scalars in the events array count too (the parser refuses them later).
        let body = br#"{"events":[1,2,3,4,5]}"#;
        assert_eq!(
            scan(body, LIMITS),
            Err(ShapeError::TooManyEvents { limit: 3 })
        );
    }

    #[test]
    fn refuses_nesting_deeper_than_properties_allow() {
        let ok = br#"{"events":[{"properties":{"a":{"b":1}}}]}"#;
        assert!(scan(ok, LIMITS).is_ok());
        let deep = br#"{"events":[{"properties":{"a":{"b":[1]}}}]}"#;
        assert_eq!(
            scan(deep, LIMITS),
            Err(ShapeError::TooDeep {
                index: Some(0),
                limit: 2
            })
        );
        let outside = b"[[[[[[[[[[[[1]]]]]]]]]]]]";
        assert_eq!(
            scan(outside, LIMITS),
            Err(ShapeError::TooDeep {
                index: None,
                limit: 2
            }),
            "not inside an event"
        );
    }

    #[test]
    fn refuses_an_event_with_more_values_than_its_fields_and_properties() {
        let items: Vec<String> = (0..200).map(|i| i.to_string()).collect();
        let body = format!(
            r#"{{"events":[{{"properties":{{"a":[{}]}}}}]}}"#,
            items.join(",")
        );
        assert_eq!(
            scan(body.as_bytes(), LIMITS),
            Err(ShapeError::EventTooLarge { index: 0 })
        );
    }

    #[test]
    fn bound_holds_for_what_passes() {
        let body = br#"{"events":[{"a":1,"b":[1,2],"c":{"d":"x"}}]}"#;
        let shape = scan(body, LIMITS).expect("fits");
        let values = simd_json::to_owned_value(&mut body.to_vec()).expect("json");
        fn count(v: &simd_json::OwnedValue) -> usize {
            match v {
                simd_json::OwnedValue::Array(a) => 1 + a.iter().map(count).sum::<usize>(),
                simd_json::OwnedValue::Object(o) => 1 + o.values().map(count).sum::<usize>(),
                _ => 1,
            }
        }
        assert!(count(&values) <= shape.node_bound(), "{shape:?}");
    }
}
