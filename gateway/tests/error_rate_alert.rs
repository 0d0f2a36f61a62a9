//! The `ingest_error_rate` alert, end to end: the gateway's request counters
//! are snapshotted into ClickHouse's internal_metrics, and workerd's `alerts`
//! job raises the alert from them once failures pass the threshold.
//! (Its own test binary: the metrics recorder is process-wide.)

mod common;

use common::{event, TestGateway};
use shared::testkit::{services, TestSchema};
use uuid::Uuid;
use workerd::jobs::{self, JobContext, JobName};
use workerd::notify::Rule;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_ingest_requests_raise_the_error_rate_alert() {
    let svc = services();
    let schema = TestSchema::create(&svc).await;
    let mut config = schema.config.clone();
    config.telemetry.snapshot_interval_secs = 0;
    config.notifications.ingest_error_rate_threshold = 0.25;
    config.notifications.ingest_error_min_requests = 10;
    shared::testkit::create_topics(&config, 2).await;
    let gw = TestGateway::start(config.clone()).await;
    let db = schema.database().to_string();
    let snapshot =
        || shared::runtime::metrics::snapshot(&schema.client, &db, "gateway", "gw-test:1");
    let ctx = JobContext::new(config.clone());
    let alerts = || async {
        jobs::run(
            &ctx,
            JobName::Alerts,
            time::OffsetDateTime::now_utc(),
            None,
            None,
        )
        .await
        .expect("alerts job")
    };
    snapshot().await.expect("baseline snapshot");

    let session = Uuid::new_v4();
    for i in 0..9 {
        let r = gw
            .ingest(&serde_json::json!({"events": [event("pageview", i, session)]}))
            .await;
        assert_eq!(r.status(), 200);
    }
    // One failure in ten: under the threshold.
    let r = gw.ingest(&serde_json::json!({"events": []})).await;
    assert_eq!(r.status(), 422);
    snapshot().await.expect("snapshot");
    let quiet = alerts().await;
    assert_eq!(
        (
            &quiet.detail["ingest_requests"],
            &quiet.detail["ingest_errors"]
        ),
        (&serde_json::json!(10), &serde_json::json!(1)),
        "{}",
        quiet.detail
    );
    assert!(quiet
        .alerts
        .iter()
        .all(|a| a.rule() != Rule::IngestErrorRate));

    // Five more failures (bad key, bad body, rate limits don't count): 6 of 15.
    for _ in 0..3 {
        let r = reqwest::Client::new()
            .post(gw.url("/ingest"))
            .bearer_auth(format!("{}:wrong", gw.tenant))
            .json(&serde_json::json!({"events": [event("click", 1, session)]}))
            .send()
            .await
            .expect("post");
        assert_eq!(r.status(), 401);
    }
    for _ in 0..2 {
        let r = reqwest::Client::new()
            .post(gw.url("/ingest"))
            .bearer_auth(gw.key())
            .header("content-type", "application/json")
            .body("{not json")
            .send()
            .await
            .expect("post");
        assert_eq!(r.status(), 400);
    }
    snapshot().await.expect("snapshot");
    let loud = alerts().await;
    assert_eq!(loud.detail["ingest_requests"], 15, "{}", loud.detail);
    assert_eq!(loud.detail["ingest_errors"], 6, "{}", loud.detail);
    let raised: Vec<_> = loud
        .alerts
        .into_iter()
        .filter(|a| a.rule() == Rule::IngestErrorRate)
        .collect();
    assert_eq!(raised.len(), 1);
    assert_eq!(raised[0].detail()["value"], 0.4);
    assert!(raised[0].title().contains("40.0%"), "{}", raised[0].title());
    gw.shutdown().await;
}
