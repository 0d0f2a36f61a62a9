//! The enrichment backfill fills user-agent and geo fields of rows stored
//! without them (e.g. before a GeoIP database was configured), and only those.

use shared::testkit::{select_json, services, write_geo_mmdb, TestSchema};
use uuid::Uuid;
use workerd::jobs::{self, JobContext, JobName};

#[tokio::test]
async fn rows_missing_ua_or_geo_are_re_enriched() {
    let svc = services();
    let schema = TestSchema::create(&svc).await;
    let db = format!("`{}`", schema.database());
    let tenant = Uuid::new_v4();
    let chrome = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36";
    let bot = "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)";
    // (user agent, ip, client ip, browser already set)
    let rows = [
        (chrome, "198.51.100.7", "10.0.0.1", ""),
        (bot, "", "203.0.113.9", ""),
        (chrome, "", "192.0.2.55", "Already"), // enriched before: left alone
    ];
    for (ua, ip, client_ip, browser) in rows {
        schema
            .client
            .query(&format!(
                "INSERT INTO {db}.events (id, tenant_id, session_id, type, timestamp, received_at, user_agent, ip, client_ip, browser) \
                 VALUES (generateUUIDv4(), toUUID(?), generateUUIDv4(), 'pageview', now64(3), now64(3), ?, ?, ?, ?)"
            ))
            .bind(tenant.to_string())
            .bind(ua)
            .bind(ip)
            .bind(client_ip)
            .bind(browser)
            .execute()
            .await
            .expect("insert");
    }
    let mmdb = std::env::temp_dir().join(format!("ow-geo-{}.mmdb", Uuid::new_v4()));
    write_geo_mmdb(
        &mmdb,
        &[
            ("198.51.100.0", "FR", "France", "Île-de-France", "Paris"),
            ("203.0.113.0", "DE", "Germany", "Berlin", "Berlin"),
        ],
    );
    let mut config = schema.config.clone();
    config.enrichment.geoip_db = mmdb.display().to_string();
    let ctx = JobContext::new(config);
    let report = jobs::run(
        &ctx,
        JobName::Enrichment,
        time::OffsetDateTime::now_utc(),
        None,
        None,
    )
    .await
    .expect("enrichment");
    // Two rows had no user-agent fields; all three lacked geo, but 192.0.2.55 is
    // in no network of the database.
    assert_eq!(report.detail["user_agent_rows"], 2);
    assert_eq!(report.detail["geo_rows"], 2);
    let got = select_json(
        &schema.client,
        &format!(
            "SELECT client_ip, browser, os, device, is_bot, country, region, city FROM {db}.events \
             WHERE tenant_id = toUUID(?) ORDER BY client_ip"
        ),
        &[tenant.to_string()],
    )
    .await;
    assert_eq!(
        got,
        vec![
            serde_json::json!({"client_ip": "10.0.0.1", "browser": "Chrome", "os": "Windows", "device": "", "is_bot": false, "country": "FR", "region": "Île-de-France", "city": "Paris"}),
            serde_json::json!({"client_ip": "192.0.2.55", "browser": "Already", "os": "", "device": "", "is_bot": false, "country": "", "region": "", "city": ""}),
            serde_json::json!({"client_ip": "203.0.113.9", "browser": "Googlebot", "os": "", "device": "Spider", "is_bot": true, "country": "DE", "region": "Berlin", "city": "Berlin"}),
        ]
    );
    // Nothing left to do: a second run touches no row.
    let again = jobs::run(
        &ctx,
        JobName::Enrichment,
        time::OffsetDateTime::now_utc(),
        None,
        None,
    )
    .await
    .expect("again");
    assert_eq!(again.detail["user_agent_rows"], 0);
    let _ = std::fs::remove_file(&mmdb);
}
