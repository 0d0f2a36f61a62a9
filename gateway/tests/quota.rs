//! Monthly quotas end to end: events through the real ingest path, workerd's
//! rollups and quota jobs, and the gateway answering 429 quota_exceeded for the
//! tenant over its quota while others keep going.

mod common;

use std::time::Duration;

use common::{event, TestGateway};
use shared::domain::Tier;
use shared::testkit::{eventually, services, TestSchema, CONSUMED_WITHIN};
use uuid::Uuid;
use workerd::admin::{Admin, KeySpec};
use workerd::jobs::{self, JobContext, JobName, Window};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_quota_tenants_get_429() {
    let svc = services();
    let schema = TestSchema::create(&svc).await;
    let mut cfg = schema.config.clone();
    cfg.tiers.free.monthly_event_quota = 5;
    let admin = Admin::new(
        schema.client.clone(),
        shared::store::Db::new(schema.database()),
        "quota-test",
    );
    let small = admin
        .tenant_create(None, "small", Tier::Free, false)
        .await
        .expect("tenant");
    let big = admin
        .tenant_create(None, "big", Tier::Paid, false)
        .await
        .expect("tenant");
    let spec = KeySpec {
        kind: "server".into(),
        ..Default::default()
    };
    let small_key = admin.key_issue(small, &spec).await.expect("key").api_key();
    let big_key = admin.key_issue(big, &spec).await.expect("key").api_key();
    let gw = TestGateway::start(cfg.clone()).await;
    let http = reqwest::Client::new();
    let now = time::OffsetDateTime::now_utc();
    let stamp = now
        .format(&time::format_description::well_known::Rfc3339)
        .expect("format");
    let batch = |n: usize| {
        let s = Uuid::new_v4();
        let events: Vec<serde_json::Value> = (0..n)
            .map(|i| {
                let mut e = event("pageview", i, s);
                e["timestamp"] = stamp.clone().into();
                e
            })
            .collect();
        serde_json::json!({ "events": events })
    };
    let post = |key: String, body: serde_json::Value| {
        let http = http.clone();
        let url = gw.url("/ingest");
        async move {
            http.post(url)
                .bearer_auth(key)
                .json(&body)
                .send()
                .await
                .expect("send")
        }
    };
    eventually("the keys to load", Duration::from_secs(20), || async {
        (post(small_key.clone(), batch(6)).await.status() == 200).then_some(())
    })
    .await;
    assert_eq!(post(big_key.clone(), batch(6)).await.status(), 200);
    let db = schema.database().to_string();
    eventually("12 events in ClickHouse", CONSUMED_WITHIN, || async {
        let n: u64 = schema
            .client
            .query(&format!("SELECT count() FROM `{db}`.events FINAL"))
            .fetch_one()
            .await
            .ok()?;
        (n == 12).then_some(())
    })
    .await;

    let ctx = JobContext::new(cfg);
    let window = Window {
        from: now - time::Duration::hours(1),
        to: now + time::Duration::hours(1),
    };
    jobs::run(&ctx, JobName::Rollups, now, None, Some(window))
        .await
        .expect("rollups");
    let report = jobs::run(&ctx, JobName::Quota, now, None, None)
        .await
        .expect("quota");
    assert_eq!(report.rows_affected, 1);
    assert_eq!(
        report.detail["over_quota"],
        serde_json::json!([small.to_string()])
    );

    let r = eventually(
        "the quota mark to reach the gateway",
        Duration::from_secs(20),
        || async {
            let r = post(small_key.clone(), batch(1)).await;
            (r.status() == 429).then_some(r)
        },
    )
    .await;
    assert!(
        r.headers()["retry-after"]
            .to_str()
            .expect("ascii")
            .parse::<u64>()
            .expect("secs")
            > 0
    );
    let body: serde_json::Value = r.json().await.expect("json");
    assert_eq!(body["error"]["code"], "quota_exceeded");
    assert_eq!(
        post(big_key.clone(), batch(1)).await.status(),
        200,
        "other tenants are unaffected"
    );

    let usage: Vec<(String, u64, u64, bool)> = schema
        .client
        .query(&format!(
            "SELECT toString(tenant_id), events, quota, over_quota FROM `{db}`.tenant_usage FINAL ORDER BY over_quota"
        ))
        .fetch_all()
        .await
        .expect("usage");
    assert_eq!(
        usage,
        vec![
            (big.to_string(), 6, 50_000_000, false),
            (small.to_string(), 6, 5, true)
        ]
    );
}
