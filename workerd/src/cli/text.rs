//! How the subcommands read and print values.

use shared::domain::Tier;

/// A ParseError for clap's value parsers.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct BadValue(String);

pub fn tier(s: &str) -> Result<Tier, BadValue> {
    Tier::parse(s).ok_or_else(|| BadValue(format!("`{s}` is not a tier: free, paid or enterprise")))
}

pub fn time(s: &str) -> Result<time::OffsetDateTime, BadValue> {
    time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .map_err(|e| BadValue(format!("`{s}` is not an RFC 3339 time: {e}")))
}

/// Unix milliseconds as RFC 3339 (the number itself when out of range).
pub fn rfc3339(ms: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(ms as i128 * 1_000_000)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| ms.to_string())
}

/// An optional time as RFC 3339, or `-`.
pub fn maybe_rfc3339(ms: Option<i64>) -> String {
    ms.map(rfc3339).unwrap_or_else(|| "-".into())
}
