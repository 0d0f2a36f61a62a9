//! Enrichment backfill: rows stored without user-agent or geo fields (ingested
//! before a GeoIP database was configured, or by an older gateway) are enriched
//! in place. Each run parses every distinct user agent and looks up every
//! distinct address once (at most `BATCH` of each), loads the results into Join
//! tables, and applies them with one `ALTER TABLE … UPDATE` mutation per kind.

use bytes::Bytes;
use serde_json::json;
use shared::enrich::Enricher;
use shared::store::sql::Tenants;
use uuid::Uuid;

use super::context::{JobContext, JobReport};
use super::error::JobError;

/// Most distinct user agents or addresses handled per run (the rest next run).
pub const BATCH: u64 = 50_000;

async fn count(ctx: &JobContext, condition: &str) -> Result<u64, JobError> {
    Ok(ctx
        .client
        .query(&format!(
            "SELECT count() FROM {} WHERE {condition}",
            ctx.table("events")
        ))
        .fetch_one()
        .await?)
}

/// Refills one of the Join tables of migration 11.
async fn load_map(
    ctx: &JobContext,
    table: &str,
    rows: Vec<serde_json::Value>,
) -> Result<(), JobError> {
    let t = ctx.table(table);
    ctx.client
        .query(&format!("TRUNCATE TABLE {t}"))
        .execute()
        .await?;
    let mut body = Vec::new();
    for r in rows {
        body.extend_from_slice(r.to_string().as_bytes());
        body.push(b'\n');
    }
    let mut insert = ctx
        .client
        .insert_formatted_with(format!("INSERT INTO {t} FORMAT JSONEachRow"));
    insert.send(Bytes::from(body)).await?;
    insert.end().await?;
    Ok(())
}

async fn mutate(ctx: &JobContext, set: &str, condition: &str) -> Result<(), JobError> {
    ctx.client
        .query(&format!(
            "ALTER TABLE {} UPDATE {set} WHERE {condition}",
            ctx.table("events")
        ))
        .with_setting("mutations_sync", "2")
        .with_setting("allow_nondeterministic_mutations", "1")
        .execute()
        .await?;
    Ok(())
}

pub async fn run(ctx: &JobContext, only: Option<Uuid>) -> Result<JobReport, JobError> {
    if ctx.db.cluster().is_some() {
        // Its lookup tables are Join tables, filled on the one node it talks
        // to, while a mutation ON CLUSTER would run joinGet on every node.
        return Err(JobError::NotOnCluster {
            job: "enrichment",
            why: "its Join lookup tables live on one node; leave jobs.enrichment_cron empty \
                  (events keep the fields the gateway filled)",
        });
    }
    let enricher = Enricher::new(&ctx.config.enrichment)?;
    let filter = Tenants::of(only).clause();
    let events = ctx.table("events");

    // User agents.
    let ua_missing = format!("browser = '' AND user_agent != ''{filter}");
    let before_ua = count(ctx, &ua_missing).await?;
    if before_ua > 0 {
        let uas: Vec<String> = ctx
            .client
            .query(&format!(
                "SELECT DISTINCT user_agent FROM {events} WHERE {ua_missing} LIMIT {BATCH}"
            ))
            .fetch_all()
            .await?;
        let rows = uas
            .iter()
            .map(|ua| {
                let i = enricher.user_agent(ua);
                json!({"ua": ua, "browser": i.browser, "browser_version": i.browser_version, "os": i.os,
                       "os_version": i.os_version, "device": i.device, "is_bot": i.is_bot})
            })
            .collect();
        load_map(ctx, "enrich_ua_map", rows).await?;
        let m = format!("'{}.enrich_ua_map'", ctx.config.clickhouse.database);
        mutate(
            ctx,
            &format!(
                "browser = joinGet({m}, 'browser', user_agent), browser_version = joinGet({m}, 'browser_version', user_agent), \
                 os = joinGet({m}, 'os', user_agent), os_version = joinGet({m}, 'os_version', user_agent), \
                 device = joinGet({m}, 'device', user_agent), is_bot = joinGet({m}, 'is_bot', user_agent)"
            ),
            &ua_missing,
        )
        .await?;
    }
    let ua_done = before_ua - count(ctx, &ua_missing).await?;

    // Geo, only with a database configured.
    let mut geo_done = 0;
    if enricher.geo_enabled() {
        let addr = "if(ip != '', ip, client_ip)";
        let geo_missing = format!("country = '' AND {addr} != ''{filter}");
        let before_geo = count(ctx, &geo_missing).await?;
        if before_geo > 0 {
            let addrs: Vec<String> = ctx
                .client
                .query(&format!(
                    "SELECT DISTINCT {addr} FROM {events} WHERE {geo_missing} LIMIT {BATCH}"
                ))
                .fetch_all()
                .await?;
            let rows = addrs
                .iter()
                .filter_map(|a| {
                    let ip = a.parse().ok()?;
                    let g = enricher.geo(ip);
                    Some(json!({"addr": a, "country": g.country, "region": g.region, "city": g.city}))
                })
                .collect();
            load_map(ctx, "enrich_geo_map", rows).await?;
            let m = format!("'{}.enrich_geo_map'", ctx.config.clickhouse.database);
            mutate(
                ctx,
                &format!(
                    "country = joinGet({m}, 'country', {addr}), region = joinGet({m}, 'region', {addr}), \
                     city = joinGet({m}, 'city', {addr})"
                ),
                &geo_missing,
            )
            .await?;
            geo_done = before_geo - count(ctx, &geo_missing).await?;
        }
    }
    Ok(JobReport {
        rows_affected: ua_done + geo_done,
        detail: json!({"user_agent_rows": ua_done, "geo_rows": geo_done, "geo_enabled": enricher.geo_enabled()}),
        ..JobReport::default()
    })
}
