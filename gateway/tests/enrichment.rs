//! Enrichment end to end: user agents, bot flag, client IP and geo (from a small
//! `.mmdb` built here), IP anonymisation and clock-skew correction, checked in
//! ClickHouse after the real broker and Kafka engine carried the events.

mod common;

use std::collections::BTreeMap;

use common::{event, TestGateway};
use shared::testkit::{eventually, services, TestSchema, CONSUMED_WITHIN};
use uuid::Uuid;

/// A MaxMind-format City database with two networks.
fn write_mmdb(path: &std::path::Path) {
    shared::testkit::write_geo_mmdb(
        path,
        &[
            ("198.51.100.0", "FR", "France", "Île-de-France", "Paris"),
            ("203.0.113.0", "DE", "Germany", "Berlin", "Berlin"),
        ],
    );
}

async fn stored(schema: &TestSchema, tenant: Uuid, n: u64) -> BTreeMap<String, serde_json::Value> {
    let db = schema.database();
    eventually("the events in ClickHouse", CONSUMED_WITHIN, || async {
        let c: u64 = schema
            .client
            .query(&format!(
                "SELECT count() FROM `{db}`.events FINAL WHERE tenant_id = ?"
            ))
            .bind(tenant)
            .fetch_one()
            .await
            .ok()?;
        (c == n).then_some(())
    })
    .await;
    let sql = format!(
            "SELECT toString(id) AS id, client_ip, ip, browser, browser_version, os, os_version, device, \
             country, region, city, is_bot, toUnixTimestamp64Milli(timestamp) AS ts, \
             toUnixTimestamp64Milli(corrected_timestamp) AS corrected, \
             toUnixTimestamp64Milli(received_at) AS received \
             FROM `{db}`.events FINAL WHERE tenant_id = ?"
    );
    shared::testkit::select_json(&schema.client, &sql, &[tenant.to_string()])
        .await
        .into_iter()
        .map(|v| (v["id"].as_str().expect("id").to_string(), v))
        .collect()
}

/// (user agent, browser, os, device, bot)
const USER_AGENTS: &[(&str, &str, &str, &str, bool)] = &[
    ("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36", "Chrome", "Windows", "", false),
    ("Mozilla/5.0 (iPhone; CPU iPhone OS 17_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.1 Mobile/15E148 Safari/604.1", "Mobile Safari", "iOS", "iPhone", false),
    ("Mozilla/5.0 (X11; Linux x86_64; rv:121.0) Gecko/20100101 Firefox/121.0", "Firefox", "Linux", "", false),
    ("Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.2 Safari/605.1.15", "Safari", "Mac OS X", "Mac", false),
    ("Mozilla/5.0 (Linux; Android 14; SM-S918B) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.6099.144 Mobile Safari/537.36", "Chrome Mobile", "Android", "Samsung SM-S918B", false),
    ("Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)", "Googlebot", "", "Spider", true),
    ("Mozilla/5.0 (compatible; bingbot/2.0; +http://www.bing.com/bingbot.htm)", "bingbot", "", "Spider", true),
    ("Mozilla/5.0 AppleWebKit/537.36 (KHTML, like Gecko; compatible; GPTBot/1.2; +https://openai.com/gptbot)", "GPTBot", "", "Spider", true),
    ("python-requests/2.31.0", "Python Requests", "", "", true),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_are_enriched_end_to_end() {
    let svc = services();
    let schema = TestSchema::create(&svc).await;
    let mmdb = std::env::temp_dir().join(format!("ow-geo-{}.mmdb", Uuid::new_v4()));
    write_mmdb(&mmdb);
    let mut cfg = schema.config.clone();
    cfg.enrichment.geoip_db = mmdb.display().to_string();
    cfg.gateway.trusted_proxies = vec!["127.0.0.0/8".into()];
    let gw = TestGateway::start(cfg.clone()).await;
    let http = reqwest::Client::new();

    let session = Uuid::new_v4();
    let mut events = Vec::new();
    for (n, (ua, ..)) in USER_AGENTS.iter().enumerate() {
        let mut e = event("pageview", n, session);
        e["user_agent"] = (*ua).into();
        events.push(e);
    }
    // The SDK's own `ip` wins over the connection's (server SDKs forward it).
    let mut forwarded = event("click", 100, session);
    forwarded["ip"] = "198.51.100.23".into();
    // Skew: the SDK clock is 10 s behind the event's own clock.
    let event_ts = time::OffsetDateTime::parse(
        forwarded["timestamp"].as_str().expect("ts"),
        &time::format_description::well_known::Rfc3339,
    )
    .expect("rfc3339");
    let sent = event_ts + time::Duration::seconds(10);
    forwarded["sent_at"] = common::rfc3339(sent).into();
    events.push(forwarded.clone());
    let r = http
        .post(gw.url("/ingest"))
        .bearer_auth(gw.key())
        .header("x-forwarded-for", "192.0.2.200, 203.0.113.7")
        .json(&serde_json::json!({ "events": events }))
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 200);

    let rows = stored(&schema, gw.tenant, events.len() as u64).await;
    for (e, (ua, browser, os, device, bot)) in events.iter().zip(USER_AGENTS) {
        let row = &rows[e["id"].as_str().expect("id")];
        assert_eq!(row["browser"], *browser, "{ua}");
        assert_eq!(row["os"], *os, "{ua}");
        assert_eq!(row["device"], *device, "{ua}");
        assert_eq!(row["is_bot"], *bot, "{ua}");
        // The nearest untrusted X-Forwarded-For hop, geolocated.
        assert_eq!(row["client_ip"], "203.0.113.7");
        assert_eq!(
            (
                row["country"].as_str(),
                row["region"].as_str(),
                row["city"].as_str()
            ),
            (Some("DE"), Some("Berlin"), Some("Berlin"))
        );
    }
    let chrome = &rows[events[0]["id"].as_str().expect("id")];
    assert_eq!(chrome["browser_version"], "120.0.0");
    let iphone = &rows[events[1]["id"].as_str().expect("id")];
    assert_eq!(iphone["os_version"], "17.1");

    let f = &rows[forwarded["id"].as_str().expect("id")];
    assert_eq!(f["ip"], "198.51.100.23");
    assert_eq!(
        (f["country"].as_str(), f["city"].as_str()),
        (Some("FR"), Some("Paris"))
    );
    assert_eq!(f["region"], "Île-de-France");
    let ts = f["ts"].as_i64().expect("ts");
    let received = f["received"].as_i64().expect("received");
    let sent_at = (sent.unix_timestamp_nanos() / 1_000_000) as i64;
    assert_eq!(
        f["corrected"].as_i64(),
        Some(ts + (received - sent_at)),
        "timestamp shifted by the skew"
    );
    assert_ne!(f["corrected"], f["ts"]);

    // From an untrusted peer X-Forwarded-For is ignored; an anonymising tenant
    // stores truncated addresses (geo was looked up before truncation).
    cfg.gateway.trusted_proxies = vec![];
    let plain = TestGateway::start_with(cfg, true).await;
    let mut e = event("scroll", 200, Uuid::new_v4());
    e["ip"] = "198.51.100.23".into();
    let r = http
        .post(plain.url("/ingest"))
        .bearer_auth(plain.key())
        .header("x-forwarded-for", "203.0.113.7")
        .json(&serde_json::json!({ "events": [e.clone()] }))
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 200);
    let rows = stored(&schema, plain.tenant, 1).await;
    let row = &rows[e["id"].as_str().expect("id")];
    assert_eq!(row["client_ip"], "127.0.0.0", "loopback peer, truncated");
    assert_eq!(row["ip"], "198.51.100.0");
    assert_eq!(row["city"], "Paris");
    let _ = std::fs::remove_file(&mmdb);
}

/// Every sampled user agent of the embedded crawler list is flagged as a bot.
#[test]
fn crawler_list_instances_are_bots() {
    let cfg = shared::Config::load_from(None, Vec::new()).expect("defaults");
    let e = gateway::enrich::Enricher::new(&cfg.gateway, &cfg.enrichment).expect("enricher");
    let uas: Vec<String> =
        serde_json::from_str(include_str!("data/bot-user-agents.json")).expect("json");
    assert!(uas.len() >= 30);
    for ua in &uas {
        assert!(e.user_agent(ua).is_bot, "not flagged: {ua}");
    }
    for (ua, .., bot) in USER_AGENTS {
        assert_eq!(e.user_agent(ua).is_bot, *bot, "{ua}");
    }
}

/// Past `enrichment.max_ua_parses_per_request` distinct user agents in one
/// request, events are accepted with their `user_agent` kept and no parsed
/// fields; workerd's enrichment job then fills those fields, so the budget
/// loses nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spent_user_agent_budget_is_made_up_by_the_enrichment_job() {
    let svc = services();
    let schema = TestSchema::create(&svc).await;
    let mut cfg = schema.config.clone();
    cfg.enrichment.max_ua_parses_per_request = 2;
    let gw = TestGateway::start(cfg.clone()).await;
    let session = Uuid::new_v4();
    let events: Vec<serde_json::Value> = USER_AGENTS
        .iter()
        .enumerate()
        .map(|(n, (ua, ..))| {
            let mut e = event("pageview", n, session);
            e["user_agent"] = (*ua).into();
            e
        })
        .collect();
    let r = gw.ingest(&serde_json::json!({ "events": events })).await;
    assert_eq!(r.status(), 200);
    let rows = stored(&schema, gw.tenant, events.len() as u64).await;
    let parsed = rows.values().filter(|r| r["browser"] != "").count();
    assert_eq!(parsed, 2, "two parses, the rest deferred: {rows:?}");

    let ctx = workerd::jobs::JobContext::new(cfg);
    workerd::jobs::run(
        &ctx,
        workerd::jobs::JobName::Enrichment,
        time::OffsetDateTime::now_utc(),
        None,
        None,
    )
    .await
    .expect("enrichment job");
    let rows = stored(&schema, gw.tenant, events.len() as u64).await;
    for (e, (ua, browser, os, device, bot)) in events.iter().zip(USER_AGENTS) {
        let row = &rows[e["id"].as_str().expect("id")];
        assert_eq!(
            (&row["browser"], &row["os"], &row["device"], &row["is_bot"]),
            (
                &(*browser).into(),
                &(*os).into(),
                &(*device).into(),
                &(*bot).into()
            ),
            "{ua}"
        );
    }
}
