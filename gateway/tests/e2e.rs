//! End to end on the real local broker and ClickHouse: events posted to the gateway
//! land in `events` exactly once, with their fields intact.

mod common;

use std::collections::HashMap;

use common::{event, TestGateway};
use shared::testkit::{eventually, services, TestSchema, CONSUMED_WITHIN};
use uuid::Uuid;

const TYPES: [&str; 5] = ["pageview", "click", "scroll", "performance", "custom"];

async fn count(schema: &TestSchema, tenant: Uuid, extra: &str) -> u64 {
    let db = schema.database();
    schema
        .client
        .query(&format!(
            "SELECT count() FROM `{db}`.events FINAL WHERE tenant_id = ? {extra}"
        ))
        .bind(tenant)
        .fetch_one::<u64>()
        .await
        .expect("count query")
}

async fn rows(schema: &TestSchema, tenant: Uuid) -> HashMap<String, serde_json::Value> {
    let db = schema.database();
    let sql = format!(
            "SELECT toString(id) AS id, toString(tenant_id) AS tenant_id, toString(session_id) AS session_id, \
             type, toUnixTimestamp64Milli(timestamp) AS ts, user_agent, screen_width, viewport_height, \
             timezone, language, title, path, url, referrer, element, selector, text, x, y, depth, \
             lcp, fcp, cls, ttfb, inp, fid, dom_content_loaded, load_time, name, properties \
             FROM `{db}`.events FINAL WHERE tenant_id = ?"
    );
    shared::testkit::select_json(&schema.client, &sql, &[tenant.to_string()])
        .await
        .into_iter()
        .map(|v| (v["id"].as_str().expect("id").to_string(), v))
        .collect()
}

/// Field equality, numbers compared as f64 (ClickHouse prints 1.0 as 1).
fn same(a: &serde_json::Value, b: &serde_json::Value) -> bool {
    match (a.as_f64(), b.as_f64()) {
        (Some(x), Some(y)) => x == y,
        _ => a == b,
    }
}

fn ms(ts: &str) -> i64 {
    let t = time::OffsetDateTime::parse(ts, &time::format_description::well_known::Rfc3339)
        .expect("rfc3339");
    (t.unix_timestamp_nanos() / 1_000_000) as i64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousand_events_round_trip_and_deduplicate() {
    let svc = services();
    let schema = TestSchema::create(&svc).await;
    let gw = TestGateway::start(schema.config.clone()).await;

    let sessions: Vec<Uuid> = (0..7).map(|_| Uuid::new_v4()).collect();
    let events: Vec<serde_json::Value> = (0..1000)
        .map(|n| event(TYPES[n % 5], n, sessions[n % sessions.len()]))
        .collect();
    let batches: Vec<serde_json::Value> = events
        .chunks(100)
        .map(|c| serde_json::json!({ "events": c }))
        .collect();

    for b in &batches {
        let resp = gw.ingest(b).await;
        assert_eq!(resp.status(), 200, "{:?}", resp.text().await);
        let body: serde_json::Value = resp.json().await.expect("json");
        assert_eq!(body["accepted"], 100);
        assert!(body["request_id"].as_str().is_some_and(|s| !s.is_empty()));
    }

    let tenant = gw.tenant;
    eventually("1000 events in ClickHouse", CONSUMED_WITHIN, || async {
        (count(&schema, tenant, "").await == 1000).then_some(())
    })
    .await;

    let stored = rows(&schema, tenant).await;
    assert_eq!(stored.len(), 1000, "exactly the posted ids");
    for e in &events {
        let id = e["id"].as_str().expect("id");
        let r = stored
            .get(id)
            .unwrap_or_else(|| panic!("event {id} missing"));
        assert_eq!(r["tenant_id"], tenant.to_string());
        assert_eq!(r["session_id"], e["session_id"]);
        assert_eq!(r["type"], e["type"]);
        assert_eq!(
            r["ts"].as_i64(),
            Some(ms(e["timestamp"].as_str().expect("ts"))),
            "{id}"
        );
        assert_eq!(r["user_agent"], e["user_agent"]);
        assert_eq!(r["screen_width"], 1920);
        assert_eq!(r["viewport_height"], e["viewport"]["height"]);
        assert_eq!(r["timezone"], "Europe/Paris");
        assert_eq!(r["language"], "fr-FR");
        match e["type"].as_str().expect("type") {
            "pageview" => {
                for f in ["title", "path", "url", "referrer"] {
                    assert!(same(&r[f], &e[f]), "{id} {f}: {} != {}", r[f], e[f]);
                }
                assert!(r["lcp"].is_null());
            }
            "click" => {
                for f in ["element", "selector", "text", "x", "y"] {
                    assert!(same(&r[f], &e[f]), "{id} {f}: {} != {}", r[f], e[f]);
                }
            }
            "scroll" => assert!(same(&r["depth"], &e["depth"]), "{id}"),
            "performance" => {
                for f in [
                    "lcp",
                    "fcp",
                    "cls",
                    "ttfb",
                    "inp",
                    "fid",
                    "dom_content_loaded",
                    "load_time",
                ] {
                    assert!(same(&r[f], &e[f]), "{id} {f}: {} != {}", r[f], e[f]);
                }
            }
            _ => {
                assert_eq!(r["name"], e["name"]);
                let props: serde_json::Value =
                    serde_json::from_str(r["properties"].as_str().expect("properties"))
                        .expect("json");
                assert_eq!(props, e["properties"]);
            }
        }
    }

    // A client retry resends the same events: after deduplication, still 1000.
    let resent_after = time::OffsetDateTime::now_utc();
    let since = format!(
        "AND received_at >= fromUnixTimestamp64Milli({})",
        (resent_after.unix_timestamp_nanos() / 1_000_000) as i64
    );
    for b in &batches {
        assert_eq!(gw.ingest(b).await.status(), 200);
    }
    // The newest copy wins in FINAL, so once all 1000 show the new receipt time the
    // retries have all arrived.
    eventually(
        "the resent events in ClickHouse",
        CONSUMED_WITHIN,
        || async { (count(&schema, tenant, &since).await == 1000).then_some(()) },
    )
    .await;
    assert_eq!(count(&schema, tenant, "").await, 1000);
    let distinct: u64 = schema
        .client
        .query(&format!(
            "SELECT uniqExact(id) FROM `{}`.events WHERE tenant_id = ?",
            schema.database()
        ))
        .bind(tenant)
        .fetch_one()
        .await
        .expect("distinct ids");
    assert_eq!(distinct, 1000);
    gw.shutdown().await;
}

/// Identity travels end to end: `distinct_id`, `user_id` and `anonymous_id`
/// land in their columns, `distinct_id` defaults to the user id, else the
/// anonymous id, and events without identity keep empty columns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_fields_land_in_their_columns() {
    let svc = services();
    let schema = TestSchema::create(&svc).await;
    let gw = TestGateway::start(schema.config.clone()).await;
    let s = Uuid::new_v4();
    let with = |n: usize, fields: serde_json::Value| {
        let mut e = event("pageview", n, s);
        for (k, v) in fields.as_object().expect("object") {
            e[k] = v.clone();
        }
        e
    };
    let events = vec![
        with(
            0,
            serde_json::json!({"distinct_id": "d-1", "user_id": "u-1", "anonymous_id": "a-1"}),
        ),
        with(
            1,
            serde_json::json!({"user_id": "u-2", "anonymous_id": "a-2"}),
        ),
        with(2, serde_json::json!({"anonymous_id": "a-3"})),
        with(3, serde_json::json!({})),
    ];
    let r = gw.ingest(&serde_json::json!({ "events": events })).await;
    assert_eq!(r.status(), 200, "{:?}", r.text().await);
    let long = gw
        .ingest(&serde_json::json!({ "events": [with(4, serde_json::json!({"user_id": "x".repeat(257)}))] }))
        .await;
    assert_eq!(long.status(), 422, "a 257-character user id is refused");

    let tenant = gw.tenant;
    eventually("4 events in ClickHouse", CONSUMED_WITHIN, || async {
        (count(&schema, tenant, "").await == 4).then_some(())
    })
    .await;
    let db = schema.database();
    let got: HashMap<String, serde_json::Value> = shared::testkit::select_json(
        &schema.client,
        &format!(
            "SELECT toString(id) AS id, distinct_id, user_id, anonymous_id \
             FROM `{db}`.events FINAL WHERE tenant_id = ?"
        ),
        &[tenant.to_string()],
    )
    .await
    .into_iter()
    .map(|v| (v["id"].as_str().expect("id").to_string(), v))
    .collect();
    let expect = [
        ("d-1", "u-1", "a-1"),
        ("u-2", "u-2", "a-2"),
        ("a-3", "", "a-3"),
        ("", "", ""),
    ];
    for (e, (d, u, a)) in events.iter().zip(expect) {
        let r = &got[e["id"].as_str().expect("id")];
        assert_eq!(
            (
                r["distinct_id"].as_str(),
                r["user_id"].as_str(),
                r["anonymous_id"].as_str()
            ),
            (Some(d), Some(u), Some(a)),
            "{r}"
        );
    }
}
