//! The chaos checker: every event id that got a 200 must be in ClickHouse's
//! `events`, exactly once after deduplication.

use std::collections::HashSet;

use serde::Serialize;
use uuid::Uuid;

#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct Verdict {
    pub acknowledged: u64,
    pub found: u64,
    pub lost: u64,
    /// Rows beyond one per id in `events FINAL` (0 when deduplication works).
    pub duplicates_after_dedup: u64,
    /// Extra rows before deduplication (client retries, redelivery): informative.
    pub duplicates_before_dedup: u64,
    /// A few lost ids, for investigation.
    pub lost_sample: Vec<String>,
}

/// Reads one UUID per line (blank and malformed lines are errors, with their line).
pub fn read_ids(path: &std::path::Path) -> Result<HashSet<Uuid>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            Uuid::parse_str(l.trim()).map_err(|e| format!("{}:{}: {e}", path.display(), i + 1))
        })
        .collect()
}

#[derive(clickhouse::Row, serde::Deserialize)]
struct IdCount {
    id: String,
    rows: u64,
}

fn tenant_filter(tenants: &[Uuid]) -> String {
    let list: Vec<String> = tenants.iter().map(|t| format!("'{t}'")).collect();
    format!("tenant_id IN ({})", list.join(","))
}

fn db(database: &str) -> String {
    format!("`{}`", database.replace('`', ""))
}

/// Every event id of `tenants` in `database.events`.
pub async fn present_ids(
    client: &clickhouse::Client,
    database: &str,
    tenants: &[Uuid],
) -> Result<HashSet<Uuid>, clickhouse::error::Error> {
    let ids: Vec<String> = client
        .query(&format!(
            "SELECT DISTINCT toString(id) FROM {}.events WHERE {}",
            db(database),
            tenant_filter(tenants)
        ))
        .fetch_all()
        .await?;
    Ok(ids.iter().filter_map(|s| Uuid::parse_str(s).ok()).collect())
}

/// Compares `acked` with the rows of `tenants` in `database.events`.
pub async fn check(
    client: &clickhouse::Client,
    database: &str,
    tenants: &[Uuid],
    acked: &HashSet<Uuid>,
) -> Result<Verdict, clickhouse::error::Error> {
    let filter = tenant_filter(tenants);
    let db = db(database);
    let raw: Vec<IdCount> = client
        .query(&format!(
            "SELECT toString(id) AS id, count() AS rows FROM {db}.events WHERE {filter} GROUP BY id"
        ))
        .fetch_all()
        .await?;
    let dedup: Vec<IdCount> = client
        .query(&format!(
            "SELECT toString(id) AS id, count() AS rows FROM {db}.events FINAL WHERE {filter} GROUP BY id"
        ))
        .fetch_all()
        .await?;
    let present: HashSet<Uuid> = raw
        .iter()
        .filter_map(|r| Uuid::parse_str(&r.id).ok())
        .collect();
    let lost: Vec<&Uuid> = acked.iter().filter(|id| !present.contains(id)).collect();
    Ok(Verdict {
        acknowledged: acked.len() as u64,
        found: acked.len() as u64 - lost.len() as u64,
        lost: lost.len() as u64,
        duplicates_after_dedup: dedup.iter().map(|r| r.rows.saturating_sub(1)).sum(),
        duplicates_before_dedup: raw.iter().map(|r| r.rows.saturating_sub(1)).sum(),
        lost_sample: lost.iter().take(5).map(|u| u.to_string()).collect(),
    })
}

/// Which of `wanted` are on the broker: reads `topics` from the beginning with a
/// fresh consumer group until all were seen or nothing new arrived for `idle`.
/// Tells "lost before the broker" apart from "not consumed by ClickHouse yet".
pub async fn on_broker(
    brokers: &str,
    topics: &[String],
    wanted: &HashSet<Uuid>,
    idle: std::time::Duration,
) -> Result<HashSet<Uuid>, String> {
    use rdkafka::consumer::{Consumer, StreamConsumer};
    use rdkafka::Message;
    let consumer: StreamConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("overwatch-check-{}", Uuid::new_v4()))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .map_err(|e| e.to_string())?;
    let names: Vec<&str> = topics.iter().map(String::as_str).collect();
    consumer.subscribe(&names).map_err(|e| e.to_string())?;
    let mut found = HashSet::new();
    while found.len() < wanted.len() {
        let Ok(msg) = tokio::time::timeout(idle, consumer.recv()).await else {
            break;
        };
        let msg = msg.map_err(|e| e.to_string())?;
        // One row per line: the gateway packs a request's events of one
        // topic and key into one message.
        let ids = msg
            .payload()
            .unwrap_or_default()
            .split(|b| *b == b'\n')
            .filter_map(|row| {
                serde_json::from_slice::<serde_json::Value>(row)
                    .ok()
                    .and_then(|v| v["id"].as_str().and_then(|s| Uuid::parse_str(s).ok()))
            });
        found.extend(ids.filter(|id| wanted.contains(id)));
    }
    Ok(found)
}
