//! `workerd import`: loads history older than the gateway's window
//! (`limits.max_event_age_hours`) straight into `events`, for operators
//! migrating from another system.
//!
//! Input is NDJSON, one event per line in the `/ingest` event shape (see
//! docs/api.md). The whole file is checked first; any bad line stops the import
//! before anything is written, naming the line. Rows are then inserted in
//! chunks of one month each, so no insert touches more than one partition, and
//! never through the broker: an import cannot stall live ingestion, and it does
//! not count toward the tenant's monthly quota (`usage_daily` is fed by the
//! broker path only). Ids keep their deduplication: importing a file twice, or
//! an event the gateway also took, stores one row. Afterwards, `workerd backfill`
//! computes sessions and rollups, the `enrichment` job fills browser and geo
//! fields, and the free tier's compression archives old days as usual.

use std::collections::BTreeMap;
use std::io::BufRead;

use serde_json::{Map, Value};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::jobs::context::JobContext;

/// Why an import wrote nothing.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("ClickHouse: {0}")]
    ClickHouse(#[from] clickhouse::error::Error),
    #[error(transparent)]
    Job(#[from] crate::jobs::JobError),
    #[error("reading {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} has invalid events; nothing was imported:\n  {}", problems.join("\n  "))]
    Invalid { path: String, problems: Vec<String> },
    #[error("{path} holds no events")]
    Empty { path: String },
}

fn read_error(path: &std::path::Path) -> impl Fn(std::io::Error) -> ImportError + '_ {
    move |source| ImportError::Read {
        path: path.display().to_string(),
        source,
    }
}

/// Fields an imported event may carry (the `/ingest` event model).
const STRINGS: &[&str] = &[
    "user_agent",
    "ip",
    "timezone",
    "language",
    "title",
    "path",
    "url",
    "referrer",
    "element",
    "selector",
    "text",
    "name",
    "distinct_id",
    "user_id",
    "anonymous_id",
];
const NUMBERS: &[&str] = &[
    "x",
    "y",
    "depth",
    "lcp",
    "fcp",
    "fid",
    "inp",
    "cls",
    "ttfb",
    "dom_content_loaded",
    "load_time",
];
const TYPES: &[&str] = &["pageview", "click", "scroll", "performance", "custom"];

/// Rows per INSERT.
const CHUNK: usize = 10_000;
/// Problems reported before giving up on listing them.
const MAX_PROBLEMS: usize = 20;

/// What an import did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ImportReport {
    pub events: u64,
    /// Months written, as `YYYY-MM`.
    pub months: Vec<String>,
    pub oldest: Option<String>,
    pub newest: Option<String>,
}

fn ms(t: OffsetDateTime) -> i64 {
    (t.unix_timestamp_nanos() / 1_000_000) as i64
}

/// Turns one NDJSON line into an `events` row (JSONEachRow), or says why not.
fn row(
    line: &str,
    tenant: Uuid,
    latest_ms: i64,
    received_ms: i64,
) -> Result<(i64, Map<String, Value>), String> {
    let v: Value = serde_json::from_str(line).map_err(|e| format!("not JSON: {e}"))?;
    let Value::Object(e) = v else {
        return Err("not a JSON object".into());
    };
    let mut out = Map::new();
    let uuid = |k: &str| -> Result<String, String> {
        let s = e
            .get(k)
            .and_then(Value::as_str)
            .ok_or(format!("`{k}` is required (a UUID)"))?;
        Uuid::try_parse(s)
            .map(|u| u.to_string())
            .map_err(|_| format!("`{k}` must be a UUID"))
    };
    out.insert("id".into(), uuid("id")?.into());
    out.insert("session_id".into(), uuid("session_id")?.into());
    match e.get("tenant_id").and_then(Value::as_str) {
        Some(t) if Uuid::try_parse(t).ok() != Some(tenant) => {
            return Err(format!(
                "`tenant_id` {t} is not the tenant being imported ({tenant})"
            ))
        }
        _ => {}
    }
    out.insert("tenant_id".into(), tenant.to_string().into());
    let kind = e.get("type").and_then(Value::as_str).unwrap_or("");
    if !TYPES.contains(&kind) {
        return Err("`type` must be one of pageview, click, scroll, performance, custom".into());
    }
    out.insert("type".into(), kind.into());
    let ts = e
        .get("timestamp")
        .and_then(Value::as_str)
        .and_then(|s| OffsetDateTime::parse(s, &Rfc3339).ok())
        .ok_or("`timestamp` is required (RFC 3339)")?;
    let ts_ms = ms(ts);
    if !(0..=latest_ms).contains(&ts_ms) {
        return Err("`timestamp` must lie between 1970 and the gateway's future bound".into());
    }
    for (k, t) in [
        ("timestamp", ts_ms),
        ("corrected_timestamp", ts_ms),
        ("received_at", received_ms),
    ] {
        out.insert(k.into(), ch_time(t).into());
    }
    for (k, v) in &e {
        let k = k.as_str();
        match k {
            "id" | "session_id" | "tenant_id" | "type" | "timestamp" | "sent_at" => {}
            _ if STRINGS.contains(&k) => {
                let s = v.as_str().ok_or(format!("`{k}` must be a string"))?;
                out.insert(k.into(), s.into());
            }
            _ if NUMBERS.contains(&k) => {
                let n = v.as_f64().ok_or(format!("`{k}` must be a number"))?;
                out.insert(k.into(), n.into());
            }
            "screen" | "viewport" => {
                for d in ["width", "height"] {
                    let n = v
                        .get(d)
                        .and_then(Value::as_u64)
                        .ok_or(format!("`{k}.{d}` must be a whole number"))?;
                    out.insert(format!("{k}_{d}"), n.into());
                }
            }
            "properties" => {
                if !v.is_object() {
                    return Err("`properties` must be an object".into());
                }
                out.insert("properties".into(), v.to_string().into());
            }
            _ => return Err(format!("unknown field `{k}`")),
        }
    }
    // As the gateway does: the distinct id defaults to the user id, else the
    // anonymous id.
    if !out.contains_key("distinct_id") {
        if let Some(who) = out.get("user_id").or(out.get("anonymous_id")).cloned() {
            out.insert("distinct_id".into(), who);
        }
    }
    if kind == "custom" && !out.contains_key("name") {
        return Err("`name` is required for custom events".into());
    }
    Ok((ts_ms, out))
}

/// `YYYY-MM-DD hh:mm:ss.mmm` (UTC), the text ClickHouse reads into DateTime64(3).
fn ch_time(t_ms: i64) -> String {
    let t = OffsetDateTime::from_unix_timestamp_nanos(t_ms as i128 * 1_000_000)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH);
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02}.{:03}",
        t.year(),
        t.month() as u8,
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.millisecond()
    )
}

/// The month partition of a Unix-millisecond time, as `YYYY-MM`.
fn month(t_ms: i64) -> String {
    let t = OffsetDateTime::from_unix_timestamp_nanos(t_ms as i128 * 1_000_000)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH);
    format!("{:04}-{:02}", t.year(), t.month() as u8)
}

async fn insert(ctx: &JobContext, rows: &mut Vec<Map<String, Value>>) -> Result<(), ImportError> {
    if rows.is_empty() {
        return Ok(());
    }
    let mut body = Vec::new();
    for r in rows.drain(..) {
        // A map of JSON values always serializes.
        body.extend_from_slice(Value::Object(r).to_string().as_bytes());
        body.push(b'\n');
    }
    let mut insert = ctx.client.insert_formatted_with(format!(
        "INSERT INTO {} FORMAT JSONEachRow",
        ctx.table("events")
    ));
    insert.send(bytes::Bytes::from(body)).await?;
    insert.end().await?;
    Ok(())
}

/// Imports `path` (NDJSON) for `tenant`: checks every line, then writes.
pub async fn run(
    ctx: &JobContext,
    tenant: Uuid,
    path: &std::path::Path,
) -> Result<ImportReport, ImportError> {
    let open = || {
        std::fs::File::open(path)
            .map(std::io::BufReader::new)
            .map_err(read_error(path))
    };
    let now = OffsetDateTime::now_utc();
    let latest = ms(now) + ctx.config.limits.max_future_minutes as i64 * 60_000;
    let received = ms(now);
    // Pass 1: every line valid, or nothing is written.
    let mut problems = Vec::new();
    let mut total = 0usize;
    for (n, line) in open()?.lines().enumerate() {
        let line = line.map_err(read_error(path))?;
        if line.trim().is_empty() {
            continue;
        }
        total += 1;
        if let Err(why) = row(&line, tenant, latest, received) {
            problems.push(format!("line {}: {why}", n + 1));
            if problems.len() == MAX_PROBLEMS {
                problems.push("… (stopped listing)".into());
                break;
            }
        }
    }
    if !problems.is_empty() {
        return Err(ImportError::Invalid {
            path: path.display().to_string(),
            problems,
        });
    }
    if total == 0 {
        return Err(ImportError::Empty {
            path: path.display().to_string(),
        });
    }
    // Pass 2: one month per insert, in chunks.
    let mut by_month: BTreeMap<String, Vec<Map<String, Value>>> = BTreeMap::new();
    let mut report = ImportReport::default();
    let (mut lo, mut hi) = (i64::MAX, i64::MIN);
    for line in open()?.lines() {
        let line = line.map_err(read_error(path))?;
        if line.trim().is_empty() {
            continue;
        }
        // Pass 1 checked every line of this file.
        let Ok((ts, r)) = row(&line, tenant, latest, received) else {
            return Err(ImportError::Invalid {
                path: path.display().to_string(),
                problems: vec!["the file changed while it was imported".into()],
            });
        };
        (lo, hi) = (lo.min(ts), hi.max(ts));
        let m = month(ts);
        let rows = by_month.entry(m.clone()).or_default();
        rows.push(r);
        report.events += 1;
        if !report.months.contains(&m) {
            report.months.push(m);
        }
        if rows.len() >= CHUNK {
            insert(ctx, rows).await?;
        }
    }
    for rows in by_month.values_mut() {
        insert(ctx, rows).await?;
    }
    report.months.sort();
    let fmt = |t: i64| {
        OffsetDateTime::from_unix_timestamp_nanos(t as i128 * 1_000_000)
            .ok()
            .and_then(|t| t.format(&Rfc3339).ok())
    };
    report.oldest = fmt(lo);
    report.newest = fmt(hi);
    ctx.audit(
        "import",
        Some(tenant),
        serde_json::json!({"file": path.display().to_string(), "events": report.events, "months": report.months}),
    )
    .await?;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: &str = "7c0a7e4e-7d43-4a7e-9a3e-6a8d2b1c0f11";

    fn check(line: &str) -> Result<(i64, Map<String, Value>), String> {
        row(line, Uuid::try_parse(T).expect("uuid"), i64::MAX / 2, 0)
    }

    #[test]
    fn old_history_maps_onto_the_event_columns() {
        let (ts, r) = check(r#"{"id":"550e8400-e29b-41d4-a716-446655440000","session_id":"11111111-1111-1111-1111-111111111111","timestamp":"2019-03-04T05:06:07.250Z","type":"custom","name":"signup","properties":{"plan":"pro"},"screen":{"width":390,"height":844}}"#).expect("valid");
        assert_eq!(ts, 1_551_675_967_250);
        assert_eq!(r["tenant_id"], T);
        assert_eq!(r["properties"], r#"{"plan":"pro"}"#);
        assert_eq!(r["screen_width"], 390);
        assert_eq!(month(ts), "2019-03");
        let (_, r) = check(r#"{"id":"550e8400-e29b-41d4-a716-446655440000","session_id":"11111111-1111-1111-1111-111111111111","timestamp":"2019-03-04T05:06:07Z","type":"click","anonymous_id":"a-9"}"#).expect("valid");
        assert_eq!(
            (r["anonymous_id"].as_str(), r["distinct_id"].as_str()),
            (Some("a-9"), Some("a-9"))
        );
    }

    #[test]
    fn bad_lines_say_why() {
        for (line, why) in [
            ("nope", "not JSON"),
            (r#"{"id":"x"}"#, "`id` must be a UUID"),
            (
                r#"{"id":"550e8400-e29b-41d4-a716-446655440000","session_id":"11111111-1111-1111-1111-111111111111","timestamp":"2019-03-04T05:06:07Z","type":"click","tenant_id":"22222222-2222-2222-2222-222222222222"}"#,
                "not the tenant",
            ),
            (
                r#"{"id":"550e8400-e29b-41d4-a716-446655440000","session_id":"11111111-1111-1111-1111-111111111111","timestamp":"1969-12-31T23:59:59Z","type":"click"}"#,
                "between 1970",
            ),
            (
                r#"{"id":"550e8400-e29b-41d4-a716-446655440000","session_id":"11111111-1111-1111-1111-111111111111","timestamp":"2019-03-04T05:06:07Z","type":"click","colour":"red"}"#,
                "unknown field `colour`",
            ),
        ] {
            let err = check(line).expect_err(line);
            assert!(err.contains(why), "{line}: {err}");
        }
    }
}
